"""Networks on lists of points (hits, deposits, particles) that several experiments share: DeepSets,
ParticleNet-style EdgeConv and a transformer encoder, in ``keras.ops`` only (TensorFlow, JAX and torch).

Each builder takes the collection the data pipeline serves (:class:`dlkit.generators.Collection` called
``name``: inputs ``name`` ``(B, M, F)`` and ``name_mask`` ``(B, M)``) and returns a ``keras.Model`` whose
outputs are ``outputs``: ``{head name: (units, activation)}``, e.g. ``{"class": (4, "softmax")}``, or for a
multi-task network ``{"class": (2, "softmax"), "energy": (1, None)}``. No output changes when the points of an
event are permuted, when padding is appended, or when what a padded point holds changes. An experiment with
heads of its own takes the event vector of an encoder (:data:`ENCODERS`) and adds them.

>>> model = build("deepsets", n_features=5, outputs={"class": (4, "softmax")}, name="hits")   # doctest: +SKIP
>>> model = build("particlenet", 5, {"class": (4, "softmax")}, k=8, coords=(0, 1, 2))      # doctest: +SKIP

Every layer is registered with Keras (package ``"dlkit"``) like :mod:`dlkit.losses`, so saved models load.
Importing this package imports no Keras (the config helpers of :mod:`dlkit.models.config` run in reader
processes); the layers and builders load on first use.
"""

from __future__ import annotations

import importlib

from dlkit.models.config import CONFIG_DEFAULTS, NAMES, params_from_config, point_model_kind

#: Where each lazily loaded name lives.
_LAZY = {
    **dict.fromkeys(("ENCODERS", "MODELS", "build", "deepsets", "deepsets_encoder", "particlenet",
                     "particlenet_encoder", "transformer", "transformer_encoder"), "builders"),
    "EdgeConv": "edgeconv", "knn": "edgeconv", "gather_points": "edgeconv",
    "MaskedPooling": "pooling",
    "ClassToken": "transformer", "EncoderBlock": "transformer", "PairBias": "transformer",
    "PointAttention": "transformer",
}

__all__ = ["CONFIG_DEFAULTS", "NAMES", "params_from_config", "point_model_kind", "register", *_LAZY]


def register() -> None:
    """Registers the point models' layers with Keras: a saved point model loads in a process that built none."""
    importlib.import_module("dlkit.models.builders")


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"dlkit.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'dlkit.models' has no attribute {name!r}")
