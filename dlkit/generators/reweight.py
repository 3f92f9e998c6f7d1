"""Per-event weights that flatten a variable per class, fitted on the training sample (numpy only).

weaver's "flat" reweighting: histogram a scalar of each event (``energy``, any per-event value of the batch)
per class in given ``bins`` over training events, and give each event ``1 / count`` of its (class, bin),
normalised so that the weights of each class's fitted events (those inside the bins) average 1 - or, with
``class_balance``, so that every class gets the same total weight (the mean weight over all of them 1). The
weighted histogram of each class is then flat. Events outside the bins get weight 0 (``outside="drop"``,
the default) or count in the first/last bin (``outside="clip"``); a bin empty in the fit gives weight 0.

Where the weights go: :class:`Reweight` is a picklable consumer-side step, ``batch dict -> batch dict`` with
``weight`` set (multiplied into an existing ``weight``, e.g. from :attr:`SampleSpec.weight`), to chain
before :class:`~dlkit.generators.Select`, which hands them to Keras as sample weights::

    rw = fit_reweight(sample_batches(train, names=["energy"]), "energy", {"n": 20, "low": 10, "high": 510})
    gen = MultiClassGenerator(train, 256, postprocess=Chain(rw, Select(["ECAL"], "onehot", "weight")))
    model.fit(gen)                                           # (x, y, sample_weight) batches

The alternative, ``method="resample"``: the same table as keep probabilities (each bin's weight over the
largest of its class, or of all classes with ``class_balance``), applied as an event filter of the training
samples (:meth:`Reweight.resample_filter`, a picklable :class:`ResampleFilter` for
:meth:`SampleSpec.with_filter`): a seeded, fixed subset of each file's events (the same every epoch),
flat per class in expectation, every kept event of weight 1. It throws events away (all but the rarest
bin's count per bin); weights keep them.

>>> import numpy as np
>>> energy = np.array([1., 1., 1., 3., 5., 5.]); cls = np.array([0, 0, 0, 0, 1, 1])
>>> rw = fit_reweight({"energy": energy, "class_index": cls}, "energy", [0, 2, 4, 6])
>>> (rw.weights(energy, cls) * 3).round(3).tolist()  # class 0: 3 events in bin 0, 1 in bin 1: each bin 2
[2.0, 2.0, 2.0, 6.0, 3.0, 3.0]
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import zlib
from collections.abc import Iterable, Mapping

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Reweight", "ResampleFilter", "fit_reweight", "parse_bins", "METHODS", "OUTSIDE"]

#: ``"flat"``: per-event weights; ``"resample"``: keep probabilities for an event filter.
METHODS = ("flat", "resample")
#: Events outside the bins: weight 0 (``"drop"``) or counted in the edge bins (``"clip"``).
OUTSIDE = ("drop", "clip")


def parse_bins(bins) -> np.ndarray:
    """Bin edges from a list of edges (at least 2, strictly increasing), ``{"n": n, "low": lo, "high": hi}`` or
    ``(n, lo, hi)`` (``n`` equal bins); a ValueError says what is wrong."""
    if isinstance(bins, Mapping):
        unknown = set(bins) - {"n", "low", "high"}
        if unknown or set(bins) != {"n", "low", "high"}:
            raise ValueError(f"bins {dict(bins)!r}: expected the keys n, low and high")
        bins = (bins["n"], bins["low"], bins["high"])
        equal = True
    else:
        equal = isinstance(bins, tuple) and len(bins) == 3 and isinstance(bins[0], numbers.Integral)
    if equal:
        n, low, high = bins
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"bins: n must be an integer >= 1, got {n!r}")
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
            raise ValueError(f"bins: low and high must be finite numbers, got {low!r}, {high!r}")
        if not high > low:
            raise ValueError(f"bins: high ({high}) must be above low ({low})")
        return np.linspace(float(low), float(high), int(n) + 1)
    try:
        edges = np.asarray(bins, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"bins {bins!r}: expected a list of edges, {{n, low, high}} or (n, low, high)") from None
    if edges.ndim != 1 or len(edges) < 2 or not np.isfinite(edges).all() or not (np.diff(edges) > 0).all():
        raise ValueError(f"bins {bins!r}: edges must be at least 2 finite, strictly increasing numbers")
    return edges


def _bin_index(values, edges, outside: str) -> np.ndarray:
    """Bin of each value (the last edge belongs to the last bin, as in ``np.histogram``); -1 outside unless
    clipped."""
    values = np.asarray(values, np.float64)
    nb = len(edges) - 1
    idx = np.searchsorted(edges, values, side="right") - 1
    idx[values == edges[-1]] = nb - 1
    if outside == "clip":
        return np.clip(idx, 0, nb - 1)
    idx[(idx < 0) | (idx >= nb) | ~np.isfinite(values)] = -1
    return idx


def _per_event(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 0 or (x.ndim > 1 and math.prod(x.shape[1:]) != 1):
        raise ValueError(f"Reweight: {name!r} must be one value per event, got shape {x.shape}")
    return x.reshape(len(x))


class Reweight:
    """Per-event weights from a fitted ``(class, bin)`` table (see the module docstring); picklable.

    ``table`` (n_classes, n_bins): the weight of an event of class c in bin b (0 for empty bins); ``edges``:
    the bin edges of ``variable``; ``class_key``: the batch array holding the class index (``"class_index"``;
    a premixed file's ``"label"``). :meth:`__call__` returns the batch dict with ``weight`` (float32)
    multiplied in; :meth:`weights` gives them for arrays; :meth:`keep_probability` and
    :meth:`resample_filter` are the ``"resample"`` method.
    """

    def __init__(self, variable: str, edges, table, *, class_key: str = "class_index", outside: str = "drop",
                 method: str = "flat", class_balance: bool = False, counts=None):
        if outside not in OUTSIDE:
            raise ValueError(f"Reweight: outside must be one of {OUTSIDE}, got {outside!r}")
        if method not in METHODS:
            raise ValueError(f"Reweight: method must be one of {METHODS}, got {method!r}")
        self.variable, self.class_key, self.outside, self.method = str(variable), str(class_key), outside, method
        self.class_balance = bool(class_balance)
        self.edges = [float(e) for e in parse_bins(list(edges))]
        table = np.asarray(table, np.float64)
        if table.ndim != 2 or table.shape[1] != len(self.edges) - 1:
            raise ValueError(f"Reweight: table must be (classes, {len(self.edges) - 1} bins), got {table.shape}")
        if not np.isfinite(table).all() or (table < 0).any():
            raise ValueError("Reweight: weights must be finite and >= 0")
        self.table = table.tolist()
        self.counts = None if counts is None else np.asarray(counts, np.int64).tolist()

    @property
    def n_classes(self) -> int:
        return len(self.table)

    def weights(self, values, classes) -> np.ndarray:
        """The weight (float32) of each event: its variable's value and class index."""
        values, classes = _per_event(values, self.variable), _per_event(classes, self.class_key)
        idx = _bin_index(values, np.asarray(self.edges), self.outside)
        classes = classes.astype(np.int64)
        if len(classes) and (classes.min() < 0 or classes.max() >= self.n_classes):
            raise ValueError(f"Reweight: class index outside 0..{self.n_classes - 1} in {self.class_key!r}")
        table = np.asarray(self.table)
        w = np.where(idx >= 0, table[classes, np.maximum(idx, 0)], 0.0)
        return w.astype(np.float32)

    def __call__(self, arrays):
        for key in (self.variable, self.class_key):
            if key not in arrays:
                raise KeyError(f"Reweight: no array {key!r} in the batch (has {sorted(arrays)})")
        w = self.weights(arrays[self.variable], arrays[self.class_key])
        if "weight" in arrays:
            w = w * np.asarray(arrays["weight"], np.float32).reshape(len(w))
        return {**arrays, "weight": w}  # a new dict and array: the batch's shared memory stays as it is

    def keep_probability(self, values, classes) -> np.ndarray:
        """``"resample"``: the probability to keep each event, its weight over the largest weight of its class
        (of all classes with ``class_balance``)."""
        table = np.asarray(self.table)
        top = np.full(len(table), table.max()) if self.class_balance else table.max(axis=1)
        probs = Reweight(self.variable, self.edges, table / np.where(top > 0, top, 1.0)[:, None],
                         class_key=self.class_key, outside=self.outside)
        return probs.weights(values, classes).astype(np.float64)

    def resample_filter(self, class_index: int, key: str | None = None, seed: int = 0, base=None) -> ResampleFilter:
        """The event filter keeping a seeded subset of a file of class ``class_index`` (dataset ``key``,
        default the variable), combined with an existing filter ``base``: ``spec.with_filter(...)``."""
        return ResampleFilter(self, int(class_index), key or self.variable, int(seed), base)

    def replace(self, **changes) -> Reweight:
        """A copy with some of :meth:`to_json`'s fields changed, e.g. ``class_key="label"`` for a premixed file."""
        return Reweight.from_json({**self.to_json(), **changes})

    def to_json(self) -> dict:
        return {"variable": self.variable, "edges": self.edges, "table": self.table, "class_key": self.class_key,
                "outside": self.outside, "method": self.method, "class_balance": self.class_balance,
                "counts": self.counts}

    @classmethod
    def from_json(cls, data) -> Reweight:
        if isinstance(data, (str, bytes)):
            data = json.loads(data)
        data = dict(data)
        return cls(data.pop("variable"), data.pop("edges"), data.pop("table"), **data)

    def __eq__(self, other):
        return isinstance(other, Reweight) and self.to_json() == other.to_json()

    __hash__ = None

    def __repr__(self):
        return (f"Reweight({self.variable!r}, {len(self.edges) - 1} bins [{self.edges[0]:g}, {self.edges[-1]:g}], "
                f"{self.n_classes} classes, {self.method})")


class ResampleFilter:
    """Picklable event filter (:meth:`SampleSpec.with_filter`): keeps each event of a file of one class with
    its :meth:`Reweight.keep_probability`, drawn from a generator seeded by ``seed`` and the file's name (the
    same subset every time the file is opened). ``base``: another filter of the entry, applied too."""

    def __init__(self, reweight: Reweight, class_index: int, key: str, seed: int = 0, base=None):
        self.reweight, self.class_index, self.key, self.seed, self.base = reweight, class_index, key, seed, base

    def __call__(self, f) -> np.ndarray:
        n = f[self.key].shape[0]
        values = np.asarray(f[self.key][...]).reshape(n, -1)[:, 0]
        p = self.reweight.keep_probability(values, np.full(n, self.class_index))
        name = str(getattr(f, "filename", "")).rsplit("/", 1)[-1]
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode()), self.class_index])
        keep = rng.random(n) < p
        if self.base is not None:
            sel = np.asarray(self.base(f))
            base = sel if sel.dtype == bool else np.isin(np.arange(n), sel)
            keep &= base
        return keep

    def __repr__(self):
        return f"ResampleFilter({self.reweight!r}, class {self.class_index}, key {self.key!r}, seed {self.seed})"


def _as_batches(data) -> Iterable[Mapping]:
    return [data] if isinstance(data, Mapping) else data


def _flat_table(counts: np.ndarray, class_balance: bool) -> np.ndarray:
    """weaver's flat weights: 1 / count per (class, bin), normalised per class (or to equal class totals)."""
    k = counts.shape[0]
    table = np.zeros(counts.shape, np.float64)
    nonempty = counts > 0
    per_class = counts.sum(axis=1)
    present = per_class > 0
    target = np.where(present, per_class, 0).astype(np.float64)  # each class's total weight: its event count
    if class_balance:  # ... or the same for each class present: all events over the classes present
        target = np.where(present, per_class.sum() / max(int(present.sum()), 1), 0.0)
    for c in range(k):
        if present[c]:
            table[c, nonempty[c]] = target[c] / (nonempty[c].sum() * counts[c, nonempty[c]])
    return table


def fit_reweight(data, variable: str, bins, *, class_key: str = "class_index", n_classes: int | None = None,
                 class_balance: bool = False, outside: str = "drop", method: str = "flat") -> Reweight:
    """Fit a :class:`Reweight` flattening ``variable`` per class on ``data`` (a dict of arrays or an iterable
    of batch dicts with ``variable`` and ``class_key``).

    ``bins``: edges, ``{"n", "low", "high"}`` or ``(n, low, high)`` (:func:`parse_bins`). ``n_classes``: the
    table's classes (default: the largest index seen + 1; a class without events gets weights 0). The weights
    of each class's events inside the bins sum to their number (mean 1); ``class_balance``: every class
    present sums to the same, all events over the classes present. Events outside the bins: weight 0
    (``outside="drop"``) or in the edge bins (``"clip"``). ``method="resample"`` keeps the same table for
    :meth:`Reweight.resample_filter`.
    """
    if outside not in OUTSIDE:
        raise ValueError(f"fit_reweight: outside must be one of {OUTSIDE}, got {outside!r}")
    edges = parse_bins(bins)
    nb = len(edges) - 1
    counts = np.zeros((0, nb), np.int64)
    for batch in _as_batches(data):
        for key in (variable, class_key):
            if key not in batch:
                raise KeyError(f"fit_reweight: no array {key!r} in the batch (has {sorted(batch)})")
        cls = _per_event(batch[class_key], class_key).astype(np.int64)
        idx = _bin_index(_per_event(batch[variable], variable), edges, outside)
        inside = idx >= 0
        if len(cls) and cls.min() < 0:
            raise ValueError(f"fit_reweight: negative class index in {class_key!r}")
        k = max(counts.shape[0], int(cls.max()) + 1 if len(cls) else 0)
        counts = np.pad(counts, ((0, k - counts.shape[0]), (0, 0)))
        np.add.at(counts, (cls[inside], idx[inside]), 1)
    if n_classes is not None:
        if n_classes < counts.shape[0]:
            raise ValueError(f"fit_reweight: class index {counts.shape[0] - 1} with n_classes={n_classes}")
        counts = np.pad(counts, ((0, n_classes - counts.shape[0]), (0, 0)))
    if counts.sum() == 0:
        raise ValueError(f"fit_reweight: no event inside the bins of {variable!r} ({edges[0]:g} to {edges[-1]:g})")
    return Reweight(variable, edges, _flat_table(counts, class_balance), class_key=class_key, outside=outside,
                    method=method, class_balance=class_balance, counts=counts)
