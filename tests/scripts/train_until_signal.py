"""A tiny experiment used by test_model_wrapper: trains slowly until signalled, saves, exits.

usage: train_until_signal.py OUTPUT_BASE READY_FILE
"""

import os
import sys
import time

import numpy as np

import keras
from dlkit import ModelWrapper
from dlkit.callbacks import EXIT_CODE_INTERRUPTED, GracefulExit


class Tiny(ModelWrapper):
    def Build(self):
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(8, activation="relu")(inputs)
        self.Model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))


class SlowAndAnnounce(keras.callbacks.Callback):
    """Slows batches down and tells the test, via a file, once training is well under way."""

    def __init__(self, ready_file):
        super().__init__()
        self.ready_file = ready_file
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.batches == 15:  # past the first epoch (8 batches), so there is an epoch save too
            open(self.ready_file, "w").close()
        time.sleep(0.02)


def main():
    output_base, ready_file = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 2, 256), 2)
    wrapper = Tiny("Tiny", OutputBase=output_base, Config={"Epochs": 1000})
    wrapper.Build()
    wrapper.BuildOptimizer("SGD", lr=0.01)
    wrapper.Compile(Loss="categorical_crossentropy", Metrics=["accuracy"])
    graceful = GracefulExit()
    wrapper.Train(x, y, Epochs=1000, BatchSize=32, Callbacks=[graceful, SlowAndAnnounce(ready_file)], verbose=0)
    wrapper.Save()
    sys.exit(EXIT_CODE_INTERRUPTED if graceful.interrupted else 0)


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    main()
