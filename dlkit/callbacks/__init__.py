"""Training callbacks: time budget, graceful exit on batch-system signals, per-class ROC AUC.

All callbacks are plain :class:`keras.callbacks.Callback` subclasses and work with any Keras
backend. A callback that stops training sets ``model.stop_training = True`` and records a
human-readable ``stop_reason`` (``None`` while it has not stopped anything); ``ModelWrapper``
reads ``stop_reason`` from its callbacks after ``fit`` to store why training stopped.

Keras calls callbacks in list order, and a callback sees only what the callbacks before it
wrote into ``logs``. Put :class:`AUCCallback` *before* ``ModelCheckpoint``/``EarlyStopping``
that monitor its ``val_auc_*`` values::

    callbacks = [
        AUCCallback((x_val, y_val), class_names=["Ele", "ChPi"]),
        keras.callbacks.EarlyStopping(monitor="val_auc_mean", mode="max", patience=3),
        TimeStopping(seconds=3600),
        GracefulExit(),
    ]
"""

from dlkit.callbacks.atomic_checkpoint import AtomicModelCheckpoint
from dlkit.callbacks.auc import AUCCallback
from dlkit.callbacks.base import StoppingCallback
from dlkit.callbacks.graceful_exit import GracefulExit
from dlkit.callbacks.scan_progress import ScanProgress
from dlkit.callbacks.time_stopping import TimeStopping
from dlkit.protocol import EXIT_INTERRUPTED as EXIT_CODE_INTERRUPTED

__all__ = ["EXIT_CODE_INTERRUPTED", "TimeStopping", "GracefulExit", "AUCCallback", "ScanProgress",
           "AtomicModelCheckpoint", "StoppingCallback"]
