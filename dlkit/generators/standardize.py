"""Standardization with constants fitted on the training sample: a picklable pre-process (numpy only).

:class:`Standardize` maps ``x -> (x - center) / scale`` in the reader processes, with constants fitted once
by :func:`fit_standardize` on training events (a bounded, seeded sample: :func:`dlkit.generators.fitting.
sample_batches`) and stored as JSON (:meth:`Standardize.to_json`, e.g. in a run's ``MetaData.json``).

Which constants an array gets:

- a *collection* (an array ``hits`` (N, M, F) with a companion ``hits_mask`` (N, M) in the batch): one
  center/scale per feature (the last axis), fitted over the valid points only (mask True); applied only
  where the mask is True, so padded rows stay exactly at their padding value;
- an array named in ``per_feature``: one center/scale per entry of its last axis, over all other axes;
- any other array (an image, a scalar per event): one center/scale over all its values.

Methods: ``"standard"``: center = mean, scale = the *population* standard deviation (``ddof=0``, numpy's
``np.std`` default), exact (merged batch by batch in float64); ``"robust"``: center = median, scale =
IQR / 1.349 (the interquartile range of a normal distribution is 1.349 sigma), computed with numpy's
``np.median``/``np.percentile`` (linear interpolation) over the valid values - exactly over all of them
while at most ``max_values`` values (rows of features) were seen, else over a uniform seeded subsample of
``max_values`` of them. A scale of 0 (a constant feature) becomes 1, with a warning.

>>> import numpy as np
>>> batch = {"hits": np.array([[[1., 10.], [3., 30.], [0., 0.]]], np.float32),
...          "hits_mask": np.array([[True, True, False]]), "energy": np.array([2., 4.], np.float32)}
>>> std = fit_standardize(batch, ["hits"])        # per feature over the two valid points
>>> std.constants["hits"]["center"], std.constants["hits"]["scale"]
([2.0, 20.0], [1.0, 10.0])
>>> out = std(batch)
>>> out["hits"][0].tolist()                       # the padded row stays 0
[[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]
>>> Standardize.from_json(std.to_json()).constants == std.constants
True

With fixed constants first (:class:`~dlkit.generators.preprocess.Normalize`) chain them, the fit seeing what
:class:`Standardize` will see: ``fit_standardize(sample_batches(train, preprocess=norm), [...])`` and
``Chain(norm, std)`` as the generators' ``preprocess``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Mapping

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Standardize", "fit_standardize", "METHODS", "ROBUST_IQR_SIGMA", "MASK_SUFFIX"]

#: The fit methods: mean and population std, or median and IQR / 1.349.
METHODS = ("standard", "robust")
#: The interquartile range of a normal distribution in units of its sigma: the robust scale is IQR / this.
ROBUST_IQR_SIGMA = 1.349
#: A collection ``name`` has its validity mask in ``name + MASK_SUFFIX``.
MASK_SUFFIX = "_mask"
_KEY_VERSION = 1  # bump when Standardize's arithmetic changes (its cache key does not see the code)


def _check_constants(name, spec) -> dict:
    """One array's constants, as plain floats, checked; a scale of 0 becomes 1 (with a warning)."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"Standardize: constants of {name!r} must be a dict, got {type(spec).__name__}")
    method = spec.get("method", "standard")
    if method not in METHODS:
        raise ValueError(f"Standardize: method of {name!r} must be one of {METHODS}, got {method!r}")
    center = [float(c) for c in np.atleast_1d(np.asarray(spec["center"], np.float64))]
    scale = [float(s) for s in np.atleast_1d(np.asarray(spec["scale"], np.float64))]
    if len(center) != len(scale) or not center:
        raise ValueError(f"Standardize: {name!r} has {len(center)} centers and {len(scale)} scales")
    if not all(math.isfinite(v) for v in center + scale) or any(s < 0 for s in scale):
        raise ValueError(f"Standardize: constants of {name!r} must be finite, scales >= 0: {center}, {scale}")
    zero = [i for i, s in enumerate(scale) if s == 0]
    if zero:
        logger.warning("Standardize: %r has scale 0 (a constant value) at feature(s) %s; using scale 1 there",
                       name, zero)
        scale = [1.0 if s == 0 else s for s in scale]
    per_feature = bool(spec.get("per_feature", len(center) > 1))
    if not per_feature and len(center) != 1:
        raise ValueError(f"Standardize: {name!r} is not per feature but has {len(center)} constants")
    out = {"method": method, "center": center, "scale": scale, "per_feature": per_feature}
    if "count" in spec:
        out["count"] = int(spec["count"])
    return out


class Standardize:
    """Picklable pre-process ``x -> (x - center) / scale`` with fitted constants (see the module docstring).

    ``constants``: ``{array name: {"method": "standard"|"robust", "center": [...], "scale": [...],
    "per_feature": bool, "count": values fitted}}`` (``per_feature`` defaults to more than one constant;
    ``count`` is informative). Float arrays change in place, others become float32; a collection's padded
    entries (mask False) are never touched. A missing array or a feature count that does not match is an
    error at the first batch.
    """

    def __init__(self, constants: Mapping, mask_suffix: str = MASK_SUFFIX):
        self.constants = {str(name): _check_constants(name, spec) for name, spec in dict(constants).items()}
        self.mask_suffix = mask_suffix
        text = json.dumps([_KEY_VERSION, self.constants, mask_suffix], sort_keys=True)
        #: the generator cache's key of this pre-process (its constants; nested in a Chain too deep to be seen)
        self.cache_key = "Standardize:" + hashlib.sha1(text.encode()).hexdigest()

    def __call__(self, arrays):
        for name, spec in self.constants.items():
            if name not in arrays:
                raise KeyError(f"Standardize: no array {name!r} in the batch (has {sorted(arrays)})")
            x = arrays[name]
            if x.dtype.kind != "f":
                x = arrays[name] = x.astype(np.float32)
            center = np.asarray(spec["center"], x.dtype)
            scale = np.asarray(spec["scale"], x.dtype)
            if spec["per_feature"]:
                if x.ndim < 2 or x.shape[-1] != len(center):
                    raise ValueError(f"Standardize: {name!r} has shape {x.shape}; its constants are for "
                                     f"{len(center)} features on the last axis")
            else:
                center, scale = center[0], scale[0]
            where = _valid(arrays, name, x, self.mask_suffix)
            if where is None:
                np.subtract(x, center, out=x)
                np.divide(x, scale, out=x)
            else:
                np.subtract(x, center, out=x, where=where)
                np.divide(x, scale, out=x, where=where)
        return arrays

    def to_json(self) -> dict:
        """The constants as plain JSON values (what :meth:`from_json` takes back)."""
        return {"constants": json.loads(json.dumps(self.constants)), "mask_suffix": self.mask_suffix}

    @classmethod
    def from_json(cls, data) -> Standardize:
        """From :meth:`to_json`'s dict (or its JSON text)."""
        if isinstance(data, (str, bytes)):
            data = json.loads(data)
        return cls(data["constants"], mask_suffix=data.get("mask_suffix", MASK_SUFFIX))

    def __eq__(self, other):
        return isinstance(other, Standardize) and self.to_json() == other.to_json()

    __hash__ = None

    def __repr__(self):
        return "Standardize(" + ", ".join(
            f"{n}: {s['method']} {len(s['center'])} feature(s)" for n, s in self.constants.items()) + ")"


def _valid(arrays, name, x, suffix):
    """The where= of a collection (its mask, broadcast over the feature axis), None for a fixed array."""
    mask = arrays.get(name + suffix)
    if mask is None:
        return None
    mask = np.asarray(mask, bool)
    if x.shape[: mask.ndim] != mask.shape or x.ndim > mask.ndim + 1:
        raise ValueError(f"Standardize: {name!r} has shape {x.shape} but its mask {name + suffix!r} has "
                         f"{mask.shape}; expected (N, M[, F]) and (N, M)")
    return mask[..., None] if x.ndim == mask.ndim + 1 else mask


def _values(batch, name, per_feature: bool, suffix: str) -> tuple[np.ndarray, bool]:
    """The valid values of ``name`` in ``batch`` as rows of features (float64), and whether per feature."""
    if name not in batch:
        raise KeyError(f"fit_standardize: no array {name!r} in the batch (has {sorted(batch)})")
    x = np.asarray(batch[name])
    mask = batch.get(name + suffix)
    if mask is not None:
        mask = np.asarray(mask, bool)
        _valid(batch, name, x, suffix)
        if x.ndim == mask.ndim + 1:
            return x[mask].astype(np.float64), True
        return x[mask].astype(np.float64).reshape(-1, 1), False
    if per_feature:
        if x.ndim < 2:
            raise ValueError(f"fit_standardize: {name!r} has shape {x.shape}; per feature needs a feature axis")
        return x.reshape(-1, x.shape[-1]).astype(np.float64), True
    return x.reshape(-1, 1).astype(np.float64), False


class _Moments:
    """Count, mean and sum of squared deviations per feature, merged batch by batch (Chan et al.), float64."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, v: np.ndarray) -> None:
        k = len(v)
        if k == 0:
            return
        bmean = v.mean(axis=0)
        bm2 = np.square(v - bmean).sum(axis=0)
        if self.n == 0:
            self.n, self.mean, self.m2 = k, bmean, bm2
            return
        delta, total = bmean - self.mean, self.n + k
        self.mean = self.mean + delta * (k / total)
        self.m2 = self.m2 + bm2 + delta**2 * (self.n * k / total)
        self.n = total

    def result(self):
        return self.mean, np.sqrt(self.m2 / self.n)


class _Reservoir:
    """A uniform random subset of at most ``cap`` rows of everything added (all of them while they fit)."""

    def __init__(self, cap: int, rng: np.random.Generator):
        self.cap, self.rng, self.n, self.rows = int(cap), rng, 0, []

    def add(self, v: np.ndarray) -> None:
        k = len(v)
        if k == 0:
            return
        if self.n + k <= self.cap:
            self.rows.append(v)
            self.n += k
            return
        kept = np.concatenate(self.rows) if self.rows else v[:0]
        # how many of the cap come from the old n rows: hypergeometric; each part a uniform pick of its rows
        j = int(self.rng.hypergeometric(self.n, k, self.cap))
        old = kept[self.rng.choice(len(kept), j, replace=False)]
        new = v[self.rng.choice(k, self.cap - j, replace=False)]
        self.rows, self.n = [np.concatenate([old, new])], self.n + k

    def result(self):
        v = np.concatenate(self.rows)
        q25, q75 = np.percentile(v, [25, 75], axis=0)
        return np.median(v, axis=0), (q75 - q25) / ROBUST_IQR_SIGMA


def _as_batches(data) -> Iterable[Mapping]:
    return [data] if isinstance(data, Mapping) else data


def fit_standardize(data, names, method: str = "standard", *, per_feature=(), max_values: int = 5_000_000,
                    seed: int = 0, mask_suffix: str = MASK_SUFFIX) -> Standardize:
    """Fit a :class:`Standardize` of the arrays ``names`` on ``data``: a dict of arrays or an iterable of them
    (batches of a generator; each batch is used before the next is asked for, so shared-memory views are fine).

    ``method``: ``"standard"`` (mean, population std with ``ddof=0``: equal to ``np.mean``/``np.std`` over the
    same valid values) or ``"robust"`` (``np.median`` and (q75 - q25) / 1.349 of ``np.percentile``, exactly over
    the values while at most ``max_values`` rows were seen, else over a uniform subsample of them drawn with
    ``seed``). ``per_feature``: fixed arrays that get one constant per entry of their last axis (collections,
    with a ``<name>_mask``, always do). Only valid entries of a collection enter the fit.
    """
    if method not in METHODS:
        raise ValueError(f"fit_standardize: method must be one of {METHODS}, got {method!r}")
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("fit_standardize: no arrays to fit")
    per_feature = set([per_feature] if isinstance(per_feature, str) else per_feature)
    rng = np.random.default_rng(seed)
    acc = {n: _Moments() if method == "standard" else _Reservoir(max_values, rng) for n in names}
    feature = {}
    for batch in _as_batches(data):
        for name in names:
            values, feature[name] = _values(batch, name, name in per_feature, mask_suffix)
            acc[name].add(values)
    constants = {}
    for name in names:
        if acc[name].n == 0:
            raise ValueError(f"fit_standardize: {name!r} has no valid values in the data")
        center, scale = acc[name].result()
        constants[name] = {"method": method, "center": center.tolist(), "scale": scale.tolist(),
                           "per_feature": feature[name], "count": int(acc[name].n)}
    return Standardize(constants, mask_suffix=mask_suffix)
