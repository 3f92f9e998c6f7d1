"""Classification analysis: one-vs-rest ROC and AUC per class, in bins of a variable, rejections.

Labels may be one-hot ``(N, C)`` or class indices ``(N,)``; scores are the model's ``(N, C)`` outputs.

>>> curves, metadata = multiclass_roc(y, scores, ["Ele", "Gamma", "Pi0", "ChPi"])
>>> metadata["Gamma_AUC"]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import auc, confusion_matrix, roc_curve

from dlkit.analysis.uncertainty import ONE_SIGMA, bootstrap_auc

log = logging.getLogger(__name__)

__all__ = ["class_indices", "multiclass_roc", "pairwise_scores", "bin_data_index", "binned_auc",
           "rejection_at_efficiency", "confusion", "MultiClassificationAnalysis", "BinMultiClassificationAnalysis"]


def class_indices(y) -> np.ndarray:
    """Class index per event from one-hot or index labels."""
    y = np.asarray(y)
    return y.argmax(axis=1) if y.ndim == 2 and y.shape[1] > 1 else y.reshape(-1).astype(int)


def _names(n_classes: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(n_classes)]
    if len(class_names) != n_classes:
        raise ValueError(f"{len(class_names)} class names {list(class_names)} for {n_classes} score columns")
    return list(class_names)


def multiclass_roc(y, scores, class_names: Sequence[str] | None = None):
    """One-vs-rest ROC curve and AUC per class (scikit-learn).

    Returns ``(curves, metadata)``: ``curves[name] = {"fpr", "tpr", "thresholds", "auc"}`` and
    ``metadata = {"<name>_AUC": auc}`` (DLKit's keys). A class absent from ``y`` gets AUC NaN.
    """
    scores = np.asarray(scores)
    names = _names(scores.shape[1], class_names)
    truth = class_indices(y)
    curves, metadata = {}, {}
    for i, name in enumerate(names):
        positive = truth == i
        if positive.all() or not positive.any():
            log.warning("class %s: needs both signal and background events for a ROC; AUC is NaN", name)
            curves[name] = {"fpr": np.array([]), "tpr": np.array([]), "thresholds": np.array([]), "auc": np.nan}
        else:
            fpr, tpr, thresholds = roc_curve(positive, scores[:, i])
            curves[name] = {"fpr": fpr, "tpr": tpr, "thresholds": thresholds, "auc": float(auc(fpr, tpr))}
        metadata[f"{name}_AUC"] = curves[name]["auc"]
    return curves, metadata


def pairwise_scores(y_index, scores, signal: int, background: int):
    """Two classes of a softmax, scored ``p_s / (p_s + p_b)``: the two-class discriminant (e.g. gamma vs pi0).

    Returns ``(labels, discriminant, keep)``: 1 for ``signal`` events, the discriminant, and the mask of
    the events of either class.
    """
    y_index = np.asarray(y_index)
    scores = np.asarray(scores)
    keep = np.isin(y_index, [signal, background])
    s = scores[keep, signal]
    b = scores[keep, background]
    return (y_index[keep] == signal).astype(int), s / np.maximum(s + b, 1e-12), keep


def bin_data_index(values, vmin: float, vmax: float, nbins: int):
    """Indices of the events in each of ``nbins`` equal bins of ``values`` in [vmin, vmax) (DLKit's BinDataIndex).

    Returns ``(list_of_index_arrays, bin_edges)``.
    """
    values = np.asarray(values).reshape(-1)
    edges = np.linspace(vmin, vmax, nbins + 1)
    which = np.digitize(values, edges) - 1
    return [np.flatnonzero(which == b) for b in range(nbins)], edges


def binned_auc(y, scores, values, edges, class_names: Sequence[str] | None = None, n_boot: int = 200,
               cl: float = ONE_SIGMA, seed: int = 0) -> pd.DataFrame:
    """Per-class one-vs-rest AUC in bins of ``values`` (e.g. AUC vs true energy), with bootstrap intervals.

    Returns a DataFrame indexed by bin centre with ``bin_low, bin_high, n_events`` and, per class, the AUC
    (column ``<name>``), its ``cl`` interval (``<name>_lower``, ``<name>_upper``:
    :func:`~dlkit.analysis.bootstrap_auc`, ``n_boot`` stratified resamples of the bin's events, seeded
    with ``seed``; NaN with ``n_boot=0``) and the bin's signal count ``n_<name>``. A bin without both
    signal and background events of a class gives NaN. :func:`~dlkit.analysis.plot_binned` draws the
    intervals as error bars.

    >>> table = binned_auc(y, scores, energy, np.linspace(10, 510, 11), names, n_boot=config.get("AUCBootstrap", 200))
    """
    scores = np.asarray(scores)
    names = _names(scores.shape[1], class_names)
    values = np.asarray(values).reshape(-1)
    edges = np.asarray(edges, dtype=float)
    truth = class_indices(y)
    rng = np.random.default_rng(seed)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (values >= lo) & (values < hi)
        row = {"bin_low": lo, "bin_high": hi, "n_events": int(sel.sum())}
        for i, name in enumerate(names):
            positive = truth[sel] == i
            if positive.all() or not positive.any():
                row[name] = row[f"{name}_lower"] = row[f"{name}_upper"] = np.nan
            else:
                fpr, tpr, _ = roc_curve(positive, scores[sel, i])
                row[name] = float(auc(fpr, tpr))
                row[f"{name}_lower"], row[f"{name}_upper"] = bootstrap_auc(positive, scores[sel, i], n_boot, cl,
                                                                           rng)
            row[f"n_{name}"] = int(positive.sum())
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.index = pd.Index(0.5 * (edges[:-1] + edges[1:]), name="bin_centre")
    return frame


def rejection_at_efficiency(y, scores, signal: int, efficiency: float = 0.9, background: int | None = None) -> float:
    """Background rejection 1/FPR at a fixed signal efficiency (TPR) for class ``signal``.

    The background is all other classes, or only class ``background`` if given. Returns inf if no
    background event passes.
    """
    scores = np.asarray(scores)
    truth = class_indices(y)
    sel = np.ones(len(truth), bool) if background is None else np.isin(truth, [signal, background])
    fpr, tpr, _ = roc_curve(truth[sel] == signal, scores[sel, signal])
    fake = float(np.interp(efficiency, tpr, fpr))
    return np.inf if fake == 0 else 1.0 / fake


def confusion(y, scores, class_names: Sequence[str] | None = None, normalize: str | None = "true") -> pd.DataFrame:
    """Confusion matrix (rows: true class, columns: predicted = argmax), normalized per true class by default."""
    scores = np.asarray(scores)
    names = _names(scores.shape[1], class_names)
    matrix = confusion_matrix(class_indices(y), scores.argmax(axis=1), labels=range(len(names)),
                              normalize=normalize)
    return pd.DataFrame(matrix, index=pd.Index(names, name="true"), columns=pd.Index(names, name="predicted"))


# -- DLKit's names ---------------------------------------------------------------------------------

def _index_names(n_classes: int, IndexMap: Mapping | None) -> list[str]:  # noqa: N803
    """Class names from DLKit's IndexMap (index -> name, or name -> index, which is inverted)."""
    if not IndexMap:
        return [str(i) for i in range(n_classes)]
    if all(isinstance(k, str) for k in IndexMap):
        IndexMap = {int(v): k for k, v in IndexMap.items()}  # noqa: N806
    return [str(IndexMap.get(i, i)) for i in range(n_classes)]


def _predict(MyModel, Test_X, BatchSize: int):  # noqa: N803
    model = getattr(MyModel, "Model", None)  # a ModelWrapper, or else a Keras model
    model = MyModel if model is None else model
    if not hasattr(model, "predict"):
        raise TypeError(f"cannot predict with {type(MyModel).__name__}; pass scores as result=")
    return np.asarray(model.predict(Test_X, batch_size=BatchSize, verbose=0))


def MultiClassificationAnalysis(MyModel=None, Test_X=None, Test_Y=None, BatchSize: int = 1024,
                                PDFFileName: str | None = None, IndexMap: Mapping | None = None,
                                MakePlot: bool = True, result=None, OutDir=None):  # noqa: N802, N803
    """DLKit's classification analysis: scores, then one-vs-rest ROC and ``<Class>_AUC`` per class.

    ``result`` (the ``(N, C)`` scores) is predicted with ``MyModel`` (a ModelWrapper or Keras model) on
    ``Test_X`` unless given; ``MyModel`` may also be the scores array itself. ``IndexMap`` maps column
    index -> class name (or name -> index). With ``MakePlot`` and ``PDFFileName`` the ROC curves are
    saved as ``<OutDir>/<PDFFileName>.png/.pdf`` (``OutDir`` defaults to the wrapper's).

    Returns ``(result, metadata)`` with ``metadata = {"<Class>_AUC": auc}``.

    >>> result, md = MultiClassificationAnalysis(wrapper, [x_ecal, x_hcal], y, 1024,
    ...                                          IndexMap={0: "Pi0", 1: "Ele", 2: "ChPi", 3: "Gamma"})
    >>> wrapper.MetaData.update(md)
    """
    if result is None:
        is_scores = isinstance(MyModel, np.ndarray)
        result = MyModel if is_scores else _predict(MyModel, Test_X, BatchSize)
    result = np.asarray(result)
    curves, metadata = multiclass_roc(Test_Y, result, _index_names(result.shape[1], IndexMap))
    if MakePlot and PDFFileName:
        from dlkit.analysis.plots import plot_roc, save_figure

        directory = OutDir if OutDir is not None else getattr(MyModel, "OutDir", None)
        if directory is None:
            log.warning("MultiClassificationAnalysis: no OutDir to save %s in; plot skipped", PDFFileName)
        else:
            save_figure(plot_roc(curves), directory, PDFFileName)
    return result, metadata


def BinMultiClassificationAnalysis(Model=None, Test_Y=None, Y_binning=None, bin_indecies=None, result=None,
                                   IndexMap: Mapping | None = None, Test_X=None,
                                   BatchSize: int = 1024) -> dict[str, list[float]]:  # noqa: N802, N803
    """DLKit's AUC in bins: ``{"<Class>_AUC": [AUC per bin]}`` for the events in each ``bin_indecies``.

    ``bin_indecies`` is :func:`bin_data_index`'s list (``Y_binning``, its edges, is accepted for DLKit's
    signature and not needed); ``result`` as in :func:`MultiClassificationAnalysis`. A bin without both
    signal and background events gives NaN. :func:`binned_auc` returns the same as a DataFrame.

    >>> indices, edges = bin_data_index(energy, 10, 510, 50)
    >>> aucs = BinMultiClassificationAnalysis(wrapper, y, edges, indices, result=result, IndexMap=names)
    """
    if result is None:
        result = np.asarray(Model) if isinstance(Model, np.ndarray) else _predict(Model, Test_X, BatchSize)
    scores = np.asarray(result)
    names = _index_names(scores.shape[1], IndexMap)
    truth = class_indices(Test_Y)
    out: dict[str, list[float]] = {f"{name}_AUC": [] for name in names}
    for idx in bin_indecies:
        idx = np.asarray(idx, dtype=int)
        for i, name in enumerate(names):
            positive = truth[idx] == i
            if positive.all() or not positive.any():
                out[f"{name}_AUC"].append(np.nan)
            else:
                fpr, tpr, _ = roc_curve(positive, scores[idx, i])
                out[f"{name}_AUC"].append(float(auc(fpr, tpr)))
    return out
