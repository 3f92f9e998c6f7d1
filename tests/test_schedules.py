"""dlkit.schedules: every LRSchedule's learning rate per step is its formula - alone and while training - and a
run interrupted by a signal and resumed with -p trains with the uninterrupted run's learning rates, step for
step (ReduceOnPlateau's state included, interrupted in every epoch); the entries' checks name the entry.

The runs are dlkit's own path in this process: load_or_build, compile_model (the schedule from the config),
train (GracefulExit, training_callbacks with ReduceLROnPlateau) on a MultiClassGenerator, a real SIGTERM.
"""

import math
import os
import signal

import h5py
import numpy as np
import pytest

import keras
from dlkit import ModelWrapper
from dlkit.config import ConfigError
from dlkit.experiment import (FLAG_KEYS, RUN_DEFAULTS, compile_model, load_or_build, make_parser, resolve_run,
                              train, training_callbacks)
from dlkit.generators import MultiClassGenerator, SampleSpec, Select
from dlkit.schedules import SCHEDULE_DEFAULTS, SCHEDULES, bind, current_learning_rate, learning_rate

STEPS, EPOCHS, LR = 5, 3, 0.1  # batches of 8 of the 40 events below
DEFAULTS = {"Epochs": EPOCHS, "BatchSize": 8, "lr": LR, "decay": 0.0, "optimizer": "SGD", "momentum": 0.0,
            "loss": "categorical_crossentropy", "Seed": 0, **RUN_DEFAULTS}
#: Each schedule with parameters that show its shape within 15 steps. ReduceOnPlateau: no epoch improves the
#: loss by 10, so (patience 1) the rate halves after epoch 2 - only if the best loss of epoch 1 survives a resume
#: in epoch 2, and the halved rate (an optimizer variable) one in epoch 3.
PARAMS = {
    "InverseTime": {"decay": 0.05},
    "Step": {"LRStepEpochs": 1, "LRFactor": 0.5},
    "Cosine": {"LRMinFraction": 0.1},
    "WarmupCosine": {"LRWarmupEpochs": 1.4, "LRMinFraction": 0.0},
    "OneCycle": {"LRRiseFraction": 0.3, "LRDivFactor": 25.0, "LRFinalDivFactor": 1e4},
    "ReduceOnPlateau": {"LRFactor": 0.5, "LRPatience": 1, "LRMinDelta": 10.0, "monitor": "loss"},
}


def config_of(name):
    return {**DEFAULTS, **SCHEDULE_DEFAULTS, "LRSchedule": name, **PARAMS[name]}


def formula(name, s):
    """The learning rate of step ``s`` (0 = the first batch), written out from the schedules' definitions."""
    c, total = config_of(name), EPOCHS * STEPS
    if name == "InverseTime":
        return LR / (1 + c["decay"] * s)
    if name == "Step":
        return LR * c["LRFactor"] ** (s // (c["LRStepEpochs"] * STEPS))
    if name in ("Cosine", "WarmupCosine"):
        m = c["LRMinFraction"]
        warm = round(c["LRWarmupEpochs"] * STEPS) if name == "WarmupCosine" else 0
        if s < warm:
            return LR * (s + 1) / warm
        p = min((s - warm) / (total - warm), 1.0)
        return LR * (m + (1 - m) * (1 + math.cos(math.pi * p)) / 2)
    if name == "OneCycle":  # torch.optim.lr_scheduler.OneCycleLR, anneal_strategy="cos", three_phase=False
        def cos(start, end, pct):
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        initial = LR / c["LRDivFactor"]
        peak = c["LRRiseFraction"] * total - 1
        if s <= peak:
            return cos(initial, LR, s / peak)
        return cos(LR, initial / c["LRFinalDivFactor"], min((s - peak) / (total - 1 - peak), 1.0))  # then stays
    return LR if s < 2 * STEPS else LR * c["LRFactor"]  # ReduceOnPlateau, as PARAMS sets it


@pytest.mark.parametrize("name", [n for n in SCHEDULES if n != "ReduceOnPlateau"])
def test_each_schedule_is_its_formula(name):
    config = config_of(name)
    if name == "InverseTime":  # a plain rate: BuildOptimizer makes DLKit's decay of it, as before
        assert learning_rate(config) == LR
        schedule = ModelWrapper("x").BuildOptimizer("SGD", lr=LR, decay=config["decay"])._learning_rate
    else:
        schedule = learning_rate(config)
        with pytest.raises(ValueError, match="not bound"):
            schedule(0)
        bind(schedule, STEPS)
        restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
        assert restored.get_config() == schedule.get_config()
    steps = range(EPOCHS * STEPS + 3)
    got = [float(keras.ops.convert_to_numpy(schedule(s))) for s in steps]
    np.testing.assert_allclose(got, [formula(name, s) for s in steps], rtol=2e-6, atol=1e-12)


class Dense(ModelWrapper):
    def Build(self):  # noqa: N802
        inputs = keras.Input((4,), name="X")
        self.Model = keras.Model([inputs], keras.layers.Dense(2, activation="softmax")(inputs))


class Recorder(keras.callbacks.Callback):
    """The learning rate of every optimizer step, by step, over the runs of a chain."""

    def __init__(self, rates: dict, stop_at: int | None = None):
        super().__init__()
        self.rates, self.stop_at = rates, stop_at

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        self.rates[int(keras.ops.convert_to_numpy(optimizer.iterations))] = current_learning_rate(optimizer)

    def on_train_batch_end(self, batch, logs=None):
        if self.stop_at is not None and int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == \
                self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the run's GracefulExit: saves, resumable


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    root = tmp_path_factory.mktemp("schedules")
    rng = np.random.default_rng(3)
    samples = []
    for k, name in enumerate(("a", "b")):
        path = root / f"{name}.h5"
        with h5py.File(path, "w") as f:
            f["X"] = (rng.normal(size=(20, 4)) + k).astype(np.float32)
        samples.append(SampleSpec(str(path), ("X",), name))
    with MultiClassGenerator(samples, 8, postprocess=Select(("X",), "onehot"), n_workers=1, seed=1) as gen:
        assert len(gen) == STEPS
        yield gen


def run(out, name, generator, rates, resume=False, stop_at=None):
    args = make_parser("schedules").parse_args(["--OutputBase", str(out), *(["-p"] if resume else [])])
    args.overrides = {"LRSchedule": name, **PARAMS[name]}
    setup = resolve_run(args, DEFAULTS, "Sched", flag_keys=FLAG_KEYS, import_backend=False)
    wrapper = load_or_build(args, setup, lambda n, **kw: Dense(n, **kw), compile_model)
    if not wrapper.ContinuesPrevious:
        generator.seek(0)
    callbacks = [*training_callbacks(wrapper, setup.config), Recorder(rates, stop_at)]
    train(wrapper, setup, generator, None, callbacks, verbose=0)
    return wrapper


@pytest.mark.parametrize("name", SCHEDULES)
def test_training_follows_the_formula_and_a_resumed_run_continues_it(name, generator, tmp_path):
    whole: dict = {}
    done = run(tmp_path / "whole", name, generator, whole)
    assert done.MetaData["TrainStatus"] == "completed"
    steps = sorted(whole)
    assert steps == list(range(EPOCHS * STEPS))
    np.testing.assert_allclose([whole[s] for s in steps], [formula(name, s) for s in steps], rtol=2e-6)

    # a signal after a random batch of each epoch for ReduceOnPlateau (its state is more than the step count),
    # of one random epoch for the others (their rate is a function of the step count and saved constants)
    rng = np.random.default_rng(int(os.environ.get("DLKIT_TEST_SEED", "7")) + SCHEDULES.index(name))
    epochs = range(EPOCHS) if name == "ReduceOnPlateau" else [int(rng.integers(EPOCHS))]
    resumed: dict = {}
    for i, epoch in enumerate(epochs):
        stop = epoch * STEPS + int(rng.integers(1, STEPS))
        stopped = run(tmp_path / "resumed", name, generator, resumed, resume=i > 0, stop_at=stop)
        assert stopped.Interrupted and stopped.MetaData["MidEpoch"]["epoch"] == epoch, stopped.MetaData["StopReason"]
    last = run(tmp_path / "resumed", name, generator, resumed, resume=True)
    assert last.MetaData["TrainStatus"] == "completed" and last.MetaData["TotalEpochs"] == EPOCHS
    assert int(keras.ops.convert_to_numpy(last.Model.optimizer.iterations)) == EPOCHS * STEPS
    assert resumed == whole  # the same rate at every step, bit for bit


@pytest.mark.parametrize("entries, message", [
    ({"LRSchedule": "cosine"}, "'LRSchedule' = 'cosine' is not a schedule; did you mean 'Cosine'"),
    ({"LRSchedule": "Cosine", "decay": 0.01}, "'decay' = 0.01 is DLKit's inverse-time decay"),
    ({"LRSchedule": "WarmupCosine", "LRWarmupEpochs": 3}, "'LRWarmupEpochs' = 3.0 must be below Epochs (3)"),
    ({"LRFactor": 1.5}, "entry 'LRFactor' = 1.5 is out of range; expected in (0, 1)"),
    ({"LRMinFraction": 1.0}, "entry 'LRMinFraction' = 1.0 is out of range; expected in [0, 1)"),
    ({"LRStepEpochs": 0}, "entry 'LRStepEpochs' = 0 is out of range; expected >= 1"),
])
def test_entries_are_checked_in_one_line_naming_the_entry(entries, message, tmp_path):
    args = make_parser("schedules").parse_args(["--OutputBase", str(tmp_path)])
    args.overrides = entries
    with pytest.raises(ConfigError) as error:
        setup = resolve_run(args, DEFAULTS, "Sched", flag_keys=FLAG_KEYS, import_backend=False)
        learning_rate(setup.config)
    assert message in str(error.value) and "\n" not in str(error.value)
