"""Analysis: classification, regression, scan comparison, and plots returning figures.

Functions return numbers, DataFrames and matplotlib figures; saving and printing are the caller's job.

- :mod:`~dlkit.analysis.classification`: one-vs-rest ROC/AUC (``<Class>_AUC``), AUC in bins, rejection,
  confusion matrix, two-class discriminants of a softmax, and DLKit's ``MultiClassificationAnalysis`` /
  ``BinMultiClassificationAnalysis``.
- :mod:`~dlkit.analysis.regression`: response and resolution vs energy (Gaussian core fits) and the
  ``a/sqrt(E) (+) b/E (+) c`` resolution fit; ``RegressionAnalysis``.
- :mod:`~dlkit.analysis.scan`: DLKit's notebook API to compare the runs of a scan (``LoadModels``,
  ``ScanTable``, ``GetHistorical``, ``PlotMetaDataMany``, ...); ``python -m dlkit.ScanAnalysis`` prints it.
- :mod:`~dlkit.analysis.plots`: ROC, binned values, confusion, history (over resumes), resolution,
  response, scan plots (metric vs each parameter, parallel coordinates); :func:`save_figure` writes PNG
  and PDF. :mod:`~dlkit.analysis.style` is the one style they all use.
- :mod:`~dlkit.analysis.report`: a scan as one self-contained HTML file (``ScanAnalysis --html``).
- :mod:`~dlkit.analysis.uncertainty`: Clopper-Pearson intervals of efficiencies (:func:`clopper_pearson`)
  and seeded bootstrap intervals of AUCs (:func:`bootstrap_auc`), the error bars of the binned tables.
- :class:`AnalysisResults`: what an analysis step returns (metadata, tables, figures) and saves.
"""

from dlkit.analysis.classification import (
    BinMultiClassificationAnalysis,
    MultiClassificationAnalysis,
    bin_data_index,
    binned_auc,
    confusion,
    multiclass_roc,
    pairwise_scores,
    rejection_at_efficiency,
)
from dlkit.analysis.plots import (
    binned_value_columns,
    history_boundaries,
    plot_binned,
    plot_chained_history,
    plot_confusion,
    plot_history,
    plot_parallel_coordinates,
    plot_parameters,
    plot_resolution,
    plot_response,
    plot_roc,
    plot_scan,
    save_figure,
)
from dlkit.analysis.regression import (
    RegressionAnalysis,
    fit_label,
    fit_resolution,
    gaussian_core,
    resolution_fit_table,
    resolution_function,
    resolution_vs_energy,
)
from dlkit.analysis.report import scan_report, write_scan_report
from dlkit.analysis.results import AnalysisResults
from dlkit.analysis.scan import (
    GetEpochs,
    GetGoodParams,
    GetHistorical,
    LoadModels,
    PlotMetaData,
    PlotMetaDataMany,
    ResetNames,
    ScanModel,
    ScanTable,
    SelectModels,
    format_table,
)
from dlkit.analysis.uncertainty import ONE_SIGMA, bootstrap_auc, clopper_pearson

__all__ = [
    "AnalysisResults", "multiclass_roc", "pairwise_scores", "bin_data_index", "binned_auc",
    "rejection_at_efficiency", "confusion",
    "MultiClassificationAnalysis", "BinMultiClassificationAnalysis",
    "gaussian_core", "resolution_vs_energy", "resolution_function", "fit_resolution", "fit_label",
    "resolution_fit_table", "RegressionAnalysis", "clopper_pearson", "bootstrap_auc", "ONE_SIGMA",
    "binned_value_columns",
    "LoadModels", "ScanModel", "ScanTable", "format_table", "GetGoodParams", "GetHistorical", "GetEpochs",
    "ResetNames", "SelectModels", "PlotMetaData", "PlotMetaDataMany",
    "plot_roc", "plot_binned", "plot_confusion", "plot_history", "history_boundaries", "plot_chained_history",
    "plot_resolution", "plot_response", "plot_scan", "plot_parameters", "plot_parallel_coordinates",
    "save_figure", "scan_report", "write_scan_report",
]
