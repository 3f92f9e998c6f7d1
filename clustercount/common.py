"""What the two clustercount experiments share: config entries, compiling, callbacks, saving results.

Kept Keras-free at import (Keras is imported inside the functions that need it), so the data modules and the
analysis can import from here.
"""

from __future__ import annotations

from dlkit.experiment import FLAG_KEYS, RUN_DEFAULTS, compile_model, training_callbacks

__all__ = ["DATA_DEFAULTS", "TRAINING_DEFAULTS", "TYPES", "FLAG_KEYS", "compile_model", "training_callbacks"]

#: Data entries common to both experiments (their defaults; each experiment adds its own).
DATA_DEFAULTS = {
    "DataDir": None,            # directory of waveform files (clustercount.simulate layout); None: simulate
    "SimWaveforms": 24000,      # size of the simulated default dataset
    "SimSeed": 0,
    "SimConfig": {},            # DriftSimConfig overrides for the simulated dataset, e.g. {"gain_mv": 8.0}
    "MaxEvents": 0,             # events (candidates or waveforms) used in total; 0: all
    "ValidationFraction": 0.1,
    "TestFraction": 0.2,
    "DerivK1": 3.5,             # derivative algorithm: first-derivative threshold [noise RMS]
    "DerivK2": 1.0,             # second-derivative threshold [noise RMS]
    "DerivSmooth": 2,           # running mean before differentiating [samples]
    "DerivMaxRise": 6,          # samples from the leading edge to the peak
    "Preload": False,
    "Cache": True,
    "Workers": 0,               # reader processes; 0: from the CPU count
    "Seed": 0,
}

#: Training entries common to both experiments.
TRAINING_DEFAULTS = {
    "activation": "relu",
    "Neurons": 32,
    "Dropout": 0.0,
    "WeightInitialization": "glorot_uniform",
    "optimizer": "Adam",
    "lr": None,                 # None: the optimizer's Keras default (Adam/RMSprop 0.001, SGD 0.01)
    "decay": 0.0,
    "momentum": 0.0,
    "Epochs": 10,
    "BatchSize": 250,
    **RUN_DEFAULTS,
}

TYPES = {"DataDir": str, "RunningTime": (int, float), "lr": (int, float)}


