"""SparseTensor: per-event sparse N-d data (coordinates + values), stored in HDF5, made dense on the fly.

DLKit's ``SparseTensorDataSet`` rebuilt. Truth of a LArTPC event is a few thousand charge deposits
(x, y, z, charge), while the dense image the original made of it (240 x 240 x 4096) is 0.9 GB in float32:
store the points, choose the binning and the region when the image is needed, and histogram many events
with one ``np.bincount``.

In memory all events' points are concatenated (CSR style): ``coords`` (M, D), ``values`` (M,) and
``offsets`` (n_events + 1,), event ``i`` being rows ``offsets[i]:offsets[i+1]``. On disk (a group,
``images3D`` for LArIAT) the points are padded to a fixed capacity per event, so every dataset has the
events on its first axis and the data pipeline can read them like any image::

    <group>/C  (N, K, D) float32   coordinates, rows >= N[i] are padding (zeros)
    <group>/V  (N, K)    float32   values (charge), 0 in the padding
    <group>/N  (N,)      int32     points per event
    attrs: layout="padded", shape (default bins), region (default ((lo, hi), ...)), axes (names)

Chunks of whole events with gzip make the padding cost almost nothing. Variable-length files (``C`` and
``V`` as HDF5 vlen datasets, one flat array per event) are read too.

:meth:`SparseTensor.dense` equals ``np.histogramdd(C_i, bins, range=region, weights=V_i)`` for every event
(same bin edges, same half-open bins with the last one closed, same summation order), and
:class:`Densify` does the same inside the generator's reader processes::

    >>> st = SparseTensor.from_events([(np.array([[0.5, 0.5]]), np.array([2.0]))], shape=(2, 2),
    ...                               region=((0, 1), (0, 1)))
    >>> st.dense()[0]
    array([[0., 0.],
           [0., 2.]])
    >>> st.write_h5("truth.h5", "images3D")                                # doctest: +SKIP
    >>> SparseTensor.read_h5("truth.h5", "images3D").dense(bins=(48, 40, 90))    # doctest: +SKIP
    >>> gen = MultiClassGenerator(samples, 32, preprocess=Densify((48, 40, 90), region))  # doctest: +SKIP

This module imports numpy only (h5py when reading or writing), so pre-processes built from it can run in
reader processes that never import Keras.
"""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["SparseTensor", "Densify", "bin_indices", "histogram_edges"]


def _outer_edges(lo, hi):
    """``np.histogramdd``'s treatment of a range: finite, ordered, and widened by 0.5 if empty."""
    lo, hi = float(lo), float(hi)
    if lo > hi:
        raise ValueError(f"region ({lo}, {hi}): the lower bound must not exceed the upper one")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"region ({lo}, {hi}) is not finite")
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def histogram_edges(bins, region, coords=None) -> list[np.ndarray]:
    """Bin edges per axis exactly as ``np.histogramdd`` makes them.

    ``bins``: one int (all axes), or per axis an int (uniform bins over the region) or an array of edges.
    ``region``: per axis ``(lo, hi)`` or None (the min/max of ``coords`` on that axis, like histogramdd).
    """
    if isinstance(bins, numbers.Integral):
        if coords is None and region is None:
            raise ValueError("bins given as one number needs a region or coordinates to know the dimension")
        ndim = len(region) if region is not None else np.shape(coords)[1]
        bins = [int(bins)] * ndim
    ndim = len(bins)
    if region is None:
        region = [None] * ndim
    if len(region) != ndim:
        raise ValueError(f"region has {len(region)} axes but bins has {ndim}")
    edges = []
    for d, (b, r) in enumerate(zip(bins, region)):
        if np.ndim(b) == 0:
            n = int(b)
            if n < 1 or n != b:
                raise ValueError(f"bins[{d}] = {b!r}: expected a positive integer")
            if r is None:
                if coords is None:
                    raise ValueError(f"axis {d}: no region and no coordinates to take it from")
                column = np.asarray(coords)[:, d]
                lo, hi = (float(column.min()), float(column.max())) if column.size else (0.0, 1.0)
            else:
                lo, hi = r
            edges.append(np.linspace(*_outer_edges(lo, hi), n + 1))
        elif np.ndim(b) == 1:
            e = np.asarray(b, dtype=np.float64)
            if len(e) < 2 or np.any(e[:-1] > e[1:]):
                raise ValueError(f"bins[{d}]: edges must be increasing, at least two")
            edges.append(e)
        else:
            raise ValueError(f"bins[{d}] must be an integer or a 1-d array of edges")
    return edges


def _uniform(edges: np.ndarray) -> bool:
    return len(edges) > 1 and np.array_equal(edges, np.linspace(edges[0], edges[-1], len(edges)))


def bin_indices(coords, edges) -> tuple[np.ndarray, np.ndarray]:
    """Bin of every point on every axis, as ``np.histogramdd`` assigns them.

    Returns ``(index (M, D) int64, inside (M,) bool)``: bin ``j`` on an axis holds ``e[j] <= x < e[j+1]``,
    the last bin also ``x == e[-1]``; points outside (or NaN) on any axis have ``inside`` False. Uniform
    edges use arithmetic plus an exact one-step correction against the edges (O(M)), others searchsorted.
    """
    coords = np.asarray(coords)
    m = coords.shape[0]
    index = np.empty((m, len(edges)), np.int64)
    inside = np.ones(m, bool)
    for d, e in enumerate(edges):
        x = coords[:, d].astype(np.float64, copy=False)
        n = len(e) - 1
        if _uniform(e) and n > 0:
            lo, hi = e[0], e[-1]
            with np.errstate(invalid="ignore"):
                est = np.floor((x - lo) * (n / (hi - lo)))
            ok = np.isfinite(est)  # NaN and infinite coordinates are outside, as with histogramdd
            j = np.where(ok, np.clip(est, -1, n), n).astype(np.int64)
            # Correct the floating-point estimate against the real edges (at most one bin off).
            jc = np.clip(j, 0, n)
            down = ok & (j >= 0) & (x < e[jc])
            j -= down
            jc = np.clip(j + 1, 0, n)
            up = ok & (j + 1 <= n) & (x >= e[jc])
            j += up
            j[x == e[-1]] = n - 1
            inside &= ok
        else:
            j = np.searchsorted(e, x, side="right") - 1
            j[x == e[-1]] = n - 1
        inside &= (j >= 0) & (j < n)
        index[:, d] = j
    return index, inside


class _Rows(Sequence):
    """``tensor.C[i]`` / ``tensor.V[i]``: one event's rows (DLKit's ``D.C[i]``), without copying."""

    def __init__(self, data, offsets):
        self._data, self._offsets = data, offsets

    def __len__(self):
        return len(self._offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        return self._data[self._offsets[i]:self._offsets[i + 1]]


class SparseTensor:
    """Sparse N-d data of many events: every event's points (coordinates, values), concatenated.

    Parameters
    ----------
    coords : (M, D) coordinates of all points of all events.
    values : (M,) value (weight) of each point.
    offsets : (n_events + 1,) event ``i`` is rows ``offsets[i]:offsets[i+1]``.
    shape : default binning for :meth:`dense` (one int per axis, e.g. DLKit's ``(240, 240, 4096)``).
    region : default ``((lo, hi), ...)`` per axis for :meth:`dense`; None: the points' min/max.
    axes : optional axis names (e.g. ``("x", "y", "z")``), kept in files.
    """

    def __init__(self, coords, values, offsets, shape=None, region=None, axes=None):
        coords = np.asarray(coords)
        if coords.ndim != 2:
            raise ValueError(f"coords must be (points, dimensions), got shape {coords.shape}")
        values = np.asarray(values)
        if values.shape != (coords.shape[0],):
            raise ValueError(f"values must be ({coords.shape[0]},) to match coords, got {values.shape}")
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(values) \
                or np.any(np.diff(offsets) < 0):
            raise ValueError("offsets must start at 0, never decrease and end at the number of points")
        self.coords, self.values, self.offsets = coords, values, offsets
        self.shape = None if shape is None else tuple(int(s) for s in shape)
        self.region = None if region is None else tuple((float(a), float(b)) for a, b in region)
        self.axes = None if axes is None else tuple(str(a) for a in axes)
        for name, v in (("shape", self.shape), ("region", self.region), ("axes", self.axes)):
            if v is not None and len(v) != self.ndim:
                raise ValueError(f"{name} has {len(v)} axes but the coordinates have {self.ndim}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_events(cls, events: Iterable, **kwargs) -> SparseTensor:
        """From ``[(C_i (n_i, D), V_i (n_i,)), ...]``."""
        cs, vs = [], []
        for c, v in events:
            c, v = np.asarray(c), np.asarray(v)
            if c.ndim != 2 or v.shape != (c.shape[0],):
                raise ValueError(f"each event needs C (n, D) and V (n,), got {c.shape} and {v.shape}")
            cs.append(c)
            vs.append(v)
        if not cs:
            raise ValueError("no events")
        counts = np.array([len(v) for v in vs], np.int64)
        return cls(np.concatenate(cs), np.concatenate(vs), np.concatenate([[0], np.cumsum(counts)]), **kwargs)

    @classmethod
    def from_padded(cls, coords, values, counts=None, **kwargs) -> SparseTensor:
        """From padded arrays ``C`` (N, K, D) and ``V`` (N, K); ``counts`` (N,) valid rows per event.

        Without ``counts`` an event's points are its rows up to the last non-zero value (trailing
        zero-valued rows are padding; they would add nothing to a histogram anyway).
        """
        coords, values = np.asarray(coords), np.asarray(values)
        if coords.ndim != 3 or values.shape != coords.shape[:2]:
            raise ValueError(f"padded data must be C (N, K, D) and V (N, K), got {coords.shape} and {values.shape}")
        n, k = values.shape
        if counts is None:
            nz = values != 0
            counts = np.where(nz.any(axis=1), k - np.argmax(nz[:, ::-1], axis=1), 0)
        counts = np.asarray(counts, dtype=np.int64).reshape(-1)
        if counts.shape != (n,) or np.any(counts < 0) or np.any(counts > k):
            raise ValueError(f"counts must be ({n},) integers in [0, {k}]")
        mask = np.arange(k)[None, :] < counts[:, None]
        return cls(coords[mask], values[mask], np.concatenate([[0], np.cumsum(counts)]), **kwargs)

    # ------------------------------------------------------------------ access
    @property
    def ndim(self) -> int:
        """Number of coordinate axes D."""
        return self.coords.shape[1]

    @property
    def counts(self) -> np.ndarray:
        """Points per event."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def C(self) -> Sequence:  # noqa: N802 - DLKit's name
        """``C[i]``: coordinates of event ``i`` (a view)."""
        return _Rows(self.coords, self.offsets)

    @property
    def V(self) -> Sequence:  # noqa: N802 - DLKit's name
        """``V[i]``: values of event ``i`` (a view)."""
        return _Rows(self.values, self.offsets)

    def event(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(C_i, V_i)`` of event ``i``."""
        return self.C[i], self.V[i]

    def _select(self, events) -> np.ndarray:
        n = len(self)
        if events is None:
            return np.arange(n)
        if isinstance(events, slice):
            return np.arange(n)[events]
        idx = np.asarray(events)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean event mask of shape {idx.shape} for {n} events")
            return np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"event index out of range for {n} events")
        return np.where(idx < 0, idx + n, idx)

    def _rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Point rows of events ``idx`` (in that order) and the position of each row's event in ``idx``."""
        starts, counts = self.offsets[idx], self.counts[idx]
        owner = np.repeat(np.arange(len(idx)), counts)
        first = np.repeat(np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(idx) else np.zeros(0, np.int64),
                          counts)
        rows = np.repeat(starts, counts) + (np.arange(owner.size) - first)
        return rows.astype(np.int64), owner

    def __getitem__(self, events) -> SparseTensor:
        """A SparseTensor of the selected events (int, slice, index array or mask)."""
        if isinstance(events, numbers.Integral):
            events = [int(events)]
        idx = self._select(events)
        rows, _ = self._rows(idx)
        counts = self.counts[idx]
        return SparseTensor(self.coords[rows], self.values[rows], np.concatenate([[0], np.cumsum(counts)]),
                            self.shape, self.region, self.axes)

    def to_padded(self, capacity: int | None = None, dtype=np.float32):
        """``(C (N, K, D), V (N, K), N (N,))`` with ``K = capacity`` (default: the largest event)."""
        counts = self.counts
        k = int(counts.max(initial=0)) if capacity is None else int(capacity)
        if counts.size and counts.max() > k:
            worst = int(np.argmax(counts))
            raise ValueError(f"event {worst} has {counts[worst]} points, more than the capacity {k}")
        n = len(self)
        c = np.zeros((n, k, self.ndim), dtype)
        v = np.zeros((n, k), dtype)
        rows, owner = self._rows(np.arange(n))
        pos = np.arange(rows.size) - np.repeat(self.offsets[:-1], counts)
        c[owner, pos] = self.coords[rows]
        v[owner, pos] = self.values[rows]
        return c, v, counts.astype(np.int32)

    # ------------------------------------------------------------------ dense images
    def dense(self, events=None, bins=None, region=None, axes=None, dtype=np.float64, out=None) -> np.ndarray:
        """Histogram the selected events into dense images, ``(n_events, *bins)``.

        Parameters
        ----------
        events : which events (None: all; int array, slice or mask).
        bins : per axis an int or an array of edges (default: ``self.shape``).
        region : per axis ``(lo, hi)`` (default: ``self.region``; if that is None too, the min/max of the
            selected points, which for one event is exactly what ``np.histogramdd`` does).
        axes : coordinate columns to use (e.g. ``(0, 2)`` for a 2-D projection on x and z); default all.
        dtype : output dtype; sums are made in float64 (one ``np.bincount``) and cast once.
        out : optional preallocated ``(n_events, *bins)`` array to fill.

        Every event equals ``np.histogramdd(C_i[:, axes], bins, range=region, weights=V_i)[0]``.
        """
        idx = self._select(events)
        cols = list(range(self.ndim)) if axes is None else [int(a) for a in axes]
        if bins is None:
            if self.shape is None:
                raise ValueError("no bins given and the SparseTensor has no default shape")
            bins = [self.shape[a] for a in cols]
        if region is None and self.region is not None:
            region = [self.region[a] for a in cols]
        rows, owner = self._rows(idx)
        coords = self.coords[rows][:, cols]
        edges = histogram_edges(bins, region, coords)
        if len(edges) != len(cols):
            raise ValueError(f"bins has {len(edges)} axes but {len(cols)} coordinate axes are used")
        return _histogram(coords, self.values[rows], owner, len(idx), edges, dtype, out)

    # ------------------------------------------------------------------ HDF5
    def write_h5(self, target, group: str = "images3D", capacity: int | None = None, compression="gzip",
                 compression_opts=1, chunk_events: int = 16, dtype=np.float32):
        """Write as a padded group (see the module docstring); ``target`` a path or an open h5py File/Group."""
        import h5py

        if isinstance(target, (str, os.PathLike)):
            with h5py.File(target, "a") as f:
                return self.write_h5(f, group, capacity, compression, compression_opts, chunk_events, dtype)
        c, v, counts = self.to_padded(capacity, dtype)
        n, k = v.shape
        g = target.require_group(group)
        opts = {}
        if compression:
            opts = {"compression": compression, "shuffle": True}
            if compression == "gzip":
                opts["compression_opts"] = compression_opts
        if n and k:  # chunks of whole events; empty datasets cannot be chunked
            rows = max(1, min(int(chunk_events), n))
            g.create_dataset("C", data=c, chunks=(rows, k, self.ndim), **opts)
            g.create_dataset("V", data=v, chunks=(rows, k), **opts)
        else:
            g.create_dataset("C", data=c)
            g.create_dataset("V", data=v)
        g.create_dataset("N", data=counts)
        _write_attrs(g, self)
        return g

    @classmethod
    def read_h5(cls, source, group: str = "images3D", events=None) -> SparseTensor:
        """Read a padded (or variable-length) group; ``events`` an optional slice / index array."""
        import h5py

        if isinstance(source, (str, os.PathLike)):
            try:
                with h5py.File(source, "r") as f:
                    return cls.read_h5(f, group, events)
            except OSError as exc:
                raise OSError(f"{os.fspath(source)}: cannot read as HDF5: {exc}") from None
        where = f"{getattr(source.file, 'filename', '?')}:{group}"
        if group not in source:
            raise KeyError(f"{where}: no such group (has {sorted(source.keys())})")
        g = source[group]
        for key in ("C", "V"):
            if key not in g:
                raise KeyError(f"{where}: dataset {key!r} missing (has {sorted(g.keys())})")
        attrs = _read_attrs(g)
        sel = slice(None) if events is None else events
        if isinstance(sel, (np.ndarray, list)):
            sel = np.sort(np.asarray(sel, dtype=np.int64))  # h5py wants increasing indices
        cds, vds = g["C"], g["V"]
        if cds.dtype.kind == "O" or h5py.check_vlen_dtype(cds.dtype) is not None:
            ndim = int(g.attrs.get("ndim", len(attrs.get("shape") or ()) or 3))
            cs = [np.asarray(c).reshape(-1, ndim) for c in cds[sel]]
            vs = [np.asarray(v).reshape(-1) for v in vds[sel]]
            return cls.from_events(zip(cs, vs), **attrs)
        c, v = cds[sel], vds[sel]
        counts = g["N"][sel] if "N" in g else None
        return cls.from_padded(c, v, counts, **attrs)

    def __repr__(self):
        return (f"SparseTensor({len(self)} events, {len(self.values)} points, ndim={self.ndim}, "
                f"shape={self.shape}, region={self.region})")


def _write_attrs(g, st: SparseTensor):
    g.attrs["layout"] = "padded"
    g.attrs["ndim"] = st.ndim
    if st.shape is not None:
        g.attrs["shape"] = np.asarray(st.shape, np.int64)
    if st.region is not None:
        g.attrs["region"] = np.asarray(st.region, np.float64)
    if st.axes is not None:
        g.attrs["axes"] = list(st.axes)


def _read_attrs(g) -> dict:
    out = {}
    if "shape" in g.attrs:
        out["shape"] = tuple(int(s) for s in np.asarray(g.attrs["shape"]).reshape(-1))
    if "region" in g.attrs:
        out["region"] = [tuple(r) for r in np.asarray(g.attrs["region"], np.float64).reshape(-1, 2)]
    if "axes" in g.attrs:
        out["axes"] = [a.decode() if isinstance(a, bytes) else str(a) for a in g.attrs["axes"]]
    return out


def _histogram(coords, values, owner, n_events, edges, dtype, out):
    """One ``np.bincount`` over (event, bin) for all points: the vectorized core of :meth:`dense`."""
    shape = tuple(len(e) - 1 for e in edges)
    size = int(np.prod(shape, dtype=np.int64))
    if out is not None and out.shape != (n_events, *shape):
        raise ValueError(f"out has shape {out.shape}, expected {(n_events, *shape)}")
    index, inside = bin_indices(coords, edges)
    flat = np.ravel_multi_index(tuple(index[inside].T), shape) if index.size else np.zeros(0, np.int64)
    flat = flat + owner[inside].astype(np.int64) * size
    sums = np.bincount(flat, weights=np.asarray(values, np.float64)[inside], minlength=n_events * size)
    sums = sums.reshape((n_events, *shape))
    if out is None:
        return sums if np.dtype(dtype) == np.float64 else sums.astype(dtype)
    np.copyto(out, sums, casting="unsafe")
    return out


class Densify:
    """Generator pre-process: a batch's padded sparse arrays -> dense images (runs in the readers).

    Parameters
    ----------
    bins : per used axis an int or an array of edges.
    region : per used axis ``(lo, hi)``; required (a batch has no natural range).
    coords, values, counts : array names in the batch (``counts`` may be None: rows up to the last non-zero).
    output : name of the dense image in the batch.
    axes : coordinate columns to use (a projection when fewer than D), default all.
    dtype : output dtype (float32).
    keep : keep the sparse arrays in the batch (default: drop them, so they are neither cached nor served).

    >>> samples = make_samples_from_dirs(root, {"C": "images3D/C", "V": "images3D/V", "N": "images3D/N"},
    ...                                  pattern="*.3d.h5")                                # doctest: +SKIP
    >>> gen = MultiClassGenerator(samples, 32, cache=True,
    ...                           preprocess=Densify((47, 40, 90), ((0, 47), (-20, 20), (0, 90)),
    ...                                              counts="N"))                           # doctest: +SKIP
    """

    def __init__(self, bins, region, coords: str = "C", values: str = "V", counts: str | None = "N",
                 output: str = "image3D", axes=None, dtype="float32", keep: bool = False):
        if region is None:
            raise ValueError("Densify needs an explicit region: per axis (lo, hi)")
        self.region = tuple((float(a), float(b)) for a, b in region)
        per_axis = [bins] * len(self.region) if isinstance(bins, numbers.Integral) else list(bins)
        self.bins = [int(b) if np.ndim(b) == 0 else np.asarray(b, np.float64) for b in per_axis]
        self.edges = histogram_edges(self.bins, self.region)
        self.coords, self.values, self.counts = coords, values, counts
        self.output, self.dtype, self.keep = output, np.dtype(dtype), bool(keep)
        self.axes = None if axes is None else tuple(int(a) for a in axes)
        if self.axes is not None and len(self.axes) != len(self.edges):
            raise ValueError(f"axes {self.axes} and bins/region ({len(self.edges)} axes) disagree")

    def __call__(self, arrays: Mapping):
        missing = [k for k in (self.coords, self.values, self.counts) if k is not None and k not in arrays]
        if missing:
            raise KeyError(f"Densify: no array(s) {missing} in the batch (has {sorted(arrays)})")
        c, v = np.asarray(arrays[self.coords]), np.asarray(arrays[self.values])
        counts = None if self.counts is None else np.asarray(arrays[self.counts])
        if c.ndim != 3 or v.shape != c.shape[:2]:
            raise ValueError(f"Densify: {self.coords!r} must be (B, K, D) and {self.values!r} (B, K), got "
                             f"{c.shape} and {v.shape}")
        n, k = v.shape
        if counts is None:
            nz = v != 0
            counts = np.where(nz.any(axis=1), k - np.argmax(nz[:, ::-1], axis=1), 0)
        mask = np.arange(k)[None, :] < np.asarray(counts, np.int64).reshape(-1)[:, None]
        owner = np.nonzero(mask)[0]
        points = c[mask]
        if self.axes is not None:
            points = points[:, list(self.axes)]
        if points.shape[1] != len(self.edges):
            raise ValueError(f"Densify: {points.shape[1]} coordinate axes but bins/region for {len(self.edges)}")
        image = _histogram(points, v[mask], owner, n, self.edges, self.dtype, None)
        out = dict(arrays)
        if not self.keep:
            for key in (self.coords, self.values, self.counts):
                if key is not None:
                    out.pop(key, None)
        out[self.output] = image
        return out

    def __repr__(self):
        return (f"Densify(bins={[b if np.ndim(b) == 0 else len(b) - 1 for b in self.bins]}, region={self.region}, "
                f"output={self.output!r}, axes={self.axes})")
