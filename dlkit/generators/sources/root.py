"""ROOT sources through uproot: a TTree (vector branches for collections, scalar or fixed-size array branches
for fixed-shape arrays) or an RNTuple (list fields, scalar or fixed-size array fields).

Readers read only the branches and the entry range a task needs (``arrays(..., entry_start, entry_stop)``)
and keep their files open. Per event a collection's field is a variable-length list; its flat values and
counts come from awkward without a Python loop. uproot and awkward are imported on first use.
"""

from __future__ import annotations

import numpy as np

from dlkit.generators._layout import ArraySpec
from dlkit.generators.errors import DataError
from dlkit.generators.sources.base import check_counts, collection_arrays, opened

_TREES = ("TTree", "ROOT::RNTuple", "ROOT::Experimental::RNTuple")


class RootFile:
    """An open ROOT file and the TTree or RNTuple an entry reads (a context manager)."""

    def __init__(self, path, tree=None):
        import uproot

        self.path = str(path)
        self.file = uproot.open(self.path, array_cache=None)  # a range is read once an epoch: no copies kept
        try:
            self.tree = self.file[_tree_name(self.file, tree, self.path)]
        except Exception:
            self.file.close()
            raise
        self.names = set(self.tree.keys())
        self.kind = "RNTuple" if "RNTuple" in type(self.tree).__name__ else "TTree"

    def arrays(self, names, r0, r1):
        return self.tree.arrays(list(names), entry_start=r0, entry_stop=r1, library="ak")

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _tree_name(f, tree, path) -> str:
    trees = sorted({k.split(";")[0] for k, c in f.classnames().items() if c in _TREES})
    if tree is not None:
        if tree not in trees:
            raise DataError(f"has no TTree or RNTuple {tree!r} (it has {trees})", file=path)
        return tree
    if len(trees) != 1:
        raise DataError(f"has {len(trees)} TTrees/RNTuples {trees}; name one with the sample's tree", file=path)
    return trees[0]


def open_file(path, tree=None, consumer=False) -> RootFile:
    """The file and its tree; on the consumer side a :class:`DataError` when it cannot be opened."""
    return opened(lambda: RootFile(path, tree), path, consumer, "ROOT")


def _branch(f, spec, name):
    if name not in f.names:
        raise DataError(f"the {f.kind} {f.tree.name!r} has no branch {name!r} (it has {sorted(f.names)[:12]})",
                        file=spec.file, key=name)


def _layout(x):
    """(kind, per-event shape, numpy dtype) of an awkward array of events: "fixed" or "list" (one level of
    variable length over numbers)."""
    import awkward as ak

    t = x.type.content
    shape = []
    while isinstance(t, ak.types.RegularType):
        shape.append(t.size)
        t = t.content
    if isinstance(t, ak.types.NumpyType):
        return "fixed", tuple(shape), np.dtype(t.primitive)
    if isinstance(t, (ak.types.ListType,)) and not shape and isinstance(t.content, ak.types.NumpyType):
        return "list", (), np.dtype(t.content.primitive)
    return "other", (), None


def describe(f, spec, file_size: int):
    """``(array specs, read modes, events)`` of an entry's keys, from the branch types and the first event."""
    arrays, modes = [], {}
    n = f.tree.num_entries
    for name, path in spec.keys:
        fields = (path,) if isinstance(path, str) else path.fields
        for b in fields:
            _branch(f, spec, b)
        head = f.arrays(fields, 0, min(n, 1))
        kinds = {b: _layout(head[b]) for b in fields}
        if isinstance(path, str):
            kind, shape, dtype = kinds[path]
            if kind != "fixed":
                raise DataError(f"branch of type {head[path].type.content} is not of a fixed shape per event; "
                                "read it as a Collection", file=spec.file, key=path)
            arrays.append(ArraySpec(name, dtype.newbyteorder("=").str, shape))
            modes[name] = ("read", None)
            continue
        for b, (kind, _, _) in kinds.items():
            if kind != "list":
                raise DataError(f"branch of type {head[b].type.content} is not a variable-length list of numbers "
                                f"(collection {name!r})", file=spec.file, key=b)
        arrays += collection_arrays(name, path, len(fields))
        modes[name] = ("points", None)
    return arrays, modes, int(n)


def n_events(f, spec) -> int:
    return int(f.tree.num_entries)


class _Columns:
    """What an event filter is given: ``view[branch]`` is the whole branch as a numpy array."""

    def __init__(self, f):
        self._f = f

    def __getitem__(self, name):
        import awkward as ak

        if name not in self._f.names:
            raise KeyError(f"no branch {name!r}")
        return ak.to_numpy(self._f.arrays([name], 0, self._f.tree.num_entries)[name])

    def __contains__(self, name):
        return name in self._f.names


def filter_view(f):
    return _Columns(f)


def read_fixed(f, entry, name, path, r0: int, r1: int) -> np.ndarray:
    import awkward as ak

    return ak.to_numpy(f.arrays([path], r0, r1)[path])


def read_points(f, entry, name, coll, r0: int, r1: int):
    """A collection's points for events ``[r0, r1)``: one flat array per field, and the counts."""
    import awkward as ak

    data = f.arrays(coll.fields, r0, r1)
    values, counts = [], []
    for b in coll.fields:
        x = data[b]
        counts.append(ak.to_numpy(ak.num(x, axis=1)))
        values.append(ak.to_numpy(ak.flatten(x, axis=1)))
    return values, check_counts(counts, coll.fields, r0, entry.path, where=f"{f.kind} {f.tree.name!r}: ")
