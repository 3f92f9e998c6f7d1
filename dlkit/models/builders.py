"""The point models' builders: an encoder (the event vector) per model, plus an MLP per output head.

>>> model = build("deepsets", n_features=5, outputs={"class": (4, "softmax")}, name="hits")   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
from keras import ops

from dlkit.models.base import head, inputs, point_mlp, weights
from dlkit.models.config import point_model_kind
from dlkit.models.edgeconv import EdgeConv
from dlkit.models.pooling import MaskedPooling
from dlkit.models.transformer import ClassToken, EncoderBlock, PairBias

__all__ = ["ENCODERS", "MODELS", "build", "deepsets", "deepsets_encoder", "particlenet", "particlenet_encoder",
           "transformer", "transformer_encoder"]


def _heads(x, outputs: Mapping, widths) -> dict:
    return {name: head(x, widths, int(units), activation, name) for name, (units, activation) in outputs.items()}


def deepsets_encoder(points, mask, *, widths: Sequence[int] = (64, 64, 64), pooling: str = "mean"):
    """DeepSets' event vector: one MLP per point, then masked pooling."""
    h = point_mlp(points, mask, widths, "point")
    return MaskedPooling(pooling, name="pool")(h, mask)


def particlenet_encoder(points, mask, *, coords: Sequence[int] = (0, 1, 2), k: int = 16,
                        blocks: Sequence[Sequence[int]] = ((64, 64, 64), (128, 128, 128))):
    """ParticleNet's event vector: EdgeConv blocks (neighbours in the features ``coords`` of the input first,
    then in the learned features), masked mean pooling."""
    where = ops.take(points, list(coords), axis=-1)
    h = keras.layers.Dense(blocks[0][0], name="embed")(points) * weights(mask)[..., None]
    for i, widths in enumerate(blocks):
        h = EdgeConv(k, widths, name=f"edgeconv_{i}")(h, where, mask)
        where = h
    return MaskedPooling("mean", name="pool")(h, mask)


def transformer_encoder(points, mask, *, dim: int = 64, heads: int = 4, depth: int = 3, class_depth: int = 1,
                        pair_bias: bool = False, coords: Sequence[int] = (0, 1, 2)):
    """The transformer's event vector: encoder blocks over the points (padding masked out of every softmax),
    then ``class_depth`` blocks of class attention (a class token attending to the real points).
    ``pair_bias``: attention biases from the pairwise distance of the features ``coords`` (ParT's idea)."""
    h = keras.layers.Dense(dim, name="embed")(points) * weights(mask)[..., None]
    bias = PairBias(heads, name="pair_bias")(ops.take(points, list(coords), axis=-1)) if pair_bias else None
    for i in range(depth):
        h = EncoderBlock(heads, dim, name=f"encoder_{i}")(h, mask, None, bias)
    token = ClassToken(dim, name="class_token")(h)
    for i in range(class_depth):
        token = EncoderBlock(heads, dim, name=f"class_attention_{i}")(h, mask, token)
    return keras.layers.LayerNormalization(name="final_norm")(token[:, 0])


#: Each point model's encoder, ``(points, mask, **params) -> event vector``, and its Keras model name.
ENCODERS = {"deepsets": (deepsets_encoder, "DeepSets"), "particlenet": (particlenet_encoder, "ParticleNet"),
            "transformer": (transformer_encoder, "PointTransformer")}


def _model(kind: str, n_features: int, outputs: Mapping, name: str, head_widths, params) -> keras.Model:
    encoder, model_name = ENCODERS[kind]
    points, mask = inputs(name, n_features)
    event = encoder(points, mask, **params)
    return keras.Model({name: points, f"{name}_mask": mask}, _heads(event, outputs, head_widths), name=model_name)


def deepsets(n_features: int, outputs: Mapping, *, name: str = "points", head_widths: Sequence[int] = (64,),
             **params) -> keras.Model:
    """DeepSets (:func:`deepsets_encoder`), an MLP per head. The baseline."""
    return _model("deepsets", n_features, outputs, name, head_widths, params)


def particlenet(n_features: int, outputs: Mapping, *, name: str = "points", head_widths: Sequence[int] = (128,),
                **params) -> keras.Model:
    """ParticleNet-style (:func:`particlenet_encoder`), an MLP per head."""
    return _model("particlenet", n_features, outputs, name, head_widths, params)


def transformer(n_features: int, outputs: Mapping, *, name: str = "points", head_widths: Sequence[int] = (64,),
                **params) -> keras.Model:
    """A transformer encoder with class attention (:func:`transformer_encoder`), an MLP per head."""
    return _model("transformer", n_features, outputs, name, head_widths, params)


#: The point models by the name a config's ``Model`` entry gives (any case: ``"ParticleNet"``).
MODELS = {"deepsets": deepsets, "particlenet": particlenet, "transformer": transformer}


def build(kind: str, n_features: int, outputs: Mapping, **params) -> keras.Model:
    """``MODELS[kind](n_features, outputs, **params)``, with a clear error for an unknown kind or parameter."""
    key = point_model_kind(kind)
    if key is None:
        raise ValueError(f"point model {kind!r} is not one of {sorted(MODELS)}")
    try:
        return MODELS[key](n_features, outputs, **params)
    except TypeError as exc:
        raise ValueError(f"point model {kind!r}: {exc}") from None
