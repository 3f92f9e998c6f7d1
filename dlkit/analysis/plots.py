"""Plots with matplotlib's object-oriented API: no pyplot state, safe without a display.

Every function returns a :class:`matplotlib.figure.Figure`; :func:`save_figure` writes PNG and PDF.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["plot_roc", "plot_binned", "plot_confusion", "plot_history", "save_figure"]


def plot_roc(curves: Mapping[str, Mapping], title: str | None = None, log_rejection: bool = False) -> Figure:
    """ROC curves (signal efficiency vs fake rate, or rejection) with the AUC in the legend."""
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    for name, c in curves.items():
        if len(c["fpr"]) == 0:
            continue
        if log_rejection:
            with np.errstate(divide="ignore"):
                ax.plot(c["tpr"], 1.0 / c["fpr"], label=f"{name} (AUC {c['auc']:.3f})")
        else:
            ax.plot(c["fpr"], c["tpr"], label=f"{name} (AUC {c['auc']:.3f})")
    if log_rejection:
        ax.set(xlabel="signal efficiency", ylabel="background rejection", yscale="log")
    else:
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set(xlabel="background efficiency (fake rate)", ylabel="signal efficiency", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right" if not log_rejection else "upper right")
    if title:
        ax.set_title(title)
    return fig


def plot_binned(frame: pd.DataFrame, columns=None, xlabel: str = "true energy [GeV]", ylabel: str = "AUC",
                title: str | None = None) -> Figure:
    """Lines of per-bin values (e.g. :func:`~dlkit.analysis.binned_auc`) vs the bin centre."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    columns = columns or [c for c in frame.columns if c not in ("bin_low", "bin_high", "n_events")]
    for col in columns:
        ax.plot(frame.index, frame[col], marker="o", label=str(col))
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return fig


def plot_confusion(frame: pd.DataFrame, title: str | None = None) -> Figure:
    """A confusion matrix DataFrame as an annotated image."""
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    image = ax.imshow(frame.values, cmap="Blues", vmin=0)
    ax.set_xticks(range(frame.shape[1]), frame.columns)
    ax.set_yticks(range(frame.shape[0]), frame.index)
    ax.set(xlabel="predicted", ylabel="true")
    for (i, j), value in np.ndenumerate(frame.values):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center",
                color="white" if value > 0.5 * frame.values.max() else "black")
    fig.colorbar(image, ax=ax)
    if title:
        ax.set_title(title)
    return fig


def plot_history(history: Mapping[str, list], keys=None, title: str | None = None,
                 boundaries: list[int] | None = None) -> Figure:
    """Training curves per epoch; ``boundaries`` marks the epochs where a resumed run began."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    keys = keys or [k for k in history if "loss" in k]
    for key in keys:
        values = np.array([np.nan if v is None else v for v in history[key]], dtype=float)
        ax.plot(np.arange(1, len(values) + 1), values, marker=".", label=key)
    for b in boundaries or []:
        ax.axvline(b + 0.5, color="grey", ls=":", lw=1)
    ax.set(xlabel="epoch", ylabel="value")
    ax.legend()
    if title:
        ax.set_title(title)
    return fig


def save_figure(fig: Figure, directory, stem: str, formats=("png", "pdf")) -> list[Path]:
    """Write ``fig`` as ``<directory>/<stem>.<fmt>`` for each format; returns the paths."""
    directory = Path(directory)
    paths = []
    for fmt in formats:
        path = directory / f"{stem}.{fmt}"
        fig.savefig(path, bbox_inches="tight", dpi=100 if fmt == "png" else None)
        paths.append(path)
    return paths
