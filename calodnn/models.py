"""calodnn models: dense branches per calorimeter merged into a softmax, a 3D-CNN ECAL branch, and the point
models of :mod:`dlkit.models` on the hit lists (``Model`` = ``DeepSets``, ``ParticleNet``, ``Transformer``), alone
or as one multi-task network with a class head and an energy head (config ``MultiTask``).

Built with the Keras functional API and ``keras.layers`` only, so any backend works. Every
hyperparameter comes from the resolved configuration and really changes the model (DLKit's HEAD
built every scan point with the base Width/Depth; here the scan point is the model)::

    model = build_classifier({"ECAL": (25, 25, 25), "HCAL": (5, 5, 60)}, n_classes=4,
                             Width=128, Depth=2, Model="Dense")
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
from keras import layers

from dlkit import ModelWrapper

__all__ = ["dense_branch", "cnn3d_branch", "build_classifier", "CaloClassifier", "MODEL_TYPES", "POINT_MODELS",
           "point_network", "ENERGY_SCALE"]

#: The point models a ``Model`` entry may name (:mod:`dlkit.models`, read from hit lists).
POINT_MODELS = ("DeepSets", "ParticleNet", "Transformer")
MODEL_TYPES = ("Dense", "CNN", *POINT_MODELS)
#: GeV per unit of a multi-task network's energy output (as the regression's ``EnergyScale``).
ENERGY_SCALE = 100.0


def point_network(config: Mapping, n_classes: int | None = None, n_energy: int = 0, energy_scale: float = ENERGY_SCALE,
                  energy_norms=(ENERGY_SCALE, ENERGY_SCALE), name: str = "CaloPoints") -> keras.Model:
    """A :mod:`dlkit.models` encoder (config ``Model`` and the ``Point*`` entries) on the ``hits`` collection,
    its event vector joined by the log of the calorimeters' energies (:data:`calodnn.data.HIT_SUMS`, global
    inputs), with a softmax head ``classes`` (``n_classes``) and/or an energy head ``energy`` (``n_energy`` = 1,
    or 2 for a Gaussian NLL's ``(mu, log sigma^2)``) that starts from those energies divided by ``energy_norms``
    (in units of ``energy_scale``, as the regression's ``ECALNorm``/``HCALNorm``;
    :func:`calodnn.calibration.regression_head`). One head: its tensor is the output; two:
    ``{"classes": ..., "energy": ...}``."""
    from keras import ops

    from calodnn.calibration import regression_head
    from calodnn.data import HIT_FIELDS, HIT_SUMS, HITS
    from dlkit.models import ENCODERS, params_from_config, point_model_kind
    from dlkit.models.base import head, inputs

    kind = point_model_kind(config["Model"])
    params = params_from_config(kind, config)
    widths = params.pop("head_widths")
    points, mask = inputs(HITS, len(HIT_FIELDS))
    totals = {k: keras.Input((), name=k, dtype="float32") for k in HIT_SUMS}
    energies = ops.stack([totals[k] for k in HIT_SUMS], axis=-1)                       # (B, 2) GeV
    event = ENCODERS[kind][0](points, mask, **params)
    event = layers.Concatenate(name="event_and_totals")([event, ops.log10(ops.maximum(energies, 1e-3))])
    outputs = {}
    if n_classes:
        outputs["classes"] = head(event, widths, n_classes, "softmax", "classes")
    if n_energy:
        h = event
        for i, width in enumerate(widths):
            h = layers.Dense(width, activation="relu", name=f"energy_hidden{i}")(h)
        linear = energies / ops.convert_to_tensor([float(n) for n in energy_norms])
        outputs["energy"] = regression_head(h, n_energy, energy_scale, linear=linear, name="energy")
    if not outputs:
        raise ValueError("point_network needs a class head, an energy head or both")
    out = next(iter(outputs.values())) if len(outputs) == 1 else outputs
    return keras.Model({HITS: points, f"{HITS}_mask": mask, **totals}, out, name=name)


def dense_branch(x, width: int, depth: int, activation: str = "relu", dropout: float = 0.0,
                 batch_norm: bool = False, init: str = "glorot_uniform", name: str = "branch"):
    """Flatten, then ``depth`` x [BatchNorm?, Dense(width), activation, Dropout?] (DLKit's Fully3DImage)."""
    x = layers.Flatten(name=f"{name}_flatten")(x)
    for i in range(depth):
        if batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Dense(width, kernel_initializer=init, name=f"{name}_dense{i}")(x)
        x = layers.Activation(activation, name=f"{name}_act{i}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"{name}_dropout{i}")(x)
    return x


def cnn3d_branch(x, filters: int = 16, depth: int = 2, activation: str = "relu", dropout: float = 0.0,
                 batch_norm: bool = False, init: str = "glorot_uniform", width: int = 64, name: str = "ecal_cnn"):
    """A 3D convolutional trunk for the ECAL image: ``depth`` x [Conv3D 3^3, pool 2], then Dense(width).

    The number of classes is not part of the branch (DLKit's Convolutional3D hard-coded 2).
    """
    x = layers.Reshape((*x.shape[1:], 1), name=f"{name}_channel")(x)
    for i in range(depth):
        x = layers.Conv3D(filters * 2**i, 3, padding="same", kernel_initializer=init, name=f"{name}_conv{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation(activation, name=f"{name}_act{i}")(x)
        if min(x.shape[1:4]) >= 2:
            x = layers.MaxPooling3D(2, name=f"{name}_pool{i}")(x)
    x = layers.Flatten(name=f"{name}_flatten")(x)
    x = layers.Dense(width, activation=activation, kernel_initializer=init, name=f"{name}_dense")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


def build_classifier(input_shapes: Mapping[str, tuple], n_classes: int, Model: str = "Dense", Width: int = 64,
                     Depth: int = 2, activation: str = "relu", Dropout: float = 0.0, BatchNormalization: bool = False,
                     WeightInitialization: str = "glorot_uniform", CNNFilters: int = 8,
                     name: str = "CaloDNN") -> keras.Model:
    """One branch per calorimeter input (in ``input_shapes`` order), concatenated, then Dense(softmax).

    ``Model="CNN"`` makes the ECAL branch convolutional; other inputs stay dense.
    """
    if Model not in MODEL_TYPES:
        raise ValueError(f"config entry 'Model' = {Model!r}; expected one of {MODEL_TYPES}")
    if Model in POINT_MODELS:
        raise ValueError(f"build_classifier builds the image models; {Model!r} is a point model (point_network)")
    if not input_shapes:
        raise ValueError("build_classifier needs at least one input (config entries ECAL/HCAL both off?)")
    if n_classes < 2:
        raise ValueError(f"build_classifier needs >= 2 classes, got {n_classes}")
    inputs, branches = [], []
    options = dict(activation=activation, dropout=Dropout, batch_norm=BatchNormalization, init=WeightInitialization)
    for key, shape in input_shapes.items():
        inp = keras.Input(shape=tuple(shape), name=key)
        inputs.append(inp)
        if Model == "CNN" and key == "ECAL":
            branches.append(cnn3d_branch(inp, filters=CNNFilters, depth=Depth, width=Width, name=key, **options))
        else:
            branches.append(dense_branch(inp, Width, Depth, name=key, **options))
    merged = branches[0] if len(branches) == 1 else layers.Concatenate(name="merge")(branches)
    outputs = layers.Dense(n_classes, activation="softmax", kernel_initializer=WeightInitialization,
                           name="classes")(merged)
    return keras.Model(inputs, outputs, name=name)


class CaloClassifier(ModelWrapper):
    """ModelWrapper building :func:`build_classifier` from ``Config`` plus the data's shapes and classes."""

    def __init__(self, Name, input_shapes: Mapping[str, tuple], n_classes: int, **kwargs):
        super().__init__(Name, **kwargs)
        self.input_shapes = dict(input_shapes)
        self.n_classes = n_classes

    def Build(self):  # noqa: N802 - DLKit's API
        c = self.Config
        if c["Model"] in POINT_MODELS:
            self.Model = point_network(c, self.n_classes, n_energy=1 if c.get("MultiTask") else 0,
                                       name=self.Name.replace(".", "_"))
        else:
            self.Model = build_classifier(
                self.input_shapes, self.n_classes, Model=c["Model"], Width=c["Width"], Depth=c["Depth"],
                activation=c["activation"], Dropout=c["Dropout"],
                BatchNormalization=c["BatchNormalization"],
                WeightInitialization=c["WeightInitialization"],
                CNNFilters=c["CNNFilters"], name=self.Name.replace(".", "_"),
            )
        self.MetaData.update({"input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
                              "N_classes": self.n_classes})
        return self.Model
