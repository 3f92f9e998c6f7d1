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

__all__ = ["CONFIG_DEFAULTS", "ENCODERS", "MODELS", "ClassToken", "EdgeConv", "EncoderBlock", "MaskedPooling",
           "PairBias", "PointAttention", "build", "deepsets", "deepsets_encoder", "knn", "params_from_config",
           "particlenet", "particlenet_encoder", "point_model_kind", "transformer", "transformer_encoder"]


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

#: The config entries that size a point model, shared by the experiments, with their defaults.
CONFIG_DEFAULTS = {
    "MaxPoints": 128,       # points per event kept (the most energetic, see dlkit.generators.Collection)
    "PointWidth": 64,       # DeepSets: MLP width; ParticleNet: first EdgeConv block's (doubling); transformer: dim
    "PointDepth": 3,        # DeepSets: MLP layers; ParticleNet: EdgeConv blocks; transformer: encoder blocks
    "Neighbours": 16,       # ParticleNet: k of the k-NN
    "Heads": 4,             # transformer: attention heads
    "PairBias": False,      # transformer: pairwise-distance attention biases (ParticleTransformer)
    "Pooling": "mean",      # DeepSets: mean, sum or max
}


def point_model_kind(model: str) -> str | None:
    """The key in :data:`MODELS` of a ``Model`` config value, or None when it names no point model."""
    kind = str(model).lower()
    return kind if kind in MODELS else None


def params_from_config(kind: str, config: Mapping) -> dict:
    """A builder's parameters from the config entries of :data:`CONFIG_DEFAULTS` (``config`` resolved)."""
    width, depth = int(config["PointWidth"]), int(config["PointDepth"])
    if kind == "deepsets":
        return {"widths": (width,) * depth, "pooling": config["Pooling"], "head_widths": (width,)}
    if kind == "particlenet":
        return {"k": int(config["Neighbours"]), "blocks": tuple((width * 2**i,) * 3 for i in range(depth)),
                "head_widths": (2 * width,)}
    if kind == "transformer":
        return {"dim": width, "depth": depth, "heads": int(config["Heads"]), "pair_bias": bool(config["PairBias"]),
                "head_widths": (width,)}
    raise ValueError(f"point model {kind!r} is not one of {sorted(MODELS)}")


def build(kind: str, n_features: int, outputs: Mapping, **params) -> keras.Model:
    """``MODELS[kind](n_features, outputs, **params)``, with a clear error for an unknown kind or parameter."""
    key = point_model_kind(kind)
    if key is None:
        raise ValueError(f"point model {kind!r} is not one of {sorted(MODELS)}")
    try:
        return MODELS[key](n_features, outputs, **params)
    except TypeError as exc:
        raise ValueError(f"point model {kind!r}: {exc}") from None
