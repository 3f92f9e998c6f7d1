"""TimeStopping: stop cleanly when a wall-clock budget is spent (DLKit's ``-r``)."""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from dlkit.callbacks.base import StoppingCallback

logger = logging.getLogger(__name__)

#: How a stop reason of TimeStopping begins (``MetaData.json``'s ``StopReason``).
TIME_LIMIT_REASON = "time limit"


class TimeStopping(StoppingCallback):
    """Stop training cleanly when a wall-clock time budget is spent (DLKit's ``-r``).

    The budget is counted from ``on_train_begin``. Training stops

    - after the current batch once the elapsed time is ``>= seconds`` (checked at every
      train batch end, and again at every epoch end);
    - at an epoch end, when ``predict_next_epoch`` is true and one more epoch, estimated as
      the mean duration of the epochs so far, would not fit in the remaining budget. This
      leaves time to save the model before the batch system's wall-time kill.

    Keras still runs validation and ``on_epoch_end`` for an epoch cut short after a batch.

    Parameters
    ----------
    seconds : float or None
        Time budget in seconds; ``None`` means no limit, ``0`` stops after the first batch.
        Negative values raise ``ValueError``.
    verbose : bool, default False
        Log the duration of every epoch at INFO level. The stop itself is always logged.
    predict_next_epoch : bool, default True
        Also stop at an epoch end when the next epoch is not expected to fit.

    Attributes
    ----------
    epoch_times : list of float
        Duration in seconds of each epoch (``on_epoch_begin`` to ``on_epoch_end``); the last one
        may be partial when training stopped mid-epoch. ``history`` is an alias (DLKit stored
        it as ``MetaData["EpochTime"]``).
    stop_reason : str or None
        Why this callback stopped training, ``None`` if it did not.
    stopped_epoch : int or None
        The epoch (0-based) in which it stopped training.

    Examples
    --------
    >>> stopper = TimeStopping(seconds=4 * 3600)
    >>> model.fit(x, y, epochs=1000, callbacks=[stopper])
    >>> stopper.stop_reason, stopper.epoch_times
    """

    def __init__(self, seconds, verbose=False, predict_next_epoch=True, resumable=False):
        super().__init__()
        self.resumable = bool(resumable)  # a scan's budget: the point resumes at the next batch
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float, np.number)):
                raise TypeError(f"TimeStopping: seconds must be a number or None, got {seconds!r}")
            if math.isnan(seconds) or seconds < 0:
                raise ValueError(f"TimeStopping: seconds must be >= 0 or None, got {seconds!r}")
            seconds = float(seconds)
        self.seconds = seconds
        self.verbose = verbose
        self.predict_next_epoch = predict_next_epoch
        self.epoch_times = []
        self.stop_reason = None
        self.stopped_epoch = None
        self._train_start = None
        self._epoch_start = None
        self._epoch = 0

    @property
    def history(self):
        """Alias of :attr:`epoch_times` (the name DLKit used)."""
        return self.epoch_times

    @property
    def elapsed(self):
        """Seconds since training began (0 before ``on_train_begin``)."""
        if self._train_start is None:
            return 0.0
        return time.monotonic() - self._train_start

    def on_train_begin(self, logs=None):
        self._train_start = time.monotonic()
        self._epoch_start = self._train_start
        self.epoch_times = []
        self.stop_reason = None
        self.stopped_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if self.seconds is None or self.stop_reason is not None:
            return
        elapsed = self.elapsed
        if elapsed >= self.seconds:
            self._stop(
                f"{TIME_LIMIT_REASON} of {self.seconds:g} s reached after {elapsed:.1f} s "
                f"(epoch {self._epoch + 1}, batch {batch + 1})"
            )

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        duration = now - (self._epoch_start if self._epoch_start is not None else now)
        self.epoch_times.append(duration)
        if self.verbose:
            logger.info(
                "TimeStopping: epoch %d took %.1f s (%.1f s elapsed)", epoch + 1, duration, self.elapsed
            )
        if self.seconds is None or self.stop_reason is not None:
            return
        elapsed = self.elapsed
        if elapsed >= self.seconds:
            self._stop(
                f"{TIME_LIMIT_REASON} of {self.seconds:g} s reached after {elapsed:.1f} s "
                f"(end of epoch {epoch + 1})"
            )
            return
        if self.predict_next_epoch:
            estimate = float(np.mean(self.epoch_times))
            remaining = self.seconds - elapsed
            if estimate > remaining:
                self._stop(
                    f"{TIME_LIMIT_REASON} of {self.seconds:g} s: the next epoch (~{estimate:.1f} s) would not fit "
                    f"in the remaining {remaining:.1f} s (after epoch {epoch + 1})"
                )

    def _stop(self, reason):
        self.stop_reason = reason
        self.stopped_epoch = self._epoch
        self.model.stop_training = True
        logger.info("TimeStopping: %s; stopping training", reason)

    def get_config(self):
        return {
            "seconds": self.seconds,
            "verbose": self.verbose,
            "predict_next_epoch": self.predict_next_epoch,
        }
