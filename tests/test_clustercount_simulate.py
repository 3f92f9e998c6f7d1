"""clustercount.simulate: the statistics against their configured values, the layout, reproducibility, caching."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from scipy.stats import chisquare

import clustercount.simulate as sim
from clustercount.simulate import (
    PARTICLES,
    DriftSimConfig,
    cluster_density,
    cluster_size_pmf,
    default_dataset,
    digitize,
    drift_sigma,
    drift_time,
    mean_cluster_size,
    pulse_peak_ns,
    pulse_shape,
    render_pulses,
    simulate_waveforms,
    write_dataset,
    write_file,
)


def _bg(particle, p):
    return p / PARTICLES[particle][1]


@pytest.fixture(scope="module")
def pions():
    """4000 pions at 10 GeV/c, no noise (the statistics do not need it)."""
    return simulate_waveforms(4000, np.random.default_rng(11), particle="pi", momentum=10.0, noise=False)


def test_clusters_per_cm_match_the_configured_density(pions):
    cfg = DriftSimConfig()
    expected = float(cluster_density(_bg("pi", 10.0), cfg)) * cfg.cell_size_cm
    n = pions["n_clusters"]
    assert np.all(pions["track_length"] == cfg.cell_size_cm)
    # Poisson: mean within 4 standard errors, variance equal to the mean (dispersion test).
    assert abs(n.mean() - expected) < 4 * np.sqrt(expected / len(n))
    assert abs(n.var(ddof=1) / n.mean() - 1) < 4 * np.sqrt(2 / (len(n) - 1))
    per_cm = (n / pions["track_length"]).mean()
    assert abs(per_cm - float(cluster_density(_bg("pi", 10.0), cfg))) < 0.1


def test_electrons_per_cluster_follow_the_configured_distribution(pions):
    cfg = DriftSimConfig()
    n_sizes, pmf = cluster_size_pmf(cfg)
    mean = mean_cluster_size(cfg)
    assert abs(mean - np.dot(n_sizes, pmf)) < 1e-12
    # Fischle's He head + 1/n^2 tail, truncated at 15 electrons: mean ~1.5 (the talk's Garfield++ value, 1.528).
    assert cfg.cluster_size_max == 15 and n_sizes[-1] == 15 and abs(mean - 1.528) < 0.01
    assert 2.1 < mean_cluster_size(DriftSimConfig(cluster_size_max=300)) < 2.2  # the full delta-electron tail
    # Cluster sizes from the per-electron truth: electrons per (waveform, cluster).
    wf = np.repeat(np.arange(len(pions["n_clusters"])), np.diff(pions["electron_offset"]))
    key = wf.astype(np.int64) * 10000 + pions["electron_cluster"]
    sizes = np.unique(key, return_counts=True)[1]
    assert len(sizes) == pions["n_clusters"].sum()
    assert abs(sizes.mean() - mean) < 4 * np.sqrt(np.dot(n_sizes**2, pmf) - mean**2) / np.sqrt(len(sizes))
    primaries = np.unique(key[pions["electron_type"] == 1], return_counts=True)[1]
    assert len(primaries) == len(sizes) and np.all(primaries == 1)  # one primary electron per cluster
    observed = np.bincount(np.minimum(sizes, 6), minlength=7)[1:]
    expected = np.r_[pmf[:5], pmf[5:].sum()] * len(sizes)
    assert chisquare(observed, expected).pvalue > 1e-3


def test_relativistic_rise_direction():
    cfg = DriftSimConfig()
    # The curve: minimum at beta*gamma ~ 4-5, plateau = plateau_ratio x minimum, monotonic rise in between.
    bg = np.geomspace(5, 1e6, 200)
    dens = cluster_density(bg, cfg)
    assert np.all(np.diff(dens) > 0)
    assert cluster_density(1.5, cfg) > cluster_density(4.5, cfg)  # 1/beta^2 below the minimum
    assert abs(float(cluster_density(1e7, cfg)) - cfg.plateau_ratio * cfg.clusters_per_cm_min) < 0.05
    assert abs(min(cluster_density(np.linspace(3, 7, 400), cfg)) - cfg.clusters_per_cm_min) < 1e-3
    # Simulated at 10 GeV/c: e > pi > K, as the curve says.
    means = {}
    for i, particle in enumerate(("e", "pi", "K")):
        ev = simulate_waveforms(3000, np.random.default_rng(100 + i), particle=particle, momentum=10.0, noise=False)
        means[particle] = ev["n_clusters"].mean()
    err = 4 * np.sqrt(25 / 3000) * np.sqrt(2)
    assert means["e"] - means["pi"] > err and means["pi"] - means["K"] > err
    assert means["pi"] / means["K"] == pytest.approx(float(cluster_density(_bg("pi", 10), cfg)
                                                           / cluster_density(_bg("K", 10), cfg)), rel=0.02)


def test_polya_gain_and_charge(pions):
    theta = DriftSimConfig().polya_theta
    g = pions["electron_gain"]
    assert abs(g.mean() - 1) < 0.02 and abs(g.var() - 1 / (1 + theta)) < 0.03
    charge = np.add.reduceat(g, pions["electron_offset"][:-1])
    np.testing.assert_allclose(pions["charge"], charge, rtol=1e-4)


def test_drift_times_and_diffusion():
    cfg = DriftSimConfig()
    ev = simulate_waveforms(500, np.random.default_rng(3), noise=False, impact=0.5)
    t, wf = ev["electron_time"], np.repeat(np.arange(500), np.diff(ev["electron_offset"]))
    earliest = np.minimum.reduceat(t, ev["electron_offset"][:-1])
    # No cluster is closer than the impact parameter: first arrivals >= t0 + t(b) - a few diffusion sigmas.
    floor = cfg.t0_ns + drift_time(0.5, cfg) - 5 * drift_sigma(0.5, cfg)
    assert earliest.min() > floor and np.median(earliest) < cfg.t0_ns + drift_time(0.55, cfg)
    latest = np.maximum.reduceat(t, ev["electron_offset"][:-1])
    r_max = np.hypot(0.5, cfg.cell_size_cm / 2)
    assert latest.max() < cfg.t0_ns + drift_time(r_max, cfg) + 5 * drift_sigma(r_max, cfg)
    assert np.all(np.diff(t)[wf[1:] == wf[:-1]] >= 0)  # sorted by time within a waveform


def test_pulse_shape_and_exact_rendering():
    cfg = DriftSimConfig()
    peak = pulse_peak_ns(cfg)
    assert 0.8 < peak < 1.5 and pulse_shape(peak, cfg) == pytest.approx(1.0, abs=1e-6)
    assert pulse_shape(-1.0, cfg) == 0 and pulse_shape(0.0, cfg) == 0
    # Sub-sample arrival: the recursive-filter rendering equals the analytic pulse at every sample.
    t_e = 300.37
    wave = render_pulses(np.array([0]), np.array([t_e]), np.array([7.0]), 1, cfg)[0]
    t = np.arange(cfg.n_samples) * cfg.dt_ns
    np.testing.assert_allclose(wave, 7.0 * pulse_shape(t - t_e, cfg), atol=1e-9)


def test_noise_level_and_adc():
    cfg = DriftSimConfig()
    ev = simulate_waveforms(300, np.random.default_rng(5))
    pre = ev["waveform"][:, : int(cfg.t0_ns / cfg.dt_ns) - 5].astype(np.float64)
    expected = np.sqrt(cfg.noise_rms_mv**2 + cfg.adc_lsb_mv**2 / 12)
    assert abs(pre.std() - expected) < 0.03 and abs(pre.mean()) < 0.03
    # float16 holds the ADC output exactly: every value is a multiple of the LSB, in range.
    x = np.random.default_rng(0).normal(0, 200, 100000)
    codes = np.clip(np.rint(x / cfg.adc_lsb_mv), cfg.adc_min_mv / cfg.adc_lsb_mv, cfg.adc_max_mv / cfg.adc_lsb_mv - 1)
    np.testing.assert_array_equal(digitize(x, cfg).astype(np.float64), codes * cfg.adc_lsb_mv)
    assert sim._float16_exact(cfg) and not sim._float16_exact(cfg.replace(adc_lsb_mv=0.1))


def test_file_layout_and_reproducibility(tmp_path):
    a = write_file(tmp_path / "a.h5", 60, seed=4, file_index=2)
    b = write_file(tmp_path / "b.h5", 60, seed=4, file_index=2)
    c = write_file(tmp_path / "c.h5", 60, seed=4, file_index=3)
    with h5py.File(a) as fa, h5py.File(b) as fb, h5py.File(c) as fc:
        assert fa["waveform"].shape == (60, 2400) and fa["waveform"].dtype == np.float16
        assert fa["waveform"].chunks is None  # contiguous
        for key in sim.PER_WAVEFORM:
            assert fa[key].shape[0] == 60
        m = fa["electron_offset"][-1]
        assert fa["electron_offset"].shape == (61,) and all(fa[k].shape == (m,) for k in sim.PER_ELECTRON)
        np.testing.assert_array_equal(np.diff(fa["electron_offset"][()]), fa["n_electrons"][()])
        assert set(np.unique(fa["particle"][()])) <= {211, 321, 13, 11}
        assert DriftSimConfig.from_json(fa.attrs["simulation_config"]) == DriftSimConfig()
        assert fa.attrs["n_samples"] == 2400 and fa.attrs["float16_exact"]
        for key in fa:
            np.testing.assert_array_equal(fa[key][()], fb[key][()])
        assert not np.array_equal(fa["waveform"][()], fc["waveform"][()])
    assert not list(tmp_path.glob("*.tmp-*"))


def test_dataset_independent_of_workers(tmp_path):
    one = write_dataset(tmp_path / "one", 120, 60, seed=1, progress=False, workers=1)
    two = write_dataset(tmp_path / "two", 120, 60, seed=1, progress=False, workers=2)
    assert [p.name for p in one] == [p.name for p in two] == ["wave_0.h5", "wave_1.h5"]
    for p, q in zip(one, two):
        with h5py.File(p) as f, h5py.File(q) as g:
            np.testing.assert_array_equal(f["waveform"][()], g["waveform"][()])


def test_default_dataset_is_cached_and_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("DLKIT_DATA", str(tmp_path))
    path = default_dataset(n_waveforms=50, waveforms_per_file=25, progress=False)
    assert path.parent == tmp_path / "clustercount" and (path / "COMPLETE.json").is_file()
    info = json.loads((path / "COMPLETE.json").read_text())
    assert info["files"] == ["wave_0.h5", "wave_1.h5"] and info["n_waveforms"] == 50
    mtime = (path / "wave_0.h5").stat().st_mtime_ns
    assert default_dataset(n_waveforms=50, waveforms_per_file=25, progress=False) == path
    assert (path / "wave_0.h5").stat().st_mtime_ns == mtime  # reused, not remade
    other = default_dataset(n_waveforms=50, waveforms_per_file=25, progress=False, config=DriftSimConfig(gain_mv=8))
    assert other != path
    with pytest.raises(FileExistsError, match="another dataset"):
        default_dataset(path, n_waveforms=60, waveforms_per_file=25, progress=False)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown particles"):
        DriftSimConfig(particles=("pi", "kaon"))
    with pytest.raises(ValueError, match="unknown DriftSimConfig fields"):
        DriftSimConfig.from_dict({"gain": 3})
    with pytest.raises(ValueError, match="momentum"):
        DriftSimConfig(momentum_min_gev=10, momentum_max_gev=5)
    cfg = DriftSimConfig(particles=["pi", "K"], cluster_size_max=15)
    assert DriftSimConfig.from_json(cfg.to_json()) == cfg and hash(cfg) == hash(DriftSimConfig.from_dict(cfg.to_dict()))


def test_cli(tmp_path):
    env = dict(os.environ, DLKIT_DATA=str(tmp_path / "data"))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "clustercount.simulate", "--out", str(out), "--waveforms", "30",
                           "--waveforms-per-file", "20", "--particles", "pi", "K", "--set", "gain_mv=8",
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out / "wave_1.h5") as f:
        assert f["waveform"].shape == (10, 2400) and set(np.unique(f["particle"][()])) <= {211, 321}
        assert DriftSimConfig.from_json(f.attrs["simulation_config"]).gain_mv == 8.0
    bad = subprocess.run([sys.executable, "-m", "clustercount.simulate", "--out", str(out), "--set", "gain=3"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "--set expects FIELD=VALUE" in bad.stderr
