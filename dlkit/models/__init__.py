"""Networks on lists of points (hits, deposits, particles) that several experiments share: DeepSets,
ParticleNet-style EdgeConv and a transformer encoder, in ``keras.ops`` only (TensorFlow, JAX and torch).

Each builder takes the collection the data pipeline serves (:class:`dlkit.generators.Collection` called
``name``: inputs ``name`` ``(B, M, F)`` and ``name_mask`` ``(B, M)``) and returns a ``keras.Model`` whose
outputs are ``outputs``: ``{head name: (units, activation)}``, e.g. ``{"class": (4, "softmax")}``, or for a
multi-task network ``{"class": (2, "softmax"), "energy": (1, None)}``. No output changes when the points of an
event are permuted, when padding is appended, or when what a padded point holds changes.

>>> model = build("deepsets", n_features=5, outputs={"class": (4, "softmax")}, name="hits")   # doctest: +SKIP
>>> model = build("particlenet", 5, {"class": (4, "softmax")}, k=8, coords=(0, 1, 2))      # doctest: +SKIP

Every layer is registered with Keras (package ``"dlkit"``) like :mod:`dlkit.losses`, so saved models load.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
from keras import ops

from dlkit.models.base import head, inputs, point_mlp, weights
from dlkit.models.edgeconv import EdgeConv, knn
from dlkit.models.pooling import MaskedPooling
from dlkit.models.transformer import ClassToken, EncoderBlock, PairBias, PointAttention

__all__ = ["MODELS", "ClassToken", "EdgeConv", "EncoderBlock", "MaskedPooling", "PairBias", "PointAttention",
           "build", "deepsets", "knn", "particlenet", "transformer"]


def _heads(x, outputs: Mapping, widths) -> dict:
    return {name: head(x, widths, int(units), activation, name) for name, (units, activation) in outputs.items()}


def deepsets(n_features: int, outputs: Mapping, *, name: str = "points", widths: Sequence[int] = (64, 64, 64),
             pooling: str = "mean", head_widths: Sequence[int] = (64,)) -> keras.Model:
    """DeepSets: one MLP per point, masked pooling, an MLP per head. The baseline."""
    points, mask = inputs(name, n_features)
    h = point_mlp(points, mask, widths, "point")
    pooled = MaskedPooling(pooling, name="pool")(h, mask)
    return keras.Model({name: points, f"{name}_mask": mask}, _heads(pooled, outputs, head_widths), name="DeepSets")


def particlenet(n_features: int, outputs: Mapping, *, name: str = "points", coords: Sequence[int] = (0, 1, 2),
                k: int = 16, blocks: Sequence[Sequence[int]] = ((64, 64, 64), (128, 128, 128)),
                head_widths: Sequence[int] = (128,)) -> keras.Model:
    """ParticleNet-style: EdgeConv blocks (neighbours in the features ``coords`` of the input first, then in
    the learned features), masked mean pooling, an MLP per head."""
    points, mask = inputs(name, n_features)
    where = ops.take(points, list(coords), axis=-1)
    h = keras.layers.Dense(blocks[0][0], name="embed")(points) * weights(mask)[..., None]
    for i, widths in enumerate(blocks):
        h = EdgeConv(k, widths, name=f"edgeconv_{i}")(h, where, mask)
        where = h
    pooled = MaskedPooling("mean", name="pool")(h, mask)
    return keras.Model({name: points, f"{name}_mask": mask}, _heads(pooled, outputs, head_widths),
                       name="ParticleNet")


def transformer(n_features: int, outputs: Mapping, *, name: str = "points", dim: int = 64, heads: int = 4,
                depth: int = 3, class_depth: int = 1, pair_bias: bool = False, coords: Sequence[int] = (0, 1, 2),
                head_widths: Sequence[int] = (64,)) -> keras.Model:
    """A transformer encoder over the points (padding masked out of every softmax), ``class_depth`` blocks of
    class attention (a class token attending to the real points), an MLP per head. ``pair_bias``: attention
    biases from the pairwise distance of the features ``coords`` (ParticleTransformer's interaction idea)."""
    points, mask = inputs(name, n_features)
    h = keras.layers.Dense(dim, name="embed")(points) * weights(mask)[..., None]
    bias = PairBias(heads, name="pair_bias")(ops.take(points, list(coords), axis=-1)) if pair_bias else None
    for i in range(depth):
        h = EncoderBlock(heads, dim, name=f"encoder_{i}")(h, mask, None, bias)
    token = ClassToken(dim, name="class_token")(h)
    for i in range(class_depth):
        token = EncoderBlock(heads, dim, name=f"class_attention_{i}")(h, mask, token)
    event = keras.layers.LayerNormalization(name="final_norm")(token[:, 0])
    return keras.Model({name: points, f"{name}_mask": mask}, _heads(event, outputs, head_widths),
                       name="PointTransformer")


#: The point models by the name a config's ``Model`` entry gives.
MODELS = {"deepsets": deepsets, "particlenet": particlenet, "transformer": transformer}


def build(kind: str, n_features: int, outputs: Mapping, **params) -> keras.Model:
    """``MODELS[kind](n_features, outputs, **params)``, with a clear error for an unknown kind or parameter."""
    if kind not in MODELS:
        raise ValueError(f"point model {kind!r} is not one of {sorted(MODELS)}")
    try:
        return MODELS[kind](n_features, outputs, **params)
    except TypeError as exc:
        raise ValueError(f"point model {kind!r}: {exc}") from None
