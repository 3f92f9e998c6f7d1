"""lartpcdnn models: a two-view (siamese) CNN and a dense baseline over the two wire-plane images.

Built with the Keras functional API and ``keras.layers`` only, so any backend works. Every
hyperparameter comes from the resolved configuration and really changes the model::

    model = build_classifier({"induction": (240, 256), "collection": (240, 256)}, n_classes=7,
                             Model="CNN", Filters=8, Depth=4, Width=64)

The CNN applies one convolutional trunk to each view. By default the trunk is *shared* (siamese: the same
weights see both planes): both planes record the same tracks and showers at +-60 degrees, so one set of
filters serves both, halving the weights to learn from small samples; the merged feature vector keeps the
views in fixed slots, so the head still knows which plane saw what. ``SharedTrunk=False`` gives each
plane its own trunk (e.g. for raw bipolar induction signals). The trunk ends in global max and average
pooling: the particle's topology (track width, Bragg peak, Michel electron, shower) matters, not where in
the image the beam put it, and it keeps the model small enough for a CPU.

The point models (``Model`` = ``DeepSets``, ``ParticleNet`` or ``Transformer``, :mod:`dlkit.models`) read the
3D charge deposits instead (inputs ``deposits`` (B, M, 4) and ``deposits_mask``; :func:`build_point_classifier`)
and end in the same softmax output ``classes``, so training, saving and the analysis treat them alike.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
from keras import layers

from dlkit import ModelWrapper
from dlkit.config import ConfigError

__all__ = ["view_trunk", "dense_view", "build_classifier", "build_point_classifier", "LArClassifier", "MODEL_TYPES",
           "POINT_MODELS", "check_model_name"]

MODEL_TYPES = ("CNN", "Dense")
#: The point models a ``Model`` entry may name (any case), on the deposits: :mod:`dlkit.models`.
POINT_MODELS = ("DeepSets", "ParticleNet", "Transformer")


def check_model_name(model) -> str | None:
    """The point-model kind of a ``Model`` value (``"deepsets"``, ...), None for ``CNN``/``Dense``; else a
    :class:`ConfigError` naming the entry."""
    from dlkit.models import point_model_kind

    if model in MODEL_TYPES:
        return None
    kind = point_model_kind(model) if isinstance(model, str) else None
    if kind is None:
        raise ConfigError(f"config entry 'Model' = {model!r}; expected one of {MODEL_TYPES + POINT_MODELS}")
    return kind


def build_point_classifier(n_features: int, n_classes: int, config: Mapping, name: str = "LArTPCDNN",
                           input_name: str = "deposits") -> keras.Model:
    """The point model ``config["Model"]`` sized by the :data:`dlkit.models.CONFIG_DEFAULTS` entries of
    ``config`` (``PointWidth``, ``PointDepth``, ``Neighbours``, ``Heads``, ``PairBias``, ``Pooling``), on the
    inputs ``input_name`` (B, M, ``n_features``) and ``input_name_mask``, with one softmax output ``classes``
    (a single output, like :func:`build_classifier`'s, so loss, metrics and analysis need no dict)."""
    from dlkit.models import build, params_from_config

    kind = check_model_name(config["Model"])
    if kind is None:
        raise ValueError(f"build_point_classifier: Model {config['Model']!r} is not a point model")
    if n_classes < 2:
        raise ValueError(f"build_point_classifier needs >= 2 classes, got {n_classes}")
    for key in ("PointWidth", "PointDepth", "Neighbours", "Heads"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"config entry {key!r} = {value!r}; expected a positive integer")
    if kind == "transformer" and config["PointWidth"] % config["Heads"]:
        raise ConfigError(f"config entry 'Heads' = {config['Heads']!r}: the transformer's width PointWidth = "
                          f"{config['PointWidth']} must be a multiple of it")
    if config["Pooling"] not in ("mean", "sum", "max"):
        raise ConfigError(f"config entry 'Pooling' = {config['Pooling']!r}; expected 'mean', 'sum' or 'max'")
    try:
        model = build(kind, int(n_features), {"classes": (int(n_classes), "softmax")}, name=input_name,
                      **params_from_config(kind, config))
    except ValueError as exc:
        raise ConfigError(f"config entry 'Model' = {config['Model']!r}: {exc}") from None
    return keras.Model(model.input, model.output["classes"], name=name)


def view_trunk(shape, filters: int = 8, depth: int = 4, activation: str = "relu", batch_norm: bool = False,
               init: str = "glorot_uniform", name: str = "trunk") -> keras.Model:
    """Conv trunk for one (wires, ticks) image: a 5x5/2 conv and a 2x2 max-pool (240 x 256 -> 60 x 64, cheap
    on a CPU), then ``depth`` x [3x3 conv, 2x2 max-pool] with filters doubling, then global max and average
    pooling concatenated."""
    inp = keras.Input(shape=tuple(shape), name=f"{name}_in")
    x = layers.Reshape((*shape, 1), name=f"{name}_channel")(inp)
    x = layers.Conv2D(filters, 5, strides=2, padding="same", kernel_initializer=init, name=f"{name}_conv0")(x)
    x = layers.Activation(activation, name=f"{name}_act0")(x)
    x = layers.MaxPooling2D(2, name=f"{name}_pool0")(x)
    for i in range(1, depth + 1):
        x = layers.Conv2D(filters * 2 ** min(i, 4), 3, padding="same", kernel_initializer=init,
                          name=f"{name}_conv{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation(activation, name=f"{name}_act{i}")(x)
        if min(x.shape[1:3]) >= 2:
            x = layers.MaxPooling2D(2, name=f"{name}_pool{i}")(x)
    x = layers.Concatenate(name=f"{name}_pooled")([layers.GlobalMaxPooling2D(name=f"{name}_gmax")(x),
                                                   layers.GlobalAveragePooling2D(name=f"{name}_gavg")(x)])
    return keras.Model(inp, x, name=name)


def dense_view(x, width: int, depth: int, pool: int = 4, activation: str = "relu", dropout: float = 0.0,
               batch_norm: bool = False, init: str = "glorot_uniform", name: str = "view"):
    """Dense baseline branch (DLKit's FullyConnectedClassification per view): average-pool ``pool`` x
    ``pool`` (1: none), flatten, then ``depth`` x [BatchNorm?, Dense(width), activation, Dropout?]."""
    if pool and pool > 1:
        x = layers.Reshape((*x.shape[1:], 1), name=f"{name}_channel")(x)
        x = layers.AveragePooling2D(pool, name=f"{name}_pool")(x)
    x = layers.Flatten(name=f"{name}_flatten")(x)
    for i in range(depth):
        if batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Dense(width, kernel_initializer=init, name=f"{name}_dense{i}")(x)
        x = layers.Activation(activation, name=f"{name}_act{i}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"{name}_dropout{i}")(x)
    return x


def build_classifier(input_shapes: Mapping[str, tuple], n_classes: int, Model: str = "CNN", Width: int = 64,
                     Depth: int = 4, Filters: int = 8, SharedTrunk: bool = True, DensePool: int = 4,
                     activation: str = "relu", Dropout: float = 0.0, BatchNormalization: bool = False,
                     WeightInitialization: str = "glorot_uniform", name: str = "LArTPCDNN") -> keras.Model:
    """Views in ``input_shapes`` order -> per-view branch -> concatenate -> Dense(Width) -> softmax.

    ``Model="CNN"``: :func:`view_trunk` per view (``Depth`` conv blocks of ``Filters`` doubling, shared
    weights unless ``SharedTrunk=False``) then one hidden Dense(Width). ``Model="Dense"``:
    :func:`dense_view` per view (``Depth`` hidden layers of ``Width``).
    """
    if Model not in MODEL_TYPES:
        raise ConfigError(f"config entry 'Model' = {Model!r}; expected one of {MODEL_TYPES}")
    if not input_shapes:
        raise ValueError("build_classifier needs at least one view")
    if n_classes < 2:
        raise ValueError(f"build_classifier needs >= 2 classes, got {n_classes}")
    for key, value in (("Width", Width), ("Depth", Depth), ("Filters", Filters), ("DensePool", DensePool)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "Depth" else 1):
            raise ConfigError(f"config entry {key!r} = {value!r}; expected a positive integer")
    init = WeightInitialization
    inputs = [keras.Input(shape=tuple(shape), name=key) for key, shape in input_shapes.items()]
    branches = []
    if Model == "CNN":
        shapes = {tuple(s) for s in input_shapes.values()}
        trunk = None
        for key, inp in zip(input_shapes, inputs):
            if trunk is None or not SharedTrunk or len(shapes) > 1:
                trunk = view_trunk(tuple(inp.shape[1:]), Filters, Depth, activation, BatchNormalization, init,
                                   name="trunk" if SharedTrunk and len(shapes) == 1 else f"{key}_trunk")
            branches.append(trunk(inp))
    else:
        for key, inp in zip(input_shapes, inputs):
            branches.append(dense_view(inp, Width, Depth, DensePool, activation, Dropout, BatchNormalization, init,
                                       name=key))
    x = branches[0] if len(branches) == 1 else layers.Concatenate(name="merge")(branches)
    if Model == "CNN":
        x = layers.Dense(Width, activation=activation, kernel_initializer=init, name="head_dense")(x)
        if Dropout:
            x = layers.Dropout(Dropout, name="head_dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", kernel_initializer=init, name="classes")(x)
    return keras.Model(inputs, outputs, name=name)


class LArClassifier(ModelWrapper):
    """ModelWrapper building :func:`build_classifier` from ``Config`` plus the data's shapes and classes."""

    def __init__(self, Name, input_shapes: Mapping[str, tuple], n_classes: int, **kwargs):
        super().__init__(Name, **kwargs)
        self.input_shapes = dict(input_shapes)
        self.n_classes = n_classes

    def Build(self):  # noqa: N802 - DLKit's API
        c = self.Config
        if check_model_name(c["Model"]) is not None:
            points = next(shape for shape in self.input_shapes.values() if len(shape) == 2)
            self.Model = build_point_classifier(points[-1], self.n_classes, c, name=self.Name.replace(".", "_"))
            self.MetaData.update({"input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
                                  "N_classes": self.n_classes, "Parameters": int(self.Model.count_params())})
            return self.Model
        self.Model = build_classifier(
            self.input_shapes, self.n_classes, Model=c["Model"], Width=c["Width"], Depth=c["Depth"],
            Filters=c["Filters"], SharedTrunk=c["SharedTrunk"], DensePool=c["DensePool"],
            activation=c["activation"], Dropout=c["Dropout"],
            BatchNormalization=c["BatchNormalization"],
            WeightInitialization=c["WeightInitialization"], name=self.Name.replace(".", "_"),
        )
        self.MetaData.update({"input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
                              "N_classes": self.n_classes, "Parameters": int(self.Model.count_params())})
        return self.Model
