"""Sample specifications: which events of which files feed a generator, and reproducible splits.

A sample specification is a list of :class:`SampleSpec` entries, DLKit's ``[file, [keys], class, rate]``
made explicit: one entry per file and class, the datasets (keys) to read, an optional mixing rate and
per-event weight, an optional event filter and an event range. Files are HDF5, ROOT (TTree or RNTuple) or
parquet, told apart by their extension (:mod:`dlkit.generators.sources`); a key is a dataset, branch or
column of fixed shape per event, or a :class:`Collection`: a list of points of a different length in every
event (hits, deposits, tracks), padded or clipped to a fixed number of points with a mask.

Splits are made by *events*, not by whole files: each class's files are sorted, their order shuffled with a
seed, and the resulting event sequence cut by the requested fractions, so a file can be shared by train and
test (disjoint ranges).

>>> samples = make_samples_from_dirs("/data/LCD", ["ECAL", "HCAL", "energy"],
...                                  classes=["Ele", "Gamma", "Pi0", "ChPi"])     # doctest: +SKIP
>>> train, val, test = split_samples(samples, [0.8, 0.1, 0.1], seed=1)           # doctest: +SKIP
>>> hot = [s.with_filter(EnergyCut(10.0)) for s in train]                        # doctest: +SKIP
>>> hits = Collection(["hit_x", "hit_y", "hit_z", "hit_e"], max_points=128, sort_by="hit_e")
>>> showers = make_samples_from_dirs("/data/calo-hits", {"hits": hits, "energy": "energy"},
...                                  pattern="*.root")                              # doctest: +SKIP

Filters are callables ``filter(file) -> bool mask or integer indices`` over the *whole file* (absolute event
numbers); the generator intersects them with the entry's range. ``file[key]`` gives the dataset (HDF5) or
the branch or column as a numpy array (ROOT, parquet), so :class:`EnergyCut` works on every format.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dlkit.generators.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "Collection",
    "EnergyCut",
    "SampleSpec",
    "as_samples",
    "count_events",
    "make_samples_from_dirs",
    "make_samples_from_globs",
    "split_samples",
]


@dataclass(frozen=True)
class Collection:
    """A variable-length list of points per event, served as fixed-shape arrays with a mask.

    ``fields`` are the per-point quantities, one feature each, in order: branches of a ROOT TTree or
    RNTuple (vector branches such as ``hit_x``), list columns of a parquet file, or in HDF5 per field a
    group with ``values`` (all events' points, flat) and ``offsets`` (events + 1), or a vlen dataset. An
    HDF5 field naming a :class:`dlkit.sparse.SparseTensor` group (``C``, ``V``, ``N``, padded layout) gives
    its coordinates and its value as features. All fields of one collection have the same length in every
    event (a disagreement is a :class:`DataError` naming file, field and event).

    A collection given the name ``hits`` in a sample's keys arrives in a batch as three arrays:

    - ``hits``: float32 ``(max_points, features)``; padded rows are ``pad_value`` (0.0);
    - ``hits_mask``: bool ``(max_points,)``, True for real points; they always come first;
    - ``hits_count``: int32, the event's true number of points, before clipping.

    With ``sort_by`` (a field) the points of every event are ordered by it (``descending`` by default: the
    most energetic first; ties keep the file's order), so clipping an event with more than ``max_points``
    points keeps the largest; without it points keep the file's order and clipping keeps the first ones.
    Padding and clipping run in the reader processes: batches, shared memory and the cache keep fixed
    shapes.
    """

    fields: tuple = ()
    max_points: int = 0
    sort_by: str | None = None
    descending: bool = True
    pad_value: float = 0.0

    def __post_init__(self):
        fields = (self.fields,) if isinstance(self.fields, str) else tuple(str(f) for f in self.fields)
        object.__setattr__(self, "fields", fields)
        if not fields:
            raise ValueError("a Collection needs at least one field")
        if len(set(fields)) != len(fields):
            raise ValueError(f"Collection fields {list(fields)} repeat a name")
        if isinstance(self.max_points, bool) or not isinstance(self.max_points, int) or self.max_points < 1:
            raise ValueError(f"Collection {list(fields)}: max_points must be an integer >= 1, got {self.max_points!r}")
        if self.sort_by is not None and self.sort_by not in fields:
            raise ValueError(f"Collection sort_by {self.sort_by!r} is not one of its fields {list(fields)}")
        object.__setattr__(self, "pad_value", float(self.pad_value))

    def array_names(self, name: str) -> tuple[str, str, str]:
        """The names of the three arrays a collection called ``name`` gives."""
        return name, f"{name}_mask", f"{name}_count"


def _normalize_keys(keys) -> tuple[tuple[str, str], ...]:
    """Keys as ((array name, dataset path or Collection), ...); a mapping renames, e.g. {"ECAL": "ECAL/ECAL"}."""
    if isinstance(keys, str):
        keys = [keys]
    if isinstance(keys, Mapping):
        pairs = [(str(name), path if isinstance(path, Collection) else str(path)) for name, path in keys.items()]
    else:
        pairs = []
        for k in keys:
            if isinstance(k, (tuple, list)) and len(k) == 2:
                pairs.append((str(k[0]), k[1] if isinstance(k[1], Collection) else str(k[1])))
            else:
                pairs.append((str(k), str(k)))
    if not pairs:
        raise ValueError("a sample needs at least one dataset key")
    names = [n for n, _ in pairs]
    for name, path in pairs:
        if isinstance(path, Collection):
            names += list(path.array_names(name)[1:])
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate array names in keys {names} (a collection 'x' also makes 'x_mask' and 'x_count')")
    return tuple(pairs)


@dataclass(frozen=True)
class SampleSpec:
    """One file of one class: the unit of a sample specification.

    Parameters
    ----------
    file : path of the HDF5 (``.h5``, ``.hdf5``), ROOT (``.root``) or parquet (``.parquet``, ``.pq``) file.
    keys : dataset paths (branches, columns) to read; a mapping ``{array_name: dataset_path}`` renames
        (e.g. grouped LCD V4 files: ``{"ECAL": "ECAL/ECAL"}``), and ``{name: Collection(...)}`` reads a list of
        points per event. All entries of a generator must give the same names.
    class_name : the label; class indices follow first appearance unless a ``class_index_map`` is given.
    rate : relative mixing rate of this entry's class (all entries of a class must agree); None means
        natural proportions.
    weight : per-event sample weight for this entry's events (emitted as array ``"weight"``).
    filter : ``filter(h5py.File) -> bool mask | int indices`` selecting events by absolute event number.
    start, stop : event range of the file used by this entry (set by :func:`split_samples`).
    tree : ROOT files: the TTree or RNTuple to read (default: the file's only one).
    """

    file: str
    keys: tuple = ()
    class_name: str = ""
    rate: float | None = None
    weight: float | None = None
    filter: Callable | None = field(default=None, compare=False)
    start: int = 0
    stop: int | None = None
    tree: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "file", os.fspath(self.file))
        object.__setattr__(self, "keys", _normalize_keys(self.keys))
        if not self.class_name:
            raise ValueError(f"sample {self.file!r} has no class name")
        object.__setattr__(self, "class_name", str(self.class_name))
        if self.rate is not None and not (float(self.rate) >= 0):
            raise ValueError(f"sample {self.file!r}: rate must be >= 0, got {self.rate!r}")
        if self.start < 0 or (self.stop is not None and self.stop < self.start):
            raise ValueError(f"sample {self.file!r}: bad event range [{self.start}, {self.stop})")
        if self.filter is not None and not callable(self.filter):
            raise TypeError(f"sample {self.file!r}: filter must be callable")

    @property
    def names(self) -> tuple[str, ...]:
        """Array names, in order."""
        return tuple(n for n, _ in self.keys)

    @property
    def paths(self) -> tuple[str, ...]:
        """Dataset paths (branches, columns) inside the file, in order; a collection gives its fields."""
        return tuple(q for _, p in self.keys for q in (p.fields if isinstance(p, Collection) else (p,)))

    def with_range(self, start: int, stop: int | None) -> SampleSpec:
        """The same entry restricted to events [start, stop)."""
        return dataclasses.replace(self, start=int(start), stop=None if stop is None else int(stop))

    def with_filter(self, filter: Callable | None) -> SampleSpec:
        """The same entry with an event filter."""
        return dataclasses.replace(self, filter=filter)

    @classmethod
    def from_any(cls, obj) -> SampleSpec:
        """A SampleSpec from DLKit forms: ``(file, [keys], class[, rate])`` or ``(file, key)``."""
        if isinstance(obj, SampleSpec):
            return obj
        if isinstance(obj, Mapping):
            return cls(**obj)
        if isinstance(obj, (tuple, list)):
            if len(obj) == 2:
                return cls(obj[0], obj[1], obj[1] if isinstance(obj[1], str) else str(obj[1][0]))
            if len(obj) in (3, 4):
                return cls(obj[0], obj[1], obj[2], None if len(obj) == 3 else obj[3])
        raise TypeError(f"cannot make a SampleSpec from {obj!r}")


def as_samples(samples) -> list[SampleSpec]:
    """Normalize a sample specification (SampleSpecs, DLKit tuples or dicts) to a list of SampleSpec."""
    if isinstance(samples, (SampleSpec, str)):
        samples = [samples]
    out = [SampleSpec.from_any(s) for s in samples]
    if not out:
        raise ValueError("empty sample specification")
    return out


def _natural_key(path: str):
    """Sort key that puts file_9 before file_10, so 'sorted' is the order a person expects."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _files(pattern: str) -> list[str]:
    return sorted((p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)), key=_natural_key)


def make_samples_from_globs(
    patterns,
    keys,
    *,
    class_from_path: Callable[[str], str] | None = None,
    rate=None,
    weight=None,
    filter=None,
    tree: str | None = None,
) -> list[SampleSpec]:
    """Samples from glob patterns: ``{class_name: pattern or [patterns]}``, or patterns plus a namer.

    With a plain pattern (or list), the class of each file is ``class_from_path(path)``; the default is the
    name of the file's directory (DLKit's directory-per-class layout). ``rate``/``weight`` may be a
    number or a ``{class_name: value}`` mapping. Files are sorted naturally within each class.
    """
    if isinstance(patterns, Mapping):
        groups = {}
        for name, pats in patterns.items():
            pats = [pats] if isinstance(pats, (str, os.PathLike)) else list(pats)
            files = []
            for p in pats:
                found = _files(os.fspath(p))
                if not found:
                    raise DataError(f"no files match pattern {os.fspath(p)!r} for class {name!r}", file=p)
                files.extend(found)
            groups[str(name)] = sorted(dict.fromkeys(files), key=_natural_key)
    else:
        pats = [patterns] if isinstance(patterns, (str, os.PathLike)) else list(patterns)
        namer = class_from_path or (lambda p: os.path.basename(os.path.dirname(os.path.abspath(p))))
        groups = {}
        for p in pats:
            found = _files(os.fspath(p))
            if not found:
                raise DataError(f"no files match pattern {os.fspath(p)!r}", file=p)
            for f in found:
                groups.setdefault(str(namer(f)), []).append(f)
        groups = {k: sorted(dict.fromkeys(v), key=_natural_key) for k, v in groups.items()}

    def pick(value, name):
        return value.get(name) if isinstance(value, Mapping) else value

    out = []
    for name, files in groups.items():
        for f in files:
            out.append(
                SampleSpec(
                    f, keys, name, rate=pick(rate, name), weight=pick(weight, name), filter=pick(filter, name),
                    tree=tree,
                )
            )
    return out


def make_samples_from_dirs(
    root, keys, classes=None, pattern: str = "*.h5", *, rate=None, weight=None, filter=None, tree=None
) -> list[SampleSpec]:
    """Samples from a directory per class: ``root/<class>/<pattern>``.

    ``classes`` is None (every sub-directory with matching files, sorted), a list of sub-directory names,
    or a mapping ``{class_name: sub-directory or glob relative to root}`` (e.g. ``{"Ele": "EleEscan"}``).
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError("sample directory not found", file=root, kind="directory")
    if classes is None:
        names = sorted(
            (d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))), key=_natural_key
        )
        mapping = {d: d for d in names if _files(os.path.join(root, d, pattern))}
        if not mapping:
            raise DataError(f"no sub-directory with files matching {pattern!r}", file=root, kind="directory")
    elif isinstance(classes, Mapping):
        mapping = {str(k): v for k, v in classes.items()}
    else:
        mapping = {str(c): str(c) for c in classes}
    patterns = {}
    for name, sub in mapping.items():
        sub = os.fspath(sub)
        full = os.path.join(root, sub)
        patterns[name] = os.path.join(full, pattern) if os.path.isdir(full) else full
        if not glob.has_magic(sub) and not os.path.isdir(full):
            raise DataError(f"class directory for {name!r} not found", file=full, kind="directory")
    return make_samples_from_globs(patterns, keys, rate=rate, weight=weight, filter=filter, tree=tree)


def count_events(sample: SampleSpec) -> int:
    """Events in ``sample``'s range (before any filter), from its file's event count (any format)."""
    from dlkit.generators.sources import count_events as file_events

    n = file_events(sample)
    stop = n if sample.stop is None else min(sample.stop, n)
    return max(0, stop - min(sample.start, stop))


def split_fractions(config: Mapping, samples=()) -> list[float]:
    """``[train, validation, test]`` fractions from DLKit's config entries ``ValidationFraction``,
    ``TestFraction`` and ``MaxEvents`` (events used in total, 0 or absent: all of ``samples``), for
    :func:`split_samples`. Errors are :class:`dlkit.config.ConfigError` naming the entries."""
    from dlkit.config import ConfigError

    val_f, test_f = config["ValidationFraction"], config["TestFraction"]
    fractions = [1.0 - val_f - test_f, val_f, test_f]
    if min(fractions) < 0 or min(val_f, test_f) <= 0:
        raise ConfigError(f"config entries 'ValidationFraction' ({val_f}) and 'TestFraction' ({test_f}) must be "
                          "> 0 and sum to less than 1")
    if config.get("MaxEvents"):
        total = sum(count_events(s) for s in as_samples(samples))
        if total:
            fractions = [f * min(1.0, config["MaxEvents"] / total) for f in fractions]
    return fractions


def _file_list(entries, shown: int = 3) -> str:
    files = sorted({s.file for s in entries}, key=_natural_key)
    return ", ".join(files[:shown]) + (f" and {len(files) - shown} more" if len(files) > shown else "")


def split_samples(
    samples, fractions: Sequence[float], seed: int = 0, shuffle_files: bool = True,
    allow_empty_classes: bool = False,
) -> list[list[SampleSpec]]:
    """Split a specification into disjoint parts by *events*, reproducibly.

    For each class, files are sorted (naturally, by path), their order is shuffled with ``seed`` (unless
    ``shuffle_files`` is False), and the concatenated event sequence is cut at the cumulative
    ``fractions`` (e.g. ``[0.8, 0.1, 0.1]``; a sum below 1 leaves the rest unused). Each part is a list of
    entries with event ranges; a file may appear in two parts with disjoint ranges. Filters and rates are
    kept; filters then select inside each range. A class without events (its files empty, or its filter
    selecting none) is a :class:`DataError` naming it and its files, unless ``allow_empty_classes``.
    """
    samples = as_samples(samples)
    fractions = [float(f) for f in fractions]
    if not fractions or any(f < 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ValueError(f"fractions must be >= 0 and sum to at most 1, got {fractions}")
    by_class: dict[str, list[SampleSpec]] = {}
    for s in samples:
        by_class.setdefault(s.class_name, []).append(s)
    parts: list[list[SampleSpec]] = [[] for _ in fractions]
    for name, entries in by_class.items():
        entries = sorted(entries, key=lambda s: (_natural_key(s.file), s.start))
        counts = np.array([count_events(s) for s in entries], dtype=np.int64)
        order = np.arange(len(entries))
        if shuffle_files:
            rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
            order = rng.permutation(len(entries))
        total = int(counts.sum())
        if total == 0 and not allow_empty_classes:
            raise DataError(f"class {name!r} has no events in its {len(entries)} file(s) "
                            f"{_file_list(entries)}; set AllowEmptyClasses (allow_empty_classes=True) to train "
                            "without it")
        cuts = np.floor(np.cumsum([0.0] + fractions) * total + 1e-9).astype(np.int64)
        cuts[-1] = min(cuts[-1], total)
        pos = 0
        pieces: list[list[tuple[int, SampleSpec]]] = [[] for _ in fractions]
        for i in order:
            s, n = entries[i], int(counts[i])
            lo, hi = pos, pos + n
            for p in range(len(fractions)):
                a, b = max(lo, cuts[p]), min(hi, cuts[p + 1])
                if b > a:
                    pieces[p].append((i, s.with_range(s.start + (a - lo), s.start + (b - lo))))
            pos = hi
        for p in range(len(fractions)):
            parts[p].extend(s for _, s in sorted(pieces[p], key=lambda t: t[0]))
        logger.debug(
            "split class %s: %d events in %d files -> %s",
            name,
            total,
            len(entries),
            [int(cuts[p + 1] - cuts[p]) for p in range(len(fractions))],
        )
    return parts


@dataclass(frozen=True)
class EnergyCut:
    """A picklable event filter: ``low <= file[key] < high`` (DLKit's FilterEnergy, applied right)."""

    low: float = -np.inf
    high: float = np.inf
    key: str = "energy"

    def __call__(self, f) -> np.ndarray:
        e = np.asarray(f[self.key][...]).reshape(f[self.key].shape[0], -1)[:, 0]
        return (e >= self.low) & (e < self.high)
