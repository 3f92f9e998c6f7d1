"""What the point models share: registration for saving, the mask as weights, and the per-point MLP.

The models take two inputs named after a collection of the data pipeline (:class:`dlkit.generators.
Collection`): ``<name>`` ``(B, M, F)`` float32 points and ``<name>_mask`` ``(B, M)`` bool, True for the real
points. Every layer here multiplies padded points away or masks them out of a softmax or a neighbour search,
so neither the number of padded rows nor what they hold changes an output.
"""

from __future__ import annotations

import keras
from keras import ops

#: Registers a layer with Keras under the package "dlkit", so saved models load by name (as dlkit.losses).
register = keras.saving.register_keras_serializable(package="dlkit")


def weights(mask, dtype="float32"):
    """The mask as 0/1 numbers of ``dtype`` (``(B, M)``)."""
    return ops.cast(mask, dtype)


def point_mlp(x, mask, widths, name: str, activation: str = "relu"):
    """Dense layers applied to every point alike (Keras' Dense acts on the last axis); padded points stay 0."""
    w = weights(mask, x.dtype)[..., None]
    for i, width in enumerate(widths):
        x = keras.layers.Dense(width, activation=activation, name=f"{name}_{i}")(x) * w
    return x


def head(x, widths, n_outputs: int, activation: str | None, name: str):
    """The event-level MLP after pooling, ending in ``n_outputs`` units with ``activation``."""
    for i, width in enumerate(widths):
        x = keras.layers.Dense(width, activation="relu", name=f"{name}_{i}")(x)
    return keras.layers.Dense(n_outputs, activation=activation, name=name)(x)


def inputs(name: str, n_features: int):
    """The two inputs of a collection: points ``(None, F)`` per event (any number of rows) and the mask."""
    return (keras.Input((None, n_features), name=name, dtype="float32"),
            keras.Input((None,), name=f"{name}_mask", dtype="bool"))
