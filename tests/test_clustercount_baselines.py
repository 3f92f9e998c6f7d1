"""clustercount.baselines and the candidate/label/window derivation of clustercount.data, against references."""

import numpy as np
import pytest

import clustercount.simulate as sim
from clustercount.baselines import (
    PeakList,
    derivative_peaks,
    encode_times,
    local_maxima,
    robust_sigma,
    time_proximity_counts,
    time_proximity_labels,
)
from clustercount.data import extract_windows, find_candidates, label_candidates
from clustercount.simulate import DriftSimConfig, digitize, pulse_peak_ns, render_pulses, simulate_waveforms


def _isolated_pulses(rng, n_waveforms, cfg, min_amp=2.0):
    """Waveforms of isolated single pulses (>= 60 ns apart) at random sub-sample times; no noise."""
    wf, times, amps = [], [], []
    for i in range(n_waveforms):
        t = np.cumsum(rng.uniform(60, 150, 12)) + 20
        t = t[t < cfg.window_ns - 60]
        wf += [i] * len(t)
        times += list(t)
        amps += list(rng.uniform(min_amp, 120, len(t)))
    wf, times, amps = np.array(wf), np.array(times), np.array(amps)
    w = digitize(render_pulses(wf, times, amps, n_waveforms, cfg), cfg).astype(np.float32)
    return w, wf, times


@pytest.mark.parametrize("sigma", [None, (0.1, 0.1)])
def test_derivative_finds_isolated_clean_pulses_exactly(sigma):
    cfg = DriftSimConfig()
    w, wf, times = _isolated_pulses(np.random.default_rng(7), 20, cfg)
    found = derivative_peaks(w, sigma=sigma).split()
    for i in range(w.shape[0]):
        t = times[wf == i]
        # Reference: the maximum of each pulse's own stretch of samples (pulses are isolated).
        edges = np.r_[np.ceil(t / cfg.dt_ns).astype(int), w.shape[1]]
        expected = [a + int(np.argmax(w[i, a:b])) for a, b in zip(edges[:-1], edges[1:])]
        np.testing.assert_array_equal(found[i], expected)
        # ... which is where the analytic pulse peaks, to within one sample.
        assert np.all(np.abs(np.array(expected) * cfg.dt_ns - (t + pulse_peak_ns(cfg))) <= cfg.dt_ns)


def test_derivative_on_noise_and_on_big_pulses_with_noise():
    cfg = DriftSimConfig()
    rng = np.random.default_rng(2)
    noise_only = digitize(sim._noise(300, rng, cfg), cfg).astype(np.float32)
    assert derivative_peaks(noise_only).counts.mean() < 1.0  # few fakes in 2400 samples of noise
    w, wf, times = _isolated_pulses(rng, 50, cfg, min_amp=25.0)
    w = w + rng.normal(0, cfg.noise_rms_mv, w.shape).astype(np.float32)
    found = derivative_peaks(w)
    truth = PeakList.from_lists([(times[wf == i] + pulse_peak_ns(cfg)) / cfg.dt_ns for i in range(50)])
    matched = [np.min(np.abs(f[:, None] - t[None, :]), axis=0) <= 2
               for f, t in zip(found.split(), truth.split())]
    assert np.concatenate(matched).mean() > 0.97


def test_local_maxima_first_sample_of_flat_top():
    w = np.array([[0, 1, 3, 3, 2, 5, 4, 4, 6]], dtype=float)
    assert np.flatnonzero(local_maxima(w)[0]).tolist() == [2, 5]


def test_robust_sigma_is_the_gaussian_sigma():
    x = np.random.default_rng(0).normal(3.0, 2.0, (4, 20000))
    x[:, :1000] += 50  # 5 % outliers (pulses) barely move it
    np.testing.assert_allclose(robust_sigma(x).ravel(), 2.0, rtol=0.06)


def test_time_proximity_against_a_loop():
    rng = np.random.default_rng(4)
    lists = [np.sort(rng.uniform(0, 300, rng.integers(0, 30))) for _ in range(200)]
    peaks = PeakList.from_lists(lists)
    gaps = [0.0, 2.0, 5.5, 20.0]
    counts = time_proximity_counts(peaks, gaps)
    labels = time_proximity_labels(peaks, 5.5)
    for i, t in enumerate(lists):
        for j, gap in enumerate(gaps):
            reference = 0 if len(t) == 0 else 1 + int(np.sum(np.diff(t) > gap))
            assert counts[i, j] == reference
        lab = labels[peaks.offsets[i]:peaks.offsets[i + 1]]
        if len(t):
            assert lab[0] == 0 and lab[-1] == counts[i, 2] - 1
    assert time_proximity_counts(peaks, 5.5).shape == (200,)


def test_encode_times_is_a_histogram():
    rng = np.random.default_rng(5)
    lists = [rng.uniform(-10, 2010, rng.integers(0, 50)) for _ in range(30)]
    enc = encode_times(PeakList.from_lists(lists), 1024, 2000.0)
    assert enc.shape == (30, 1024, 1) and enc.dtype == np.uint8
    for i, t in enumerate(lists):
        np.testing.assert_array_equal(enc[i, :, 0], np.histogram(t, 1024, (0, 2000))[0])


def test_candidates_labels_and_windows_against_references():
    cfg = DriftSimConfig()
    ev = simulate_waveforms(40, np.random.default_rng(8), cfg)
    w = ev["waveform"].astype(np.float32)
    cands, deriv, amp = find_candidates(w)
    # Candidates: every derivative peak, and every local maximum above 2 noise RMS.
    d = derivative_peaks(w)
    key = set(zip(cands.waveform.tolist(), cands.index.tolist()))
    assert set(zip(d.waveform.tolist(), d.index.tolist())) <= key
    assert deriv.sum() == len(d.index)
    assert np.all((amp > 2.0) | deriv)
    # Labels: brute force nearest electron pulse peak within 2 samples, per waveform.
    lab = label_candidates(cands, ev["electron_offset"], ev["electron_time"], ev["electron_type"], cfg.dt_ns,
                           pulse_peak_ns(cfg), 2.0)
    o = ev["electron_offset"]
    for k, (i, s) in enumerate(zip(cands.waveform, cands.index)):
        pos = (ev["electron_time"][o[i]:o[i + 1]] + pulse_peak_ns(cfg)) / cfg.dt_ns
        dist = np.abs(pos - s)
        expected = ev["electron_type"][o[i]:o[i + 1]][np.argmin(dist)] if len(dist) and dist.min() <= 2 else 0
        assert lab[k] == expected
    assert 0.2 < (lab > 0).mean() < 0.6 and np.any(lab == 1) and np.any(lab == 2)
    # Windows: the 15 samples around each candidate, edges repeated.
    win = extract_windows(w, cands, 7, 7)
    assert win.shape == (len(cands.index), 15, 1)
    for k in range(0, len(cands.index), 37):
        i, s = cands.waveform[k], cands.index[k]
        ref = w[i, np.clip(np.arange(s - 7, s + 8), 0, w.shape[1] - 1)]
        np.testing.assert_array_equal(win[k, :, 0], ref)
