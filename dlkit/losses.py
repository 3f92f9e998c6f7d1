"""Physics losses and metrics for energy regression, plus name look-up for configs.

Every loss here is registered with Keras under the package ``"dlkit"`` (for example
``"dlkit>msre"``), so a model saved while compiled with one of them reloads with
``keras.saving.load_model(path)`` and no ``custom_objects``, as long as ``dlkit.losses`` has
been imported first.

All function losses take ``(y_true, y_pred)`` and return one value per sample (the mean over
the last axis), like Keras' own losses. Shapes are aligned before any arithmetic: a target of
shape ``(N,)`` against a prediction of shape ``(N, 1)`` is compared element by element, never
broadcast to ``(N, N)``.

Config files name losses by string; :func:`get_loss` and :func:`get_metric` turn such names
into objects::

    model.compile(optimizer="adam", loss=get_loss("MSRE"), metrics=[get_metric("MBE")])
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math

import keras
import numpy as np
from keras import ops

logger = logging.getLogger(__name__)

__all__ = [
    "mean_squared_error",
    "mean_absolute_error",
    "mean_bias_error",
    "msre",
    "mrse",
    "gaussian_nll",
    "split_gaussian_prediction",
    "ResolutionChi2",
    "get_loss",
    "get_metric",
    "available_losses",
    "available_metrics",
]

_register = keras.saving.register_keras_serializable(package="dlkit")
_LOG_2PI = math.log(2.0 * math.pi)


def _epsilon():
    return keras.config.epsilon()


def _align(y_true, y_pred):
    """Return ``(y_true, y_pred)`` as tensors of equal rank (at least 2) and y_pred's dtype.

    When the ranks differ by one, the lower-rank tensor gets a trailing axis, so ``(N,)``
    against ``(N, 1)`` compares element-wise instead of broadcasting to ``(N, N)``. Rank-1
    inputs become ``(N, 1)`` so that the per-sample reduction over the last axis keeps ``N``.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    rank_true, rank_pred = len(y_true.shape), len(y_pred.shape)
    if rank_true == rank_pred + 1:
        y_pred = ops.expand_dims(y_pred, -1)
    elif rank_pred == rank_true + 1:
        y_true = ops.expand_dims(y_true, -1)
    if len(y_pred.shape) < 2:
        y_true = ops.reshape(y_true, (-1, 1))
        y_pred = ops.reshape(y_pred, (-1, 1))
    return y_true, y_pred


def _safe_denominator(y_true):
    """``max(|y_true|, epsilon)``: keeps relative errors finite for a zero target."""
    return ops.maximum(ops.abs(y_true), _epsilon())


# ---------------------------------------------------------------------------------------------
# Function losses and metrics
# ---------------------------------------------------------------------------------------------


@_register
def mean_squared_error(y_true, y_pred):
    """Mean squared error, ``mean((y_pred - y_true)^2)`` over the last axis.

    Parameters
    ----------
    y_true, y_pred : array-like
        Targets and predictions; ``(N,)`` and ``(N, 1)`` may be mixed.

    Returns
    -------
    tensor
        One value per sample, shape ``(N,)``.
    """
    y_true, y_pred = _align(y_true, y_pred)
    return ops.mean(ops.square(y_pred - y_true), axis=-1)


@_register
def mean_absolute_error(y_true, y_pred):
    """Mean absolute error, ``mean(|y_pred - y_true|)`` over the last axis (per sample)."""
    y_true, y_pred = _align(y_true, y_pred)
    return ops.mean(ops.abs(y_pred - y_true), axis=-1)


@_register
def mean_bias_error(y_true, y_pred):
    """Mean bias, ``mean(y_pred - y_true)`` over the last axis (per sample).

    Meant as a *metric* (``metrics=[mean_bias_error]``): it is signed, so it shows whether an
    energy regression over- or under-estimates on average. As a loss it is unbounded below.
    """
    y_true, y_pred = _align(y_true, y_pred)
    return ops.mean(y_pred - y_true, axis=-1)


@_register
def msre(y_true, y_pred):
    """Mean squared relative error, ``mean(((y_pred - y_true) / y_true)^2)`` per sample.

    Weights every event by ``1/E^2``, i.e. fits the relative resolution ``sigma/E``. The
    denominator is ``max(|y_true|, keras.config.epsilon())`` so a zero target stays finite.
    """
    y_true, y_pred = _align(y_true, y_pred)
    return ops.mean(ops.square((y_pred - y_true) / _safe_denominator(y_true)), axis=-1)


@_register
def mrse(y_true, y_pred):
    """Mean root-scaled error, ``mean(((y_true - y_pred) / sqrt(y_true))^2)`` per sample.

    Equal to ``(y_true - y_pred)^2 / y_true``: weights events by ``1/E``, the natural scale of
    a stochastic-term dominated calorimeter (``sigma^2 ~ E``). The denominator is
    ``max(|y_true|, keras.config.epsilon())``.
    """
    y_true, y_pred = _align(y_true, y_pred)
    return ops.mean(ops.square(y_true - y_pred) / _safe_denominator(y_true), axis=-1)


@_register
def gaussian_nll(y_true, y_pred):
    """Gaussian negative log-likelihood for a model that predicts a value and its uncertainty.

    Output convention: ``y_pred[..., 0] = mu`` (the energy) and ``y_pred[..., 1] = log(sigma^2)``
    (the log-variance, a raw linear output: no positivity constraint is needed and the loss
    stays numerically stable). Use a ``Dense(2)`` output layer with no activation, and
    :func:`split_gaussian_prediction` to get ``(mu, sigma)`` back.

    The full per-event NLL, including the constant, is returned::

        NLL = 0.5 * (log(sigma^2) + (y - mu)^2 / sigma^2 + log(2 pi))

    so the value equals ``-scipy.stats.norm.logpdf(y, mu, sigma)`` and is comparable between
    models (the constant does not change gradients).

    Parameters
    ----------
    y_true : array-like
        Targets of shape ``(N,)`` or ``(N, 1)``; with ``(N, 2)`` (Keras-2 style padded targets)
        the first column is used.
    y_pred : array-like
        Shape ``(N, 2)``: ``[mu, log_variance]``.

    Returns
    -------
    tensor
        One NLL per sample, shape ``(N,)``.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    last = y_pred.shape[-1] if len(y_pred.shape) else None
    if last is not None and last != 2:
        raise ValueError(
            f"gaussian_nll expects y_pred[..., 0] = mu and y_pred[..., 1] = log(sigma^2), i.e. a last "
            f"dimension of 2; got y_pred shape {tuple(y_pred.shape)}"
        )
    mu = y_pred[..., 0]
    log_var = y_pred[..., 1]
    if len(y_true.shape) == len(y_pred.shape):
        y_true = y_true[..., 0]
    return 0.5 * (log_var + ops.square(y_true - mu) * ops.exp(-log_var) + _LOG_2PI)


def split_gaussian_prediction(y_pred):
    """Split a :func:`gaussian_nll` model output into ``(mu, sigma)`` numpy arrays.

    Parameters
    ----------
    y_pred : array-like, shape (N, 2)
        ``[mu, log(sigma^2)]`` per event, e.g. ``model.predict(x)``.

    Returns
    -------
    mu, sigma : numpy.ndarray, shape (N,)
    """
    y_pred = np.asarray(keras.ops.convert_to_numpy(y_pred))
    return y_pred[..., 0], np.exp(0.5 * y_pred[..., 1])


# ---------------------------------------------------------------------------------------------
# Loss classes
# ---------------------------------------------------------------------------------------------


@_register
class ResolutionChi2(keras.losses.Loss):
    """Chi-square with a calorimeter-resolution error model.

    ``chi2 = (y_pred - y_true)^2 / sigma(E)^2`` with ``sigma(E)^2 = a^2 E + b^2 + c^2 E^2`` and
    ``E = y_true`` in GeV, i.e. ``sigma/E = a/sqrt(E) (+) b/E (+) c`` (stochastic, noise and
    constant terms added in quadrature). ``sigma^2`` is floored at ``min_variance`` so that
    ``E -> 0`` (with ``b = 0``) cannot divide by zero.

    Parameters
    ----------
    a : float, default 0.15
        Stochastic term in GeV^(1/2) (15 %/sqrt(E), a typical EM calorimeter).
    b : float, default 0.0
        Noise term in GeV.
    c : float, default 0.01
        Constant term (1 %).
    min_variance : float, default 1e-6
        Floor on ``sigma^2`` in GeV^2; must be > 0.
    name, reduction, dtype
        As for :class:`keras.losses.Loss`.

    Examples
    --------
    >>> model.compile(optimizer="adam", loss=ResolutionChi2(a=0.1, c=0.005))
    """

    def __init__(
        self,
        a=0.15,
        b=0.0,
        c=0.01,
        min_variance=1e-6,
        name="resolution_chi2",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        for arg, value in (("a", a), ("b", b), ("c", c)):
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"ResolutionChi2: {arg} must be a finite number >= 0, got {value!r}")
        if not np.isfinite(min_variance) or min_variance <= 0:
            raise ValueError(f"ResolutionChi2: min_variance must be > 0, got {min_variance!r}")
        self.a = float(a)
        self.b = float(b)
        self.c = float(c)
        self.min_variance = float(min_variance)

    def variance(self, energy):
        """Return ``sigma(E)^2 = max(a^2 E + b^2 + c^2 E^2, min_variance)``."""
        energy = ops.convert_to_tensor(energy)
        var = self.a**2 * energy + self.b**2 + self.c**2 * ops.square(energy)
        return ops.maximum(var, self.min_variance)

    def call(self, y_true, y_pred):
        y_true, y_pred = _align(y_true, y_pred)
        return ops.mean(ops.square(y_pred - y_true) / self.variance(y_true), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update({"a": self.a, "b": self.b, "c": self.c, "min_variance": self.min_variance})
        return config


# ---------------------------------------------------------------------------------------------
# Look-up by name
# ---------------------------------------------------------------------------------------------


def _norm(name):
    return "".join(ch for ch in name.lower() if ch.isalnum())


# Canonical dlkit name -> (object or class, aliases). Matching ignores case, "_", "-" and spaces.
_LOSSES = {
    "MSE": (mean_squared_error, ("mean_squared_error",)),
    "MAE": (mean_absolute_error, ("mean_absolute_error",)),
    "MSRE": (msre, ("mean_squared_relative_error",)),
    "MRSE": (mrse, ("mean_root_scaled_error",)),
    "GaussianNLL": (gaussian_nll, ("gaussian_nll",)),
    "ResolutionChi2": (ResolutionChi2, ("resolution_chi2",)),
    # Keras 2 name from the original DLKit loss menu; Keras 3 calls it cosine_similarity.
    "cosine_proximity": (keras.losses.cosine_similarity, ()),
}
_METRICS = {
    "MBE": (mean_bias_error, ("mean_bias_error",)),
    "MSE": (mean_squared_error, ("mean_squared_error",)),
    "MAE": (mean_absolute_error, ("mean_absolute_error",)),
    "MSRE": (msre, ("mean_squared_relative_error",)),
    "MRSE": (mrse, ("mean_root_scaled_error",)),
    "GaussianNLL": (gaussian_nll, ("gaussian_nll",)),
}
# Strings that Model.compile resolves itself depending on the output and loss; keep them strings.
_COMPILE_METRIC_STRINGS = ("accuracy", "acc", "crossentropy", "ce")


def _index(table):
    index = {}
    for canonical, (obj, aliases) in table.items():
        for alias in (canonical, *aliases):
            index[_norm(alias)] = obj
    return index


_LOSS_INDEX = _index(_LOSSES)
_METRIC_INDEX = _index(_METRICS)


def available_losses():
    """Return the canonical dlkit loss names accepted by :func:`get_loss` (Keras names also work)."""
    return list(_LOSSES)


def available_metrics():
    """Return the canonical dlkit metric names accepted by :func:`get_metric`."""
    return list(_METRICS)


def _public_names(module):
    skip = {"get", "serialize", "deserialize", "Loss", "Metric", "LossFunctionWrapper", "Reduction"}
    return [n for n in dir(module) if not n.startswith("_") and n not in skip]


def _unknown(kind, name, dlkit_names, keras_module):
    candidates = list(dlkit_names) + _public_names(keras_module)
    by_lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    hint = f" Did you mean {by_lower[close[0]]!r}?" if close else ""
    return ValueError(
        f"Unknown {kind} {name!r}.{hint} Valid dlkit {kind} names: {', '.join(dlkit_names)}; "
        f"any keras.{keras_module.__name__.rsplit('.', 1)[-1]} name is accepted too."
    )


def get_loss(name_or_obj):
    """Return a loss from a DLKit/config name, a Keras loss name, or a loss object.

    Parameters
    ----------
    name_or_obj : str, callable, keras.losses.Loss subclass or dict
        - A dlkit name, case-insensitive and ignoring ``_``/``-``: ``"MSE"``,
          ``"mean_squared_error"``, ``"MAE"``, ``"MSRE"``, ``"MRSE"``, ``"GaussianNLL"``,
          ``"ResolutionChi2"`` (instantiated with its defaults), ``"cosine_proximity"``
          (the Keras-2 name of ``cosine_similarity``). dlkit names win over Keras ones.
        - Any other Keras loss name, e.g. ``"categorical_crossentropy"``.
        - A callable (function or ``Loss`` instance) is returned unchanged; a ``Loss`` class is
          instantiated with its defaults; a dict is a Keras serialized loss config.

    Returns
    -------
    callable
        A loss function or ``keras.losses.Loss`` instance.

    Raises
    ------
    ValueError
        For an unknown name; the message lists the dlkit names and the closest match.
    """
    if isinstance(name_or_obj, str):
        obj = _LOSS_INDEX.get(_norm(name_or_obj))
        if obj is None:
            obj = _keras_get(keras.losses.get, name_or_obj)
        if obj is None:
            raise _unknown("loss", name_or_obj, available_losses(), keras.losses)
        return obj() if inspect.isclass(obj) else obj
    if isinstance(name_or_obj, dict):
        return keras.losses.get(name_or_obj)
    if inspect.isclass(name_or_obj) and issubclass(name_or_obj, keras.losses.Loss):
        return name_or_obj()
    if callable(name_or_obj):
        return name_or_obj
    raise TypeError(f"get_loss expects a name, a callable or a Loss, got {type(name_or_obj).__name__}")


def get_metric(name_or_obj):
    """Return a metric from a DLKit/config name, a Keras metric name, or a metric object.

    Parameters
    ----------
    name_or_obj : str, callable or keras.metrics.Metric
        - A dlkit name (case-insensitive): ``"MBE"``/``"mean_bias_error"``, and the function
          losses ``"MSE"``, ``"MAE"``, ``"MSRE"``, ``"MRSE"``, ``"GaussianNLL"``.
        - A Keras metric name is validated and returned *as the string*, so that
          ``Model.compile`` resolves it: ``"accuracy"`` then picks categorical, sparse or
          binary accuracy from the model's output and loss.
        - A callable or ``Metric`` instance is returned unchanged.

    Raises
    ------
    ValueError
        For an unknown name; the message lists the dlkit names and the closest match.
    """
    if isinstance(name_or_obj, str):
        obj = _METRIC_INDEX.get(_norm(name_or_obj))
        if obj is not None:
            return obj
        if name_or_obj in _COMPILE_METRIC_STRINGS:
            return name_or_obj
        for candidate in (name_or_obj, name_or_obj.lower()):
            if _keras_get(keras.metrics.get, candidate) is not None:
                return candidate
        raise _unknown("metric", name_or_obj, available_metrics(), keras.metrics)
    if callable(name_or_obj):
        return name_or_obj
    raise TypeError(f"get_metric expects a name or a callable, got {type(name_or_obj).__name__}")


def _keras_get(getter, name):
    """``getter(name)``, also trying the lower-case name; None when Keras does not know it."""
    for candidate in dict.fromkeys((name, name.lower())):
        try:
            return getter(candidate)
        except (ValueError, TypeError):
            continue
    return None
