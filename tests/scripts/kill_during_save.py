"""Train a tiny model one epoch at a time, saving after each, and SIGKILL this process inside the save of epoch 2
at the K-th file operation (tests/test_model_wrapper.py, kills injected at each step of a save).

    python kill_during_save.py pair OUTPUT_BASE K          # ModelWrapper.Save: the model and MetaData.json
    python kill_during_save.py checkpoint OUTPUT_BASE K    # AtomicModelCheckpoint's Checkpoint.keras

The file operations counted are os.replace and model writes (Model.save), in order; K past the last one kills
nothing and the script ends normally.
"""

import os
import signal
import sys

import numpy as np

import keras
from dlkit import ModelWrapper
from dlkit.experiment import training_callbacks

mode, base, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
armed = False
count = 0


def step(what, half_written=None):
    """Count one file operation; at the K-th, die (a model file cut to half its size first: killed mid-write)."""
    global count
    if armed:
        count += 1
        if count == kill_at:
            if half_written is not None:
                size = os.path.getsize(half_written)
                with open(half_written, "rb+") as f:
                    f.truncate(size // 2)
            print(f"killed at {what}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


real_replace, real_save = os.replace, keras.Model.save


def replace(src, dst, *args, **kwargs):
    step(f"replace {os.path.basename(dst)}")
    return real_replace(src, dst, *args, **kwargs)


def save(self, filepath, *args, **kwargs):
    real_save(self, filepath, *args, **kwargs)
    step(f"write {os.path.basename(str(filepath))}", half_written=str(filepath))


os.replace, keras.Model.save = replace, save


class Dense(ModelWrapper):
    def Build(self):
        inputs = keras.Input((4,))
        self.Model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Dense(8)(inputs)))


rng = np.random.default_rng(1)
x = rng.normal(size=(64, 4)).astype("float32")
y = keras.utils.to_categorical((x[:, 0] > 0).astype(int), 2)
keras.utils.set_random_seed(1)
wrapper = Dense("Dense", OutputBase=base, Config={})
wrapper.Build()
wrapper.BuildOptimizer("SGD", lr=0.1)
wrapper.Compile(Loss="categorical_crossentropy")
wrapper.Initialize()
if mode == "pair":
    wrapper.Train(x, y, Epochs=1, BatchSize=16, verbose=0)
    wrapper.Save()
    armed = True
    wrapper.Train(x, y, Epochs=2, BatchSize=16, verbose=0, InitialEpoch=1)
    wrapper.Save()
else:
    # the experiments' ModelCheckpoint=True; loss falls every epoch here: each epoch's checkpoint replaces the last
    (checkpoint,) = training_callbacks(wrapper, {"ModelCheckpoint": True, "monitor": "loss"})

    class Arm(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            global armed
            armed = epoch == 1

    wrapper.Model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[Arm(), checkpoint])
print("done", flush=True)
