"""Learning-rate schedules: the config entry ``LRSchedule`` and its parameters, as Keras schedules.

Every experiment has these entries (:data:`SCHEDULE_DEFAULTS`, part of ``dlkit.experiment.RUN_DEFAULTS``);
``lr`` is the base learning rate, ``s`` the optimizer step (0 for the first batch), ``S`` the steps per epoch
(batches of the training generator), ``E`` = ``Epochs`` and ``T = E * S`` the steps of the whole training:

==================  ===========================================================================================
``LRSchedule``      learning rate at step ``s``
==================  ===========================================================================================
``InverseTime``     DLKit's (Keras 2) decay, the default and unchanged: ``lr / (1 + decay * s)``
``Step``            ``lr * LRFactor ** floor(s / (LRStepEpochs * S))``
``Cosine``          ``lr * (m + (1 - m) * (1 + cos(pi * min(s / T, 1))) / 2)``, ``m = LRMinFraction``
``WarmupCosine``    ``lr * (s + 1) / W`` for ``s < W = round(LRWarmupEpochs * S)``, then the cosine above over
                    the ``T - W`` steps left: ``p = min((s - W) / (T - W), 1)``
``OneCycle``        PyTorch's ``OneCycleLR`` (cosine annealing, two phases): from ``lr / LRDivFactor`` up to ``lr``
                    over the first ``LRRiseFraction`` of ``T``, then down to
                    ``lr / LRDivFactor / LRFinalDivFactor`` at the last step
``ReduceOnPlateau`` ``lr``, multiplied by ``LRFactor`` when ``monitor`` has not improved by ``LRMinDelta`` for
                    ``LRPatience`` epochs (then ``LRCooldown`` epochs of rest), never below ``lr * LRMinFraction``
                    (Keras' ``ReduceLROnPlateau``)
==================  ===========================================================================================

The schedules are functions of the optimizer's step count, which Keras saves with the model, and of
constants saved with it too (``S`` included): a run resumed with ``-p`` - at an epoch boundary or in the middle
of an epoch, also a scan's requeued point - continues its schedule exactly, with the schedule it was saved with.
ReduceOnPlateau's learning rate is an optimizer variable (saved) and its patience, best value and cool-down
are saved in ``MetaData.json``'s ``CallbackState`` (:mod:`dlkit.training_state`). A run loaded with ``-L``
("train Epochs more") continues the loaded schedule too.

``S`` is known only when training starts: :func:`learning_rate` makes the schedule from the config and
``ModelWrapper.Train`` binds it to the training data (:func:`bind`) before the first step.

    >>> schedule = learning_rate({"LRSchedule": "Cosine", "lr": 0.1, "Epochs": 10, **SCHEDULE_DEFAULTS})
    >>> bind(schedule, steps_per_epoch=100); round(float(schedule(500)), 6)
    0.05
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping

from dlkit.config import ConfigError, Range, at_least

__all__ = ["SCHEDULES", "SCHEDULE_DEFAULTS", "SCHEDULE_RANGES", "check_entries", "learning_rate", "bind",
           "plateau_callback", "current_learning_rate", "register"]
# and the Keras schedule classes EpochSchedule, StepDecay, WarmupCosine, OneCycle: made on first use (module
# __getattr__), so that importing this module imports no backend

#: The values of ``LRSchedule``.
SCHEDULES = ("InverseTime", "Step", "Cosine", "WarmupCosine", "OneCycle", "ReduceOnPlateau")

#: The schedule entries of every experiment, with their defaults (``decay`` and ``lr`` are the experiment's own).
SCHEDULE_DEFAULTS = {
    "LRSchedule": "InverseTime",  # one of SCHEDULES; InverseTime with decay 0 is a constant lr (DLKit's)
    "LRStepEpochs": 10,          # Step: epochs between two drops
    "LRFactor": 0.1,             # Step, ReduceOnPlateau: the factor of one drop
    "LRWarmupEpochs": 1.0,       # WarmupCosine: epochs of linear warm-up (fractions allowed)
    "LRMinFraction": 0.0,        # Cosine, WarmupCosine: the final lr / lr; ReduceOnPlateau: the floor / lr
    "LRRiseFraction": 0.3,       # OneCycle: the fraction of the training rising to lr
    "LRDivFactor": 25.0,         # OneCycle: it starts at lr / LRDivFactor
    "LRFinalDivFactor": 1e4,     # OneCycle: it ends at lr / LRDivFactor / LRFinalDivFactor
    "LRPatience": 2,             # ReduceOnPlateau: epochs without improvement of `monitor` before a drop
    "LRMinDelta": 1e-4,          # ReduceOnPlateau: the least change of `monitor` that counts as one
    "LRCooldown": 0,             # ReduceOnPlateau: epochs after a drop before counting again
}

#: Their allowed values (checked where the config is resolved, naming the entry and where it came from).
SCHEDULE_RANGES = {
    "LRStepEpochs": at_least(1), "LRFactor": Range(0.0, 1.0, low_open=True, high_open=True),
    "LRWarmupEpochs": at_least(0), "LRMinFraction": Range(0.0, 1.0, high_open=True),
    "LRRiseFraction": Range(0.0, 1.0, low_open=True, high_open=True), "LRDivFactor": at_least(1),
    "LRFinalDivFactor": at_least(1), "LRPatience": at_least(0), "LRMinDelta": at_least(0), "LRCooldown": at_least(0),
}


def check_entries(config: Mapping) -> None:
    """What a type or a range cannot say: the schedule's name, its fit with ``decay`` and ``Epochs``; a
    :class:`~dlkit.config.ConfigError` naming the entry."""
    name = config.get("LRSchedule", "InverseTime")
    if name not in SCHEDULES:
        close = difflib.get_close_matches(str(name), SCHEDULES, n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"config entry 'LRSchedule' = {name!r} is not a schedule{hint} (one of "
                          f"{', '.join(SCHEDULES)})")
    if name != "InverseTime" and config.get("decay"):
        raise ConfigError(f"config entry 'decay' = {config['decay']!r} is DLKit's inverse-time decay; it does not "
                          f"combine with LRSchedule={name!r} (set decay=0)")
    epochs = config.get("Epochs")
    if name == "WarmupCosine" and epochs is not None and config.get("LRWarmupEpochs", 0) >= epochs:
        raise ConfigError(f"config entry 'LRWarmupEpochs' = {config['LRWarmupEpochs']!r} must be below Epochs "
                          f"({epochs}): the warm-up would be the whole training")


def learning_rate(config: Mapping):
    """The optimizer's ``learning_rate`` for ``config``: a float (InverseTime - its ``decay`` is made by
    ``ModelWrapper.BuildOptimizer`` - and ReduceOnPlateau) or an unbound :class:`EpochSchedule`."""
    check_entries(config)
    name, lr = config.get("LRSchedule", "InverseTime"), config.get("lr")
    if name in ("InverseTime", "ReduceOnPlateau"):
        return None if lr is None else float(lr)  # None: the optimizer's own default (clustercount's configs)
    if lr is None:
        raise ConfigError(f"config entry 'LRSchedule' = {name!r} needs the peak learning rate in entry 'lr'")
    lr, c = float(lr), {**SCHEDULE_DEFAULTS, **config}
    classes = _classes()
    if name == "Step":
        return classes["StepDecay"](lr, every_epochs=c["LRStepEpochs"], factor=c["LRFactor"])
    if name in ("Cosine", "WarmupCosine"):
        warmup = c["LRWarmupEpochs"] if name == "WarmupCosine" else 0.0
        return classes["WarmupCosine"](lr, epochs=c["Epochs"], warmup_epochs=warmup, min_fraction=c["LRMinFraction"])
    return classes["OneCycle"](lr, epochs=c["Epochs"], rise_fraction=c["LRRiseFraction"],
                               div_factor=c["LRDivFactor"], final_div_factor=c["LRFinalDivFactor"])


def plateau_callback(config: Mapping):
    """ReduceOnPlateau's callback (Keras' ``ReduceLROnPlateau`` on ``monitor``), or None for other schedules."""
    if config.get("LRSchedule") != "ReduceOnPlateau":
        return None
    import keras

    c = {**SCHEDULE_DEFAULTS, **config}
    return keras.callbacks.ReduceLROnPlateau(monitor=c.get("monitor", "val_loss"), factor=c["LRFactor"],
                                             patience=c["LRPatience"], min_delta=c["LRMinDelta"],
                                             cooldown=c["LRCooldown"],
                                             min_lr=float(c["lr"] or 0.0) * c["LRMinFraction"])


def _schedule_of(optimizer):
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's (mixed_float16)
    return getattr(inner, "_learning_rate", None)


def bind(target, steps_per_epoch: int) -> None:
    """Give an :class:`EpochSchedule` (or the one of an optimizer) its steps per epoch, unless it has them (a
    loaded schedule keeps its own: the resumed run continues it)."""
    base = _classes()["EpochSchedule"]
    schedule = target if isinstance(target, base) else _schedule_of(target)
    if isinstance(schedule, base) and schedule.steps_per_epoch is None:
        if int(steps_per_epoch) < 1:
            raise ValueError(f"learning-rate schedule {type(schedule).__name__}: steps per epoch must be >= 1, "
                             f"got {steps_per_epoch}")
        schedule.steps_per_epoch = int(steps_per_epoch)


def current_learning_rate(optimizer) -> float:
    """The learning rate the optimizer's next step uses."""
    from keras import ops

    return float(ops.convert_to_numpy(optimizer.learning_rate))


_CLASS_NAMES = ("EpochSchedule", "StepDecay", "WarmupCosine", "OneCycle")


def __getattr__(name):  # the schedule classes, made (and registered with Keras) on first use
    if name in _CLASS_NAMES:
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register() -> None:
    """Define dlkit's schedule classes and register them with Keras (once), so that a saved model with one
    loads; ``dlkit.model_wrapper`` does it when imported."""
    _classes()


def _classes() -> dict:
    """The Keras schedule classes, defined and registered once: importing this module imports no backend (the
    experiments' ``--help`` stays light)."""
    if "EpochSchedule" not in globals():
        globals().update(_define())
    return {name: globals()[name] for name in _CLASS_NAMES}


def _define() -> dict:
    import keras
    from keras import ops

    def cosine(start, end, fraction):
        """From ``start`` (fraction 0) to ``end`` (fraction 1) along half a cosine."""
        return end + (start - end) * 0.5 * (1.0 + ops.cos(math.pi * fraction))

    class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
        """A schedule whose lengths are given in epochs; ``steps_per_epoch`` is set when training starts
        (:func:`bind`) and saved with it."""

        def __init__(self, learning_rate: float, steps_per_epoch: int | None = None):
            self.learning_rate = float(learning_rate)
            self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)

        def _steps(self, epochs: float) -> float:
            if self.steps_per_epoch is None:
                raise ValueError(f"learning-rate schedule {type(self).__name__} is not bound to the training data "
                                 "(its steps per epoch); ModelWrapper.Train binds it (dlkit.schedules.bind)")
            return float(epochs) * self.steps_per_epoch

        def get_config(self) -> dict:
            return {"learning_rate": self.learning_rate, "steps_per_epoch": self.steps_per_epoch}

    @keras.saving.register_keras_serializable(package="dlkit")
    class StepDecay(EpochSchedule):
        """``lr * factor ** floor(step / (every_epochs * steps_per_epoch))``."""

        def __init__(self, learning_rate: float, every_epochs: float = 10, factor: float = 0.1,
                     steps_per_epoch: int | None = None):
            super().__init__(learning_rate, steps_per_epoch)
            self.every_epochs, self.factor = float(every_epochs), float(factor)

        def __call__(self, step):
            drops = ops.floor(ops.cast(step, "float32") / self._steps(self.every_epochs))
            return self.learning_rate * ops.power(self.factor, drops)

        def get_config(self) -> dict:
            return {**super().get_config(), "every_epochs": self.every_epochs, "factor": self.factor}

    @keras.saving.register_keras_serializable(package="dlkit")
    class WarmupCosine(EpochSchedule):
        """A linear warm-up over ``warmup_epochs`` (``lr * (step + 1) / W``), then a cosine from ``lr`` to
        ``lr * min_fraction`` at the end of ``epochs``; ``warmup_epochs=0`` is the plain cosine."""

        def __init__(self, learning_rate: float, epochs: float, warmup_epochs: float = 0.0,
                     min_fraction: float = 0.0, steps_per_epoch: int | None = None):
            super().__init__(learning_rate, steps_per_epoch)
            self.epochs, self.warmup_epochs = float(epochs), float(warmup_epochs)
            self.min_fraction = float(min_fraction)

        def __call__(self, step):
            s = ops.cast(step, "float32")
            warm = float(round(self._steps(self.warmup_epochs)))
            span = max(self._steps(self.epochs) - warm, 1.0)
            decayed = self.learning_rate * cosine(1.0, self.min_fraction, ops.clip((s - warm) / span, 0.0, 1.0))
            if warm == 0:
                return decayed
            return ops.where(s < warm, self.learning_rate * (s + 1.0) / warm, decayed)

        def get_config(self) -> dict:
            return {**super().get_config(), "epochs": self.epochs, "warmup_epochs": self.warmup_epochs,
                    "min_fraction": self.min_fraction}

    @keras.saving.register_keras_serializable(package="dlkit")
    class OneCycle(EpochSchedule):
        """PyTorch's ``OneCycleLR`` (``anneal_strategy="cos"``, two phases) over ``epochs``: from
        ``lr / div_factor`` up to ``lr`` until step ``R = rise_fraction * T - 1``, then down to
        ``lr / div_factor / final_div_factor`` at step ``T - 1``."""

        def __init__(self, learning_rate: float, epochs: float, rise_fraction: float = 0.3,
                     div_factor: float = 25.0, final_div_factor: float = 1e4, steps_per_epoch: int | None = None):
            super().__init__(learning_rate, steps_per_epoch)
            self.epochs, self.rise_fraction = float(epochs), float(rise_fraction)
            self.div_factor, self.final_div_factor = float(div_factor), float(final_div_factor)

        def __call__(self, step):
            s = ops.cast(step, "float32")
            total = self._steps(self.epochs)
            peak = max(self.rise_fraction * total - 1.0, 1e-9)
            start = self.learning_rate / self.div_factor
            end = start / self.final_div_factor
            rising = cosine(start, self.learning_rate, ops.clip(s / peak, 0.0, 1.0))
            falling = cosine(self.learning_rate, end, ops.clip((s - peak) / max(total - 1.0 - peak, 1e-9), 0.0, 1.0))
            return ops.where(s <= peak, rising, falling)

        def get_config(self) -> dict:
            return {**super().get_config(), "epochs": self.epochs, "rise_fraction": self.rise_fraction,
                    "div_factor": self.div_factor, "final_div_factor": self.final_div_factor}

    classes = {"EpochSchedule": EpochSchedule, "StepDecay": StepDecay, "WarmupCosine": WarmupCosine,
               "OneCycle": OneCycle}
    for name, cls in classes.items():
        cls.__qualname__ = name
    return classes
