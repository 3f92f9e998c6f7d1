"""A tiny Keras experiment (dlkit.Experiment, dlkit's generator) for training one model with several Slurm tasks:

    srun -n 2 --kill-on-bad-exit=1 python tests/scripts/two_tasks.py --data DIR --OutputBase OUT [-p]

``DIR`` holds ``a.h5`` and ``b.h5`` (a dataset ``X`` of 4 numbers per event). The model also takes each event's
id (``_entry * 1000 + _event``, from the generator's provenance) as an input it ignores (zero, frozen weights),
so the batches it trains on say which events they hold. Each process writes ``$DLKIT_RECORD/task<rank>-<pid>.json``:
the ids of the events it trained on (weight > 0) by the generator's stream position, and its final weights.
``DLKIT_SCANCEL_AT=k``: after optimizer iteration ``k`` the last process sends the whole job SIGTERM
(``scancel --signal=TERM $SLURM_JOB_ID``), as a batch system's preemption would.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dlkit import distribute
from dlkit import experiment as run_module
from dlkit.experiment import RUN_DEFAULTS, Experiment, RunData

DEFAULTS = {"DataDir": "", "Epochs": 2, "BatchSize": 8, "lr": 0.1, "decay": 0.0, "optimizer": "SGD",
            "momentum": 0.0, "loss": "categorical_crossentropy", "Seed": 0, **RUN_DEFAULTS}
TRAINED: dict[int, list[int]] = {}  # stream position -> ids trained (this process' share)


def with_ids(arrays):
    ids = (arrays["_entry"].astype(np.int64) * 1000 + arrays["_event"]).astype(np.float32)[:, None]
    return {"X": arrays["X"], "id": ids}, arrays["onehot"]


class Data(RunData):
    def __init__(self, config):
        from dlkit.generators import MultiClassGenerator, SampleSpec

        samples = [SampleSpec(str(Path(config["DataDir"]) / f"{c}.h5"), ("X",), c) for c in ("a", "b")]
        self.train = MultiClassGenerator(samples, config["BatchSize"], provenance=True, postprocess=with_ids,
                                         n_workers=1, seed=config["Seed"])
        self.validation = None


def make_wrapper(name, data, **kwargs):
    import keras

    from dlkit import ModelWrapper

    class Tiny(ModelWrapper):
        def Build(self):  # noqa: N802
            x, ids = keras.Input((4,), name="X"), keras.Input((1,), name="id")
            ignored = keras.layers.Dense(4, use_bias=False, kernel_initializer="zeros", trainable=False)(ids)
            merged = keras.layers.Add()([x, ignored])
            self.Model = keras.Model([x, ids], keras.layers.Dense(2, activation="softmax")(merged))

    return Tiny(name, **kwargs)


_getitem = distribute.EvenBatches.__getitem__


def getitem(self, index):
    position = self.data.position
    x, y, w = _getitem(self, index)
    TRAINED[position] = [int(i) for i, weight in zip(x["id"][:, 0], w) if weight > 0]
    return x, y, w


_finish = run_module.finish


def finish(wrapper):
    record = {"rank": int(os.environ.get("SLURM_PROCID", 0)), "trained": TRAINED, "status": wrapper.MetaData["Status"],
              "weights": [np.asarray(w).tolist() for w in wrapper.Model.get_weights()],
              "out_dir": str(wrapper.OutDir), "mid_epoch": wrapper.MetaData.get("MidEpoch")}
    directory = Path(os.environ["DLKIT_RECORD"])
    (directory / f"task{record['rank']}-{os.getpid()}.json").write_text(json.dumps(record))
    return _finish(wrapper)


_training_callbacks = run_module.training_callbacks


def training_callbacks(wrapper, config):
    import keras

    at = int(os.environ.get("DLKIT_SCANCEL_AT") or -1)
    last = int(os.environ.get("SLURM_PROCID", 0)) == int(os.environ.get("SLURM_STEP_NUM_TASKS", 1)) - 1

    class ScancelAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if last and int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == at:
                subprocess.run(["scancel", "--signal=TERM", os.environ["SLURM_JOB_ID"]], check=True)
                # Slurm delivers it a moment later: wait for it here (the run's GracefulExit records it), or a
                # training of a few milliseconds per batch would be over before
                graceful = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
                deadline = time.monotonic() + 60
                while graceful is not None and not graceful.interrupted and time.monotonic() < deadline:
                    time.sleep(0.02)

    return [*_training_callbacks(wrapper, config), ScancelAt()]


EXPERIMENT = Experiment("two_tasks", __doc__, prefix="Two", defaults=DEFAULTS, setup_data=lambda c, t: Data(c),
                        make_wrapper=make_wrapper, analysis=None, summary=lambda w, c: f"{w.Name}: {w.OutDir}",
                        types={"DataDir": str})

if __name__ == "__main__":
    distribute.EvenBatches.__getitem__ = getitem
    run_module.finish = finish
    run_module.training_callbacks = training_callbacks
    sys.exit(EXPERIMENT.cli(["--NoAnalysis", "--set", "DataParallel=true", *sys.argv[1:]]))
