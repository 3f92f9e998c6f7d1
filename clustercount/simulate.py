"""Fast parametric simulation of drift-chamber waveforms for cluster counting (seed 004's Garfield++ setup).

Why: the talk's Garfield++ waveforms cannot be downloaded here, yet the peak-finding and cluster-counting
studies need waveforms whose statistics come from the physics: Poisson primary clusters with a density that
rises with beta*gamma (the pi/K handle of dN/dx), a skewed cluster-size distribution (Fischle's helium one,
mean ~1.5 as in the talk; its 1/n^2 tail makes the collected charge Landau-like, the weakness of dE/dx, more so
with a larger ``cluster_size_max``), drift with diffusion, Polya gain fluctuations, a fast
electronics response, correlated noise and an ADC. Every parameter lives in :class:`DriftSimConfig`;
``clustercount/README.md`` ("Simulator") says where the numbers come from and what is left out.

One waveform is one drift cell crossed by one track: a square cell of side ``cell_size_cm`` with the sense
wire at its centre, the track perpendicular to the wire at an impact parameter ``b`` uniform in
``[0, cell/2)``. Clusters sit uniformly along the chord (``z`` in ``[-cell/2, cell/2)``), so their distance to
the wire is ``r = sqrt(b^2 + z^2)`` and clusters on both sides of the closest approach arrive at similar
times, as in the real cell.

Layout written by :func:`write_file` (one file per ``waveforms_per_file`` waveforms, particles mixed):

- ``waveform`` (N, T) float16 [mV]: the digitised waveform, T = window * sampling rate (2400). The ADC has a
  0.25 mV step over [-100, 400) mV, and every multiple of 0.25 below 512 in magnitude is exact in float16, so
  float16 stores the ADC output without loss (a test checks it) at half the size of float32.
- per waveform: ``n_clusters`` (N,) int32 (primary clusters: the regression target), ``n_electrons``
  (N,) int32, ``charge`` (N,) float32 (sum of the electrons' gains, in units of the mean single-electron
  charge: the collected charge for dE/dx, without electronics noise), ``particle`` (N,) int32 PDG id,
  ``momentum`` (N,) float32 GeV/c, ``betagamma`` (N,) float32, ``impact_parameter`` (N,) float32 cm,
  ``track_length`` (N,) float32 cm.
- per true peak, i.e. per electron reaching the wire, concatenated over waveforms (CSR layout: the electrons
  of waveform i are rows ``electron_offset[i]:electron_offset[i+1]``, sorted by time): ``electron_time``
  (M,) float32 ns (arrival at the wire; its pulse peaks ``attrs["pulse_peak_ns"]`` later),
  ``electron_type`` (M,) int8 (1 primary: the electron of the primary ionisation, one per cluster;
  2 secondary: the other electrons of the cluster), ``electron_cluster`` (M,) int16 (cluster index within
  the waveform), ``electron_gain`` (M,) float32; ``electron_offset`` (N+1,) int64. Noise peaks (truth 0)
  exist only relative to a peak finder: :mod:`clustercount.data` labels candidate peaks against these times.
- attributes: ``simulation_config`` (JSON), ``seed``, ``file_index``, ``sampling_ghz``, ``n_samples``,
  ``pulse_peak_ns``, ``noise_rms_mv``, ``format_version``, ``dlkit_version``, ``generator``.

>>> import numpy as np
>>> ev = simulate_waveforms(4, np.random.default_rng(1))
>>> ev["waveform"].shape, ev["waveform"].dtype.name, len(ev["electron_offset"])
((4, 2400), 'float16', 5)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import logging
import math
import sys
from pathlib import Path

import h5py
import numpy as np
from scipy.optimize import brentq, minimize_scalar
from scipy.signal import lfilter

from dlkit.datasets import atomic_file, cached_dataset, data_root, write_files
from dlkit.simconfig import SimConfig
from dlkit.simconfig import documented as _f
from dlkit.protocol import EXIT_OK

logger = logging.getLogger(__name__)

__all__ = [
    "DriftSimConfig",
    "PARTICLES",
    "DEFAULT_WAVEFORMS",
    "TEST_WAVEFORMS",
    "cluster_density",
    "cluster_size_pmf",
    "mean_cluster_size",
    "drift_time",
    "drift_sigma",
    "pulse_shape",
    "pulse_peak_ns",
    "render_pulses",
    "digitize",
    "simulate_waveforms",
    "file_seed_sequence",
    "write_file",
    "write_dataset",
    "dataset_key",
    "default_dataset",
    "read_truth",
    "main",
]

#: name -> (PDG id, mass in GeV/c^2) of the particles the simulator knows.
PARTICLES = {
    "pi": (211, 0.13957039),
    "K": (321, 0.493677),
    "mu": (13, 0.1056583755),
    "e": (11, 0.00051099895),
    "p": (2212, 0.93827209),
}
#: Waveforms of the default dataset, and of a ``--Test``-size one.
DEFAULT_WAVEFORMS = 24000
TEST_WAVEFORMS = 4000
#: Bumped whenever the same config + seed would give different waveforms (part of the cache key).
FORMAT_VERSION = 1

#: Fischle et al. (NIM A301 (1991) 202), helium: probability of 1..10 electrons per cluster; the tail beyond
#: is 21.6 %/n^2 (see DriftSimConfig.cluster_size_tail).
FISCHLE_HELIUM = (0.766, 0.125, 0.046, 0.020, 0.012, 0.0075, 0.005, 0.0036, 0.0025, 0.0019)


@dataclasses.dataclass(frozen=True)
class DriftSimConfig(SimConfig):
    """Every parameter of the drift-cell simulation, in one place (defaults: seed 004 and physics.md).

    Units: cm, ns, GeV, mV. Frozen and hashable (derived tables are cached); its JSON goes into every file.
    """

    # --- cell and gas (90 % He / 10 % iC4H10) -------------------------------------------------------------
    cell_size_cm: float = _f(1.5, "Side of the square drift cell [cm] (the talk's 1.5 cm cell); the track "
                             "crosses it perpendicular to the wire, so the path length is this.")
    clusters_per_cm_min: float = _f(12.5, "Primary clusters per cm at minimum ionisation (He/iC4H10 90/10: "
                                    "~12-13 /cm in the literature).")
    plateau_ratio: float = _f(1.4, "Relativistic rise: cluster density on the Fermi plateau / at the minimum.")
    density_betagamma: float = _f(1000.0, "beta*gamma where the density effect stops the rise (late in a "
                                  "low-density He gas). With 1.4 and 12.5/cm, 4-180 GeV pions give ~25 "
                                  "clusters per 1.5 cm track (the talk: 25.25).")
    cluster_size_head: tuple = _f(FISCHLE_HELIUM, "P(n electrons in a cluster) for n = 1..len (Fischle et "
                                  "al., helium).")
    cluster_size_tail: float = _f(0.216, "Coefficient c of the P(n) = c/n^2 tail beyond the head "
                                  "(Rutherford delta electrons; Fischle's helium value).")
    cluster_size_max: int = _f(15, "Largest cluster size: Fischle's helium distribution truncated at 15 "
                               "electrons, mean 1.534 electrons per cluster (the talk's Garfield++ setup: 1.528), "
                               "~19 electrons/cm at minimum ionisation. 300 (delta electrons up to ~10 keV "
                               "staying in the cell) keeps the full Landau tail of the charge: mean 2.15, ~27 /cm.")
    # --- drift ----------------------------------------------------------------------------------------------
    drift_linear_ns_per_cm: float = _f(250.0, "x-t relation t(r) = a r + b r^2: a [ns/cm] (4 cm/us near "
                                       "the wire).")
    drift_quadratic_ns_per_cm2: float = _f(250.0, "x-t relation: b [ns/cm^2] (slower drift far from the "
                                           "wire; ~550 ns from the cell corner).")
    diffusion_cm_per_sqrt_cm: float = _f(0.015, "Longitudinal diffusion sigma_L [cm/sqrt(cm)] (150 um for "
                                         "1 cm of drift); sigma_t = sigma_L sqrt(r) dt/dr.")
    t0_ns: float = _f(100.0, "Time of the track crossing within the window [ns] (pre-trigger samples).")
    # --- signal and electronics ----------------------------------------------------------------------------
    sampling_ghz: float = _f(1.2, "Digitiser sampling rate [GHz] (the talk: 1.2 GHz).")
    window_ns: float = _f(2000.0, "Length of the digitised window [ns] (the talk: 2000 ns -> 2400 samples).")
    pulse_rise_ns: float = _f(0.5, "Single-electron pulse: rise time constant [ns] (1.1 ns from arrival to the peak).")
    pulse_fall_ns: float = _f(3.0, "Single-electron pulse: fall time constant [ns].")
    ion_tail_ns: float = _f(30.0, "Time constant of the residual ion tail after the electronics [ns].")
    ion_tail_fraction: float = _f(0.05, "Ion-tail amplitude relative to the fast component.")
    gain_mv: float = _f(6.0, "Mean single-electron pulse height [mV] (gas gain x preamplifier).")
    polya_theta: float = _f(0.5, "Polya parameter of the avalanche gain, P(g) ~ g^theta exp(-(1+theta) g): "
                            "relative variance 1/(1+theta).")
    noise_rms_mv: float = _f(1.0, "RMS of the electronics noise [mV].")
    noise_tau_ns: float = _f(0.5, "Noise bandwidth: white noise through two one-pole low-pass filters with "
                             "this time constant [ns] (symmetric bumps of a few samples).")
    adc_lsb_mv: float = _f(0.25, "ADC step [mV].")
    adc_min_mv: float = _f(-100.0, "ADC range low edge [mV].")
    adc_max_mv: float = _f(400.0, "ADC range high edge [mV] (samples saturate there).")
    # --- beam ----------------------------------------------------------------------------------------------
    particles: tuple = _f(("pi", "K", "mu", "e"), "Particle species, drawn with equal probability "
                          "(names of PARTICLES).")
    momentum_min_gev: float = _f(4.0, "Lowest momentum [GeV/c] (flat spectrum; the talk: 4-180).")
    momentum_max_gev: float = _f(180.0, "Highest momentum [GeV/c].")
    # --- numerics ------------------------------------------------------------------------------------------
    chunk_waveforms: int = _f(500, "Waveforms simulated per vectorised batch. It fixes how the random stream "
                              "is consumed, so changing it changes the waveforms (not their statistics).")

    def __post_init__(self):
        for name in ("cluster_size_head", "particles"):
            value = getattr(self, name)
            if isinstance(value, (list, np.ndarray)):
                object.__setattr__(self, name, tuple(value.tolist() if isinstance(value, np.ndarray) else value))
        head = self.cluster_size_head
        if not head or any(not p >= 0 for p in head) or not sum(head) > 0:
            raise ValueError(f"cluster_size_head must be non-negative probabilities, got {head!r}")
        if self.cluster_size_max < 1 or self.cluster_size_tail < 0:
            raise ValueError("cluster_size_max must be >= 1 and cluster_size_tail >= 0")
        unknown = [p for p in self.particles if p not in PARTICLES]
        if unknown or not self.particles:
            raise ValueError(f"unknown particles {unknown}; expected some of {list(PARTICLES)}")
        if not 0 < self.momentum_min_gev <= self.momentum_max_gev:
            raise ValueError("need 0 < momentum_min_gev <= momentum_max_gev")
        if not self.plateau_ratio > 1 or not self.density_betagamma > 10:
            raise ValueError("need plateau_ratio > 1 and density_betagamma > 10")
        positive = ("cell_size_cm", "clusters_per_cm_min", "drift_linear_ns_per_cm", "sampling_ghz", "window_ns",
                    "pulse_rise_ns", "pulse_fall_ns", "ion_tail_ns", "gain_mv", "noise_tau_ns", "adc_lsb_mv",
                    "polya_theta")
        bad = [p for p in positive if not getattr(self, p) > 0]
        if bad:
            raise ValueError(f"these must be > 0: {bad}")
        nonneg = ("drift_quadratic_ns_per_cm2", "diffusion_cm_per_sqrt_cm", "t0_ns", "ion_tail_fraction",
                  "noise_rms_mv")
        bad = [p for p in nonneg if not getattr(self, p) >= 0]
        if bad:
            raise ValueError(f"these must be >= 0: {bad}")
        if not self.pulse_rise_ns < self.pulse_fall_ns < self.ion_tail_ns:
            raise ValueError("need pulse_rise_ns < pulse_fall_ns < ion_tail_ns")
        if not self.adc_min_mv < 0 < self.adc_max_mv:
            raise ValueError("need adc_min_mv < 0 < adc_max_mv")
        if self.chunk_waveforms < 1:
            raise ValueError("chunk_waveforms must be >= 1")

    @property
    def n_samples(self) -> int:
        """Samples per waveform (2400 for 2000 ns at 1.2 GHz)."""
        return int(round(self.window_ns * self.sampling_ghz))

    @property
    def dt_ns(self) -> float:
        """Sampling period [ns]."""
        return 1.0 / self.sampling_ghz


# ---------------------------------------------------------------------------------------------------------
# Physics curves (pure functions of the config, cached)
# ---------------------------------------------------------------------------------------------------------


def _bethe_primary(betagamma, k: float, saturation: float):
    """Bethe's primary-ionisation shape ``(ln(bg^2) - ln(1 + bg^2/s^2) + k - beta^2) / beta^2``.

    The ``ln(1 + bg^2/s^2)`` term is a smooth density effect: it stops the logarithmic rise around
    ``bg ~ s``, leaving the Fermi plateau ``ln(s^2) + k - 1``.
    """
    bg2 = np.square(np.asarray(betagamma, dtype=np.float64))
    beta2 = bg2 / (1.0 + bg2)
    return (np.log(bg2) - np.log1p(bg2 / saturation**2) + k - beta2) / beta2


@functools.lru_cache(maxsize=16)
def _rise_parameters(plateau_ratio: float, saturation: float) -> tuple[float, float]:
    """``(k, f_min)`` such that plateau / minimum of :func:`_bethe_primary` is ``plateau_ratio``."""

    def minimum(k):
        res = minimize_scalar(lambda lbg: float(_bethe_primary(np.exp(lbg), k, saturation)), bounds=(0.0, 4.0),
                              method="bounded", options={"xatol": 1e-8})
        return float(res.fun)

    def excess(k):
        return (2 * math.log(saturation) + k - 1.0) / minimum(k) - plateau_ratio

    k = brentq(excess, 1.5, 1000.0, xtol=1e-10)
    return k, minimum(k)


def cluster_density(betagamma, config: DriftSimConfig | None = None) -> np.ndarray:
    """Mean primary clusters per cm at ``betagamma``: ``clusters_per_cm_min`` times the relativistic rise.

    The rise is Bethe's primary-ionisation formula with a smooth density-effect saturation
    (:func:`_bethe_primary`), normalised to 1 at its minimum (beta*gamma ~ 4) and to ``plateau_ratio`` on the
    plateau.

    >>> float(np.round(cluster_density(1e6), 2)), float(np.round(cluster_density(4.8), 2))
    (17.5, 12.5)
    """
    cfg = config or DriftSimConfig()
    k, fmin = _rise_parameters(float(cfg.plateau_ratio), float(cfg.density_betagamma))
    return cfg.clusters_per_cm_min * _bethe_primary(betagamma, k, cfg.density_betagamma) / fmin


@functools.lru_cache(maxsize=16)
def _pmf(head: tuple, tail: float, n_max: int) -> tuple[np.ndarray, np.ndarray]:
    n = np.arange(1, n_max + 1)
    p = np.zeros(n_max)
    m = min(len(head), n_max)
    p[:m] = head[:m]
    if n_max > len(head):
        p[len(head):] = tail / n[len(head):].astype(np.float64) ** 2
    p /= p.sum()
    n.flags.writeable = False
    p.flags.writeable = False
    return n, p


def cluster_size_pmf(config: DriftSimConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(n, P(n))``: the electrons-per-cluster distribution, n = 1..cluster_size_max (read-only arrays)."""
    cfg = config or DriftSimConfig()
    return _pmf(tuple(cfg.cluster_size_head), float(cfg.cluster_size_tail), int(cfg.cluster_size_max))


def mean_cluster_size(config: DriftSimConfig | None = None) -> float:
    """Mean electrons per cluster of the configured distribution (1.534 by default, 2.15 with 300 as maximum)."""
    n, p = cluster_size_pmf(config)
    return float(np.dot(n, p))


def drift_time(r, config: DriftSimConfig | None = None):
    """Drift time [ns] from distance ``r`` [cm] to the wire: ``a r + b r^2`` (the x-t relation)."""
    cfg = config or DriftSimConfig()
    return cfg.drift_linear_ns_per_cm * r + cfg.drift_quadratic_ns_per_cm2 * np.square(r)


def drift_sigma(r, config: DriftSimConfig | None = None):
    """Time spread [ns] of electrons drifting from ``r``: ``sigma_L sqrt(r) dt/dr`` (longitudinal diffusion)."""
    cfg = config or DriftSimConfig()
    return cfg.diffusion_cm_per_sqrt_cm * np.sqrt(r) * (cfg.drift_linear_ns_per_cm
                                                        + 2 * cfg.drift_quadratic_ns_per_cm2 * r)


@functools.lru_cache(maxsize=16)
def _pulse_components(rise: float, fall: float, tail: float, tail_fraction: float) -> tuple:
    """``((tau, coefficient), ...)`` with ``h(t) = sum c exp(-t/tau)``, ``h(0) = 0``, max ``h`` = 1."""
    taus = (rise, fall, tail)
    coef = np.array([-(1.0 + tail_fraction), 1.0, tail_fraction])
    t = np.linspace(0, 10 * fall, 200001)
    h = sum(c * np.exp(-t / tau) for tau, c in zip(taus, coef))
    peak = float(h.max())
    return tuple(zip(taus, (coef / peak).tolist())), float(t[h.argmax()])


def pulse_shape(t, config: DriftSimConfig | None = None) -> np.ndarray:
    """Single-electron response (peak 1) at times ``t`` [ns] after the electron's arrival (0 before)."""
    cfg = config or DriftSimConfig()
    comps, _ = _pulse_components(cfg.pulse_rise_ns, cfg.pulse_fall_ns, cfg.ion_tail_ns, cfg.ion_tail_fraction)
    t = np.asarray(t, dtype=np.float64)
    h = sum(c * np.exp(-np.maximum(t, 0) / tau) for tau, c in comps)
    return np.where(t > 0, h, 0.0)


def pulse_peak_ns(config: DriftSimConfig | None = None) -> float:
    """Delay from an electron's arrival to the maximum of its pulse [ns] (~1 ns)."""
    cfg = config or DriftSimConfig()
    return _pulse_components(cfg.pulse_rise_ns, cfg.pulse_fall_ns, cfg.ion_tail_ns, cfg.ion_tail_fraction)[1]


@functools.lru_cache(maxsize=16)
def _noise_gain(tau_samples: float) -> float:
    """RMS of unit white noise after the two one-pole filters of :func:`_noise`."""
    a = math.exp(-1.0 / tau_samples)
    impulse = np.zeros(20000)
    impulse[0] = 1.0
    h = lfilter([1 - a], [1, -a], lfilter([1 - a], [1, -a], impulse))
    return float(np.sqrt(np.sum(h * h)))


# ---------------------------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------------------------


def render_pulses(wf_of_e, t_e, amplitude, n: int, config: DriftSimConfig | None = None) -> np.ndarray:
    """Noise-free signal of ``n`` waveforms: pulses of height ``amplitude`` [mV] at arrival times ``t_e`` [ns].

    ``wf_of_e`` says which waveform each pulse belongs to. Sampled exactly (sub-sample arrival times) with
    recursive filters, float64 (N, T) before digitisation.

    For each exponential component ``c exp(-t/tau)`` of the pulse, an electron arriving at ``t_e`` adds
    ``A c exp(-(t_j - t_e)/tau)`` at the first sample ``t_j >= t_e``; the one-pole recursion
    ``y_j = x_j + exp(-dt/tau) y_{j-1}`` then carries it to every later sample exactly.
    """
    cfg = config or DriftSimConfig()
    wf_of_e, t_e, amplitude = (np.asarray(a) for a in (wf_of_e, t_e, amplitude))
    T = cfg.n_samples
    dt = cfg.dt_ns
    comps, _ = _pulse_components(cfg.pulse_rise_ns, cfg.pulse_fall_ns, cfg.ion_tail_ns, cfg.ion_tail_fraction)
    j = np.ceil(t_e / dt).astype(np.int64)
    keep = (j >= 0) & (j < T)
    j, wf, te, amp = j[keep], wf_of_e[keep], t_e[keep], amplitude[keep]
    flat = wf * T + j
    lag = j * dt - te
    out = np.zeros((n, T), dtype=np.float64)
    for tau, c in comps:
        x = np.bincount(flat, weights=amp * c * np.exp(-lag / tau), minlength=n * T).reshape(n, T)
        out += lfilter([1.0], [1.0, -math.exp(-dt / tau)], x, axis=1)
    return out


def _noise(n: int, rng: np.random.Generator, cfg: DriftSimConfig) -> np.ndarray:
    """Gaussian noise of RMS ``noise_rms_mv`` with the bandwidth of two one-pole low-pass filters."""
    tau = cfg.noise_tau_ns / cfg.dt_ns
    a = math.exp(-1.0 / tau)
    warm = int(10 * tau) + 8  # filter settling, cut off so the first samples are stationary too
    white = rng.standard_normal((n, cfg.n_samples + warm))
    y = lfilter([1 - a], [1, -a], lfilter([1 - a], [1, -a], white, axis=1), axis=1)[:, warm:]
    y *= cfg.noise_rms_mv / _noise_gain(tau)
    return y


def digitize(x: np.ndarray, config: DriftSimConfig | None = None) -> np.ndarray:
    """ADC: round to the LSB and clip to the range; returned as float16 (exact for this ADC)."""
    cfg = config or DriftSimConfig()
    lsb = cfg.adc_lsb_mv
    codes = np.clip(np.rint(x / lsb), math.ceil(cfg.adc_min_mv / lsb), math.floor(cfg.adc_max_mv / lsb) - 1)
    return (codes * lsb).astype(np.float16)


def _float16_exact(cfg: DriftSimConfig) -> bool:
    """Whether every ADC value is exact in float16 (LSB a power of two, range within 2048 steps of it)."""
    lsb = cfg.adc_lsb_mv
    power_of_two = math.log2(lsb).is_integer()
    return power_of_two and max(abs(cfg.adc_min_mv), abs(cfg.adc_max_mv)) <= 2048 * lsb


def _simulate_chunk(n: int, rng: np.random.Generator, cfg: DriftSimConfig, particle, momentum, impact,
                    noise: bool) -> dict:
    names = list(cfg.particles)
    if particle is None:
        species = rng.integers(0, len(names), n)
        pdg = np.array([PARTICLES[p][0] for p in names], np.int32)[species]
        mass = np.array([PARTICLES[p][1] for p in names])[species]
    else:
        pdg = np.full(n, PARTICLES[particle][0], np.int32)
        mass = np.full(n, PARTICLES[particle][1])
    if momentum is None:
        p = rng.uniform(cfg.momentum_min_gev, cfg.momentum_max_gev, n)
    else:
        p = np.broadcast_to(np.asarray(momentum, dtype=np.float64), (n,)).copy()
    half = 0.5 * cfg.cell_size_cm
    b = rng.uniform(0.0, half, n) if impact is None else np.broadcast_to(np.asarray(impact, float), (n,)).copy()
    length = np.full(n, cfg.cell_size_cm)
    bg = p / mass
    ncl = rng.poisson(cluster_density(bg, cfg) * length)
    n_cl = int(ncl.sum())
    wf_of_cl = np.repeat(np.arange(n), ncl)
    z = rng.uniform(-half, half, n_cl)
    r = np.hypot(b[wf_of_cl], z)
    sizes_n, sizes_p = cluster_size_pmf(cfg)
    size = sizes_n[np.minimum(np.searchsorted(np.cumsum(sizes_p), rng.random(n_cl), side="right"),
                              len(sizes_n) - 1)]
    cl_of_e = np.repeat(np.arange(n_cl), size)
    m = len(cl_of_e)
    first = np.zeros(m, bool)
    first[np.cumsum(size) - size] = True  # the primary electron of each cluster
    t_e = cfg.t0_ns + drift_time(r, cfg)[cl_of_e] + drift_sigma(r, cfg)[cl_of_e] * rng.standard_normal(m)
    t_e = np.maximum(t_e, 0.0)
    gain = rng.gamma(1.0 + cfg.polya_theta, 1.0 / (1.0 + cfg.polya_theta), m)
    wf_of_e = wf_of_cl[cl_of_e]
    wave = render_pulses(wf_of_e, t_e, gain * cfg.gain_mv, n, cfg)
    if noise and cfg.noise_rms_mv > 0:
        wave += _noise(n, rng, cfg)
    # Per-waveform cluster index, and electrons sorted by time within each waveform.
    cl_start = np.cumsum(ncl) - ncl
    cluster_in_wf = (np.arange(n_cl) - cl_start[wf_of_cl])[cl_of_e]
    order = np.lexsort((t_e, wf_of_e))
    n_e = np.bincount(wf_of_e, minlength=n)
    return {
        "waveform": digitize(wave, cfg),
        "n_clusters": ncl.astype(np.int32),
        "n_electrons": n_e.astype(np.int32),
        "charge": np.bincount(wf_of_e, weights=gain, minlength=n).astype(np.float32),
        "particle": pdg,
        "momentum": p.astype(np.float32),
        "betagamma": bg.astype(np.float32),
        "impact_parameter": b.astype(np.float32),
        "track_length": length.astype(np.float32),
        "electron_offset": np.concatenate([[0], np.cumsum(n_e)]).astype(np.int64),
        "electron_time": t_e[order].astype(np.float32),
        "electron_type": np.where(first, 1, 2).astype(np.int8)[order],
        "electron_cluster": cluster_in_wf[order].astype(np.int16),
        "electron_gain": gain[order].astype(np.float32),
    }


PER_WAVEFORM = ("waveform", "n_clusters", "n_electrons", "charge", "particle", "momentum", "betagamma",
                "impact_parameter", "track_length")
PER_ELECTRON = ("electron_time", "electron_type", "electron_cluster", "electron_gain")


def _concat(chunks: list[dict]) -> dict:
    out = {k: np.concatenate([c[k] for c in chunks]) for k in (*PER_WAVEFORM, *PER_ELECTRON)}
    offsets, base = [np.zeros(1, np.int64)], 0
    for c in chunks:
        offsets.append(c["electron_offset"][1:] + base)
        base += int(c["electron_offset"][-1])
    out["electron_offset"] = np.concatenate(offsets)
    return out


def _check_particle(particle):
    if particle is not None and particle not in PARTICLES:
        raise ValueError(f"unknown particle {particle!r}; expected one of {list(PARTICLES)}")


def _iter_chunks(n: int, rng, cfg, particle=None, momentum=None, impact=None, noise=True):
    """Yield the dicts of n waveforms in batches of cfg.chunk_waveforms (the reproducibility unit)."""
    _check_particle(particle)
    momentum = None if momentum is None else np.broadcast_to(np.asarray(momentum, float), (n,))
    impact = None if impact is None else np.broadcast_to(np.asarray(impact, float), (n,))
    for start in range(0, n, cfg.chunk_waveforms):
        m = min(cfg.chunk_waveforms, n - start)
        yield _simulate_chunk(m, rng, cfg, particle, None if momentum is None else momentum[start:start + m],
                              None if impact is None else impact[start:start + m], noise)


def simulate_waveforms(n: int, rng: np.random.Generator, config: DriftSimConfig | None = None, *,
                       particle: str | None = None, momentum=None, impact=None, noise: bool = True) -> dict:
    """Simulate ``n`` waveforms; a pure function of (n, rng state, config, options).

    ``particle`` (a name of :data:`PARTICLES`) and ``momentum`` (GeV/c, scalar or (n,)) fix the beam instead
    of the config's mix and flat spectrum (the PID study); ``impact`` fixes the impact parameter [cm];
    ``noise=False`` leaves out the electronics noise (the ADC still rounds). Returns the file's datasets
    (module docstring), electrons in CSR layout.
    """
    cfg = config or DriftSimConfig()
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    chunks = list(_iter_chunks(n, rng, cfg, particle, momentum, impact, noise))
    if not chunks:
        chunks = [_simulate_chunk(0, rng, cfg, particle, np.zeros(0), np.zeros(0), noise)]
    return chunks[0] if len(chunks) == 1 else _concat(chunks)


def read_truth(path) -> dict:
    """Every dataset of a waveform file except the waveforms (the truth, for labelling and studies)."""
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f if k != "waveform"}


# ---------------------------------------------------------------------------------------------------------
# Files and the cached default dataset
# ---------------------------------------------------------------------------------------------------------


def file_seed_sequence(seed: int, file_index: int) -> np.random.SeedSequence:
    """The seed of one file: (seed, file index), so files can be made in any order or in parallel."""
    return np.random.SeedSequence(entropy=int(seed), spawn_key=(0xDC, int(file_index)))


def write_file(path, n: int, seed: int, file_index: int, config: DriftSimConfig | None = None,
               progress=None) -> Path:
    """Simulate ``n`` waveforms and write one file atomically (:func:`dlkit.datasets.atomic_file`).

    ``progress``: optional callable(n_waveforms_done) called after each batch.
    """
    import dlkit

    cfg = config or DriftSimConfig()
    path = Path(path)
    rng = np.random.default_rng(file_seed_sequence(seed, file_index))
    chunks = []
    for chunk in _iter_chunks(n, rng, cfg):
        chunks.append(chunk)
        if progress is not None:
            progress(len(chunk["n_clusters"]))
    data = _concat(chunks) if chunks else _simulate_chunk(0, rng, cfg, None, None, None, True)
    with atomic_file(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, value in data.items():
                f.create_dataset(key, data=value)  # contiguous: a slice of waveforms is one read
            f.attrs.update({
                "simulation_config": cfg.to_json(), "seed": int(seed), "file_index": int(file_index),
                "sampling_ghz": cfg.sampling_ghz, "n_samples": cfg.n_samples, "pulse_peak_ns": pulse_peak_ns(cfg),
                "noise_rms_mv": cfg.noise_rms_mv, "format_version": FORMAT_VERSION,
                "dlkit_version": dlkit.__version__, "generator": "clustercount.simulate",
                "float16_exact": _float16_exact(cfg)})
    return path


def _write_job(job, progress=None):
    """One file of :func:`write_dataset` (module level: :func:`dlkit.datasets.write_files` pickles it)."""
    path, n, seed, file_index, cfg_dict = job
    return write_file(path, n, seed, file_index, DriftSimConfig.from_dict(cfg_dict), progress=progress), n


def write_dataset(out_dir, n_waveforms: int = DEFAULT_WAVEFORMS, waveforms_per_file: int = 1000, seed: int = 0,
                  config: DriftSimConfig | None = None, progress: bool = True, workers: int | None = None
                  ) -> list[Path]:
    """Write ``<out_dir>/wave_<i>.h5`` files holding ``n_waveforms`` in total; returns the paths.

    Each file is seeded from (seed, file index), so the result does not depend on ``workers`` or on the
    order files are made in. ``workers`` spawned processes write whole files (default: the available
    cores for big datasets, 1 for small ones).
    """
    cfg = config or DriftSimConfig()
    if n_waveforms < 1 or waveforms_per_file < 1:
        raise ValueError("n_waveforms and waveforms_per_file must be >= 1")
    jobs = [(Path(out_dir) / f"wave_{i}.h5", min(waveforms_per_file, n_waveforms - start), seed, i, cfg.to_dict())
            for i, start in enumerate(range(0, n_waveforms, waveforms_per_file))]
    return write_files(_write_job, jobs, n_waveforms, "clustercount.simulate", unit="wf", workers=workers,
                       parallel_from=4000, progress=progress)


def dataset_key(config: DriftSimConfig, seed: int, n_waveforms: int, waveforms_per_file: int) -> str:
    """Hash naming a cached dataset: everything that changes its bytes."""
    blob = json.dumps({"config": config.to_dict(), "seed": int(seed), "n": int(n_waveforms),
                       "per_file": int(waveforms_per_file), "format": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_dataset(path=None, n_waveforms: int = DEFAULT_WAVEFORMS, waveforms_per_file: int = 1000, seed: int = 0,
                    config: DriftSimConfig | None = None, progress: bool = True, workers: int | None = None) -> Path:
    """Directory of a complete simulated waveform dataset, made if missing.

    Default location: ``$DLKIT_DATA/clustercount/waveforms-<key>`` (or under ``~/.cache/dlkit``), the key a
    hash of config, seed and sizes (:func:`dataset_key`); see :func:`dlkit.datasets.cached_dataset`.
    """
    cfg = config or DriftSimConfig()
    key = dataset_key(cfg, seed, n_waveforms, waveforms_per_file)
    path = Path(path) if path is not None else data_root("clustercount") / f"waveforms-{key}"
    meta = {"seed": int(seed), "n_waveforms": int(n_waveforms), "waveforms_per_file": int(waveforms_per_file),
            "format": FORMAT_VERSION, "config": cfg.to_dict()}
    return cached_dataset(path, key, lambda tmp: write_dataset(tmp, n_waveforms, waveforms_per_file, seed, cfg,
                                                                   progress, workers), meta)


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = DriftSimConfig.cli_parser("python -m clustercount.simulate",
                                       "Simulate drift-chamber waveforms (HDF5): <out>/wave_<i>.h5.",
                                       "--set gain_mv=8 --set cluster_size_max=250")
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--waveforms", type=int, default=DEFAULT_WAVEFORMS,
                        help="waveforms in total (default %(default)s)")
    parser.add_argument("--waveforms-per-file", type=int, default=1000, help="waveforms per file (default %(default)s)")
    parser.add_argument("--particles", nargs="+", default=None, choices=list(PARTICLES),
                        help="particle species, equally mixed (default: pi K mu e)")
    parser.add_argument("--pmin", type=float, default=None, help="lowest momentum [GeV/c] (default 4)")
    parser.add_argument("--pmax", type=float, default=None, help="highest momentum [GeV/c] (default 180)")
    parser.add_argument("--seed", type=int, default=0, help="seed; each file derives its own from (seed, file "
                        "index) (default %(default)s)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = DriftSimConfig.from_cli(parser, args, particles=tuple(args.particles) if args.particles else None,
                                  momentum_min_gev=args.pmin, momentum_max_gev=args.pmax)
    if args.waveforms < 1 or args.waveforms_per_file < 1:
        parser.error("--waveforms and --waveforms-per-file must be >= 1")
    paths = write_dataset(args.out, args.waveforms, args.waveforms_per_file, args.seed, cfg,
                          progress=not args.no_progress, workers=args.workers)
    logger.info("wrote %d files under %s", len(paths), args.out)
    return EXIT_OK


if __name__ == "__main__":
    # Run the importable module, not a second copy named __main__, so spawned workers and pickles agree.
    from clustercount.simulate import main as _main

    sys.exit(_main())
