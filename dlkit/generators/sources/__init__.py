"""Readers of the sample files, one module per source format: :mod:`.hdf5`, :mod:`.root` (TTree and
RNTuple, through uproot) and :mod:`.parquet` (pyarrow); the file's extension picks one (:func:`format_of`).

A format module answers, for the generator and nothing else:

- on the consumer side, once, when a generator is built: ``open_file(path, tree)`` and ``describe(file,
  spec, size)``: what each key of an entry holds (its :class:`~dlkit.generators._layout.ArraySpec` s) and
  how a reader gets it (``modes``: ``("raw", extents)`` byte extents the readers ``preadv`` straight into
  shared memory, ``("h5", None)`` an h5py read, ``("read", None)`` the format's read of a fixed-shape
  array, ``("points", details)`` a :class:`~dlkit.generators.samples.Collection`), validated with errors
  that name the file and key; ``n_events`` and ``filter_view`` (what an event filter is given);
- in the reader processes, without Keras: ``read_fixed(file, entry, name, path, r0, r1)`` (rows
  ``[r0, r1)`` of a fixed-shape array) and ``read_points(file, entry, name, collection, r0, r1)`` (one flat
  array per field and the per-event counts); :func:`.base.pad_points` makes them fixed-shape.

This module holds what is the same for every format: the loop over the entries (:func:`inspect_entries`),
the event counts used by the splits (:func:`count_events`), the probe read of a few events
(:func:`read_events`), and :func:`read_key`, the read of one key's rows that the readers share. A new format
goes beside the others with the same functions and an extension in :data:`.base.EXTENSIONS`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os

import numpy as np

from dlkit.generators.errors import DataError
from dlkit.generators.sources.base import (SAMPLE_EVENTS, EntryInfo, check_like_first, entry_info, format_of,
                                           pad_into, pad_points, select_events)

logger = logging.getLogger(__name__)

__all__ = ["EntryInfo", "count_events", "format_of", "inspect_entries", "module", "read_events", "read_key"]


def module(fmt: str):
    """The reader module of a format (imported on first use: uproot and pyarrow only when needed)."""
    return importlib.import_module(f"dlkit.generators.sources.{fmt}")


def _stat(path) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except OSError as exc:
        raise DataError(f"cannot stat file: {exc}", file=path) from None


def _check_names(spec, names0) -> None:
    if spec.names != names0:
        raise DataError(
            f"entry gives arrays {list(spec.names)} but the first entry gives {list(names0)}; "
            "all entries must provide the same names (use keys={name: path} to rename)",
            file=spec.file,
        )


def inspect_entries(specs, class_index_map: dict) -> tuple[list[EntryInfo], list]:
    """Open, validate and describe every entry; returns entry infos and the input array specs."""
    entries: list[EntryInfo] = []
    arrays = first_file = None
    has_points: dict[str, bool] = {}
    for i, spec in enumerate(specs):
        _check_names(spec, specs[0].names)
        fmt = format_of(spec.file)
        st = _stat(spec.file)
        mod = module(fmt)
        with mod.open_file(spec.file, spec.tree, consumer=True) as f, _unreadable(spec.file):
            this_arrays, modes, n_rows = mod.describe(f, spec, st.st_size)
            if arrays is None:
                arrays, first_file = this_arrays, spec.file
            else:
                check_like_first(this_arrays, arrays, spec, first_file)
            selected = select_events(spec, n_rows, lambda: mod.filter_view(f))
            entry = entry_info(i, spec, class_index_map[spec.class_name], st, n_rows, selected, modes, fmt)
            _sample_points(mod, f, entry, has_points)
        entries.append(entry)
    _check_not_all_empty(entries, has_points)
    raw = sum(m[0] == "raw" for e in entries for m in e.modes.values())
    total = sum(len(e.modes) for e in entries)
    logger.debug("inspected %d entries: %d/%d arrays readable with raw preadv", len(entries), raw, total)
    return entries, arrays


@contextlib.contextmanager
def _unreadable(path):
    """A library's failure while reading ``path`` (uproot, pyarrow, h5py) as one :class:`DataError` line."""
    try:
        yield
    except DataError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split())
        raise DataError(f"cannot read (truncated or corrupt?): {type(exc).__name__}: {text}", file=path) from None


def _sample_points(mod, f, entry, has_points) -> None:
    """Read the first events of each collection now, so broken fields fail before training starts."""
    rows = entry.rows(0, min(SAMPLE_EVENTS, entry.n))
    for name, path in entry.keys:
        if entry.modes[name][0] != "points":
            continue
        has_points.setdefault(name, False)
        if len(rows):
            _, counts = mod.read_points(f, entry, name, path, int(rows[0]), int(rows[-1]) + 1)
            has_points[name] |= bool(np.asarray(counts).any())


def _check_not_all_empty(entries, has_points) -> None:
    """A collection without a single point in any event is a mistake (a wrong branch, a cut gone wrong)."""
    for name, seen in has_points.items():
        if seen:
            continue
        for e in entries:  # the sampled events were empty: look at every event before refusing
            mod = module(e.format)
            with mod.open_file(e.path, e.tree, consumer=True) as f:
                for a in range(0, e.n, 10_000):
                    rows = e.rows(a, min(10_000, e.n - a))
                    if np.asarray(mod.read_points(f, e, name, dict(e.keys)[name], int(rows[0]),
                                                  int(rows[-1]) + 1)[1]).any():
                        return
        files = sorted({e.path for e in entries})
        raise DataError(f"collection {name!r} has no points in any event of {len(files)} file(s) "
                        f"({', '.join(files[:3])}{' ...' if len(files) > 3 else ''})", file=files[0], key=name)


def count_events(sample) -> int:
    """Events in ``sample``'s file (the whole file; its range is applied by the caller)."""
    _stat(sample.file)
    mod = module(format_of(sample.file))
    with mod.open_file(sample.file, sample.tree, consumer=True) as f:
        return int(mod.n_events(f, sample))


def read_key(mod, f, entry, name, path, rows, outs=None) -> dict | None:
    """Rows ``rows`` (absolute, sorted) of one key of ``entry``: ``{name: array}``, or for a collection its
    three arrays; with ``outs`` (``{array name: (target array, target rows)}``) written there instead. Reads
    the span ``[rows[0], rows[-1] + 1)`` once and picks the rows from it."""
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    pick = None if r1 - r0 == len(rows) else rows - r0
    if entry.modes[name][0] != "points":
        x = mod.read_fixed(f, entry, name, path, r0, r1)
        x = x if pick is None else x[pick]
        if outs is None:
            return {name: x}
        arr, dst = outs[name]
        arr[dst] = x
        return None
    values, counts = mod.read_points(f, entry, name, path, r0, r1)
    fields = _fields(entry, name, path)
    if outs is None:
        return dict(zip(path.array_names(name), pad_points(values, counts, path, fields, pick)))
    pad_into(values, counts, path, fields, [outs[k] for k in path.array_names(name)], pick)
    return None


def _fields(entry, name, coll) -> list:
    """The feature names of a collection in ``entry`` (a SparseTensor group gives several)."""
    details = entry.modes[name][1]
    return list(details.get("features", coll.fields)) if isinstance(details, dict) else list(coll.fields)


def read_events(entry, inputs, rows) -> dict:
    """Rows ``rows`` (absolute, sorted) of every array of ``entry``, read in this process (the probe)."""
    mod = module(entry.format)
    arrays = {}
    try:
        with mod.open_file(entry.path, entry.tree, consumer=True) as f:
            for name, path in entry.keys:
                arrays.update(read_key(mod, f, entry, name, path, rows))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read events for probing the pre-process: {type(exc).__name__}: {exc}",
                        file=entry.path) from None
    by_name = {a.name: a for a in inputs}
    return {k: np.ascontiguousarray(v, dtype=by_name[k].np_dtype) for k, v in arrays.items()}
