"""dlkit: Keras-style bookkeeping, scans, data pipelines and analysis for detector deep learning.

The light parts (config, Permutator) import without Keras; ``ModelWrapper``, callbacks, losses and
generators are imported on first use so a CLI can set ``CUDA_VISIBLE_DEVICES`` / ``KERAS_BACKEND``
before Keras loads.
"""

import importlib

from dlkit.config import ConfigError, load_config, resolve_config
from dlkit.permutator import Permutator

__version__ = "0.1.0"

_LAZY = {
    "ModelWrapper": ("dlkit.model_wrapper", "ModelWrapper"),
    "callbacks": ("dlkit.callbacks", None),
    "losses": ("dlkit.losses", None),
    "generators": ("dlkit.generators", None),
    "SparseTensor": ("dlkit.sparse", "SparseTensor"),
    "Experiment": ("dlkit.experiment", "Experiment"),
    "ExperimentResult": ("dlkit.experiment", "ExperimentResult"),
}

__all__ = ["ConfigError", "load_config", "resolve_config", "Permutator", *_LAZY]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'dlkit' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = getattr(module, attr) if attr else module
    globals()[name] = value
    return value
