"""Masked pooling over the points of an event: the padded points (mask False) never count.

>>> import numpy as np
>>> pool = MaskedPooling("mean")
>>> x = np.array([[[1.0], [3.0], [100.0]]], np.float32)        # the third point is padding
>>> m = np.array([[True, True, False]])
>>> float(pool(x, m)[0, 0])
2.0
"""

from __future__ import annotations

import keras
from keras import ops

from dlkit.models.base import register, weights
from dlkit.models.config import POOLING_MODES as MODES


@register
class MaskedPooling(keras.layers.Layer):
    """``(B, M, C)`` points and their ``(B, M)`` mask -> ``(B, C)``: the mean, sum or max over the real
    points; an event without points gives 0."""

    def __init__(self, mode: str = "mean", **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"MaskedPooling mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    def call(self, x, mask):
        w = weights(mask, x.dtype)[..., None]
        if self.mode == "max":
            lowest = ops.cast(-3.0e38 if x.dtype == "float32" else -6.0e4, x.dtype)
            top = ops.max(ops.where(w > 0, x, lowest), axis=1)
            return ops.where(ops.sum(w, axis=1) > 0, top, ops.zeros_like(top))
        total = ops.sum(x * w, axis=1)
        if self.mode == "sum":
            return total
        return total / ops.maximum(ops.sum(w, axis=1), ops.cast(1.0, x.dtype))

    def compute_output_shape(self, x_shape, mask_shape=None):
        return (x_shape[0], x_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
