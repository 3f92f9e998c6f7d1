"""HDF5 sources: consumer-side inspection of the sample files (validate once, clearly, and plan raw reads)
and the readers' h5py reads.

A :class:`~dlkit.generators.samples.Collection`'s field is a group with ``values`` (every event's points,
flat) and ``offsets`` (events + 1, int), the CSR layout :func:`dlkit.jagged.write_events` writes; a vlen
dataset (one array per event); or a :class:`dlkit.sparse.SparseTensor` group in its padded layout (``C``
coordinates, ``V`` values, ``N`` counts), which gives its coordinates and then its value as features.

Every file is opened once with h5py when a generator is built: missing files and keys, event counts
that differ between keys, per-event shapes or dtypes that differ between files, and truncated data are
reported here as :class:`DataError` naming file and key. Filters run here too. For datasets stored
contiguously or in row-aligned unfiltered chunks, the byte offsets of the data are recorded so the
reader processes can ``preadv`` rows straight into shared memory without going through HDF5; other
datasets (compressed, non-native byte order, ...) are read through h5py in the workers.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from dlkit.generators._layout import ArraySpec
from dlkit.generators.errors import DataError
from dlkit.generators.sources.base import check_counts, collection_arrays, opened

logger = logging.getLogger(__name__)

_KINDS = "biufc"


def _raw_extents(ds, n_rows: int, row_bytes: int, file_size: int, path: str, key: str):
    """Row extents (first row, rows, byte offset) if the dataset can be read with plain preadv, else None."""
    import h5py

    dt = ds.dtype
    if not dt.isnative or dt.kind not in _KINDS:
        return None
    try:
        dcpl = ds.id.get_create_plist()
        layout = dcpl.get_layout()
        if dcpl.get_nfilters() or dcpl.get_external_count():
            return None
        if layout == h5py.h5d.CONTIGUOUS:
            off = ds.id.get_offset()
            if off is None:
                return None
            ext = np.array([[0, n_rows, off]], dtype=np.int64)
        elif layout == h5py.h5d.CHUNKED:
            chunks = ds.chunks
            if tuple(chunks[1:]) != tuple(ds.shape[1:]):
                return None
            c0 = int(chunks[0])
            expected = math.ceil(n_rows / c0) if n_rows else 0
            if ds.id.get_num_chunks() != expected:
                return None  # unallocated chunks read as fill values: let HDF5 do it
            infos = []
            if hasattr(ds.id, "chunk_iter"):
                try:
                    ds.id.chunk_iter(lambda s: infos.append((s.chunk_offset[0], s.byte_offset, s.size)))
                except Exception:  # older HDF5 without H5Dchunk_iter
                    infos = []
            if len(infos) != expected:
                infos = []
                for i in range(expected):
                    s = ds.id.get_chunk_info(i)
                    infos.append((s.chunk_offset[0], s.byte_offset, s.size))
            infos.sort()
            ext = np.array([[r0, min(c0, n_rows - r0), off] for r0, off, _ in infos], dtype=np.int64)
            if any(size < c0 * row_bytes for _, _, size in infos):
                return None
        else:
            return None
    except DataError:
        raise
    except Exception as exc:  # low-level property access failed: fall back to h5py reads
        logger.debug("raw layout of %s:%s unavailable (%s); using h5py", path, key, exc)
        return None
    if len(ext):
        end = int((ext[:, 2] + ext[:, 1] * row_bytes).max())
        if end > file_size:
            raise DataError(
                f"file is truncated: the data end at byte {end} but the file has {file_size} bytes",
                file=path,
                key=key,
            )
    return ext


def _dataset(f, spec, path):
    """The h5py dataset at ``path``, checked to hold numeric rows, one per event."""
    import h5py

    try:
        obj = f.get(path)
    except Exception as exc:
        raise DataError(f"cannot read dataset ({exc})", file=spec.file, key=path) from None
    if obj is None:
        raise DataError(f"dataset not found (the file has {sorted(f.keys())})", file=spec.file, key=path)
    if not isinstance(obj, h5py.Dataset):
        raise DataError(f"is a {type(obj).__name__}, not a dataset", file=spec.file, key=path)
    if obj.ndim == 0:
        raise DataError("is a scalar dataset; need one row per event", file=spec.file, key=path)
    dt = obj.dtype
    if dt.kind not in _KINDS or dt.fields is not None or dt.subdtype is not None:
        raise DataError(f"unsupported dtype {dt} (numeric types only)", file=spec.file, key=path)
    return obj


def _describe_fixed(f, spec, name, path, file_size: int):
    """``(array specs, read mode, events)`` of one fixed-shape dataset."""
    obj = _dataset(f, spec, path)
    dt = obj.dtype
    a = ArraySpec(name, dt.newbyteorder("=").str if not dt.isnative else dt.str, tuple(obj.shape[1:]))
    ext = _raw_extents(obj, int(obj.shape[0]), a.row_bytes, file_size, spec.file, path)
    return [a], (("raw", ext) if ext is not None else ("h5", None)), int(obj.shape[0])


def _csr_layout(obj, spec, field):
    off = obj["offsets"]
    if off.ndim != 1 or off.dtype.kind not in "iu" or len(off) < 1:
        raise DataError("offsets must be a 1-d integer dataset of events + 1 entries", file=spec.file,
                        key=f"{field}/offsets")
    if int(off[0]) != 0 or int(off[-1]) > len(obj["values"]):
        raise DataError(f"offsets run from {int(off[0])} to {int(off[-1])} but values has {len(obj['values'])} "
                        "entries (truncated?)", file=spec.file, key=field)
    return "csr", len(off) - 1, [field]


def _field_layout(f, spec, field):
    """``(layout, events, feature names)`` of a collection's field: "csr", "vlen" or "padded"."""
    import h5py

    obj = f.get(field)
    if obj is None:
        raise DataError(f"collection field not found (the file has {sorted(f.keys())})", file=spec.file,
                        key=field)
    if isinstance(obj, h5py.Group):
        if "values" in obj and "offsets" in obj:
            return _csr_layout(obj, spec, field)
        if obj.attrs.get("layout") == "padded" and {"C", "V", "N"} <= set(obj):
            dims = obj["C"].shape[-1]
            return "padded", int(obj["N"].shape[0]), [f"{field}/C{d}" for d in range(dims)] + [field]
        raise DataError("is a group without values/offsets (CSR) nor a padded SparseTensor (C, V, N)",
                        file=spec.file, key=field)
    if obj.ndim == 1 and h5py.check_vlen_dtype(obj.dtype) is not None:
        return "vlen", int(obj.shape[0]), [field]
    raise DataError(f"is a dataset of {obj.dtype} {obj.shape}; a collection field must be a CSR group "
                    "(values, offsets), a vlen dataset or a padded SparseTensor group", file=spec.file, key=field)


def _describe_points(f, spec, name, coll):
    """``(array specs, read mode, events)`` of a collection: its fields' layouts and features."""
    layouts, features, events = [], [], None
    for field in coll.fields:
        layout, n, feats = _field_layout(f, spec, field)
        if events is not None and n != events:
            raise DataError(f"has {n} events but {coll.fields[0]!r} has {events}", file=spec.file, key=field)
        events = n
        layouts.append(layout)
        features += feats
    if coll.sort_by is not None and coll.sort_by not in features:
        raise DataError(f"sort_by {coll.sort_by!r} is none of the features {features}", file=spec.file, key=name)
    details = {"layouts": layouts, "features": features}
    return collection_arrays(name, coll, len(features)), ("points", details), events


def describe(f, spec, file_size: int):
    """``(array specs, read modes, events)`` of an entry's keys: the same event count in every one."""
    arrays, modes, n_rows = [], {}, None
    for name, path in spec.keys:
        if isinstance(path, str):
            these, modes[name], rows = _describe_fixed(f, spec, name, path, file_size)
        else:
            these, modes[name], rows = _describe_points(f, spec, name, path)
        if n_rows is not None and rows != n_rows:
            raise DataError(f"has {rows} events but {spec.paths[0]!r} has {n_rows}", file=spec.file, key=name)
        n_rows = rows
        arrays += these
    return arrays, modes, n_rows


def n_events(f, spec) -> int:
    """Events in the file, from the first key."""
    name, path = spec.keys[0]
    if isinstance(path, str):
        return int(_dataset(f, spec, path).shape[0])
    return _field_layout(f, spec, path.fields[0])[1]


def filter_view(f):
    """What an event filter is given: the h5py file itself."""
    return f


def open_file(path, tree=None, consumer=False):
    """An h5py handle on ``path``; on the consumer side a :class:`DataError` when it cannot be opened (in a
    reader, the OSError)."""
    import h5py

    return opened(lambda: h5py.File(path, "r"), path, consumer, "HDF5")


def read_fixed(f, entry, name, path, r0: int, r1: int) -> np.ndarray:
    """Rows ``[r0, r1)`` of a fixed-shape dataset."""
    return f[path][r0:r1]


def _read_field(f, layout, field, r0, r1):
    """``(values per feature, counts)`` of one field for events ``[r0, r1)``."""
    g = f[field]
    if layout == "csr":
        off = np.asarray(g["offsets"][r0 : r1 + 1], dtype=np.int64)
        counts = np.diff(off)
        if (counts < 0).any():
            raise DataError(f"offsets decrease at event {r0 + int(np.flatnonzero(counts < 0)[0])}",
                            file=f.filename, key=f"{field}/offsets")
        return [g["values"][off[0] : off[-1]]], counts
    if layout == "vlen":
        rows = g[r0:r1]
        counts = np.array([len(x) for x in rows], dtype=np.int64)
        return [np.concatenate(rows) if len(rows) else np.zeros(0, np.float32)], counts
    counts = np.asarray(g["N"][r0:r1], dtype=np.int64)
    valid = np.arange(g["V"].shape[1]) < counts[:, None]
    c = g["C"][r0:r1][valid]
    return [c[:, d] for d in range(c.shape[1])] + [g["V"][r0:r1][valid]], counts


def read_points(f, entry, name, coll, r0: int, r1: int):
    """A collection's points for events ``[r0, r1)``: one flat array per feature, and the counts."""
    values, counts = [], []
    for layout, field in zip(entry.modes[name][1]["layouts"], coll.fields):
        v, c = _read_field(f, layout, field, r0, r1)
        values += v
        counts.append(c)
    return values, check_counts(counts, coll.fields, r0, entry.path)


def read_rows(f, key, groups, spec, tgt, rows, start) -> None:
    """h5py read (for datasets that cannot be read raw) of dataset ``key`` of the open file ``f``: ``groups`` are
    (first file row, rows, first position in the task) runs; position j goes to target row ``tgt.base + start
    + j``, or with ``rows`` (the task's permutation) to ``tgt.base + rows[j]``."""
    ds = f[key]
    for r_abs, length, j0 in groups:
        if rows is None:
            a = tgt.base + start + j0
            ds.read_direct(tgt.arr, np.s_[r_abs : r_abs + length], np.s_[a : a + length])
        else:
            tmp = np.empty((length,) + tuple(spec.shape), spec.np_dtype)
            ds.read_direct(tmp, np.s_[r_abs : r_abs + length], np.s_[0:length])
            tgt.arr[tgt.base + rows[j0 : j0 + length]] = tmp
