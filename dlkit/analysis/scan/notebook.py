"""DLKit's notebook functions over the runs of a scan: :func:`GetGoodParams`, :func:`GetEpochs`,
:func:`GetHistorical`, :func:`ResetNames`, :func:`PlotMetaData`, :func:`PlotMetaDataMany`, and the PEP 8
aliases of every DLKit name.

Part of :mod:`dlkit.analysis.scan`; import from there.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from dlkit.analysis import style
from dlkit.analysis.scan.runs import LoadModels, ScanModel, SelectModels, _as_models
from dlkit.analysis.scan.tables import (_MISSING, ScanTable, _missing, _sort_models, _walk, column_value)

log = logging.getLogger("dlkit.analysis.scan")

__all__ = ["GetGoodParams", "GetHistorical", "GetEpochs", "ResetNames", "PlotMetaData", "PlotMetaDataMany",
           "load_models", "scan_table", "get_good_params", "get_historical", "get_epochs", "reset_names",
           "select_models", "plot_metadata", "plot_metadata_many"]


def GetGoodParams(Models) -> list[str]:  # noqa: N802, N803
    """The metadata keys holding an int or float (not bool) in any run, in first-seen order.

    >>> GetGoodParams(MyModels)
    ['Width', 'Depth', 'HyperParamSet', 'Epochs', 'TotalEpochs', 'Ele_AUC', ...]
    """
    keys: dict[str, None] = {}
    for m in _as_models(Models):
        for key, value in m.metadata.items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                keys.setdefault(key)
    return list(keys)


def GetEpochs(Models) -> list[int | None]:  # noqa: N802, N803
    """Epochs trained per run, summed over resumes; also stored as ``metadata["TotalEpochs"]``.

    >>> GetEpochs(MyModels)
    [12, 30, None]
    """
    out = []
    for m in _as_models(Models):
        epochs = m.epochs
        if epochs is not None:
            m.metadata["TotalEpochs"] = epochs
        out.append(epochs)
    return out


def GetHistorical(Models, Params: Sequence | None = None) -> list[str]:  # noqa: N802, N803
    """Add values over all resumes of each run to its metadata; returns the new keys, sorted.

    Every history metric becomes ``All_History.<metric>`` (the chained history, earlier runs first).
    Each of ``Params`` (default: :func:`GetGoodParams`) becomes ``All_<key>``: the key's value in each
    run of the chain; a list path such as ``["History", "loss"]`` concatenates list values into
    ``All_History.loss``.

    >>> GetHistorical(MyModels)
    ['All_Depth', 'All_History.loss', 'All_History.val_loss', 'All_Width', ...]
    >>> PlotMetaDataMany(MyModels, 4, ["All_History.val_loss"])
    """
    models = _as_models(Models)
    params = list(GetGoodParams(models) if Params is None else Params)
    new: set[str] = set()
    for m in models:
        if not m.metadata:
            continue
        for metric, values in m.history.items():
            m.metadata[f"All_History.{metric}"] = list(values)
            new.add(f"All_History.{metric}")
        earlier = m.metadata.get("InputMetaData")
        chain = [r for r in earlier if isinstance(r, Mapping)] if isinstance(earlier, list) else []
        chain.append(m.metadata)
        for p in params:
            if isinstance(p, (list, tuple)):
                name = "All_" + ".".join(map(str, p))
                if tuple(p) == ("History",) or (len(p) == 2 and p[0] == "History"):
                    continue  # the chained history above already holds it
                values: list = []
                for run in chain:
                    v = _walk(run, p)
                    if isinstance(v, list):
                        values += v
                    elif v is not _MISSING:
                        values.append(v)
            else:
                name = f"All_{p}"
                values = [run.get(p) for run in chain]
            m.metadata[name] = values
            new.add(name)
    return sorted(new)


def ResetNames(Models, Params: Sequence[str],
               Func: Callable | None = None) -> list[ScanModel]:  # noqa: N802, N803
    """Rename runs for tables and legends: ``"Width=32 Depth=1"`` from ``Params``, or ``Func(model)``.

    A run missing one of the parameters keeps its name. Returns the models.

    >>> ResetNames(MyModels, ["Width", "Depth"])
    >>> ResetNames(MyModels, [], Func=lambda m: f"{m['Width']}x{m['Depth']}")
    """
    models = _as_models(Models)
    for m in models:
        if Func is not None:
            try:
                m.name = str(Func(m))
            except (KeyError, TypeError, ValueError, IndexError):
                log.debug("ResetNames: %s keeps its name", m.path)
            continue
        values = [column_value(m, p) for p in Params]
        if all(v is not None for v in values):
            m.name = " ".join(f"{p}={v}" for p, v in zip(Params, values))
    return models


def _values_for(models: list[ScanModel], keys) -> list:
    if isinstance(keys, (list, tuple)) and len(keys) == 1:
        keys = keys[0]
    return [column_value(m, keys) for m in models]


def _loss_name(models: list[ScanModel]) -> str | None:
    """The runs' common ``Loss`` entry (for axis labels), or None where they differ."""
    names = {m.metadata.get("Loss") for m in models if isinstance(m.metadata.get("Loss"), str)}
    return names.pop() if len(names) == 1 else None


def _key_label(keys) -> str:
    return ".".join(map(str, keys)) if isinstance(keys, (list, tuple)) else str(keys)


def PlotMetaData(Models, keys, mode: str = "epoch", loc: str | None = None, label: str = "", ax=None,
                 **kwargs) -> Figure:  # noqa: N802, N803
    """Plot one metadata entry for several runs: lines for list values, a bar chart for scalars.

    Parameters
    ----------
    keys
        A column expression (``"All_History.val_loss"``, ``"Epochs"``, ``"Ele_AUC"``) or DLKit's key path
        ``["History", "val_loss"]``.
    mode
        For list values: ``"epoch"`` (value vs epoch, one line per run) or ``"hist"`` (a histogram of
        each run's values).
    loc, label
        Legend location (by default ``best`` for a few runs, right of the axes for many) and a suffix for
        each run's legend label.
    ax
        Draw into this Axes instead of a new Figure.
    kwargs
        Passed to ``Axes.plot`` / ``hist`` / ``bar``.

    Returns the Figure. Runs without the entry are skipped. The bars of a fraction (AUC, accuracy,
    efficiency) start at 0, so that their heights compare honestly.

    >>> fig = PlotMetaData(MyModels, "All_History.val_loss")
    >>> fig = PlotMetaData(MyModels, ["Epochs"])
    """
    if mode not in ("epoch", "hist"):
        raise ValueError(f"mode must be 'epoch' or 'hist', got {mode!r}")
    models = _as_models(Models)
    if ax is None:
        _, ax = style.figure((8, 4.8))
    values = _values_for(models, keys)
    lists = [(m, v) for m, v in zip(models, values) if isinstance(v, list)]
    scalars = [(m, v) for m, v in zip(models, values)
               if isinstance(v, numbers.Real) and not isinstance(v, bool) and not _missing(v)]
    name = _key_label(keys)
    if lists:
        for m, v in lists:
            y = np.array([np.nan if x is None else x for x in v], dtype=float)
            if mode == "epoch":
                ax.plot(np.arange(1, len(y) + 1), y, label=m.name + label, **kwargs)
            else:
                ax.hist(y[np.isfinite(y)], label=m.name + label, histtype="step", **kwargs)
        quantity = (style.metric_axis_label([name], _loss_name(models)) if "History" in name else name)
        if mode == "epoch":
            style.epoch_axis(ax)
            ax.set_ylabel(quantity)
        else:
            ax.set(xlabel=quantity, ylabel="entries")
        style.legend(ax, **({"loc": loc} if loc else {}))
    elif scalars:
        y = np.array([float(v) for _, v in scalars])
        x = np.arange(len(scalars))
        ax.bar(x, y, **kwargs)
        ax.set_xticks(x, [m.name for m, _ in scalars], rotation="vertical", fontsize=8)
        if style.is_fraction(name):
            style.fraction_axis(ax)
        else:
            span = float(y.max() - y.min()) or abs(float(y.max())) * 0.1 or 1.0
            ax.set_ylim(min(0.0, y.min()) if y.min() >= 0 and y.min() < 0.2 * span else y.min() - 0.2 * span,
                        y.max() + 0.2 * span)
        ax.grid(False, axis="x")
        ax.set_ylabel(name + label)
    else:
        log.warning("PlotMetaData: no run has a plottable %r", name)
        ax.text(0.5, 0.5, f"no values for {name}", ha="center", va="center", transform=ax.transAxes)
    return ax.figure


def _chunks(models: list[ScanModel], n: int, switch: Sequence | None) -> list[list[ScanModel]]:
    if not switch:
        return [models[i:i + n] for i in range(0, len(models), n)]
    partitions: dict[tuple, list[ScanModel]] = {}
    for m in models:
        key = tuple(repr(column_value(m, s)) for s in switch)
        partitions.setdefault(key, []).append(m)
    return [part[i:i + n] for part in partitions.values() for i in range(0, len(part), n)]


def PlotMetaDataMany(Models, N: int, keys, select: Callable | None = None, sort=None,
                     switch: Sequence | None = None, reverse: bool = False, max_plots: int | None = None,
                     **kwargs) -> Figure:  # noqa: N802, N803
    """:func:`PlotMetaData` for many runs, ``N`` runs per panel, all panels in one Figure.

    Parameters
    ----------
    N
        Runs per panel.
    keys
        One key, or a list of keys drawn in the same panels (each a column expression or a key path).
    select
        ``callable(model) -> bool`` (see :func:`SelectModels`).
    sort, reverse
        Order of the runs (see :func:`ScanTable`), e.g. ``sort="-Ele_AUC"`` to put the best first.
    switch
        Keys whose values must be equal within a panel (DLKit's ``switch``), e.g. ``["Depth"]``.
    max_plots
        At most this many panels; ``max_plots=1`` plots the top ``N`` runs only.
    kwargs
        Passed to :func:`PlotMetaData` (``mode``, ``loc``, line styles).

    >>> GetHistorical(MyModels)
    >>> fig = PlotMetaDataMany(MyModels, 4, ["All_History.val_loss"], sort="-Ele_AUC", max_plots=3)
    """
    if N < 1:
        raise ValueError(f"N must be >= 1, got {N}")
    models = _as_models(Models)
    if select is not None:
        models = SelectModels(models, select)
    models = _sort_models(models, sort, [], reverse) if sort is not None else models
    groups = _chunks(models, N, switch)[:max_plots] if max_plots else _chunks(models, N, switch)
    key_list = [keys] if isinstance(keys, str) else list(keys)
    fig, axes = style.figure((8, 3.6 * max(len(groups), 1)), nrows=max(len(groups), 1))
    axes = np.atleast_1d(axes)
    for ax, group in zip(axes, groups):
        for k in key_list:
            PlotMetaData(group, k, ax=ax, label=f" {_key_label(k)}" if len(key_list) > 1 else "", **kwargs)
        if len(key_list) > 1 and ax.get_lines():
            ax.set_ylabel(", ".join(_key_label(k) for k in key_list))
    if not groups:
        axes[0].text(0.5, 0.5, "no runs selected", ha="center", va="center", transform=axes[0].transAxes)
    return fig


# PEP 8 aliases of the DLKit names.
load_models = LoadModels
scan_table = ScanTable
get_good_params = GetGoodParams
get_historical = GetHistorical
get_epochs = GetEpochs
reset_names = ResetNames
select_models = SelectModels
plot_metadata = PlotMetaData
plot_metadata_many = PlotMetaDataMany
