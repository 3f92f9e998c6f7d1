"""A scan point's save during which another worker takes its lease over (after the model is written, before
the renames): run as a point of a fake ledger (argv[1]); the first save lands, the second must not."""

import sys
from pathlib import Path

import keras

import dlkit.metadata
from dlkit.model_wrapper import ModelWrapper

ledger = Path(sys.argv[1])
wrapper = ModelWrapper("Fenced", Loss="mse", Optimizer=keras.optimizers.SGD(0.1), OutputBase=sys.argv[2])
inputs = keras.Input((3,))
wrapper.Model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
wrapper.Compile()
wrapper.Save()
print("first save", flush=True)
real_sha256 = dlkit.metadata.file_sha256


def taken_over_while_writing(path):  # the model file is written; now another worker ends our lease
    (ledger / "ends" / "0.TOKEN").mkdir(parents=True)
    return real_sha256(path)


dlkit.metadata.file_sha256 = taken_over_while_writing
wrapper.Model.layers[-1].kernel.assign([[1.0], [2.0], [3.0]])
wrapper.Save()
print("second save returned", flush=True)
