"""One look for every dlkit plot: figure, fonts, grid, legend placement and axis labels with units.

Every plotting function in dlkit (and the experiment packages) makes its figure with :func:`figure` and
finishes its axes with :func:`legend` and the label helpers here, so a change of style is made once::

    fig, ax = style.figure((6, 4.5))
    ax.plot(epochs, loss, label=style.metric_label("val_loss"))
    style.epoch_axis(ax)
    ax.set_ylabel(style.metric_axis_label(["loss", "val_loss"], loss_name="binary_crossentropy"))
    style.legend(ax)

The rc settings are applied while the Figure and its Axes are made (``rc_context``), so a user's own
matplotlibrc or pyplot state is neither needed nor changed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import matplotlib as mpl
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["RC", "figure", "legend", "epoch_axis", "metric_label", "metric_axis_label", "is_fraction",
           "fraction_axis"]

#: The rc settings of every dlkit figure.
RC = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8,
    "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.grid": True, "grid.alpha": 0.3,
    "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
    "lines.markersize": 4, "errorbar.capsize": 2, "figure.dpi": 100, "savefig.dpi": 100,
    "image.cmap": "viridis",
}

#: More legend entries than this go outside the axes (right of them), where they hide no curve.
MAX_INSIDE = 6

_NAMES = {"loss": "loss", "acc": "accuracy", "accuracy": "accuracy", "auc": "AUC", "mae": "mean absolute error",
          "mse": "mean squared error", "mape": "mean absolute percentage error [%]", "lr": "learning rate",
          "learning_rate": "learning rate", "precision": "precision", "recall": "recall"}
_FRACTION = re.compile(r"(^|_)(auc|acc|accuracy|efficiency|eff|fraction|precision|recall|purity)$", re.I)


def figure(figsize=(6, 4.5), nrows: int = 1, ncols: int = 1, **subplots):
    """A constrained-layout Figure in dlkit's style and its Axes (one, or an array for a grid);
    ``subplots`` go to :meth:`Figure.subplots` (``sharex``, ``gridspec_kw``)."""
    with mpl.rc_context(RC):
        fig = Figure(figsize=figsize, layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=True, **subplots)
    return fig, axes


def legend(ax, title: str | None = None, outside: bool | None = None, **kwargs):
    """A legend where it hides nothing: ``best`` inside for a few entries, right of the axes for many.

    Does nothing when no artist has a label. Returns the Legend (or None).
    """
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    outside = len(handles) > MAX_INSIDE if outside is None else outside
    if outside:
        kwargs = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), **kwargs}
    else:
        kwargs = {"loc": "best", **kwargs}
    with mpl.rc_context(RC):
        return ax.legend(title=title, **kwargs)


def epoch_axis(ax, axis: str = "x") -> None:
    """Label an axis "epoch" with integer ticks (no 1.5th epoch)."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(MaxNLocator(integer=True))
    target.set_label_text("epoch")


def _base(key: str) -> tuple[str, bool]:
    key = str(key).rsplit(".", 1)[-1]
    key = re.sub(r"\[-?\d+\]$", "", key)
    validation = key.startswith("val_")
    return (key[4:] if validation else key), validation


def metric_label(key: str) -> str:
    """A legend label for a Keras history key: ``val_loss`` -> ``loss (validation)``."""
    base, validation = _base(key)
    return f"{_NAMES.get(base.lower(), base)} ({'validation' if validation else 'training'})"


def _loss_text(loss_name) -> str:
    if not isinstance(loss_name, str) or not loss_name:
        return ""
    words = loss_name.rsplit(".", 1)[-1].replace("crossentropy", "cross-entropy")
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", words).replace("_", " ").lower()


def metric_axis_label(keys: Iterable[str], loss_name: str | None = None) -> str:
    """The y label for some history keys: ``loss (binary cross-entropy)``, ``accuracy [fraction]``.

    Training and validation keys of one metric share one label; different metrics are joined by ", ".
    """
    names = []
    for key in keys:
        base, _ = _base(key)
        name = _NAMES.get(base.lower(), base)
        if base.lower() == "loss" and _loss_text(loss_name):
            name = f"loss ({_loss_text(loss_name)})"
        elif is_fraction(base):
            name = f"{name} [fraction]"
        if name not in names:
            names.append(name)
    return ", ".join(names) or "value"


def is_fraction(key) -> bool:
    """Whether a metadata key names a quantity in [0, 1] (AUC, accuracy, efficiency, ...)."""
    base, _ = _base(key)
    return bool(_FRACTION.search(base))


def fraction_axis(ax, axis: str = "y") -> None:
    """Start a fraction's axis at 0 (and end it at 1.02 at least), so bar heights compare honestly."""
    high = (ax.get_ylim() if axis == "y" else ax.get_xlim())[1]
    (ax.set_ylim if axis == "y" else ax.set_xlim)(0.0, max(high, 1.02) if high <= 1.05 else high)
