"""Plots with matplotlib's object-oriented API: no pyplot state, safe without a display.

Every function returns a :class:`matplotlib.figure.Figure` in the style of :mod:`dlkit.analysis.style`;
:func:`save_figure` writes PNG and PDF.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dlkit.analysis import style
from dlkit.analysis.regression import fit_label, resolution_function

__all__ = ["plot_roc", "plot_binned", "binned_value_columns", "plot_confusion", "plot_history", "history_boundaries",
           "plot_chained_history", "plot_resolution", "plot_response", "plot_scan", "plot_parameters",
           "plot_parallel_coordinates", "save_figure"]


def plot_roc(curves: Mapping[str, Mapping], title: str | None = None, log_rejection: bool = False) -> Figure:
    """ROC curves (signal efficiency vs fake rate, or rejection) with the AUC in the legend."""
    fig, ax = style.figure((6, 5))
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
    style.legend(ax, loc="lower right" if not log_rejection else "upper right")
    if title:
        ax.set_title(title)
    return fig


def _interval_columns(frame: pd.DataFrame, column) -> tuple[str, str] | None:
    lower, upper = f"{column}_lower", f"{column}_upper"
    return (lower, upper) if lower in frame.columns and upper in frame.columns else None


def binned_value_columns(frame: pd.DataFrame) -> list:
    """The value columns of a binned table: not the bin edges, the counts (``n_*``) or the interval bounds."""
    bounds = {b for c in frame.columns for b in (_interval_columns(frame, c) or ())}
    return [c for c in frame.columns
            if c not in ("bin_low", "bin_high") and c not in bounds and not str(c).startswith("n_")]


def plot_binned(frame: pd.DataFrame, columns=None, xlabel: str = "true energy [GeV]", ylabel: str = "AUC",
                title: str | None = None) -> Figure:
    """Per-bin values (e.g. :func:`~dlkit.analysis.binned_auc`) vs the bin centre, with error bars.

    A column ``c`` with ``c_lower`` and ``c_upper`` columns beside it (the bootstrap intervals of
    :func:`~dlkit.analysis.binned_auc`, the Clopper-Pearson intervals of the efficiency tables) is drawn
    with those asymmetric error bars. By default every value column is drawn (not the bin edges, the
    ``n_*`` counts or the interval bounds).
    """
    fig, ax = style.figure((6, 4.5))
    columns = columns or binned_value_columns(frame)
    for col in columns:
        y = frame[col].to_numpy(dtype=float)
        bounds = _interval_columns(frame, col)
        if bounds is None:
            ax.plot(frame.index, y, marker="o", label=str(col))
            continue
        lower, upper = (frame[b].to_numpy(dtype=float) for b in bounds)
        yerr = np.nan_to_num(np.clip(np.stack([y - lower, upper - y]), 0, None))
        ax.errorbar(frame.index, y, yerr=yerr, marker="o", ms=4, capsize=2, label=str(col))
    ax.set(xlabel=xlabel, ylabel=ylabel)
    style.legend(ax)
    if title:
        ax.set_title(title)
    return fig


def plot_confusion(frame: pd.DataFrame, title: str | None = None) -> Figure:
    """A confusion matrix DataFrame as an annotated image."""
    fig, ax = style.figure((5.5, 4.5))
    ax.grid(False)
    image = ax.imshow(frame.values, cmap="Blues", vmin=0)
    ax.set_xticks(range(frame.shape[1]), frame.columns)
    ax.set_yticks(range(frame.shape[0]), frame.index)
    ax.set(xlabel="predicted class", ylabel="true class")
    for (i, j), value in np.ndenumerate(frame.values):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center",
                color="white" if value > 0.5 * frame.values.max() else "black")
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    if title:
        ax.set_title(title)
    return fig


def plot_history(history: Mapping[str, list], keys=None, title: str | None = None,
                 boundaries: list[int] | None = None, loss_name: str | None = None) -> Figure:
    """Training curves vs epoch (integer ticks); ``boundaries`` marks the epochs where a resumed run began.

    The y axis is named after the metrics (``loss (binary cross-entropy)`` with ``loss_name``, the
    run's ``Loss`` entry).

    >>> plot_history(md["History"], ["loss", "val_loss"], loss_name=md["Loss"])
    """
    fig, ax = style.figure((6, 4.5))
    keys = keys or [k for k in history if "loss" in k] or list(history)
    for key in keys:
        values = np.array([np.nan if v is None else v for v in history[key]], dtype=float)
        ax.plot(np.arange(1, len(values) + 1), values, marker=".", label=style.metric_label(key))
    for i, b in enumerate(boundaries or []):
        ax.axvline(b + 0.5, color="grey", ls=":", lw=1, label="resumed" if i == 0 else None)
    style.epoch_axis(ax)
    ax.set_ylabel(style.metric_axis_label(keys, loss_name))
    style.legend(ax)
    if title:
        ax.set_title(title)
    return fig


def history_boundaries(metadata: Mapping) -> list[int]:
    """Epochs after which each resumed run began (for :func:`plot_history`'s ``boundaries``).

    Each earlier run in ``metadata["InputMetaData"]`` contributes its number of epochs (the longest
    list in its ``History``, as :func:`dlkit.model_wrapper.chained_history` counts them).

    >>> history_boundaries({"InputMetaData": [{"History": {"loss": [1, 2, 3]}}], "History": {"loss": [4]}})
    [3]
    """
    boundaries, total = [], 0
    for run in metadata.get("InputMetaData") or []:
        history = run.get("History") if isinstance(run, Mapping) else None
        if not isinstance(history, Mapping):
            history = {}
        total += max((len(v) for v in history.values() if isinstance(v, list)), default=0)
        if total and (not boundaries or boundaries[-1] != total):
            boundaries.append(total)
    return boundaries


def plot_chained_history(metadata: Mapping, keys=None, title: str | None = None) -> Figure:
    """Training curves over all resumes of a run, with dotted lines where each resume began.

    >>> fig = plot_chained_history(read_metadata("TrainedModels/Dense_64.2"), ["loss", "val_loss"])
    """
    from dlkit.metadata import chained_history

    history = chained_history(metadata)
    return plot_history(history, keys=keys, title=title if title is not None else metadata.get("Name"),
                        boundaries=history_boundaries(metadata), loss_name=metadata.get("Loss"))


def _as_series(tables, extra=None) -> list[tuple[str | None, pd.DataFrame, object]]:
    """Normalise one table, a list of tables or a {label: table} mapping, with matching extras."""
    if isinstance(tables, pd.DataFrame):
        return [(None, tables, extra)]
    if isinstance(tables, Mapping):
        extras = extra if isinstance(extra, Mapping) else {}
        return [(str(label), t, extras.get(label)) for label, t in tables.items()]
    tables = list(tables)
    listed = isinstance(extra, Sequence) and not isinstance(extra, (str, Mapping))
    extras = list(extra) if listed else [None] * len(tables)
    return [(None, t, e) for t, e in zip(tables, extras)]


def _energy(table: pd.DataFrame) -> np.ndarray:
    return np.asarray(table["e_mean"] if "e_mean" in table else table.index, dtype=float)


def plot_resolution(tables, fits=None, labels: Sequence[str] | None = None, title: str | None = None,
                    xlabel: str = "true energy [GeV]", logx: bool = False) -> Figure:
    """Relative resolution sigma/E vs true energy, with the fitted curve and a, b, c in the legend.

    ``tables`` is one :func:`~dlkit.analysis.resolution_vs_energy` table, a list of them, or a
    ``{label: table}`` mapping (several models or particles overlaid); ``fits`` matches it (one
    :func:`~dlkit.analysis.fit_resolution` dict, a list or a mapping) and defaults to each table's
    ``attrs["fit"]`` (set by :func:`~dlkit.analysis.RegressionAnalysis`). Points are drawn at each bin's
    mean true energy; bins that fell back to mean/std are drawn hollow.

    >>> table, md = RegressionAnalysis(e_true, e_pred, np.geomspace(10, 500, 21))
    >>> save_figure(plot_resolution({"Ele": table}), wrapper.OutDir, "Resolution")
    """
    fig, ax = style.figure((6.5, 4.8))
    series = _as_series(tables, fits)
    for i, (label, table, fit) in enumerate(series):
        label = labels[i] if labels is not None else label
        fit = fit if fit is not None else table.attrs.get("fit")
        x = _energy(table)
        color = f"C{i % 10}"
        fallback = np.asarray(table["fallback"], bool) if "fallback" in table else np.zeros(len(table), bool)
        ax.errorbar(x[~fallback], table["resolution"].to_numpy()[~fallback],
                    yerr=table["resolution_err"].to_numpy()[~fallback], fmt="o", ms=4, color=color,
                    label=label if fit is None else None)
        if fallback.any():
            ax.errorbar(x[fallback], table["resolution"].to_numpy()[fallback],
                        yerr=table["resolution_err"].to_numpy()[fallback], fmt="o", ms=4, color=color,
                        mfc="none")
        if fit is not None and np.isfinite([fit.get(p, np.nan) for p in "abc"]).all():
            finite = x[np.isfinite(x) & (x > 0)]
            grid = np.geomspace(finite.min(), finite.max(), 200) if finite.size else np.array([])
            text = fit_label(fit)
            ax.plot(grid, resolution_function(grid, fit["a"], fit["b"], fit["c"]), color=color,
                    label=f"{label}: {text}" if label else text)
    ax.set(xlabel=xlabel, ylabel="relative resolution \u03c3/E")
    if logx:
        ax.set_xscale("log")
    style.legend(ax, outside=len(series) > 2)
    if title:
        ax.set_title(title)
    return fig


def plot_response(tables, labels: Sequence[str] | None = None, title: str | None = None,
                  xlabel: str = "true energy [GeV]", logx: bool = False) -> Figure:
    """Response (core mean of e_pred/e_true) vs true energy with errors; a dashed line marks 1.

    ``tables`` as in :func:`plot_resolution`.

    >>> save_figure(plot_response({"Ele": ele_table, "Gamma": gamma_table}), out_dir, "Response")
    """
    fig, ax = style.figure((6.5, 4.5))
    for i, (label, table, _) in enumerate(_as_series(tables)):
        label = labels[i] if labels is not None else label
        ax.errorbar(_energy(table), table["response"], yerr=table["response_err"], fmt="o-", ms=4,
                    color=f"C{i % 10}", label=label)
    ax.axhline(1.0, color="grey", ls="--", lw=1)
    ax.set(xlabel=xlabel, ylabel="response  E$_{pred}$/E$_{true}$")
    if logx:
        ax.set_xscale("log")
    style.legend(ax)
    if title:
        ax.set_title(title)
    return fig


def plot_scan(frame: pd.DataFrame, x: str, y: str, group: str | None = None, title: str | None = None,
              logx: bool = False) -> Figure:
    """A metadata value across a scan: ``y`` vs ``x`` from a scan table, one line per ``group`` value.

    >>> table = ScanTable("TrainedModels/")
    >>> fig = plot_scan(table, "Width", "Ele_AUC", group="Depth", logx=True)
    """
    fig, ax = style.figure((6, 4.5))
    data = frame[[c for c in dict.fromkeys([x, y, group]) if c is not None]].dropna(subset=[x, y])
    groups = data.groupby(group, sort=True) if group is not None else [(None, data)]
    for value, part in groups:
        part = part.sort_values(x)
        ax.plot(part[x], part[y], marker="o", label=None if group is None else f"{value}")
    ax.set(xlabel=x, ylabel=y)
    if logx:
        ax.set_xscale("log")
    style.legend(ax, title=group)
    if title:
        ax.set_title(title)
    return fig


#: A numeric parameter with at most this many values (a grid's) is drawn as evenly spaced categories.
MAX_CATEGORIES = 8


def _axis_values(values: pd.Series) -> tuple[np.ndarray, list | None, bool]:
    """Positions of a parameter's values on an axis: a grid's few values (or strings, lists, mixed types)
    as evenly spaced categories in order, many numbers (a search's) as they are, on a log axis when
    log-spaced. Returns (x, category labels or None, log)."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all() and not values.map(lambda v: isinstance(v, bool)).any():
        x = numeric.to_numpy(dtype=float)
        grid = np.unique(x)
        if grid.size <= MAX_CATEGORIES:
            return np.searchsorted(grid, x).astype(float), [f"{v:g}" for v in grid], False
        log = (x > 0).all() and x.max() / x.min() >= 20
        return x, None, bool(log)
    text = values.map(lambda v: "N/A" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    categories = sorted(text.unique(), key=lambda t: (len(t), t))
    index = {c: i for i, c in enumerate(categories)}
    return text.map(index).to_numpy(dtype=float), categories, False


def _better(metric: str, maximize: bool | None) -> bool:
    """Whether larger values of ``metric`` are better (AUCs, accuracies) unless told: losses, errors and
    resolutions are better small."""
    if maximize is not None:
        return maximize
    return not re.search(r"loss|error|resolution|mse|mae|chi2|_[abc]$", str(metric), re.I)


def plot_parameters(frame: pd.DataFrame, parameters: Sequence[str], metric: str, maximize: bool | None = None,
                    title: str | None = None) -> Figure:
    """Which parameters matter: the metric vs each scanned parameter, one panel each, every run a point
    and the median per value a line; the best run is a star.

    ``frame`` is a scan table (:func:`~dlkit.analysis.ScanTable`) with the parameter and metric columns.

    >>> table = ScanTable("TrainedModels/")
    >>> fig = plot_parameters(table, ["Width", "Depth", "lr"], "Ele_AUC")
    """
    parameters = [p for p in parameters if p in frame.columns]
    data = frame[frame[metric].notna()] if metric in frame.columns else frame.iloc[:0]
    ncols = min(3, max(len(parameters), 1))
    nrows = max(1, -(-len(parameters) // ncols))
    fig, axes = style.figure((4.2 * ncols, 3.4 * nrows), nrows=nrows, ncols=ncols, sharey=True)
    axes = np.atleast_1d(axes).ravel()
    y = pd.to_numeric(data[metric], errors="coerce").to_numpy(dtype=float) if len(data) else np.array([])
    best = (int(np.nanargmax(y) if _better(metric, maximize) else np.nanargmin(y))
            if np.isfinite(y).any() else None)
    jitter = np.random.default_rng(0).uniform(-0.08, 0.08, len(data))  # fixed: the same scan, the same picture
    for ax, parameter in zip(axes, parameters):
        x, categories, log = _axis_values(data[parameter])
        shown = x + jitter if categories is not None else x
        ax.scatter(shown, y, s=14, alpha=0.6, color="C0", label="run")
        medians = pd.Series(y).groupby(x).median()
        ax.plot(medians.index, medians.to_numpy(), color="C1", marker="_", ms=14, lw=1, label="median")
        if best is not None:
            ax.plot(shown[best], y[best], "*", color="C3", ms=12, label="best")
        if categories is not None:
            ax.set_xticks(range(len(categories)), categories, rotation=30 if len(categories) > 4 else 0)
            ax.set_xlim(-0.5, len(categories) - 0.5)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(parameter)
    for ax in axes[len(parameters):]:
        ax.set_visible(False)
    axes[0].set_ylabel(metric)
    if parameters:
        style.legend(axes[0])
    else:
        axes[0].text(0.5, 0.5, "no scanned parameters", ha="center", va="center", transform=axes[0].transAxes)
    if title:
        fig.suptitle(title)
    return fig


def plot_parallel_coordinates(frame: pd.DataFrame, parameters: Sequence[str], metric: str,
                              maximize: bool | None = None, title: str | None = None) -> Figure:
    """Every run as a line through one vertical axis per parameter and a last one for the metric,
    coloured by the metric (the better, the brighter); the best run is drawn thick and red.

    Each axis is scaled to its range (log for log-spaced values; categories evenly spaced) and labelled
    with its values at the ends.

    >>> fig = plot_parallel_coordinates(ScanTable("TrainedModels/"), ["Width", "Depth", "lr"], "Ele_AUC")
    """
    from matplotlib.collections import LineCollection

    columns = [p for p in parameters if p in frame.columns] + [metric]
    data = frame[frame[metric].notna()] if metric in frame.columns else frame.iloc[:0]
    fig, ax = style.figure((max(6.0, 1.6 * len(columns) + 2), 4.5))
    ax.grid(False)
    if data.empty:
        ax.text(0.5, 0.5, f"no run has {metric}", ha="center", va="center", transform=ax.transAxes)
        return fig
    scaled, ticks = [], []
    for column in columns:
        x, categories, log = _axis_values(data[column])
        v = np.log10(x) if log else x
        low, high = np.nanmin(v), np.nanmax(v)
        scaled.append((v - low) / (high - low) if high > low else np.full_like(v, 0.5))
        if categories is not None:
            ticks.append([(i / max(len(categories) - 1, 1) if len(categories) > 1 else 0.5, c)
                          for i, c in enumerate(categories)])
        else:
            ends = [np.nanmin(x), np.nanmax(x)]
            ticks.append([(0.0 if high > low else 0.5, f"{ends[0]:.3g}")] +
                         ([(1.0, f"{ends[1]:.3g}")] if high > low else []))
    points = np.stack(scaled, axis=1)
    segments = [np.column_stack([np.arange(len(columns)), row]) for row in points]
    y = data[metric].to_numpy(dtype=float)
    better = _better(metric, maximize)
    lines = LineCollection(segments, array=y, cmap="viridis" if better else "viridis_r", linewidths=1,
                           alpha=0.7 if len(y) < 200 else 0.35)
    ax.add_collection(lines)
    best = int(np.nanargmax(y) if better else np.nanargmin(y))
    ax.plot(np.arange(len(columns)), points[best], color="C3", lw=2.5, label=f"best: {metric} {y[best]:.4g}")
    for i, marks in enumerate(ticks):
        ax.axvline(i, color="black", lw=0.8)
        for position, text in marks:
            ax.text(i + 0.03, position, text, fontsize=7, va="center")
    ax.set_xticks(range(len(columns)), columns)
    ax.set(xlim=(-0.1, len(columns) - 0.6), ylim=(-0.05, 1.05), yticks=[])
    ax.spines[["left", "bottom"]].set_visible(False)
    fig.colorbar(lines, ax=ax, label=metric)
    style.legend(ax, loc="upper left", bbox_to_anchor=(0, 1.12))
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
