"""What dlkit's callbacks share: how a callback that stops training says why.

A callback that stops training sets ``model.stop_training = True`` and records a human-readable
``stop_reason`` (``None`` while it has not stopped anything); ``ModelWrapper`` reads ``stop_reason`` from its
callbacks after ``fit`` to store why training stopped (``MetaData.json``'s ``StopReason``). A stop that is an
interruption (a signal; a scan's time budget) is ``resumable``.
"""

from __future__ import annotations

import keras

__all__ = ["StoppingCallback"]


class StoppingCallback(keras.callbacks.Callback):
    """A callback that may stop training: ``stop_reason`` is None until it does.

    >>> class StopAtLoss(StoppingCallback):
    ...     def on_epoch_end(self, epoch, logs=None):
    ...         if logs["loss"] < 0.1:
    ...             self.stop_reason = "loss below 0.1"
    ...             self.model.stop_training = True
    """

    stop_reason: str | None = None
    #: A stop of this callback in the middle of an epoch is an interruption the run resumes from (with data
    #: that can be positioned, ``ModelWrapper.Train`` ends ``fit`` after that batch and ``-p`` picks up at the
    #: next, :mod:`dlkit.training_state`); otherwise Keras ends the epoch early, as it does by itself.
    resumable: bool = False
