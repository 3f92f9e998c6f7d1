"""A transformer encoder over the points: multi-head self-attention with the padded points masked out of
every softmax, optionally with pairwise features as attention biases (ParticleTransformer's idea: the bias of
the pair i, j is a learned function of their distance), and class attention for the event (a class token that
attends to the real points only).

>>> import numpy as np
>>> attn = PointAttention(heads=2, dim=8)
>>> x = np.random.default_rng(0).normal(size=(1, 3, 8)).astype(np.float32)
>>> m = np.array([[True, True, False]])
>>> y1 = attn(x, m)
>>> x[0, 2] = 99.0                                     # what a padded point holds changes nothing
>>> bool(np.allclose(y1[0, :2], attn(x, m)[0, :2], atol=1e-6))
True
"""

from __future__ import annotations

import keras
from keras import ops

from dlkit.models.base import register, weights

_NEG = -1.0e9


def pair_distance(coords):
    """``(B, M, M, 1)``: log(1 + the Euclidean distance) of every pair of points, the pairwise feature."""
    diff = coords[:, :, None, :] - coords[:, None, :, :]
    return ops.log1p(ops.sqrt(ops.sum(diff * diff, axis=-1) + 1e-12))[..., None]


@register
class PointAttention(keras.layers.Layer):
    """Multi-head attention of ``queries`` over the real points: ``call(x, mask, queries=None, bias=None)``.

    ``x`` ``(B, M, dim)``; ``queries`` ``(B, Q, dim)`` (default: the points themselves: self-attention);
    ``bias`` ``(B, Q, M, heads)`` added to the attention logits. Keys of padded points get a logit of -1e9.
    """

    def __init__(self, heads: int = 4, dim: int = 64, **kwargs):
        super().__init__(**kwargs)
        if int(dim) % int(heads):
            raise ValueError(f"PointAttention dim {dim} is not a multiple of heads {heads}")
        self.heads, self.dim = int(heads), int(dim)
        self.q = keras.layers.Dense(self.dim, name="q")
        self.kv = keras.layers.Dense(2 * self.dim, name="kv")
        self.out = keras.layers.Dense(self.dim, name="out")

    def build(self, x_shape, mask_shape=None, queries_shape=None, bias_shape=None):
        self.q.build((None, None, x_shape[-1]))
        self.kv.build((None, None, x_shape[-1]))
        self.out.build((None, None, self.dim))

    def _split(self, t):
        b, n = ops.shape(t)[0], ops.shape(t)[1]
        return ops.transpose(ops.reshape(t, (b, n, self.heads, self.dim // self.heads)), (0, 2, 1, 3))

    def call(self, x, mask, queries=None, bias=None):
        q = self._split(self.q(x if queries is None else queries))
        k, v = ops.split(self.kv(x), 2, axis=-1)
        k, v = self._split(k), self._split(v)
        logits = ops.einsum("bhqd,bhkd->bhqk", q, k) / ops.sqrt(ops.cast(self.dim // self.heads, q.dtype))
        if bias is not None:
            logits = logits + ops.transpose(bias, (0, 3, 1, 2))
        keep = weights(mask, logits.dtype)[:, None, None, :]
        logits = logits * keep + ops.cast(_NEG, logits.dtype) * (1.0 - keep)
        attn = ops.softmax(logits, axis=-1)
        y = ops.transpose(ops.einsum("bhqk,bhkd->bhqd", attn, v), (0, 2, 1, 3))
        return self.out(ops.reshape(y, (ops.shape(y)[0], ops.shape(y)[1], self.dim)))

    def compute_output_shape(self, x_shape, mask_shape=None, queries_shape=None, bias_shape=None):
        q = x_shape if queries_shape is None else queries_shape
        return tuple(q[:-1]) + (self.dim,)

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "dim": self.dim}


@register
class ClassToken(keras.layers.Layer):
    """A learned token per event, ``(B, 1, dim)``, the query of class attention."""

    def __init__(self, dim: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)

    def build(self, x_shape):
        self.token = self.add_weight(shape=(1, 1, self.dim), initializer="zeros", name="token")

    def call(self, x):
        return ops.broadcast_to(ops.cast(self.token, x.dtype), (ops.shape(x)[0], 1, self.dim))

    def compute_output_shape(self, x_shape):
        return (x_shape[0], 1, self.dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


@register
class EncoderBlock(keras.layers.Layer):
    """Pre-norm transformer block: ``x + attention(norm(x))``, then ``x + MLP(norm(x))``; padded points 0."""

    def __init__(self, heads: int = 4, dim: int = 64, expansion: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.dim, self.expansion = int(heads), int(dim), int(expansion)
        self.attention = PointAttention(self.heads, self.dim, name="attention")
        self.norm1 = keras.layers.LayerNormalization(name="norm1")
        self.norm2 = keras.layers.LayerNormalization(name="norm2")
        self.mlp1 = keras.layers.Dense(self.dim * self.expansion, activation="gelu", name="mlp1")
        self.mlp2 = keras.layers.Dense(self.dim, name="mlp2")

    def build(self, x_shape, mask_shape=None, queries_shape=None, bias_shape=None):
        shape = (None, None, self.dim)
        for layer in (self.norm1, self.norm2):
            layer.build(shape)
        self.attention.build(shape)
        self.mlp1.build(shape)
        self.mlp2.build((None, None, self.dim * self.expansion))

    def call(self, x, mask, queries=None, bias=None):
        base = x if queries is None else queries
        y = base + self.attention(self.norm1(x), mask, None if queries is None else self.norm1(queries), bias)
        y = y + self.mlp2(self.mlp1(self.norm2(y)))
        return y if queries is not None else y * weights(mask, y.dtype)[..., None]

    def compute_output_shape(self, x_shape, mask_shape=None, queries_shape=None, bias_shape=None):
        return tuple(x_shape if queries_shape is None else queries_shape)

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "dim": self.dim, "expansion": self.expansion}


@register
class PairBias(keras.layers.Layer):
    """The attention biases ``(B, M, M, heads)`` from the pairwise distance of the coordinates."""

    def __init__(self, heads: int = 4, width: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.width = int(heads), int(width)
        self.hidden = keras.layers.Dense(self.width, activation="gelu", name="hidden")
        self.out = keras.layers.Dense(self.heads, name="out")

    def build(self, coords_shape):
        self.hidden.build((None, None, None, 1))
        self.out.build((None, None, None, self.width))

    def call(self, coords):
        return self.out(self.hidden(pair_distance(coords)))

    def compute_output_shape(self, coords_shape):
        return (coords_shape[0], coords_shape[1], coords_shape[1], self.heads)

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "width": self.width}
