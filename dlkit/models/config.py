"""The config entries that choose and size a point model, shared by the experiments. Imports no Keras: an
experiment's data module (unpickled in the reader processes) may ask which model a run trains."""

from __future__ import annotations

from collections.abc import Mapping

from dlkit.config import ConfigError, at_least

__all__ = ["CONFIG_DEFAULTS", "NAMES", "RANGES", "check_entries", "params_from_config", "point_model_kind"]

#: The point models' names (:data:`dlkit.models.MODELS`' keys); a config's ``Model`` entry may use any case.
NAMES = ("deepsets", "particlenet", "transformer")

#: The masked poolings (:class:`dlkit.models.MaskedPooling`).
POOLING_MODES = ("mean", "sum", "max")

#: The config entries that size a point model, shared by the experiments, with their defaults.
CONFIG_DEFAULTS = {
    "MaxPoints": 128,       # points per event kept (the most energetic, see dlkit.generators.Collection)
    "PointWidth": 64,       # DeepSets: MLP width; ParticleNet: first EdgeConv block's (doubling); transformer: dim
    "PointDepth": 2,        # DeepSets: MLP layers; ParticleNet: EdgeConv blocks; transformer: encoder blocks
    "Neighbours": 16,       # ParticleNet: k of the k-NN
    "Heads": 4,             # transformer: attention heads
    "PairBias": False,      # transformer: pairwise-distance attention biases (ParticleTransformer)
    "Pooling": "mean",      # DeepSets: mean, sum or max
}
#: Their allowed values (an experiment's ``RANGES``).
RANGES = {k: at_least(1) for k in ("MaxPoints", "PointWidth", "PointDepth", "Neighbours", "Heads")}


def point_model_kind(model: str) -> str | None:
    """The key in :data:`MODELS` of a ``Model`` config value, or None when it names no point model."""
    kind = str(model).lower()
    return kind if kind in NAMES else None


def check_entries(config: Mapping) -> None:
    """What a type and range check cannot see in the :data:`CONFIG_DEFAULTS` entries: a :class:`ConfigError`
    naming the entry (for a run that trains a point model)."""
    if config["Pooling"] not in POOLING_MODES:
        raise ConfigError(f"config entry 'Pooling' = {config['Pooling']!r}; expected one of "
                          f"{', '.join(POOLING_MODES)}")
    if point_model_kind(config["Model"]) == "transformer" and int(config["PointWidth"]) % int(config["Heads"]):
        raise ConfigError(f"config entry 'Heads' = {config['Heads']!r} does not divide 'PointWidth' = "
                          f"{config['PointWidth']!r} (each head gets PointWidth / Heads features)")


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
    raise ValueError(f"point model {kind!r} is not one of {list(NAMES)}")
