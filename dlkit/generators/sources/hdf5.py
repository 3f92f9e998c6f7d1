"""HDF5 sources: consumer-side inspection of the sample files (validate once, clearly, and plan raw reads)
and the readers' h5py reads.

Every file is opened once with h5py when a generator is built: missing files and keys, event counts
that differ between keys, per-event shapes or dtypes that differ between files, and truncated data are
reported here as :class:`DataError` naming file and key. Filters run here too. For datasets stored
contiguously or in row-aligned unfiltered chunks, the byte offsets of the data are recorded so the
reader processes can ``preadv`` rows straight into shared memory without going through HDF5; other
datasets (compressed, non-native byte order, ...) are read through h5py in the workers.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np

from dlkit.generators._layout import ArraySpec
from dlkit.generators.errors import DataError

logger = logging.getLogger(__name__)

_KINDS = "biufc"


@dataclass
class EntryInfo:
    """What a reader needs to read one sample entry; picklable, sent to the workers once."""

    index: int
    path: str
    class_index: int
    weight: float
    keys: tuple  # ((name, dataset path), ...)
    n_rows: int
    start: int
    stop: int
    selection: np.ndarray | None  # absolute rows; None -> the contiguous range [start, stop)
    n: int
    modes: dict = field(default_factory=dict)  # name -> ("raw", extents (m,3) int64) | ("h5", None)
    size: int = 0
    mtime_ns: int = 0
    digest: str = ""

    def rows(self, pos: int, count: int) -> np.ndarray:
        """Absolute file rows of selected positions [pos, pos+count)."""
        if self.selection is None:
            return np.arange(self.start + pos, self.start + pos + count, dtype=np.int64)
        return self.selection[pos : pos + count]


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


def _apply_filter(spec, f, n_rows: int) -> np.ndarray | None:
    sel = spec.filter(f)
    sel = np.asarray(sel)
    if sel.dtype == bool:
        if sel.shape != (n_rows,):
            raise DataError(
                f"filter {spec.filter!r} returned a mask of shape {sel.shape}, expected ({n_rows},)",
                file=spec.file,
            )
        return np.flatnonzero(sel).astype(np.int64)
    if sel.dtype.kind not in "iu":
        raise DataError(
            f"filter {spec.filter!r} must return a bool mask or integer indices, got {sel.dtype}",
            file=spec.file,
        )
    sel = np.unique(sel.astype(np.int64).ravel())
    if len(sel) and (sel[0] < 0 or sel[-1] >= n_rows):
        raise DataError(
            f"filter {spec.filter!r} returned event numbers outside [0, {n_rows})", file=spec.file
        )
    return sel


def inspect_entries(specs, class_index_map: dict) -> tuple[list[EntryInfo], list[ArraySpec]]:
    """Open, validate and describe every entry; returns entry infos and the input array specs."""
    entries: list[EntryInfo] = []
    arrays: list[ArraySpec] | None = None
    first_file = None
    for i, spec in enumerate(specs):
        _check_names(spec, specs[0].names)
        st = _stat(spec.file)
        with _open(spec.file) as f:
            this_arrays, modes, n_rows = _describe_datasets(f, spec, st.st_size)
            if arrays is None:
                arrays, first_file = this_arrays, spec.file
            else:
                _check_like_first(this_arrays, arrays, spec, first_file)
            start, stop, selection = _select_events(f, spec, n_rows)
        entries.append(_entry_info(i, spec, class_index_map[spec.class_name], st, n_rows, (start, stop, selection),
                                   modes))
    raw = sum(m[0] == "raw" for e in entries for m in e.modes.values())
    total = sum(len(e.modes) for e in entries)
    logger.debug("inspected %d entries: %d/%d datasets readable with raw preadv", len(entries), raw, total)
    return entries, arrays


def _check_names(spec, names0) -> None:
    if spec.names != names0:
        raise DataError(
            f"entry gives arrays {list(spec.names)} but the first entry gives {list(names0)}; "
            "all entries must provide the same names (use keys={name: path} to rename)",
            file=spec.file,
        )


def _stat(path) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except OSError as exc:
        raise DataError(f"cannot stat file: {exc}", file=path) from None


def _open(path):
    """The file opened with h5py (a context manager), or a :class:`DataError` saying why not."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"cannot open as HDF5 (truncated or corrupt?): {exc}", file=path) from None


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


def _describe_datasets(f, spec, file_size: int):
    """``(array specs, read modes, events)`` of an entry's datasets: same event count in every one."""
    arrays, modes, n_rows = [], {}, None
    for name, path in spec.keys:
        obj = _dataset(f, spec, path)
        rows = int(obj.shape[0])
        if n_rows is None:
            n_rows = rows
        elif rows != n_rows:
            raise DataError(f"has {rows} events but {spec.keys[0][1]!r} has {n_rows}", file=spec.file, key=path)
        dt = obj.dtype
        a = ArraySpec(name, dt.newbyteorder("=").str if not dt.isnative else dt.str, tuple(obj.shape[1:]))
        arrays.append(a)
        ext = _raw_extents(obj, rows, a.row_bytes, file_size, spec.file, path)
        modes[name] = ("raw", ext) if ext is not None else ("h5", None)
    return arrays, modes, n_rows


def _check_like_first(arrays, first, spec, first_file) -> None:
    """Per-event shapes and dtypes must be those of the first entry's arrays."""
    for a, a0, (_, path) in zip(arrays, first, spec.keys):
        if a.shape != a0.shape:
            raise DataError(f"per-event shape {a.shape} differs from {a0.shape} in {first_file!r}",
                            file=spec.file, key=path)
        if a.dtype != a0.dtype:
            raise DataError(f"dtype {np.dtype(a.dtype)} differs from {np.dtype(a0.dtype)} in {first_file!r}",
                            file=spec.file, key=path)


def _select_events(f, spec, n_rows: int):
    """``(start, stop, selection)``: the entry's event range after its filter; ``selection`` (absolute rows)
    only when the selected events are not one contiguous range."""
    stop = n_rows if spec.stop is None else min(spec.stop, n_rows)
    start = min(spec.start, stop)
    if spec.filter is None:
        return start, stop, None
    try:
        sel = _apply_filter(spec, f, n_rows)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"filter {spec.filter!r} failed: {type(exc).__name__}: {exc}", file=spec.file) from None
    sel = sel[(sel >= start) & (sel < stop)]
    if len(sel) == 0 or sel[-1] - sel[0] + 1 != len(sel):
        return start, stop, sel
    return int(sel[0]), int(sel[-1]) + 1, None


def _entry_info(index, spec, class_index, st, n_rows, selected, modes) -> EntryInfo:
    start, stop, selection = selected
    n = (stop - start) if selection is None else len(selection)
    h = hashlib.sha1(f"{start}:{stop}".encode())
    if selection is not None:
        h.update(np.ascontiguousarray(selection).tobytes())
    return EntryInfo(
        index=index,
        path=os.path.abspath(spec.file),
        class_index=class_index,
        weight=1.0 if spec.weight is None else float(spec.weight),
        keys=spec.keys,
        n_rows=n_rows,
        start=start,
        stop=stop,
        selection=selection,
        n=int(n),
        modes=modes,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        digest=h.hexdigest(),
    )


def read_events(entry, inputs, rows) -> dict:
    """Rows ``rows`` (absolute, sorted) of every array of ``entry``, read through h5py in this process."""
    import h5py

    arrays = {}
    try:
        with h5py.File(entry.path, "r") as f:
            for (name, path), a in zip(entry.keys, inputs):
                arrays[name] = np.ascontiguousarray(f[path][rows.tolist()], dtype=a.np_dtype)
    except OSError as exc:
        raise DataError(f"cannot read events for probing the pre-process: {exc}", file=entry.path) from None
    return arrays


def open_file(path):
    """A reader's h5py handle on ``path`` (OSError when it is not HDF5)."""
    import h5py

    return h5py.File(path, "r")


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
