"""The classical reconstruction the networks are measured against: derivative peak finding and time-proximity
clusterization, as plain numpy functions over batches of waveforms.

Peak lists are kept in CSR form (:class:`PeakList`): the peaks of waveform ``i`` are
``index[offsets[i]:offsets[i+1]]`` (sample numbers, increasing), so a batch of waveforms with different
numbers of peaks is two flat arrays and every step stays vectorised.

>>> import numpy as np
>>> w = np.zeros((1, 40)); w[0, 10:14] = [4, 9, 6, 3]; w[0, 25:28] = [6, 14, 2]
>>> derivative_peaks(w, sigma=(1.0, 1.0)).split()
[array([11, 26])]
>>> time_proximity_counts(PeakList.from_lists([[100.0, 102.0, 130.0]]), max_gap_ns=5.0)
array([2])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PeakList", "robust_sigma", "derivative_peaks", "local_maxima", "time_proximity_counts",
           "time_proximity_labels", "encode_times", "DERIVATIVE_DEFAULTS"]

#: Thresholds of the derivative algorithm used throughout (in units of the derivatives' noise RMS):
#: a leading edge is a sample where the first derivative exceeds k1 sigma_1 and the second k2 sigma_2.
DERIVATIVE_DEFAULTS = {"k1": 3.5, "k2": 1.0, "smooth": 2, "max_rise": 6}


@dataclass(frozen=True)
class PeakList:
    """Peaks of a batch of waveforms in CSR form: ``index[offsets[i]:offsets[i+1]]`` belong to waveform i."""

    offsets: np.ndarray  # (N+1,) int64
    index: np.ndarray  # (P,) sample numbers (or times, see from_lists)

    @property
    def n_waveforms(self) -> int:
        return len(self.offsets) - 1

    @property
    def counts(self) -> np.ndarray:
        """Peaks per waveform (N,)."""
        return np.diff(self.offsets)

    @property
    def waveform(self) -> np.ndarray:
        """The waveform of each peak (P,)."""
        return np.repeat(np.arange(self.n_waveforms), self.counts)

    def split(self) -> list[np.ndarray]:
        """One array per waveform."""
        return np.split(self.index, self.offsets[1:-1])

    @classmethod
    def from_lists(cls, lists) -> PeakList:
        """From one sequence of positions (sample numbers or times) per waveform."""
        lists = [np.asarray(x) for x in lists]
        counts = np.array([len(x) for x in lists], dtype=np.int64)
        index = np.concatenate(lists) if lists and counts.sum() else np.zeros(0)
        return cls(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), index)

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> PeakList:
        """From a boolean (N, T) array marking peak samples."""
        rows, cols = np.nonzero(mask)
        counts = np.bincount(rows, minlength=mask.shape[0])
        return cls(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), cols.astype(np.int64))


def robust_sigma(x: np.ndarray, axis: int = -1, clip: float = 3.0, iterations: int = 2) -> np.ndarray:
    """Noise RMS per row (kept as a column), robust against the pulses, which occupy a minority of samples.

    Starts from the median absolute deviation (1.4826 MAD), then takes the standard deviation of the values
    within ``clip`` sigmas of the mean, ``iterations`` times, corrected for the Gaussian's clipped tails.
    The clipped standard deviation varies smoothly, unlike the MAD of ADC-quantised values, which jumps
    between discrete steps (and with it every threshold set in units of it).
    """
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    med = np.median(x, axis=-1, keepdims=True)
    sigma = 1.4826 * np.median(np.abs(x - med), axis=-1, keepdims=True)
    mean = med
    # Variance of a unit Gaussian restricted to |z| < clip.
    from scipy.stats import norm

    frac = 2 * norm.cdf(clip) - 1
    shrink = 1 - 2 * clip * norm.pdf(clip) / frac
    for _ in range(iterations):
        inside = np.abs(x - mean) <= clip * np.maximum(sigma, 1e-12)
        n = np.maximum(inside.sum(axis=-1, keepdims=True), 1)
        mean = np.where(inside, x, 0).sum(axis=-1, keepdims=True) / n
        var = np.where(inside, (x - mean) ** 2, 0).sum(axis=-1, keepdims=True) / n
        sigma = np.sqrt(var / shrink)
    return np.moveaxis(sigma, -1, axis).astype(np.float32)


def _derivatives(w: np.ndarray, smooth: int) -> tuple[np.ndarray, np.ndarray]:
    """First and second backward differences of the ``smooth``-sample running mean (same shape as w)."""
    if smooth > 1:
        c = np.cumsum(w, axis=1, dtype=np.float64)
        s = np.empty_like(w, dtype=np.float64)
        s[:, :smooth] = c[:, :smooth] / np.arange(1, smooth + 1)
        s[:, smooth:] = (c[:, smooth:] - c[:, :-smooth]) / smooth
    else:
        s = w.astype(np.float64)
    d1 = np.zeros_like(s)
    d1[:, 1:] = s[:, 1:] - s[:, :-1]
    d2 = np.zeros_like(s)
    d2[:, 1:] = d1[:, 1:] - d1[:, :-1]
    return d1, d2


def local_maxima(w: np.ndarray) -> np.ndarray:
    """Boolean (N, T): ``w[j] > w[j-1]`` and ``w[j] >= w[j+1]`` (the first sample of a flat top counts)."""
    w = np.asarray(w)
    m = np.zeros(w.shape, bool)
    m[:, 1:-1] = (w[:, 1:-1] > w[:, :-2]) & (w[:, 1:-1] >= w[:, 2:])
    return m


def derivative_peaks(waveforms, k1: float = DERIVATIVE_DEFAULTS["k1"], k2: float = DERIVATIVE_DEFAULTS["k2"],
                     smooth: int = DERIVATIVE_DEFAULTS["smooth"], max_rise: int = DERIVATIVE_DEFAULTS["max_rise"],
                     sigma=None) -> PeakList:
    """The derivative peak-finding algorithm: peaks at fast leading edges.

    A sample starts a leading edge when the first derivative of the waveform (smoothed over ``smooth``
    samples) exceeds ``k1`` times its noise RMS *and* the second derivative exceeds ``k2`` times its own:
    the signal turns sharply upwards. Consecutive triggering samples are one edge; its peak is the first
    local maximum of the waveform at or after the edge, if it comes within ``max_rise`` samples. Two edges
    leading to the same maximum give one peak. The algorithm only sees the rising edge; a pulse's shape
    after its maximum plays no role (what the LSTM adds).

    Parameters
    ----------
    waveforms : (N, T) array, baseline-subtracted or not (derivatives ignore a constant).
    k1, k2 : thresholds in units of the noise RMS of the first and second derivative.
    smooth : running-mean length before differentiating (1: none).
    max_rise : samples allowed from the edge to the maximum.
    sigma : ``(sigma_1, sigma_2)`` noise RMS of the derivatives (scalars or (N, 1)); default: per
        waveform, :func:`robust_sigma` of each derivative.

    Returns
    -------
    :class:`PeakList` of sample numbers.
    """
    w = np.atleast_2d(np.asarray(waveforms, dtype=np.float32))
    n, t = w.shape
    d1, d2 = _derivatives(w, int(smooth))
    if sigma is None:
        s1, s2 = robust_sigma(d1), robust_sigma(d2)
    else:
        s1, s2 = (np.asarray(s, dtype=np.float64) for s in sigma)
    trig = (d1 > k1 * s1) & (d2 > k2 * s2)
    start = trig.copy()
    start[:, 1:] &= ~trig[:, :-1]
    idx = np.where(local_maxima(w), np.arange(t), t)
    nxt = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]  # next local maximum at or after each sample
    rows, cols = np.nonzero(start)
    peak = nxt[rows, cols]
    ok = (peak < t) & (peak - cols <= max_rise)
    rows, peak = rows[ok], peak[ok]
    if len(rows):
        keep = np.ones(len(rows), bool)
        keep[1:] = (rows[1:] != rows[:-1]) | (peak[1:] != peak[:-1])
        rows, peak = rows[keep], peak[keep]
    counts = np.bincount(rows, minlength=n)
    return PeakList(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), peak.astype(np.int64))


def time_proximity_labels(peaks: PeakList, max_gap_ns) -> np.ndarray:
    """Cluster number of each peak: peaks closer in time than ``max_gap_ns`` to the previous one share it.

    ``peaks.index`` are times (ns, increasing within each waveform). Electrons of one cluster arrive spread
    by diffusion (a few ns); different clusters are separated by their drift-time differences.
    """
    t = np.asarray(peaks.index, dtype=np.float64)
    new = np.ones(len(t), bool)
    if len(t):
        new[1:] = np.diff(t) > max_gap_ns
        new[peaks.offsets[:-1][peaks.counts > 0]] = True  # the first peak of each waveform opens a cluster
    label = np.cumsum(new) - 1
    first = np.repeat(label[peaks.offsets[:-1][peaks.counts > 0]] if len(t) else np.zeros(0, int),
                      peaks.counts[peaks.counts > 0])
    return label - first


def time_proximity_counts(peaks: PeakList, max_gap_ns) -> np.ndarray:
    """Number of clusters per waveform from time proximity (:func:`time_proximity_labels`).

    ``max_gap_ns`` may be a sequence: the result is then (N, len(max_gap_ns)), one column per gap.
    """
    t = np.asarray(peaks.index, dtype=np.float64)
    gaps = np.atleast_1d(np.asarray(max_gap_ns, dtype=np.float64))
    out = np.zeros((peaks.n_waveforms, len(gaps)), dtype=np.int64)
    if len(t):
        wf = peaks.waveform
        same = np.zeros(len(t), bool)
        same[1:] = wf[1:] == wf[:-1]
        dt = np.zeros(len(t))
        dt[1:] = np.diff(t)
        for g, gap in enumerate(gaps):
            new = ~same | (dt > gap)
            out[:, g] = np.bincount(wf, weights=new, minlength=peaks.n_waveforms)
    return out[:, 0] if np.ndim(max_gap_ns) == 0 else out


def encode_times(peaks: PeakList, n_bins: int = 1024, window_ns: float = 2000.0, dtype=np.uint8) -> np.ndarray:
    """Peak times (ns) as an (N, n_bins, 1) histogram over the window: the clusterization network's input.

    Each bin counts the detected peaks in its time interval (~1.95 ns for 2000 ns / 1024); times outside
    the window are dropped; counts saturate at the dtype's maximum.
    """
    t = np.asarray(peaks.index, dtype=np.float64)
    b = np.floor(t * (n_bins / window_ns)).astype(np.int64)
    wf = peaks.waveform
    ok = (b >= 0) & (b < n_bins)
    counts = np.bincount(wf[ok] * n_bins + b[ok], minlength=peaks.n_waveforms * n_bins)
    limit = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else np.inf
    return np.minimum(counts, limit).astype(dtype).reshape(peaks.n_waveforms, n_bins, 1)
