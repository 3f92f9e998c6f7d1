"""What every source format shares: the entry description sent to the readers, the event selection, and the
padding of a collection's points into fixed-shape arrays.

Numpy only: the reader processes import it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np

from dlkit.generators._layout import ArraySpec
from dlkit.generators.errors import DataError

#: The extensions of each format; everything else is refused, naming the file.
EXTENSIONS = {".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".root": "root", ".parquet": "parquet",
              ".pq": "parquet"}

#: How many events of each entry are read when a generator is built, to check its collections.
SAMPLE_EVENTS = 256


@dataclass
class EntryInfo:
    """What a reader needs to read one sample entry; picklable, sent to the workers once."""

    index: int
    path: str
    class_index: int
    weight: float
    keys: tuple  # ((name, dataset path or Collection), ...)
    n_rows: int
    start: int
    stop: int
    selection: np.ndarray | None  # absolute rows; None -> the contiguous range [start, stop)
    n: int
    # name -> ("raw", extents (m,3) int64) | ("h5", None) | ("read", None) | ("points", format's details)
    modes: dict = field(default_factory=dict)
    size: int = 0
    mtime_ns: int = 0
    digest: str = ""
    format: str = "hdf5"
    tree: str | None = None

    def rows(self, pos: int, count: int) -> np.ndarray:
        """Absolute file rows of selected positions [pos, pos+count)."""
        if self.selection is None:
            return np.arange(self.start + pos, self.start + pos + count, dtype=np.int64)
        return self.selection[pos : pos + count]


def opened(open_, path, consumer: bool, what: str):
    """``open_()``; on the consumer side a failure is one :class:`DataError` line naming the file (a reader
    gets the library's exception and reports it with its task)."""
    try:
        return open_()
    except DataError:
        raise
    except Exception as exc:
        if not consumer:
            raise
        text = " ".join(str(exc).split())  # uproot's and pyarrow's messages run over several lines
        raise DataError(f"cannot open as {what} (truncated or corrupt?): {type(exc).__name__}: {text}",
                        file=path) from None


def format_of(path) -> str:
    """The source format of ``path``, from its extension."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in EXTENSIONS:
        raise DataError(f"unknown file type {ext or '(no extension)'!r}; expected one of {sorted(EXTENSIONS)} "
                        "(HDF5, ROOT, parquet)", file=path)
    return EXTENSIONS[ext]


def collection_arrays(name: str, coll, n_features: int) -> list[ArraySpec]:
    """The three arrays a collection gives: points, mask, count."""
    points, mask, count = coll.array_names(name)
    return [ArraySpec(points, np.dtype(np.float32).str, (coll.max_points, n_features)),
            ArraySpec(mask, np.dtype(bool).str, (coll.max_points,)),
            ArraySpec(count, np.dtype(np.int32).str, ())]


def check_like_first(arrays, first, spec, first_file) -> None:
    """Per-event shapes and dtypes must be those of the first entry's arrays."""
    for a, a0 in zip(arrays, first):
        if a.shape != a0.shape:
            raise DataError(f"per-event shape {a.shape} differs from {a0.shape} in {first_file!r}",
                            file=spec.file, key=a.name)
        if a.dtype != a0.dtype:
            raise DataError(f"dtype {np.dtype(a.dtype)} differs from {np.dtype(a0.dtype)} in {first_file!r}",
                            file=spec.file, key=a.name)


def apply_filter(spec, view, n_rows: int) -> np.ndarray:
    """The absolute event numbers ``spec.filter(view)`` selects, checked."""
    sel = np.asarray(spec.filter(view))
    if sel.dtype == bool:
        if sel.shape != (n_rows,):
            raise DataError(f"filter {spec.filter!r} returned a mask of shape {sel.shape}, expected ({n_rows},)",
                            file=spec.file)
        return np.flatnonzero(sel).astype(np.int64)
    if sel.dtype.kind not in "iu":
        raise DataError(f"filter {spec.filter!r} must return a bool mask or integer indices, got {sel.dtype}",
                        file=spec.file)
    sel = np.unique(sel.astype(np.int64).ravel())
    if len(sel) and (sel[0] < 0 or sel[-1] >= n_rows):
        raise DataError(f"filter {spec.filter!r} returned event numbers outside [0, {n_rows})", file=spec.file)
    return sel


def select_events(spec, n_rows: int, view):
    """``(start, stop, selection)``: the entry's event range after its filter (run on ``view()``, the
    format's file view); ``selection`` (absolute rows) only when the selected events are not one contiguous
    range."""
    stop = n_rows if spec.stop is None else min(spec.stop, n_rows)
    start = min(spec.start, stop)
    if spec.filter is None:
        return start, stop, None
    try:
        sel = apply_filter(spec, view(), n_rows)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"filter {spec.filter!r} failed: {type(exc).__name__}: {exc}", file=spec.file) from None
    sel = sel[(sel >= start) & (sel < stop)]
    if len(sel) == 0 or sel[-1] - sel[0] + 1 != len(sel):
        return start, stop, sel
    return int(sel[0]), int(sel[-1]) + 1, None


def entry_info(index, spec, class_index, st, n_rows, selected, modes, fmt) -> EntryInfo:
    start, stop, selection = selected
    n = (stop - start) if selection is None else len(selection)
    h = hashlib.sha1(f"{start}:{stop}:{spec.tree}".encode())
    if selection is not None:
        h.update(np.ascontiguousarray(selection).tobytes())
    return EntryInfo(
        index=index, path=os.path.abspath(spec.file), class_index=class_index,
        weight=1.0 if spec.weight is None else float(spec.weight), keys=spec.keys, n_rows=n_rows, start=start,
        stop=stop, selection=selection, n=int(n), modes=modes, size=st.st_size, mtime_ns=st.st_mtime_ns,
        digest=h.hexdigest(), format=fmt, tree=spec.tree,
    )


def check_counts(counts: list, fields, first_event: int, file, where: str = "") -> np.ndarray:
    """The per-event point counts of a collection's fields must agree; returns them (int64)."""
    ref = np.asarray(counts[0], dtype=np.int64)
    for f, c in zip(fields[1:], counts[1:]):
        bad = np.flatnonzero(np.asarray(c) != ref)
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{where}field {f!r} has {int(c[i])} points in event {first_event + i} but "
                            f"{fields[0]!r} has {int(ref[i])}; the fields of a collection must have one value "
                            "per point", file=file, key=f)
    return ref


def _sort_within_events(key, counts, descending: bool) -> np.ndarray:
    """The order of the points sorted by ``key`` (as float32, the points' dtype) within each event, events
    kept in order; stable, so ties keep the file's order. One sort of 64-bit integers (the event number
    above the key's order-preserving bits) is 4x faster than ``np.lexsort`` of key and event."""
    bits = (np.asarray(key, np.float32) + np.float32(0)).view(np.uint32)  # + 0 turns -0.0 into 0.0
    bits = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))  # ascending as unsigned
    if descending:
        bits = ~bits
    event = np.repeat(np.arange(len(counts), dtype=np.uint64), counts)
    return np.argsort((event << np.uint64(32)) | bits.astype(np.uint64), kind="stable")


def pad_into(values: list, counts, coll, fields, outs, events=None) -> None:
    """Write a collection's points into fixed-shape arrays, sorted and clipped as ``coll`` says.

    ``values``: one flat array per field, the events one after the other with ``counts`` points each;
    ``outs``: ``(points (R, M, F), rows), (mask (R, M), rows), (count (R,), rows)``, where event
    ``events[i]`` (default: every event in order) goes to row ``rows[i]`` of each array. Work is in the
    points kept (at most M per event), not in all the points read, except for the sort.
    """
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    order = None
    if coll.sort_by is not None and len(values[0]):
        order = _sort_within_events(np.asarray(values[fields.index(coll.sort_by)]), counts, coll.descending)
    if events is not None:
        counts, starts = counts[events], starts[events]
    m = coll.max_points
    kept = np.minimum(counts, m)
    first = np.cumsum(kept) - kept
    rank = np.arange(int(kept.sum()), dtype=np.int64) - np.repeat(first, kept)
    src = np.repeat(starts, kept) + rank
    if order is not None:
        src = order[src]
    (points, prow), (mask, mrow), (count, crow) = [(a, _indices(r)) for a, r in outs]
    points[prow] = coll.pad_value
    flat = points.reshape(-1, points.shape[-1])
    slot = np.repeat(prow * m, kept) + rank
    for j, v in enumerate(values):
        flat[slot, j] = np.asarray(v)[src]
    mask[mrow] = False
    mask.reshape(-1)[np.repeat(mrow * m, kept) + rank] = True
    count[crow] = counts


def _indices(rows) -> np.ndarray:
    return np.arange(rows.start, rows.stop) if isinstance(rows, slice) else np.asarray(rows, np.int64)


def pad_points(values: list, counts, coll, fields, events=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`pad_into` new arrays: ``(points (n, M, F) float32, mask (n, M) bool, count (n,) int32)``."""
    n = len(counts) if events is None else len(events)
    points = np.empty((n, coll.max_points, len(values)), np.float32)
    mask = np.empty((n, coll.max_points), bool)
    count = np.empty(n, np.int32)
    rows = np.arange(n)
    pad_into(values, counts, coll, fields, ((points, rows), (mask, rows), (count, rows)), events)
    return points, mask, count
