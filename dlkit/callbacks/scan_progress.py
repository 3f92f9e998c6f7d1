"""ScanProgress: report a scan point's progress (run directory, epochs, metrics) to its lease."""

from __future__ import annotations

import math

import keras

from dlkit import protocol


class ScanProgress(keras.callbacks.Callback):
    """Report a scan point's progress to the scan ledger: its run directory and the epochs done over resumes.

    ``dlkit.scan status`` shows them, and the ledger uses the epoch count to tell a point that makes progress
    from one that is interrupted again and again without completing an epoch (``stuck``). Outside a scan
    (no ``DLKIT_SCAN_*`` environment) it does nothing. :func:`dlkit.experiment.train` adds it.

    Parameters
    ----------
    run_dir : path
        The run's model directory (``ModelWrapper.OutDir``).
    initial_epoch : int, default 0
        Epochs done by earlier runs this one continues (``-p``).

    Examples
    --------
    >>> model.fit(x, y, epochs=10, initial_epoch=done, callbacks=[ScanProgress(out_dir, done)])
    """

    #: ``ModelWrapper.Train`` runs it after the epoch's save: an epoch is reported once it is saved
    after_save = True

    def __init__(self, run_dir, initial_epoch=0):
        super().__init__()
        self._lease = protocol.current()
        self.run_dir = run_dir
        self.initial_epoch = int(initial_epoch)
        self.epochs = self.initial_epoch
        self.history: dict[str, dict[str, float]] = {}

    def on_train_begin(self, logs=None):
        if self._lease is not None:
            self._lease.report(run_dir=str(self.run_dir), epochs=self.epochs)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1
        if self._lease is not None:
            # the epoch's metrics by epoch number (over resumes): a search's pruner reads them
            for key, value in (logs or {}).items():
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(value):
                    self.history.setdefault(key, {})[str(self.epochs)] = value
            self._lease.report(epochs=self.epochs, history=self.history)
