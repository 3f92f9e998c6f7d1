"""From a trained run to production: ONNX export, per-event score files, hls4ml firmware projects.

    from dlkit import export

    export.export_onnx("TrainedModels/CaloDNN_Depth1_Width32")           # -> <run>/model.onnx
    export.read_onnx_metadata(".../model.onnx")["outputs"]               # what each output is
    export.predict(run_dir, "data/LCD", "scores.parquet", onnx=True)      # one row per event
    export.export_hls4ml(run_dir, precision="ap_fixed<24,10>").compile()  # C simulation with g++

The command lines are ``dlkit-export`` and ``dlkit-predict`` (:mod:`dlkit.export.cli`). A run directory is read
by :mod:`dlkit.export.run` (its experiment and :class:`~dlkit.export.recipes.Recipe`: which file arrays are
the model's inputs, their pre-processing, what the outputs mean); :mod:`.onnx_export` writes ONNX,
:mod:`.prediction` the score files, :mod:`.hls` hls4ml projects. Importing this package imports no Keras.
"""

import importlib

_LAZY = {
    "export": "dlkit.export.api",
    "export_onnx": "dlkit.export.onnx_export",
    "read_onnx_metadata": "dlkit.export.onnx_export",
    "ONNX_FILE": "dlkit.export.onnx_export",
    "export_hls4ml": "dlkit.export.hls",
    "HLSExport": "dlkit.export.hls",
    "firmware_model": "dlkit.export.hls",
    "predict": "dlkit.export.prediction",
    "Prediction": "dlkit.export.prediction",
    "read_events_of": "dlkit.export.prediction",
    "load_run": "dlkit.export.run",
    "Run": "dlkit.export.run",
    "ExportError": "dlkit.export.run",
    "config_sha256": "dlkit.export.run",
    "Recipe": "dlkit.export.recipes",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'dlkit.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
