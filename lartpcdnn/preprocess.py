"""LArIAT wire-data pre-processing, run per batch inside the generator's reader processes.

DLKit's ``ProcessWireData(DownSampleFactor=8, ScanWindowSize=256, Norm=True)``: an event's raw
``features`` (2 views x 240 wires x 4096 ticks, 3.9 MB in float16) become two 240 x 256 images:

1. :func:`downsample`: sum consecutive groups of ``factor`` ticks (4096 -> 512), accumulated in float32;
2. :func:`best_window`: the start of the ``window``-tick window with the most charge, summed over views
   and wires, found with one cumulative sum per event (the first maximum wins ties);
3. :func:`crop` to that window;
4. :func:`tanh_log`: ``tanh(sign(x) log(1 + |x| / scale) / 2)`` (DLKit's normalisation with a scale, since
   the inputs are ADC sums rather than GeV: it equals ``x / (|x| + 2 scale)``, so ``scale`` is the value
   mapped to 1/3);
5. split the views into separate arrays (``induction``, ``collection``).

This is the heavy per-event work the generator's cache exists for: the cache then holds the 0.25 MB
processed images instead of the raw 3.9 MB (see bench/lartpcdnn_bench.py). The module imports numpy
only: reader processes unpickle :class:`ProcessWireData` and so import this module.

>>> pre = ProcessWireData(factor=8, window=256, scale=50.0)
>>> batch = pre({"features": np.zeros((2, 2, 240, 4096), np.float16), "Energy": np.ones(2, np.float32)})
>>> sorted(batch), batch["collection"].shape
(['Energy', 'collection', 'induction'], (2, 240, 256))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["downsample", "best_window", "crop", "tanh_log", "ProcessWireData", "scale_deposits", "ScaleDeposits",
           "TPC_CENTRE"]

#: Bumped whenever the processing changes in a way the attributes of ProcessWireData do not show.
REVISION = 1


def downsample(x: np.ndarray, factor: int = 8, dtype=np.float32) -> np.ndarray:
    """Sum groups of ``factor`` consecutive samples on the last axis: (..., T) -> (..., T // factor).

    The sums are accumulated in ``dtype`` (float32), one strided add per position in the group, which is
    about twice as fast as ``reshape(...).sum(-1)`` and never materialises a float32 copy of the input.
    """
    x = np.asarray(x)
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"down-sampling factor must be >= 1, got {factor}")
    t = x.shape[-1]
    if t % factor:
        raise ValueError(f"the last axis ({t} ticks) is not a multiple of the down-sampling factor {factor}")
    groups = x.reshape(*x.shape[:-1], t // factor, factor)
    out = groups[..., 0].astype(dtype)
    for k in range(1, factor):
        out += groups[..., k]
    return out


def best_window(x: np.ndarray, window: int) -> np.ndarray:
    """Start index, per event, of the ``window`` samples (last axis) holding the largest total.

    ``x`` is (events, ..., T); the profile summed over every axis but the first and last is searched
    with a cumulative sum (float64), so each event costs O(T) after the sum.
    """
    x = np.asarray(x)
    t = x.shape[-1]
    window = int(window)
    if not 1 <= window <= t:
        raise ValueError(f"window {window} must be between 1 and the number of samples {t}")
    profile = x.reshape(x.shape[0], -1, t).sum(axis=1, dtype=np.float64)
    cs = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(profile, axis=1)], axis=1)
    return np.argmax(cs[:, window:] - cs[:, :-window], axis=1)


def crop(x: np.ndarray, start, window: int) -> np.ndarray:
    """``x[i, ..., start[i]:start[i] + window]`` for every event ``i`` (a new contiguous array)."""
    x = np.asarray(x)
    start = np.asarray(start, dtype=np.int64).reshape(-1)
    if start.shape != (x.shape[0],):
        raise ValueError(f"need one start per event ({x.shape[0]}), got {start.shape}")
    if np.any(start < 0) or np.any(start + window > x.shape[-1]):
        raise ValueError("crop window outside the samples")
    out = np.empty((*x.shape[:-1], int(window)), x.dtype)
    for i, s in enumerate(start.tolist()):
        out[i] = x[i, ..., s:s + window]
    return out


def tanh_log(x: np.ndarray, scale: float = 1.0, out=None) -> np.ndarray:
    """DLKit's ``tanh(sign(x) * log(|x| / scale + 1) / 2)``, in place when ``out is x``."""
    if not scale > 0:
        raise ValueError(f"normalisation scale must be > 0, got {scale}")
    x = np.asarray(x)
    out = np.empty_like(x) if out is None else out
    s = np.sign(x)
    np.abs(x, out=out)
    if scale != 1:
        out /= out.dtype.type(scale)
    np.log1p(out, out=out)
    out *= s
    out *= out.dtype.type(0.5)
    np.tanh(out, out=out)
    return out


class ProcessWireData:
    """Picklable worker pre-process: ``features`` (B, 2, W, T) -> ``induction``, ``collection`` (B, W, window).

    Parameters
    ----------
    factor : ticks summed into one (DLKit's DownSampleFactor, 8).
    window : down-sampled ticks kept around the most charge (ScanWindowSize, 256); None keeps all.
    scale : tanh-log scale in the input's units (ADC sums); None: no normalisation.
    key : the input array; it is removed from the batch (so neither cached nor served).
    views : output names, one per view, in ``features[:, view]`` order.
    dtype : dtype of the images kept (float16 halves the cache and its reads; the values are in [-1, 1]).
    keep_start : also output ``window_start`` (int32), the crop start in down-sampled ticks.
    """

    def __init__(self, factor: int = 8, window: int | None = 256, scale: float | None = 50.0,
                 key: str = "features", views: Sequence[str] = ("induction", "collection"), dtype="float16",
                 keep_start: bool = False):
        self.factor = int(factor)
        if self.factor < 1:
            raise ValueError(f"down-sampling factor must be >= 1, got {factor}")
        self.window = None if window is None else int(window)
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        if scale is not None and not float(scale) > 0:
            raise ValueError(f"normalisation scale must be > 0 or None, got {scale}")
        self.scale = None if scale is None else float(scale)
        self.key = str(key)
        self.views = tuple(str(v) for v in views)
        self.dtype = np.dtype(dtype).name
        self.keep_start = bool(keep_start)
        self.revision = REVISION  # part of the generator's cache key (it hashes the attributes)

    def process(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(images (B, V, W, window) float32, window start (B,))`` of a features array."""
        x = downsample(features, self.factor)
        if self.window is None or self.window >= x.shape[-1]:
            start = np.zeros(x.shape[0], np.int64)
        else:
            start = best_window(x, self.window)
            x = crop(x, start, self.window)
        if self.scale is not None:
            tanh_log(x, self.scale, out=x)
        return x, start

    def __call__(self, arrays):
        if self.key not in arrays:
            raise KeyError(f"ProcessWireData: no array {self.key!r} in the batch (has {sorted(arrays)})")
        x = np.asarray(arrays[self.key])
        if x.ndim != 4 or x.shape[1] != len(self.views):
            raise ValueError(f"ProcessWireData: {self.key!r} must be (events, {len(self.views)} views, wires, "
                             f"ticks), got {x.shape}")
        images, start = self.process(x)
        out = {k: v for k, v in arrays.items() if k != self.key}
        for i, name in enumerate(self.views):
            out[name] = images[:, i].astype(self.dtype)
        if self.keep_start:
            out["window_start"] = start.astype(np.int32)
        return out

    def __repr__(self):
        return (f"ProcessWireData(factor={self.factor}, window={self.window}, scale={self.scale}, "
                f"key={self.key!r}, views={self.views}, dtype={self.dtype!r})")


#: The centre of the simulated TPC box (x drift, y up, z beam) [cm]: :class:`ScaleDeposits`' default origin.
TPC_CENTRE = (23.5, 0.0, 45.0)


def scale_deposits(points: np.ndarray, mask: np.ndarray, centre=TPC_CENTRE, length: float = 20.0,
                   charge: float = 1.0, out: np.ndarray | None = None) -> np.ndarray:
    """Deposits ``(..., M, 4)`` (x, y, z [cm], q [MeV]) as network inputs: ``(x - centre) / length`` per
    coordinate and ``log(q / charge)`` (q floored at 1e-3 ``charge``), padded points (``mask`` False) 0.

    With the defaults the TPC spans about [-1.2, 1.2] x [-1, 1] x [-2.3, 2.3] and a MIP step's 0.6 MeV
    maps to -0.5; the drift mirror ``x -> 47 cm - x`` is a sign flip of the first feature."""
    x = np.asarray(points, np.float32)
    out = np.empty(x.shape, np.float32) if out is None else out
    np.subtract(x[..., :3], np.asarray(centre, np.float32), out=out[..., :3])
    out[..., :3] /= np.float32(length)
    np.maximum(x[..., 3], np.float32(1e-3 * charge), out=out[..., 3])
    out[..., 3] /= np.float32(charge)
    np.log(out[..., 3], out=out[..., 3])
    out *= np.asarray(mask, bool)[..., None]
    return out


class ScaleDeposits:
    """Picklable worker pre-process of a deposit collection (:class:`dlkit.generators.Collection` of
    ``dep_x, dep_y, dep_z, dep_q`` called ``name``): :func:`scale_deposits` on ``name``, honouring
    ``name_mask``; the other arrays pass through.

    >>> pre = ScaleDeposits("deposits")
    >>> b = pre({"deposits": np.array([[[23.5, 0, 45, 1.0], [0, 0, 0, 0]]], np.float32),
    ...          "deposits_mask": np.array([[True, False]])})
    >>> b["deposits"].tolist()
    [[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]
    """

    def __init__(self, name: str = "deposits", centre: Sequence[float] = TPC_CENTRE, length: float = 20.0,
                 charge: float = 1.0):
        self.name = str(name)
        self.centre = tuple(float(c) for c in centre)
        if len(self.centre) != 3:
            raise ValueError(f"centre must be 3 coordinates (x, y, z) [cm], got {centre!r}")
        if not float(length) > 0 or not float(charge) > 0:
            raise ValueError(f"length and charge must be > 0, got {length!r}, {charge!r}")
        self.length, self.charge = float(length), float(charge)
        self.revision = REVISION  # part of the generator's cache key (it hashes the attributes)

    def __call__(self, arrays):
        mask_key = f"{self.name}_mask"
        if self.name not in arrays or mask_key not in arrays:
            raise KeyError(f"ScaleDeposits: no arrays {self.name!r} and {mask_key!r} in the batch (has "
                           f"{sorted(arrays)})")
        x = arrays[self.name]
        if x.shape[-1] != 4:
            raise ValueError(f"ScaleDeposits: {self.name!r} must have 4 features (x, y, z, q), got {x.shape}")
        arrays[self.name] = scale_deposits(x, arrays[mask_key], self.centre, self.length, self.charge)
        return arrays

    def __repr__(self):
        return (f"ScaleDeposits(name={self.name!r}, centre={self.centre}, length={self.length}, "
                f"charge={self.charge})")
