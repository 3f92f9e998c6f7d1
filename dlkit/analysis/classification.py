"""Classification analysis: one-vs-rest ROC and AUC per class, in bins of a variable, rejections.

Labels may be one-hot ``(N, C)`` or class indices ``(N,)``; scores are the model's ``(N, C)`` outputs.

>>> curves, metadata = multiclass_roc(y, scores, ["Ele", "Gamma", "Pi0", "ChPi"])
>>> metadata["Gamma_AUC"]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import auc, confusion_matrix, roc_curve

log = logging.getLogger(__name__)

__all__ = ["class_indices", "multiclass_roc", "bin_data_index", "binned_auc", "rejection_at_efficiency",
           "confusion"]


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


def bin_data_index(values, vmin: float, vmax: float, nbins: int):
    """Indices of the events in each of ``nbins`` equal bins of ``values`` in [vmin, vmax) (DLKit's BinDataIndex).

    Returns ``(list_of_index_arrays, bin_edges)``.
    """
    values = np.asarray(values).reshape(-1)
    edges = np.linspace(vmin, vmax, nbins + 1)
    which = np.digitize(values, edges) - 1
    return [np.flatnonzero(which == b) for b in range(nbins)], edges


def binned_auc(y, scores, values, edges, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-class one-vs-rest AUC in bins of ``values`` (e.g. AUC vs true energy).

    Returns a DataFrame indexed by bin centre with one column per class plus ``n_events``.
    """
    scores = np.asarray(scores)
    names = _names(scores.shape[1], class_names)
    values = np.asarray(values).reshape(-1)
    edges = np.asarray(edges, dtype=float)
    truth = class_indices(y)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (values >= lo) & (values < hi)
        row = {"bin_low": lo, "bin_high": hi, "n_events": int(sel.sum())}
        for i, name in enumerate(names):
            positive = truth[sel] == i
            if positive.all() or not positive.any():
                row[name] = np.nan
            else:
                fpr, tpr, _ = roc_curve(positive, scores[sel, i])
                row[name] = float(auc(fpr, tpr))
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
