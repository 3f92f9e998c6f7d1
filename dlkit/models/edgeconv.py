"""EdgeConv (Wang et al., "Dynamic Graph CNN"), the block of ParticleNet (Qu & Gouskos, 2020).

For every real point, its ``k`` nearest real neighbours (in the given coordinates: the input's spatial
features in the first block, the learned features after it) make the edges; each edge ``(x_i, x_j - x_i)``
goes through a shared MLP and the edges of a point are averaged, plus a linear shortcut of ``x_i``. Padded
points are nobody's neighbour; a point with fewer than ``k`` real neighbours averages over those it has.

>>> import numpy as np
>>> coords = np.array([[[0.0], [1.0], [5.0], [0.0]]], np.float32)
>>> mask = np.array([[True, True, True, False]])
>>> idx, valid = knn(coords, mask, 2)
>>> idx[0, 0].tolist(), valid[0, 0].tolist()           # point 0: point 1, then point 2 (the padding is never one)
([1, 2], [True, True])
"""

from __future__ import annotations

import keras
from keras import ops

from dlkit.models.base import register, weights

_FAR = 1.0e30


def knn(coords, mask, k: int):
    """Indices ``(B, M, k)`` of each point's ``k`` nearest real neighbours (itself excluded) by squared
    Euclidean distance, and whether each is real (``(B, M, k)`` bool: False where a point has fewer than
    ``k`` real neighbours). Ties go to the lower index."""
    coords = ops.convert_to_tensor(coords)
    sq = ops.sum(coords * coords, axis=-1)
    d = sq[:, :, None] + sq[:, None, :] - 2.0 * ops.einsum("bmc,bnc->bmn", coords, coords)
    w = weights(mask, d.dtype)
    n = ops.shape(d)[1]
    self_or_pad = ops.maximum(ops.eye(n, dtype=d.dtype)[None], 1.0 - w[:, None, :])
    d = ops.where(self_or_pad > 0, ops.cast(_FAR, d.dtype), ops.maximum(d, 0.0))
    neg, idx = ops.top_k(-d, k=k, sorted=True)
    return idx, neg > -_FAR / 2


def gather_points(x, idx):
    """``x[b, idx[b, i, j]]`` for every b, i, j: ``(B, M, C)`` and ``(B, M, k)`` -> ``(B, M, k, C)``."""
    b, m, k = ops.shape(idx)[0], ops.shape(idx)[1], ops.shape(idx)[2]
    flat = ops.reshape(x, (-1, ops.shape(x)[-1]))
    offset = ops.reshape(ops.arange(b, dtype=idx.dtype) * m, (-1, 1, 1))
    return ops.reshape(ops.take(flat, ops.reshape(idx + offset, (-1,)), axis=0), (b, m, k, ops.shape(x)[-1]))


@register
class EdgeConv(keras.layers.Layer):
    """One EdgeConv block: ``call(features, coords, mask) -> (B, M, widths[-1])``, padded points 0."""

    def __init__(self, k: int = 16, widths=(64, 64, 64), **kwargs):
        super().__init__(**kwargs)
        if int(k) < 1:
            raise ValueError(f"EdgeConv k must be >= 1, got {k}")
        self.k, self.widths = int(k), tuple(int(w) for w in widths)
        self.edge_mlp = [keras.layers.Dense(w, activation="relu", name=f"edge_{i}")
                         for i, w in enumerate(self.widths)]
        self.shortcut = keras.layers.Dense(self.widths[-1], use_bias=False, name="shortcut")

    def build(self, features_shape, coords_shape=None, mask_shape=None):
        c = features_shape[-1]
        shape = (None, None, None, 2 * c)
        for layer in self.edge_mlp:
            layer.build(shape)
            shape = shape[:-1] + (layer.units,)
        self.shortcut.build((None, None, c))

    def call(self, features, coords, mask):
        idx, valid = knn(coords, mask, self.k)
        neighbours = gather_points(features, idx)
        centre = ops.broadcast_to(features[:, :, None, :], ops.shape(neighbours))
        h = ops.concatenate([centre, neighbours - centre], axis=-1)
        for layer in self.edge_mlp:
            h = layer(h)
        v = weights(valid, h.dtype)[..., None]
        h = ops.sum(h * v, axis=2) / ops.maximum(ops.sum(v, axis=2), ops.cast(1.0, h.dtype))
        out = ops.relu(h + self.shortcut(features))
        return out * weights(mask, out.dtype)[..., None]

    def compute_output_shape(self, features_shape, coords_shape=None, mask_shape=None):
        return tuple(features_shape[:-1]) + (self.widths[-1],)

    def get_config(self):
        return {**super().get_config(), "k": self.k, "widths": list(self.widths)}
