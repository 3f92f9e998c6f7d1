"""calodnn energy-regression models: the calibrations of the talks and a DNN on the cells.

Every model maps the calorimeter images (``ECAL`` (X, Y, L), ``HCAL`` ...; normalised in the readers so that
the plain sum of the cells is about ``E / EnergyScale``) to the energy in GeV:

- ``Linear``: the paper's "simple calibration": the sum of all cells times one fitted scale (no offset).
- ``PerChannel``: CALICE's single "convolution the size of the detector" (seed 001): one trainable weight
  per cell, i.e. a weighted sum of all channels, started from the plain sum.
- ``LayerMLP``: BHCal's MLP on per-layer sums (seed 000), ``E = C(w1 L1 + w2 L2 + ... + b)`` made deep.
- ``Dense``: a DNN on the cells: dense branches per calorimeter (as the classifier) on the cells.
- ``CNN``: as ``Dense`` with a 3D-convolutional ECAL branch.
- ``DeepSets``, ``ParticleNet``, ``Transformer``: a point model on the hit lists (:func:`calodnn.models.point_network`),
  whose energy head starts from the ECAL and HCAL hit sums divided by ``ECALNorm``/``HCALNorm``.

The three learned models add their network's output to a trainable weighted sum of the per-layer energies
started at the plain sum (:func:`regression_head`): training starts from the linear calibration and learns
the per-layer weights and the shape-dependent corrections (non-compensation, leakage), which converges in
a few epochs where learning the sum from random weights takes hundreds.

The output head follows the loss: one unit (the energy) or, for ``GaussianNLL``, two (``mu``,
``log sigma^2``; :func:`dlkit.losses.split_gaussian_prediction` gets ``(mu, sigma)`` back). The network works
in units of ``EnergyScale`` GeV and a final ``Rescaling`` brings the energy to GeV, so every loss sees GeV.
Only built-in Keras layers are used: saved models load in safe mode on any backend::

    model = build_regressor({"ECAL": (25, 25, 25), "HCAL": (5, 5, 60)}, Model="LayerMLP", Width=64, Depth=2)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import keras
import numpy as np
from keras import layers

from dlkit import ModelWrapper
from dlkit.losses import get_loss, gaussian_nll

from calodnn.models import POINT_MODELS, cnn3d_branch, dense_branch, point_network

__all__ = ["REGRESSION_MODELS", "layer_sums", "regression_head", "build_regressor", "n_outputs",
           "fit_linear_scale", "CaloRegressor"]

REGRESSION_MODELS = ("Linear", "PerChannel", "LayerMLP", "Dense", "CNN", *POINT_MODELS)


def n_outputs(loss) -> int:
    """Output units the loss needs: 2 (mu, log sigma^2) for the Gaussian NLL, else 1."""
    try:
        return 2 if get_loss(loss) is gaussian_nll else 1
    except (TypeError, ValueError):
        return 1


def layer_sums(x, name: str):
    """``(N, X, Y, L) -> (N, L)``: the energy of each layer (sum over the transverse cells).

    GlobalAveragePooling2D with the layers as channels, times the number of cells: no Lambda, so models
    stay loadable in safe mode.
    """
    nx, ny = int(x.shape[1]), int(x.shape[2])
    mean = layers.GlobalAveragePooling2D(name=f"{name}_layer_mean")(x)
    return layers.Rescaling(float(nx * ny), name=f"{name}_layer_sums")(mean)


def regression_head(h=None, n_out: int = 1, energy_scale: float = 100.0, linear=None, use_bias: bool = True,
                    init: str = "glorot_uniform", name: str = "energy"):
    """The energy (GeV): ``(sum(linear) + Dense(1)(h)) * energy_scale``, plus ``log sigma^2`` for n_out=2.

    ``linear`` (optional, (N, k)) enters through a Dense(1) started at all ones: the network starts from the
    plain sum of its columns (e.g. per-layer sums: the linear calibration) and learns the corrections,
    which converges far faster than learning the sum from random weights. ``h`` (optional) are learned
    features, their Dense(1) starts at zero when there is a linear part. ``log sigma^2`` comes from all
    inputs and is shifted by ``2 ln(energy_scale)``, so the network's own outputs stay in EnergyScale units.
    """
    if n_out not in (1, 2):
        raise ValueError(f"a regression head has 1 or 2 outputs, got {n_out}")
    if h is None and linear is None:
        raise ValueError("regression_head needs features h, a linear part, or both")
    parts = []
    if linear is not None:
        parts.append(layers.Dense(1, use_bias=False, kernel_initializer="ones", name=f"{name}_linear")(linear))
    if h is not None:
        parts.append(layers.Dense(1, use_bias=use_bias, name=f"{name}_features",
                                  kernel_initializer="zeros" if linear is not None else init)(h))
    mu = parts[0] if len(parts) == 1 else layers.Add(name=f"{name}_sum")(parts)
    mu = layers.Rescaling(float(energy_scale), name=name if n_out == 1 else f"{name}_mu")(mu)
    if n_out == 1:
        return mu
    both = [t for t in (linear, h) if t is not None]
    z = both[0] if len(both) == 1 else layers.Concatenate(name=f"{name}_log_var_inputs")(both)
    log_var = layers.Dense(1, kernel_initializer="zeros", name=f"{name}_log_var_unscaled")(z)
    log_var = layers.Rescaling(1.0, offset=2.0 * math.log(energy_scale), name=f"{name}_log_var")(log_var)
    return layers.Concatenate(name=name)([mu, log_var])


def _total(parts, name):
    """The sum of the given (N, k) tensors' columns, as an (N, 1) tensor (a frozen all-ones Dense)."""
    x = parts[0] if len(parts) == 1 else layers.Concatenate(name=f"{name}_concat")(parts)
    return layers.Dense(1, use_bias=False, kernel_initializer="ones", trainable=False, name=name)(x)


def build_regressor(input_shapes: Mapping[str, tuple], Model: str = "Dense", Width: int = 64, Depth: int = 2,
                    activation: str = "relu", Dropout: float = 0.0, BatchNormalization: bool = False,
                    WeightInitialization: str = "glorot_uniform", CNNFilters: int = 8,
                    EnergyScale: float = 100.0, n_out: int = 1, name: str = "CaloReg") -> keras.Model:
    """One of :data:`REGRESSION_MODELS` on the given inputs (in ``input_shapes`` order); see the module doc."""
    if Model not in REGRESSION_MODELS:
        raise ValueError(f"config entry 'Model' = {Model!r}; expected one of {REGRESSION_MODELS}")
    if Model in POINT_MODELS:
        raise ValueError(f"build_regressor builds the image models; {Model!r} is a point model (point_network)")
    if not input_shapes:
        raise ValueError("build_regressor needs at least one input (config entries ECAL/HCAL both off?)")
    if not EnergyScale > 0:
        raise ValueError(f"config entry 'EnergyScale' = {EnergyScale!r}; expected a positive number")
    names = list(input_shapes)
    inputs = [keras.Input(shape=tuple(input_shapes[key]), name=key) for key in names]
    head = dict(n_out=n_out, energy_scale=EnergyScale)
    sums = [] if Model == "PerChannel" else [layer_sums(x, key) for key, x in zip(names, inputs)]
    if Model == "Linear":
        out = regression_head(linear=_total(sums, "cell_sum"), **head)
    elif Model == "PerChannel":
        flat = [layers.Flatten(name=f"{key}_flatten")(x) for key, x in zip(names, inputs)]
        x = flat[0] if len(flat) == 1 else layers.Concatenate(name="channels")(flat)
        out = regression_head(linear=x, name="energy", **head)  # one trainable weight per cell
    else:
        x = sums[0] if len(sums) == 1 else layers.Concatenate(name="layer_sums")(sums)
        per_layer = x
        if Model == "LayerMLP":
            for i in range(Depth):
                if BatchNormalization:
                    x = layers.BatchNormalization(name=f"mlp_bn{i}")(x)
                x = layers.Dense(Width, activation=activation, kernel_initializer=WeightInitialization,
                                 name=f"mlp_dense{i}")(x)
                if Dropout:
                    x = layers.Dropout(Dropout, name=f"mlp_dropout{i}")(x)
        else:
            options = dict(activation=activation, dropout=Dropout, batch_norm=BatchNormalization,
                           init=WeightInitialization)
            branches = [x]
            for key, inp in zip(names, inputs):
                if Model == "CNN" and key == "ECAL":
                    branches.append(cnn3d_branch(inp, filters=CNNFilters, depth=Depth, width=Width,
                                                 name=key, **options))
                else:
                    branches.append(dense_branch(inp, Width, Depth, name=key, **options))
            x = layers.Concatenate(name="merge")(branches)
        out = regression_head(x, linear=per_layer, **head)
    return keras.Model(inputs, out, name=name)


def fit_linear_scale(cell_sum, energy, loss: str = "MSE") -> float:
    """The scale k minimising the loss of ``k * cell_sum`` against the true energy (closed form).

    MSE: ``sum(S E) / sum(S^2)``; MRSE weights by 1/E; MSRE by 1/E^2. The ``Linear`` model trained with
    the same loss converges to it; this is the instant version for baselines.
    """
    s = np.asarray(cell_sum, dtype=float).reshape(-1)
    e = np.asarray(energy, dtype=float).reshape(-1)
    weight = {"MSE": np.ones_like(e), "MRSE": 1 / e, "MSRE": 1 / e**2}.get(str(loss).upper())
    if weight is None:
        raise ValueError(f"fit_linear_scale: loss must be MSE, MRSE or MSRE, got {loss!r}")
    return float(np.sum(weight * s * e) / np.sum(weight * s * s))


class CaloRegressor(ModelWrapper):
    """ModelWrapper building :func:`build_regressor` from ``Config`` and the data's input shapes."""

    def __init__(self, Name, input_shapes: Mapping[str, tuple], **kwargs):
        super().__init__(Name, **kwargs)
        self.input_shapes = dict(input_shapes)

    def Build(self):  # noqa: N802 - DLKit's API
        c = self.Config
        if c["Model"] in POINT_MODELS:
            norms = [c[k] if isinstance(c[k], (int, float)) else c["EnergyScale"] for k in ("ECALNorm", "HCALNorm")]
            self.Model = point_network(c, n_energy=n_outputs(c["loss"]), energy_scale=c["EnergyScale"],
                                       energy_norms=norms, name=self.Name.replace(".", "_"))
        else:
            self.Model = build_regressor(
                self.input_shapes, Model=c["Model"], Width=c["Width"], Depth=c["Depth"],
                activation=c["activation"], Dropout=c["Dropout"],
                BatchNormalization=c["BatchNormalization"],
                WeightInitialization=c["WeightInitialization"],
                CNNFilters=c["CNNFilters"], EnergyScale=c["EnergyScale"],
                n_out=n_outputs(c["loss"]), name=self.Name.replace(".", "_"),
            )
        self.MetaData.update({"input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
                              "N_outputs": int(self.Model.outputs[0].shape[-1])})
        return self.Model
