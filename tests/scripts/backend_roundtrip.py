"""Save a trained ModelWrapper on one Keras backend, or load one and train on (KERAS_BACKEND picks it).

    python backend_roundtrip.py save DIR      # train 2 epochs with Adam, Save() into DIR
    python backend_roundtrip.py load OUT DIR...  # each DIR: Load (what -L and -p do), train 1 more epoch

``OUT`` (JSON), one entry per DIR: the backend, the loaded optimizer's class module and iterations,
whether torch had been imported by then, and the weights after the extra epoch (the same data in the same
order on every backend).
"""

import json
import sys

import keras
import numpy as np

from dlkit import ModelWrapper


class Small(ModelWrapper):
    def Build(self):
        keras.utils.set_random_seed(0)
        x = keras.Input((4,))
        h = keras.layers.Dense(8, activation="tanh", kernel_initializer="glorot_uniform")(x)
        self.Model = keras.Model(x, keras.layers.Dense(2)(h))


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    return x, np.stack([x[:, 0] - x[:, 1], x[:, 2] * x[:, 3]], axis=1).astype("float32")


def main(argv):
    x, y = data()
    if argv[0] == "save":
        w = Small("Small", OutputBase=argv[1])
        w.Build()
        w.BuildOptimizer("Adam", lr=0.01)
        w.Compile(Loss="mse")
        w.Train(x, y, Epochs=2, BatchSize=16, shuffle=False, verbose=0, SaveEveryEpoch=False)
        w.Save(argv[1])
        return 0
    results = {}
    for directory in argv[2:]:
        w = Small("Small", OutputBase=directory + ".out")
        try:
            w.Load(directory)
            w.Model.optimizer.iterations  # noqa: B018 - a load that lost the optimizer fails here
        except Exception as exc:  # noqa: BLE001 - reported per directory, the others still run
            results[directory] = {"error": f"load: {type(exc).__name__}: {exc}"}
            continue
        loaded = {"module": type(w.Model.optimizer).__module__, "iterations": int(w.Model.optimizer.iterations)}
        try:
            w.Train(x, y, Epochs=1, BatchSize=16, shuffle=False, verbose=0, SaveEveryEpoch=False)
        except Exception as exc:  # noqa: BLE001
            results[directory] = {"error": f"train: {type(exc).__name__}: {exc}", "loaded": loaded}
            continue
        results[directory] = {
            "backend": keras.backend.backend(),
            "loaded": loaded,
            "iterations": int(w.Model.optimizer.iterations),
            "torch_imported": "torch" in sys.modules,
            "kernels": [keras.ops.convert_to_numpy(v).tolist() for v in w.Model.trainable_weights],
        }
    with open(argv[1], "w") as f:
        json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
