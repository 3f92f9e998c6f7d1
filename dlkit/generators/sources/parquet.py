"""Parquet sources through pyarrow: list columns for collections (nullable lists read as empty), numeric
columns and fixed-size lists (nested for images) for fixed-shape arrays.

A reader reads only the columns and the row groups that hold a task's events, and keeps the last row groups
it decoded (one task's runs of a file usually fall in the same row group). pyarrow is imported on first use.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from dlkit.generators._layout import ArraySpec
from dlkit.generators.errors import DataError
from dlkit.generators.sources.base import check_counts, collection_arrays, opened

_KEEP = 8  # row-group tables a reader keeps per file


class ParquetFile:
    """An open parquet file with its row-group boundaries (a context manager)."""

    def __init__(self, path):
        import pyarrow.parquet as pq

        self.path = str(path)
        self.file = pq.ParquetFile(self.path)
        md = self.file.metadata
        sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        self.bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.schema = self.file.schema_arrow
        self._tables: OrderedDict = OrderedDict()

    def _group(self, g, columns):
        key = (g, columns)
        t = self._tables.get(key)
        if t is None:
            t = self._tables[key] = self.file.read_row_group(g, columns=list(columns))
            while len(self._tables) > _KEEP:
                self._tables.popitem(last=False)
        return t

    def columns(self, names, r0, r1):
        """Rows ``[r0, r1)`` of the columns ``names``, as one pyarrow table."""
        import pyarrow as pa

        names = tuple(names)
        g0 = int(np.searchsorted(self.bounds, r0, side="right")) - 1
        g1 = int(np.searchsorted(self.bounds, r1, side="left"))
        parts = [self._group(g, names) for g in range(g0, max(g1, g0 + 1))]
        table = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
        return table.slice(r0 - int(self.bounds[g0]), r1 - r0)

    def close(self):
        self._tables.clear()
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_file(path, tree=None, consumer=False) -> ParquetFile:
    """The file; on the consumer side a :class:`DataError` when it cannot be opened."""
    return opened(lambda: ParquetFile(path), path, consumer, "parquet")


def _field(f, spec, name):
    i = f.schema.get_field_index(name)
    if i < 0:
        raise DataError(f"column not found (the file has {f.schema.names[:12]})", file=spec.file, key=name)
    return f.schema.field(i).type


def _fixed_shape(t):
    """(per-event shape, numpy dtype) of a numeric column or nested fixed-size lists, else None."""
    import pyarrow as pa

    shape = []
    while pa.types.is_fixed_size_list(t):
        shape.append(t.list_size)
        t = t.value_type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return tuple(shape), np.dtype(t.to_pandas_dtype())
    return None


def _is_points(t) -> bool:
    """A (large) list of plain numbers: one collection field."""
    import pyarrow as pa

    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        return False
    inner = _fixed_shape(t.value_type)
    return inner is not None and inner[0] == ()


def describe(f, spec, file_size: int):
    """``(array specs, read modes, events)`` of an entry's keys, from the file's schema."""
    arrays, modes = [], {}
    for name, path in spec.keys:
        if isinstance(path, str):
            fixed = _fixed_shape(_field(f, spec, path))
            if fixed is None:
                raise DataError(f"column of type {_field(f, spec, path)} is not of a fixed shape per event; read "
                                "a list column as a Collection", file=spec.file, key=path)
            arrays.append(ArraySpec(name, fixed[1].str, fixed[0]))
            modes[name] = ("read", None)
            continue
        for c in path.fields:
            if not _is_points(_field(f, spec, c)):
                raise DataError(f"column of type {_field(f, spec, c)} is not a list of numbers (collection "
                                f"{name!r})", file=spec.file, key=c)
        arrays += collection_arrays(name, path, len(path.fields))
        modes[name] = ("points", None)
    return arrays, modes, int(f.bounds[-1])


def n_events(f, spec) -> int:
    return int(f.bounds[-1])


def _numpy(col, name, path) -> np.ndarray:
    """A column of a fixed shape per event as numpy; nulls are refused, naming the first."""
    import pyarrow as pa

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    shape = []
    while pa.types.is_fixed_size_list(col.type):
        if col.null_count:
            raise DataError(f"has a null in event {int(np.flatnonzero(col.is_null())[0])}", file=path, key=name)
        shape.append(col.type.list_size)
        col = col.flatten()
    if col.null_count:
        raise DataError(f"has a null value (in element {int(np.flatnonzero(col.is_null())[0])})", file=path,
                        key=name)
    return col.to_numpy(zero_copy_only=False).reshape((-1, *shape))


class _Columns:
    """What an event filter is given: ``view[column]`` is the whole column as a numpy array."""

    def __init__(self, f):
        self._f = f

    def __getitem__(self, name):
        if self._f.schema.get_field_index(name) < 0:
            raise KeyError(f"no column {name!r}")
        return _numpy(self._f.file.read(columns=[name]).column(0), name, self._f.path)

    def __contains__(self, name):
        return self._f.schema.get_field_index(name) >= 0


def filter_view(f):
    return _Columns(f)


def read_fixed(f, entry, name, path, r0: int, r1: int) -> np.ndarray:
    return _numpy(f.columns([path], r0, r1).column(0), path, f.path)


def read_points(f, entry, name, coll, r0: int, r1: int):
    """A collection's points for events ``[r0, r1)``: one flat array per column, and the counts; a null list
    is an event without points."""
    import pyarrow.compute as pc

    table = f.columns(coll.fields, r0, r1)
    values, counts = [], []
    for c in coll.fields:
        col = table.column(c).combine_chunks()
        counts.append(pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False))
        flat = col.flatten()  # skips the values under null lists
        if flat.null_count:
            raise DataError(f"has a null value inside a list (event {r0 + _event_of_null(col)})", file=f.path, key=c)
        values.append(flat.to_numpy(zero_copy_only=False))
    return values, check_counts(counts, coll.fields, r0, entry.path)


def _event_of_null(col) -> int:
    """The first event whose list holds a null (a rare error path: a plain loop is fine)."""
    for i in range(len(col)):
        item = col[i]
        if item.is_valid and any(v is None for v in item.as_py()):
            return i
    return 0
