"""What a training needs to go on exactly where it stopped, beyond the model and optimizer that Keras saves.

A run stopped in the middle of an epoch (a signal, or a scan's time budget) must not count that epoch as done,
nor start it again: ``ModelWrapper.Train`` raises :class:`MidEpochStop` out of ``fit`` after the batch the stop
came in, and saves with the model (and its optimizer: the iterations so far) a ``MidEpoch`` record in
``MetaData.json``: the epoch and the next batch, the interrupted epoch's metric accumulators, the layers'
random-generator states (Keras does not save them: dropout would draw other masks) and the state of the
callbacks that carry one (``EarlyStopping``'s patience). ``-p`` then seeks the data generator to that batch,
finishes the epoch and goes on; the History has one entry for it. Every save also records the callbacks'
state (``CallbackState``), so a resume at an epoch boundary keeps ``EarlyStopping``'s patience too.

The data must be seekable (dlkit's generators are: batch ``b`` of epoch ``e`` is the same whenever it is
served); with other inputs a stop ends the epoch early, as Keras does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import keras
import numpy as np

from dlkit.metadata import to_jsonable

log = logging.getLogger(__name__)

__all__ = ["MID_EPOCH", "CALLBACK_STATE", "MidEpochStop", "callback_states", "random_states", "metric_states",
           "Restorer", "seekable"]

#: MetaData key of a save made in the middle of an epoch (what the resumed run continues).
MID_EPOCH = "MidEpoch"
#: MetaData key of the callbacks' state at a save.
CALLBACK_STATE = "CallbackState"
#: Callback attributes that carry state from one epoch to the next, by class name (Keras' on_train_begin resets
#: them; a resumed run puts them back).
_STATEFUL = {"EarlyStopping": ("wait", "best", "best_epoch", "stopped_epoch"),
             "ReduceLROnPlateau": ("wait", "best", "cooldown_counter")}


class MidEpochStop(Exception):
    """A resumable stop (``reason``) after batch ``batch - 1`` of epoch ``epoch``: ``batch`` is the next one."""

    def __init__(self, epoch: int, batch: int, reason: str):
        super().__init__(f"{reason} (epoch {epoch + 1}, after batch {batch})")
        self.epoch, self.batch, self.reason = epoch, batch, reason


def seekable(data) -> bool:
    """Whether ``data`` can serve from any batch of any epoch (dlkit's generators)."""
    return callable(getattr(data, "seek", None)) and hasattr(data, "__len__")


def _key(callback, counts: dict) -> str:
    name = type(callback).__name__
    counts[name] = counts.get(name, 0) + 1
    return name if counts[name] == 1 else f"{name}.{counts[name]}"


def callback_states(callbacks: Sequence) -> dict:
    """``{class name: {attribute: value}}`` of the callbacks that carry state between epochs."""
    counts: dict = {}
    out = {}
    for cb in callbacks:
        key = _key(cb, counts)
        names = _STATEFUL.get(type(cb).__name__)
        if names:
            out[key] = {n: to_jsonable(getattr(cb, n)) for n in names if hasattr(cb, n)}
    return out


def restore_callbacks(callbacks: Sequence, states: Mapping) -> None:
    counts: dict = {}
    for cb in callbacks:
        for name, value in (states.get(_key(cb, counts)) or {}).items():
            setattr(cb, name, value)


def random_states(model) -> dict:
    """The layers' seed-generator states by variable path (dropout's masks come from them)."""
    return {v.path: np.asarray(v).tolist() for v in model.variables if "seed_generator" in v.path}


def metric_states(model) -> list:
    """The metric accumulators (loss tracker, compiled metrics) of the epoch in progress."""
    return [np.asarray(v).tolist() for v in model.metrics_variables]


def _assign(variables, values) -> None:
    for variable, value in zip(variables, values):
        variable.assign(np.asarray(value, dtype=variable.dtype).reshape(variable.shape))


class Restorer(keras.callbacks.Callback):
    """Last in the callback list: at ``on_train_begin`` (after the others reset themselves) it puts back their
    state; at the first epoch's ``on_epoch_begin`` (after Keras reset the metrics) the interrupted epoch's
    metric accumulators and random state."""

    def __init__(self, callbacks: Sequence, states: Mapping | None, mid_epoch: Mapping | None = None):
        super().__init__()
        self.callbacks, self.states, self.mid_epoch = list(callbacks), states or {}, mid_epoch
        self._first = True

    def on_train_begin(self, logs=None):
        restore_callbacks(self.callbacks, self.states)

    def on_epoch_begin(self, epoch, logs=None):
        if not self._first:
            return
        self._first = False
        if not self.mid_epoch:
            return
        _assign(self.model.metrics_variables, self.mid_epoch.get("metrics") or [])
        seeds = self.mid_epoch.get("random") or {}
        _assign([v for v in self.model.variables if v.path in seeds],
                [seeds[v.path] for v in self.model.variables if v.path in seeds])
