"""Comparing the runs of a scan: DLKit's notebook API (``LoadModels``, ``ScanTable``, ``PlotMetaData``, ...).

Each ``TrainedModels/<Name>[.n]/`` directory becomes a :class:`ScanModel`: its path, its metadata (the
``MetaData.json`` dict, empty if unreadable), a status flag and, on request, the Keras model. A run
that failed, was interrupted, was killed, or left corrupt metadata is a flagged model, never an
exception::

    from dlkit.analysis.scan import *

    MyModels = LoadModels("TrainedModels/")                  # a directory, a glob or a list
    GetGoodParams(MyModels)                                  # ['Width', 'Depth', 'Ele_AUC', ...]
    GetHistorical(MyModels)                                  # adds 'All_History.val_loss', ...
    ResetNames(MyModels, ["Width", "Depth"])                 # "Width=32 Depth=1"
    ScanTable(MyModels, ["Model Name", "Width", "Depth", "Epochs", "Ele_AUC"], sort=[1, 2, 0])
    ScanTable(MyModels, select=lambda md: md["Depth"] > 1 and md.status == "ok", sort="-Ele_AUC")
    PlotMetaDataMany(MyModels, 4, ["All_History.val_loss"])  # a Figure, 4 models per panel
    PlotMetaData(MyModels, "Epochs")                         # bar chart of a scalar

Column names (and ``PlotMetaData`` keys) are a top-level key (``"Ele_AUC"``, ``"All_History.loss"``), a
dotted path into nested dicts (``"Configuration.lr"``), with DLKit's ``[i]`` indexing into lists
(``"FinalScore[0]"``, ``"History.val_loss[-1]"``, ``"InputMetaData[0].Epochs"``); or one of the computed
columns ``Model Name``, ``Status``, ``Message``, ``Path``, ``Epochs`` (summed over resumes); a name
found nowhere else falls back to the scan point, then to the last value of that metric in the history
over resumes (``"loss"``, ``"val_accuracy"``). Nothing is ``eval``'d: selections are Python callables.

The package is split by concern: :mod:`~dlkit.analysis.scan.runs` (loading runs, their status, one per
scan point), :mod:`~dlkit.analysis.scan.tables` (column values, sorting, :func:`ScanTable`) and
:mod:`~dlkit.analysis.scan.notebook` (DLKit's notebook functions and plots); every name is importable from
here.
"""

from dlkit.analysis.scan.notebook import (
    GetEpochs,
    GetGoodParams,
    GetHistorical,
    PlotMetaData,
    PlotMetaDataMany,
    ResetNames,
    get_epochs,
    get_good_params,
    get_historical,
    load_models,
    plot_metadata,
    plot_metadata_many,
    reset_names,
    scan_table,
    select_models,
)
from dlkit.analysis.scan.runs import (FLAGS, LoadModels, PointModels, ScanModel, SelectModels, find_model_dirs,
                                      mark_superseded)
from dlkit.analysis.scan.tables import (  # noqa: F401 - COMPUTED_COLUMNS: importable here as before
    COMPUTED_COLUMNS,
    ScanTable,
    UnknownColumnError,
    check_columns,
    column_value,
    default_columns,
    format_table,
    scanned_parameters,
)

__all__ = [
    "ScanModel", "LoadModels", "PointModels", "ScanTable", "format_table", "default_columns", "column_value",
    "check_columns", "UnknownColumnError", "find_model_dirs", "scanned_parameters", "mark_superseded",
    "GetGoodParams", "GetHistorical", "GetEpochs", "ResetNames", "SelectModels", "PlotMetaData",
    "PlotMetaDataMany", "FLAGS",
    "load_models", "scan_table", "get_good_params", "get_historical", "get_epochs", "reset_names",
    "select_models", "plot_metadata", "plot_metadata_many",
]

