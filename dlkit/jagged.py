"""Per-event lists (hits, deposits, point clouds) in memory and in files: ROOT TTree or RNTuple, parquet, HDF5.

A :class:`Jagged` column holds one list of numbers per event, CSR style: ``values`` (all events'
entries concatenated) and ``offsets`` (n_events + 1; event ``i`` is ``values[offsets[i]:offsets[i+1]]``).
A file is a set of columns over the same events, each either a :class:`Jagged` or a fixed numpy array
(n_events, ...). :func:`write_events` writes one (atomically, :func:`dlkit.datasets.atomic_file`),
:func:`read_events` reads one back, :func:`convert` turns any format into any other::

    from dlkit.jagged import Jagged, convert, read_events, write_events

    hits = Jagged.from_lists([[1.0, 2.0], [], [3.0]], np.float32)     # 3 events
    write_events("ev.root", {"hit_e": hits, "energy": np.array([10, 20, 30], np.float32)})
    cols = read_events("ev.root")          # {"hit_e": Jagged, "energy": ndarray (3,)}
    convert("ev.root", "ev.parquet")       # or .h5; format="rntuple" for an RNTuple in a .root file

    python -m dlkit.io convert ev.root ev.parquet          # a file, or a class-per-directory tree:
    python -m dlkit.io convert data/hits-root data/hits-pq --format parquet

Layouts (:data:`FORMATS`, the format from the extension by :func:`format_of`):

- ``root``: a TTree (uproot's ``mktree`` + ``extend``, baskets of ``chunk_events`` events). Fixed columns
  are scalar or fixed-size array branches (``float[2][3]``). A jagged column is a variable-length branch
  (``float[]``) with a counter branch (int32, entries per event) that uproot adds: jagged columns named
  ``<p>_<rest>`` with the same counts share one counter ``n<p>`` (``hit_x``, ``hit_e`` -> ``nhit``), any other
  jagged column ``c`` gets its own ``n<c>``; a counter name taken by a column gets ``_`` appended until free.
  Counter branches are not columns when the file is read (a TTree branch that is another branch's
  ``count_branch`` is left out unless asked for by name).
- ``rntuple``: an RNTuple in a ``.root`` file (uproot >= 5.7 ``mkrntuple`` + ``extend``, one cluster per
  ``chunk_events`` events); jagged columns are ``var * type`` fields with their own offsets, no counter
  fields. Note: uproot >= 5.7's ``file[name] = {...}`` writes an RNTuple, not a TTree.
- ``parquet``: one row per event, row groups of ``chunk_events`` events; a jagged column is ``list<type>``
  (not nullable), a fixed (n, a, b) column nested fixed-size lists ``fixed_size_list<fixed_size_list<type,
  b>, a>``, a fixed (n,) column the plain type. Reading accepts nullable lists (a null list is an empty
  event; null numbers inside a list are NaN) and ``large_list``.
- ``hdf5``: fixed columns are datasets (n, ...); a jagged column is, with ``hdf5_layout="csr"`` (default),
  a group ``<name>`` holding ``values`` (flat) and ``offsets`` (n + 1, int64), or with ``"vlen"`` an h5py
  variable-length dataset ``<name>`` (n,), one array per event. Both are read; so is any top-level dataset.

``metadata`` (a dict of strings) is stored as the parquet schema's metadata, HDF5 file attributes or, in
ROOT files, one TObjString ``<tree>_metadata`` holding its JSON; :func:`read_metadata` reads it back.
Reading a ``.root`` file finds a TTree or an RNTuple alike (``tree=None``: the only one in the file).

Bad input is a :class:`dlkit.generators.DataError` naming the file and the column; bad arguments (a
mismatch of event counts, an unknown extension) a ``ValueError``. Imports numpy only; uproot and awkward,
pyarrow or h5py when a file of theirs is written or read.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from dlkit.datasets import atomic_file
from dlkit.generators.errors import DataError

__all__ = ["Jagged", "FORMATS", "EXTENSIONS", "format_of", "EventWriter", "write_events", "read_events",
           "iter_events", "num_events", "read_metadata", "convert", "convert_dir", "data_files"]

#: The file formats; ``root`` (TTree) and ``rntuple`` share the extension ``.root``.
FORMATS = ("root", "rntuple", "parquet", "hdf5")
#: The extension each format's files get (:func:`convert_dir`, the simulators).
EXTENSIONS = {"root": ".root", "rntuple": ".root", "parquet": ".parquet", "hdf5": ".h5"}
_SUFFIXES = {".root": "root", ".parquet": "parquet", ".pq": "parquet", ".h5": "hdf5", ".hdf5": "hdf5"}
_FAMILY = {"root": "root", "rntuple": "root", "parquet": "parquet", "hdf5": "hdf5"}
HDF5_LAYOUTS = ("csr", "vlen")


# ---------------------------------------------------------------------------------------------------------
# Jagged
# ---------------------------------------------------------------------------------------------------------


class Jagged:
    """One variable-length list of numbers per event: ``values`` (1-D, every event's entries in order) and
    ``offsets`` (int64, n_events + 1, from 0, non-decreasing, ending at ``len(values)``).

    >>> j = Jagged.from_lists([[1, 2], [], [3]], np.float32)
    >>> len(j), j.counts.tolist(), j.event(2).tolist(), j[[2, 0]].values.tolist()
    (3, [2, 0, 1], [3.0], [3.0, 1.0, 2.0])
    """

    __slots__ = ("values", "offsets")

    def __init__(self, values, offsets):
        values = np.asarray(values)
        offsets = np.asarray(offsets)
        if values.ndim != 1 or values.dtype.kind not in "biuf":
            raise ValueError(f"Jagged values must be a 1-D numeric array, got {values.dtype} with shape {values.shape}")
        if offsets.ndim != 1 or offsets.size < 1 or offsets.dtype.kind not in "iu":
            raise ValueError(f"Jagged offsets must be a 1-D integer array of n_events + 1 >= 1 entries, got "
                             f"{offsets.dtype} with shape {offsets.shape}")
        offsets = offsets.astype(np.int64, copy=False)
        if offsets[0] != 0 or offsets[-1] != values.size or (offsets.size > 1 and np.any(np.diff(offsets) < 0)):
            raise ValueError(f"Jagged offsets must start at 0, not decrease and end at len(values) = {values.size} "
                             f"(got {offsets[0]} ... {offsets[-1]})")
        self.values = values
        self.offsets = offsets

    @classmethod
    def from_lists(cls, lists: Sequence, dtype=None) -> Jagged:
        """From one sequence of numbers per event."""
        arrays = [np.asarray(a, dtype=dtype).reshape(-1) for a in lists]
        counts = np.fromiter((a.size for a in arrays), np.int64, len(arrays))
        values = np.concatenate(arrays) if arrays else np.zeros(0, dtype or np.float64)
        return cls(values.astype(dtype or values.dtype, copy=False), _offsets(counts))

    @classmethod
    def from_counts(cls, values, counts) -> Jagged:
        """From the flat values and the entries per event."""
        return cls(values, _offsets(np.asarray(counts, np.int64)))

    @staticmethod
    def concatenate(parts: Sequence[Jagged]) -> Jagged:
        """The events of ``parts`` one after the other."""
        if not parts:
            raise ValueError("Jagged.concatenate needs at least one part")
        if len(parts) == 1:
            return parts[0]
        return Jagged.from_counts(np.concatenate([p.values for p in parts]), np.concatenate([p.counts for p in parts]))

    @property
    def counts(self) -> np.ndarray:
        """Entries per event (int64, n_events)."""
        return np.diff(self.offsets)

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    def __len__(self) -> int:
        return self.offsets.size - 1

    def event(self, i: int) -> np.ndarray:
        """The entries of event ``i`` (a view)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"event {i} out of range for {n} events")
        i %= n
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    def __getitem__(self, index):
        """A slice or an integer / boolean index array of events: a Jagged; a single integer: that event."""
        if isinstance(index, (int, np.integer)):
            return self.event(int(index))
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                stop = max(start, stop)
                lo, hi = self.offsets[start], self.offsets[stop]
                return Jagged(self.values[lo:hi], self.offsets[start:stop + 1] - lo)
            index = np.arange(start, stop, step)
        index = np.asarray(index)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise IndexError(f"boolean index of shape {index.shape} for {len(self)} events")
            index = np.flatnonzero(index)
        if index.ndim != 1 or (index.size and index.dtype.kind not in "iu"):
            raise IndexError("index events with an int, a slice or a 1-D integer or boolean array")
        index = index.astype(np.int64, copy=False)
        if index.size and (index.min() < -len(self) or index.max() >= len(self)):
            raise IndexError(f"event index out of range for {len(self)} events")
        index %= max(len(self), 1)
        counts = self.counts[index]
        offsets = _offsets(counts)
        gather = np.repeat(self.offsets[index] - offsets[:-1], counts) + np.arange(offsets[-1])
        return Jagged(self.values[gather], offsets)

    def astype(self, dtype) -> Jagged:
        return Jagged(self.values.astype(dtype, copy=False), self.offsets)

    def __eq__(self, other):
        return (isinstance(other, Jagged) and np.array_equal(self.offsets, other.offsets)
                and self.values.dtype == other.values.dtype and np.array_equal(self.values, other.values))

    __hash__ = None

    def __repr__(self):
        return f"Jagged({len(self)} events, {self.values.size} {self.values.dtype} values)"


def _offsets(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(counts.size + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    return out


# ---------------------------------------------------------------------------------------------------------
# Formats and columns
# ---------------------------------------------------------------------------------------------------------


def format_of(path) -> str:
    """The format of a file from its extension: ``.root`` -> root, ``.parquet``/``.pq`` -> parquet,
    ``.h5``/``.hdf5`` -> hdf5 (an RNTuple is written with ``format="rntuple"``; reading finds it)."""
    fmt = _SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"{str(path)!r}: unknown extension {Path(path).suffix!r}; expected one of "
                         f"{', '.join(_SUFFIXES)} (or give the format)")
    return fmt


def _format(path, format):
    """The format to use for ``path``: ``format`` if given (checked against a known extension), else the
    extension's."""
    if format is None:
        return format_of(path)
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    known = _SUFFIXES.get(Path(path).suffix.lower())
    if known is not None and known != _FAMILY[format]:
        raise ValueError(f"{str(path)!r}: format {format!r} does not fit the extension {Path(path).suffix!r}")
    return format


def _check_columns(columns: Mapping) -> tuple[int, dict]:
    """(events, {name: column}) with every column a Jagged or a numpy array of >= 1 dimension."""
    if not isinstance(columns, Mapping) or not columns:
        raise ValueError("columns must be a non-empty dict of name -> numpy array or Jagged")
    out, n, first = {}, None, None
    for name, col in columns.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"column name {name!r}: must be a non-empty string without '/'")
        if not isinstance(col, Jagged):
            col = np.asarray(col)
            if col.ndim < 1 or col.dtype.kind not in "biuf":
                raise ValueError(f"column {name!r}: expected a Jagged or a numeric array (n_events, ...), got "
                                 f"{col.dtype} with shape {col.shape}")
        if n is None:
            n, first = len(col), name
        elif len(col) != n:
            raise ValueError(f"column {name!r} has {len(col)} events, column {first!r} has {n}")
        out[name] = col
    return n, out


def _schema(columns: dict) -> dict:
    """{name: ("jagged", dtype) | ("fixed", dtype, shape[1:])}."""
    return {k: ("jagged", v.dtype) if isinstance(v, Jagged) else ("fixed", v.dtype, v.shape[1:])
            for k, v in columns.items()}


def _slice(col, start, stop):
    return col[start:stop]


def _concat(parts):
    if isinstance(parts[0], Jagged):
        return Jagged.concatenate(parts)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------


#: Events per basket (ROOT), cluster (RNTuple) or row group (parquet) unless told otherwise. ROOT's are small
#: because a reader decompresses every basket a range of events touches: 256 events from baskets of 100 read
#: at 17.8k events/s, from baskets of 1,000 at 6.6k (calodnn-like hits, one process; BENCHMARKS.md "Point
#: clouds"), and ROOT's own 32 kB baskets hold a few dozen such events. Parquet readers keep the row groups
#: they decoded, so larger groups cost nothing there.
CHUNK_EVENTS = {"root": 128, "rntuple": 128, "parquet": 1024, "hdf5": 1024}


class EventWriter:
    """Write one file of events chunk by chunk; the file appears (atomically) when the block ends.

    >>> with EventWriter("hits.root", chunk_events=100) as w:          # doctest: +SKIP
    ...     for cols in chunks:                 # dicts of Jagged / arrays, any number of events each
    ...         w.write(cols)

    Every :meth:`write` must have the same columns, kinds and dtypes. Events are buffered and written
    ``chunk_events`` at a time (one ROOT basket / RNTuple cluster / parquet row group per chunk).
    ``n_events``: the total, if known (HDF5 then writes contiguous datasets; a different total is an error).
    Parameters otherwise as :func:`write_events`.
    """

    def __init__(self, path, *, format=None, tree: str = "events", chunk_events: int | None = None,
                 hdf5_layout: str = "csr", metadata: Mapping | None = None, n_events: int | None = None,
                 _sizes: Mapping | None = None):
        self.path = Path(path)
        self.format = _format(self.path, format)
        chunk_events = CHUNK_EVENTS[self.format] if chunk_events is None else chunk_events
        if int(chunk_events) < 1:
            raise ValueError("chunk_events must be >= 1")
        if hdf5_layout not in HDF5_LAYOUTS:
            raise ValueError(f"hdf5_layout must be one of {HDF5_LAYOUTS}, got {hdf5_layout!r}")
        if not isinstance(tree, str) or not tree:
            raise ValueError("tree must be a non-empty name")
        self.tree, self.chunk_events, self.hdf5_layout = tree, int(chunk_events), hdf5_layout
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.n_events, self._sizes = n_events, _sizes
        self.written = 0
        self._schema = None
        self._pending: dict[str, list] = {}
        self._pending_n = 0
        self._stack = None
        self._backend = None

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_file(self.path))
        try:
            self._backend = _BACKENDS[self.format](tmp, self)
        except BaseException as err:
            self._stack.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                try:
                    self._finish()
                except BaseException:
                    self._backend.close(ok=False)
                    raise
            self._backend.close(ok=exc_type is None)
        except BaseException as err:
            self._stack.__exit__(type(err), err, err.__traceback__)  # removes the temporary file
            raise
        return self._stack.__exit__(exc_type, exc, tb)  # renamed into place, or removed after an error

    def _finish(self):
        self._flush(final=True)
        if self._schema is None:
            raise ValueError(f"{str(self.path)!r}: nothing written (no columns)")
        if self.n_events is not None and self.written != self.n_events:
            raise ValueError(f"{str(self.path)!r}: {self.written} events written, {self.n_events} announced")

    def write(self, columns: Mapping) -> None:
        """Append the events of ``columns`` (the same columns every time)."""
        if self._backend is None:
            raise RuntimeError("use EventWriter as a context manager: with EventWriter(path) as w: w.write(...)")
        n, columns = _check_columns(columns)
        if self.n_events is not None and self.written + self._pending_n + n > self.n_events:
            raise ValueError(f"{str(self.path)!r}: more than the {self.n_events} events announced")
        schema = _schema(columns)
        if self._schema is None:
            self._schema = schema
            self._backend.start(schema, columns)
            self._pending = {k: [] for k in schema}
        elif schema != self._schema:
            diff = sorted(set(schema) ^ set(self._schema)) or [k for k in schema if schema[k] != self._schema[k]]
            raise ValueError(f"{str(self.path)!r}: columns differ from the first write's ({', '.join(diff)})")
        for k, v in columns.items():
            self._pending[k].append(v)
        self._pending_n += n
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if self._schema is None or self._pending_n == 0 or (self._pending_n < self.chunk_events and not final):
            return
        merged = {k: _concat(v) for k, v in self._pending.items()}
        n, c = self._pending_n, self.chunk_events
        start = 0
        while n - start >= c or (final and start < n):
            stop = min(start + c, n)
            self._backend.append({k: _slice(v, start, stop) for k, v in merged.items()}, stop - start)
            self.written += stop - start
            start = stop
        self._pending = {k: ([_slice(v, start, n)] if start < n else []) for k, v in merged.items()}
        self._pending_n = n - start


def write_events(path, columns: Mapping, *, format: str | None = None, tree: str = "events",
                 chunk_events: int | None = None, hdf5_layout: str = "csr", metadata: Mapping | None = None) -> Path:
    """Write ``columns`` ({name: numpy array (n, ...) or :class:`Jagged` of n events}) to ``path``.

    ``format``: one of :data:`FORMATS` (default: from the extension; ``"rntuple"`` for an RNTuple in a
    ``.root`` file). ``tree``: the TTree's or RNTuple's name. ``chunk_events``: events per ROOT basket,
    RNTuple cluster or parquet row group (default :data:`CHUNK_EVENTS`). ``hdf5_layout``: ``"csr"`` or ``"vlen"``
    for jagged columns.
    ``metadata``: strings stored with the file (:func:`read_metadata`). Layouts: the module docstring.
    Written under a temporary name and renamed when complete. Returns the path.
    """
    n, columns = _check_columns(columns)
    sizes = {k: v.values.size for k, v in columns.items() if isinstance(v, Jagged)}
    with EventWriter(path, format=format, tree=tree, chunk_events=chunk_events, hdf5_layout=hdf5_layout,
                     metadata=metadata, n_events=n, _sizes=sizes) as w:
        w.write(columns)
    return w.path


class _RootBackend:
    """TTree (``mktree`` + ``extend``) or RNTuple (``mkrntuple`` + ``extend``) through uproot."""

    rntuple = False

    def __init__(self, tmp, writer):
        import uproot

        self.writer = writer
        self.file = uproot.recreate(tmp)
        self.obj = None

    def start(self, schema, columns):
        self.schema = schema
        self.groups, self.counters = _root_groups(columns) if not self.rntuple else ({}, {})

    def _data(self, columns, n):
        import awkward as ak

        if self.rntuple:
            return ak.Array({k: _to_awkward(v) for k, v in columns.items()})
        first = {cols[0]: key for key, cols in self.groups.items()}  # a group goes where its first column is
        grouped = {c for cols in self.groups.values() for c in cols}
        data = {}
        for k, v in columns.items():
            if k in first:
                data[first[k]] = self._group(columns, self.groups[first[k]])
            elif k not in grouped:
                data[k] = v
        return data

    def _group(self, columns, cols):
        import awkward as ak

        if len(cols) == 1:
            return _to_awkward(columns[cols[0]])
        for c in cols[1:]:
            if not np.array_equal(columns[c].offsets, columns[cols[0]].offsets):
                raise ValueError(f"{str(self.writer.path)!r}: jagged columns {cols[0]!r} and {c!r} share the "
                                 "counter branch of their first events but not the counts of later ones")
        return ak.zip({c: _to_awkward(columns[c]) for c in cols})

    def _create(self, data):
        if self.rntuple:
            self.obj = self.file.mkrntuple(self.writer.tree, data.layout.form)
            return
        types = {}
        for k, v in data.items():
            if isinstance(v, np.ndarray):
                types[k] = (v.dtype, v.shape[1:]) if v.ndim > 1 else v.dtype
            else:
                types[k] = v.type.content
        counters = self.counters
        self.obj = self.file.mktree(self.writer.tree, types, counter_name=lambda key: counters[key],
                                    field_name=lambda outer, inner: inner)

    def append(self, columns, n):
        data = self._data(columns, n)
        if self.obj is None:
            self._create(data)
        if n:
            self.obj.extend(data)

    def close(self, ok):
        if self.file is None:
            return
        try:
            if ok:
                if self.obj is None:  # no events: the structure only
                    empty = {k: (Jagged(np.zeros(0, s[1]), [0]) if s[0] == "jagged" else np.zeros((0, *s[2]), s[1]))
                             for k, s in self.schema.items()}
                    self._create(self._data(empty, 0))
                if self.writer.metadata:
                    self.file[f"{self.writer.tree}_metadata"] = json.dumps(self.writer.metadata, sort_keys=True)
        finally:
            self.file.close()
            self.file = None


class _RNTupleBackend(_RootBackend):
    rntuple = True


def _root_groups(columns) -> tuple[dict, dict]:
    """The TTree's jagged branches: ({key: [columns]}, {key: its counter branch's name}).

    Jagged columns ``<p>_...`` of one prefix whose counts agree (in the first events written) form one
    group: one record under ``key`` (``p``, or ``p_`` ... if a column has that name), its branches keeping
    the columns' names, one counter ``n<p>``. Any other jagged column is its own group, counter ``n<name>``.
    A counter name that a column has gets ``_`` appended until it is free."""
    by_prefix: dict[str, list] = {}
    for k, v in columns.items():
        if isinstance(v, Jagged):
            match = re.match(r"([^_]+)_", k)
            by_prefix.setdefault(match.group(1) if match else k, []).append(k)
    groups = {}
    for prefix, cols in by_prefix.items():
        head = columns[cols[0]].offsets
        same = [c for c in cols if np.array_equal(columns[c].offsets, head)]
        singles = [c for c in cols if c not in same]
        if len(same) > 1:
            key = prefix
            while key in columns or key in groups:
                key += "_"
            groups[key] = same
        else:
            singles += same
        for c in singles:
            groups[c] = [c]
    counters, taken = {}, set(columns)
    for key, cols in groups.items():
        name = "n" + (key.rstrip("_") if len(cols) > 1 else key)
        while name in taken:
            name += "_"
        taken.add(name)
        counters[key] = name
    return groups, counters


def _to_awkward(col):
    import awkward as ak

    if isinstance(col, Jagged):
        return ak.unflatten(col.values, col.counts)
    return col


class _ParquetBackend:
    def __init__(self, tmp, writer):
        self.tmp, self.writer, self.pq_writer = tmp, writer, None

    def start(self, schema, columns):
        import pyarrow as pa

        fields = []
        for k, s in schema.items():
            t = pa.from_numpy_dtype(s[1])
            if s[0] == "jagged":
                t = pa.list_(pa.field("item", t, nullable=False))
            else:
                for size in reversed(s[2]):
                    t = pa.list_(pa.field("item", t, nullable=False), int(size))
            fields.append(pa.field(k, t, nullable=False))
        meta = {"dlkit.jagged": json.dumps({"metadata": self.writer.metadata})} if self.writer.metadata else None
        self.schema = pa.schema(fields, metadata=meta)
        self.columns = schema

    def append(self, columns, n):
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrays = []
        for k, field in zip(self.columns, self.schema):
            v = columns[k]
            if isinstance(v, Jagged):
                if v.offsets[-1] > np.iinfo(np.int32).max:
                    raise ValueError(f"column {k!r}: over 2**31 values in {n} events; use a smaller chunk_events")
                arr = pa.ListArray.from_arrays(pa.array(v.offsets.astype(np.int32)), pa.array(v.values),
                                               type=field.type)
            else:
                arr = pa.array(np.ascontiguousarray(v).reshape(-1))
                for size in reversed(v.shape[1:]):
                    arr = pa.FixedSizeListArray.from_arrays(arr, int(size))
                arr = arr.cast(field.type)
            arrays.append(arr)
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        if self.pq_writer is None:
            self.pq_writer = pq.ParquetWriter(self.tmp, self.schema)
        self.pq_writer.write_table(table, row_group_size=max(n, 1))

    def close(self, ok):
        import pyarrow.parquet as pq

        if self.pq_writer is None and ok:
            self.pq_writer = pq.ParquetWriter(self.tmp, self.schema)  # no events: the schema only
        if self.pq_writer is not None:
            self.pq_writer.close()
            self.pq_writer = None


class _H5Backend:
    def __init__(self, tmp, writer):
        import h5py

        self.writer = writer
        self.file = h5py.File(tmp, "w", track_order=True)
        self.dsets = {}
        self.pos = 0
        self.value_pos = {}

    def start(self, schema, columns):
        import h5py

        w, f = self.writer, self.file
        n = w.n_events
        sizes = w._sizes or {}
        f.attrs.update(w.metadata)
        rows = max(1, min(w.chunk_events, 1 << 16))

        def make(group, name, shape, dtype, known):
            if known:
                return group.create_dataset(name, shape=shape, dtype=dtype)
            return group.create_dataset(name, shape=(0, *shape[1:]), maxshape=(None, *shape[1:]), dtype=dtype,
                                        chunks=(rows if len(shape) > 1 or name != "values" else 1 << 16,
                                                *shape[1:]))

        for k, s in schema.items():
            if s[0] == "fixed":
                self.dsets[k] = make(f, k, (n or 0, *s[2]), s[1], n is not None)
            elif w.hdf5_layout == "vlen":
                self.dsets[k] = make(f, k, (n or 0,), h5py.vlen_dtype(s[1]), n is not None)
            else:
                g = f.create_group(k)
                g.attrs["layout"] = "csr"
                offsets = make(g, "offsets", ((n or 0) + 1,), np.int64, n is not None)
                if n is None:
                    offsets.resize((1,))
                offsets[0] = 0
                known = n is not None and k in sizes
                self.dsets[k] = (make(g, "values", (sizes.get(k, 0),), s[1], known), offsets)
                self.value_pos[k] = 0

    def append(self, columns, n):
        start, stop = self.pos, self.pos + n
        grow = self.writer.n_events is None
        for k, v in columns.items():
            d = self.dsets[k]
            if isinstance(v, Jagged) and isinstance(d, tuple):
                values, offsets = d
                lo, hi = self.value_pos[k], self.value_pos[k] + v.values.size
                if values.shape[0] < hi:
                    values.resize((hi,))
                values[lo:hi] = v.values
                if grow:
                    offsets.resize((stop + 1,))
                offsets[start + 1:stop + 1] = v.offsets[1:] + lo
                self.value_pos[k] = hi
            else:
                if grow:
                    d.resize((stop, *d.shape[1:]))
                if isinstance(v, Jagged):
                    arr = np.empty(n, object)
                    arr[:] = [v.values[a:b] for a, b in zip(v.offsets[:-1], v.offsets[1:])]
                    d[start:stop] = arr
                else:
                    d[start:stop] = v
        self.pos = stop

    def close(self, ok):
        if self.file is not None:
            self.file.close()
            self.file = None


_BACKENDS = {"root": _RootBackend, "rntuple": _RNTupleBackend, "parquet": _ParquetBackend, "hdf5": _H5Backend}


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------


class _Source:
    """An open file: ``names`` (its columns, in file order), ``n`` (events), ``chunks(names, step)``."""

    def __init__(self, path, format=None, tree=None):
        self.path = Path(path)
        fmt = _format(self.path, format)
        if not self.path.is_file():
            raise DataError("file not found", file=self.path)
        self.family = _FAMILY[fmt]
        self._stack = contextlib.ExitStack()
        try:
            getattr(self, f"_open_{self.family}")(tree)
        except DataError:
            self._stack.close()
            raise
        except Exception as exc:
            self._stack.close()
            raise DataError(f"cannot read as {self.family}: {type(exc).__name__}: {exc}", file=self.path) from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def error(self, message, key=None):
        return DataError(message, file=self.path, key=key)

    def check(self, names):
        if names is None:
            return list(self.names)
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            if name not in self.names and name not in getattr(self, "hidden", ()):
                raise self.error(f"no such column (columns: {', '.join(self.names)})", key=name)
        return names

    # --- ROOT ---
    def _open_root(self, tree):
        import uproot

        f = self._stack.enter_context(uproot.open(self.path))
        found = {}
        for key, cls in f.classnames().items():
            if cls.startswith("TTree") or cls == "ROOT::RNTuple":
                found.setdefault(key.split(";")[0], cls)
        if tree is None:
            if len(found) != 1:
                raise self.error(f"give the tree's name: the file has {len(found)} TTrees/RNTuples "
                                 f"({', '.join(sorted(found)) or 'none'})")
            tree = next(iter(found))
        elif tree not in found:
            raise self.error(f"no TTree or RNTuple {tree!r} (the file has: {', '.join(sorted(found)) or 'none'})")
        self.tree, self.obj = tree, f[tree]
        self.n = int(self.obj.num_entries)
        self.metadata_key = f"{tree}_metadata"
        self.file = f
        if found[tree] == "ROOT::RNTuple":
            self.names, self.hidden = list(self.obj.keys()), ()
        else:
            keys = list(self.obj.keys())
            counters = {b.count_branch.name for b in self.obj.values() if getattr(b, "count_branch", None) is not None}
            self.names = [k for k in keys if k not in counters]
            self.hidden = tuple(counters)

    def _chunks_root(self, names, step):
        wanted = set(names)
        for start in range(0, self.n, step):
            stop = min(self.n, start + step)
            try:
                arrays = self.obj.arrays(filter_name=lambda name: name in wanted, entry_start=start,
                                         entry_stop=stop, library="ak")
            except Exception as exc:
                raise self.error(f"cannot read entries {start}-{stop}: {type(exc).__name__}: {exc}") from None
            yield {k: _from_awkward(arrays[k], self, k) for k in names}

    # --- parquet ---
    def _open_parquet(self, tree):
        import pyarrow.parquet as pq

        self.pf = pq.ParquetFile(self.path)
        self._stack.callback(self.pf.close)
        self.names = list(self.pf.schema_arrow.names)
        self.n = int(self.pf.metadata.num_rows)

    def _chunks_parquet(self, names, step):
        if not names:
            for start in range(0, self.n, step):
                yield {}
            return
        for batch in self.pf.iter_batches(batch_size=step, columns=names):
            yield {k: _from_arrow(batch.column(k), self, k) for k in names}

    # --- HDF5 ---
    def _open_hdf5(self, tree):
        import h5py

        f = self._stack.enter_context(h5py.File(self.path, "r"))
        self.h5, self.names, sizes = f, [], {}
        for k, obj in f.items():
            if isinstance(obj, h5py.Group):
                if isinstance(obj.get("values"), h5py.Dataset) and isinstance(obj.get("offsets"), h5py.Dataset):
                    self.names.append(k)
                    sizes[k] = obj["offsets"].shape[0] - 1
            elif obj.ndim >= 1:
                self.names.append(k)
                sizes[k] = obj.shape[0]
        self.n = max(sizes.values(), default=0)
        bad = [k for k, s in sizes.items() if s != self.n]
        if bad:
            raise self.error(f"columns of different lengths ({', '.join(f'{k}: {sizes[k]}' for k in sizes)})",
                             key=bad[0])

    def _chunks_hdf5(self, names, step):
        import h5py

        for start in range(0, self.n, step):
            stop = min(self.n, start + step)
            out = {}
            for k in names:
                obj = self.h5[k]
                try:
                    if isinstance(obj, h5py.Group):
                        offsets = obj["offsets"][start:stop + 1].astype(np.int64)
                        values = obj["values"][offsets[0]:offsets[-1]]
                        out[k] = Jagged(values, offsets - offsets[0])
                    elif h5py.check_vlen_dtype(obj.dtype) is not None:
                        events = obj[start:stop]
                        base = h5py.check_vlen_dtype(obj.dtype)
                        out[k] = Jagged.from_lists(events, base) if len(events) else Jagged(np.zeros(0, base), [0])
                    else:
                        out[k] = obj[start:stop]
                except ValueError as exc:
                    raise self.error(f"not a valid jagged column: {exc}", key=k) from None
            yield out

    def chunks(self, names, step) -> Iterator[dict]:
        return getattr(self, f"_chunks_{self.family}")(names, step)

    def metadata(self) -> dict:
        if self.family == "hdf5":
            return {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in self.h5.attrs.items()}
        if self.family == "parquet":
            raw = (self.pf.schema_arrow.metadata or {}).get(b"dlkit.jagged")
            return json.loads(raw)["metadata"] if raw else {}
        if self.metadata_key in self.file:
            return json.loads(str(self.file[self.metadata_key]))
        return {}


def _native(a: np.ndarray) -> np.ndarray:
    return a.astype(a.dtype.newbyteorder("="), copy=False) if a.dtype.byteorder not in "=|" else a


def _from_awkward(arr, source, name):
    """A column read by uproot (awkward) as a numpy array or a Jagged."""
    import awkward as ak

    t = arr.type.content
    if isinstance(t, ak.types.OptionType):
        arr = ak.fill_none(arr, [] if isinstance(t.content, ak.types.ListType) else np.nan, axis=0)
        t = arr.type.content
    try:
        if isinstance(t, ak.types.ListType) and isinstance(t.content, (ak.types.NumpyType, ak.types.OptionType)):
            flat = ak.flatten(arr, axis=1)
            if isinstance(flat.type.content, ak.types.OptionType):
                flat = ak.fill_none(flat, np.nan)
            return Jagged.from_counts(_native(ak.to_numpy(flat)), ak.to_numpy(ak.num(arr, axis=1)))
        out = ak.to_numpy(arr, allow_missing=False)
    except (ValueError, TypeError) as exc:
        raise source.error(f"unsupported type {t} ({exc})", key=name) from None
    if out.dtype.kind not in "biuf":
        raise source.error(f"unsupported type {t}", key=name)
    return _native(out)


def _from_arrow(arr, source, name):
    """A parquet column (pyarrow) as a numpy array or a Jagged: null lists are empty, null numbers NaN."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        if not _is_number(t.value_type):
            raise source.error(f"unsupported type {t} (lists of numbers only)", key=name)
        counts = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
        values = _arrow_numbers(arr.flatten(), source, name)  # flatten() skips null lists and honours offsets
        return Jagged.from_counts(values, counts.astype(np.int64))
    shape = []
    while pa.types.is_fixed_size_list(t):
        if arr.null_count:
            raise source.error(f"{arr.null_count} null entries in a fixed-size column", key=name)
        shape.append(t.list_size)
        arr, t = arr.flatten(), t.value_type
    if not _is_number(t):
        raise source.error(f"unsupported type {arr.type}", key=name)
    values = _arrow_numbers(arr, source, name)
    return values.reshape(-1, *shape) if shape else values


def _is_number(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _arrow_numbers(arr, source, name) -> np.ndarray:
    import pyarrow as pa

    if arr.null_count:
        if not pa.types.is_floating(arr.type):
            raise source.error(f"{arr.null_count} null values of type {arr.type}", key=name)
        arr = arr.fill_null(float("nan"))
    return arr.to_numpy(zero_copy_only=False)


def iter_events(path, columns=None, *, format: str | None = None, tree: str | None = None,
                step_events: int = 100_000) -> Iterator[dict]:
    """The events of a file ``step_events`` at a time, as dicts like :func:`read_events`'s."""
    with _Source(path, format, tree) as src:
        names = src.check(columns)
        yield from src.chunks(names, max(1, int(step_events)))


def read_events(path, columns=None, *, format: str | None = None, tree: str | None = None) -> dict:
    """``{column: numpy array (n, ...) or Jagged}`` of a file written by :func:`write_events` or by others.

    ``columns``: names (default: all; a ROOT counter branch only by name). ``format``: default from the
    extension (``root`` and ``rntuple`` both read TTrees and RNTuples). ``tree``: the TTree or RNTuple
    (default: the file's only one). A missing file, tree or column is a :class:`DataError` naming it.
    """
    with _Source(path, format, tree) as src:
        names = src.check(columns)
        parts = list(src.chunks(names, max(src.n, 1)))
        if not parts:  # no events
            return _empty(src, names)
        return {k: _concat([p[k] for p in parts]) for k in names}


def _empty(src, names):
    """The columns of a file without events (their kinds and dtypes from a read of zero events)."""
    if src.family == "parquet":
        table = src.pf.read(columns=names)
        return {k: _from_arrow(table.column(k).combine_chunks(), src, k) for k in names}
    if src.family == "root":
        arrays = src.obj.arrays(filter_name=lambda name: name in set(names), entry_start=0, entry_stop=0,
                                library="ak")
        return {k: _from_awkward(arrays[k], src, k) for k in names}
    src.n = 0
    return {k: v for k, v in next(_empty_h5(src, names)).items()}


def _empty_h5(src, names):
    import h5py

    out = {}
    for k in names:
        obj = src.h5[k]
        if isinstance(obj, h5py.Group):
            out[k] = Jagged(obj["values"][0:0], [0])
        elif h5py.check_vlen_dtype(obj.dtype) is not None:
            out[k] = Jagged(np.zeros(0, h5py.check_vlen_dtype(obj.dtype)), [0])
        else:
            out[k] = obj[0:0]
    yield out


def num_events(path, *, format: str | None = None, tree: str | None = None) -> int:
    """The number of events of a file, without reading them."""
    with _Source(path, format, tree) as src:
        return src.n


def read_metadata(path, *, format: str | None = None, tree: str | None = None) -> dict:
    """The ``metadata`` strings that :func:`write_events` stored with the file ({} if none)."""
    with _Source(path, format, tree) as src:
        return src.metadata()


# ---------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------


def convert(src, dst, *, format: str | None = None, tree: str = "events", hdf5_layout: str = "csr",
            src_tree: str | None = None, columns=None, chunk_events: int | None = None, step_events: int = 100_000) -> Path:
    """Convert a file of events from any of :data:`FORMATS` into any other.

    ``format``: the output's (default from ``dst``'s extension; ``"rntuple"`` for an RNTuple); ``tree``:
    the output TTree's or RNTuple's name; ``src_tree``: the input's (default: its only one); ``columns``:
    the columns to copy (default all). The input is read ``step_events`` events at a time, so memory stays
    bounded; the output appears when complete. The metadata is copied. Returns ``dst``.
    """
    src, dst = Path(src), Path(dst)
    fmt = _format(dst, format)
    if src.resolve() == dst.resolve():
        raise ValueError(f"{str(src)!r}: source and destination are the same file")
    with _Source(src, None, src_tree) as source:
        names = source.check(columns)
        if not names:
            raise source.error("no columns to convert")
        with EventWriter(dst, format=fmt, tree=tree, chunk_events=chunk_events, hdf5_layout=hdf5_layout,
                         metadata=source.metadata(), n_events=source.n) as w:
            wrote = False
            for chunk in source.chunks(names, max(1, int(step_events))):
                w.write(chunk)
                wrote = True
            if not wrote:
                w.write(_empty(source, names))
    return dst


def data_files(directory) -> list[Path]:
    """The files of known extension under ``directory`` (recursively, sorted; hidden ones left out)."""
    directory = Path(directory)
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(directory).parts))


def convert_dir(src, dst, *, format: str, tree: str = "events", hdf5_layout: str = "csr",
                src_tree: str | None = None, chunk_events: int | None = None, progress=None) -> list[Path]:
    """Convert every file of a directory tree (e.g. ``<src>/<Class>/<Class>_<i>.root``) into ``format``,
    keeping the layout: ``<dst>/<Class>/<Class>_<i><extension of format>``. Returns the paths written.

    ``progress``: optional callable(src_path, dst_path) after each file."""
    src, dst = Path(src), Path(dst)
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if not src.is_dir():
        raise DataError("directory not found", file=src, kind="directory")
    files = data_files(src)
    if not files:
        raise DataError(f"no files of a known extension ({', '.join(_SUFFIXES)})", file=src, kind="directory")
    if dst.resolve() == src.resolve():
        raise ValueError(f"{str(src)!r}: convert into another directory")
    out = []
    for f in files:
        target = dst / _with_extension(f.relative_to(src), EXTENSIONS[format])
        convert(f, target, format=format, tree=tree, hdf5_layout=hdf5_layout, src_tree=src_tree,
                chunk_events=chunk_events)
        out.append(target)
        if progress is not None:
            progress(f, target)
    return out


def _with_extension(path: Path, ext: str) -> Path:
    return path.with_name(re.sub(r"\.[^.]*$", "", path.name) + ext)
