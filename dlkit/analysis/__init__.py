"""Analysis: classification (ROC/AUC, binned AUC, rejection, confusion) and plots returning figures.

Functions return numbers, DataFrames and matplotlib figures; saving and printing are the caller's job.
"""

from dlkit.analysis.classification import (
    bin_data_index,
    binned_auc,
    confusion,
    multiclass_roc,
    rejection_at_efficiency,
)
from dlkit.analysis.plots import plot_binned, plot_confusion, plot_history, plot_roc, save_figure

__all__ = [
    "multiclass_roc", "bin_data_index", "binned_auc", "rejection_at_efficiency", "confusion",
    "plot_roc", "plot_binned", "plot_confusion", "plot_history", "save_figure",
]
