"""Fast parametric simulation of LArIAT single-particle events, written in the LArIAT HDF5 layout.

Why: the LArIAT files of the talks (2 wire planes x 240 wires x 4096 ticks per event) cannot be downloaded
here, yet the experiment needs images with the same layout and the same topologies: tracks with dE/dx,
multiple scattering and Bragg peaks, kinks and stars, Michel electrons, EM showers after a conversion gap,
pi0 -> gamma gamma. Nothing is Geant4: charged particles are stepped through liquid argon (Bethe-Bloch with
Moyal fluctuations, Highland scattering, exponential interaction and decay lengths), secondaries come from
parametrised final states, and EM showers are a trunk plus branching sub-tracks and blips drawn from a
Gamma longitudinal profile. All tracks of a chunk of events are stepped together (vectorized), then the
deposits are drifted to two wire planes at +-60 degrees, shaped, digitised with noise. Every parameter
lives in :class:`LArSimConfig`; ``lartpcdnn/README.md`` ("Simulator") says what is left out.

Layout written by :func:`write_dataset` (one file set per particle, LArIAT's names)::

    <out>/<particle>/<particle>_<i>.2d.h5   features (N, 2, 240, 4096) float16 (induction, collection;
                                            deconvolved wire signals in ADC counts), Energy (N,) GeV
                                            kinetic, px, py, pz (N,) GeV/c, pdg (N,) int32,
                                            Track_length (N,) cm
    <out>/<particle>/<particle>_<i>.3d.h5   images3D/C (N, K, 3) float32 deposit positions (x drift,
                                            y up, z beam) in cm, images3D/V (N, K) deposited energy in MeV,
                                            images3D/N (N,) points per event (:class:`dlkit.sparse.SparseTensor`),
                                            plus Energy and pdg

With ``hits`` (``"root"``, ``"rntuple"``, ``"parquet"``, ``"hdf5"``) the same events are written instead as
one file of deposit lists each, ``<out>/<particle>/<particle>_<i>.{root,parquet,h5}`` (:mod:`dlkit.jagged`):
``dep_x``, ``dep_y``, ``dep_z`` (cm) and ``dep_q`` (deposited energy, MeV) per event - the points of
``images3D`` - with ``Energy``, ``px``, ``py``, ``pz``, ``pdg`` and ``Track_length``.

>>> import numpy as np
>>> ev = simulate_events("muon", 2, np.random.default_rng(1))
>>> ev["features"].shape, ev["features"].dtype.name, len(ev["truth3d"])
((2, 2, 240, 4096), 'float16', 2)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import sys
import zlib
from pathlib import Path

import numpy as np
from scipy.special import ndtr, ndtri

from dlkit.datasets import atomic_file, cached_dataset, data_root, write_files
from dlkit.jagged import EXTENSIONS, FORMATS, EventWriter, Jagged
from dlkit.protocol import EXIT_OK
from dlkit.simconfig import SimConfig
from dlkit.simconfig import documented as _f
from dlkit.sparse import SparseTensor

logger = logging.getLogger(__name__)

__all__ = [
    "LArSimConfig",
    "PARTICLES",
    "DEFAULT_PARTICLES",
    "PDG_IDS",
    "VIEW_NAMES",
    "DEFAULT_EVENTS_PER_CLASS",
    "TEST_EVENTS_PER_CLASS",
    "simulate_events",
    "file_seed_sequence",
    "DEPOSIT_COLUMNS",
    "deposit_columns",
    "write_file",
    "write_dataset",
    "dataset_key",
    "default_dataset",
    "wire_coordinate",
    "hit_file_name",
    "main",
]

#: LArIAT class names (= directory and file prefix) and their PDG ids.
PDG_IDS = {
    "electron": 11, "antielectron": -11, "muon": 13, "antimuon": -13, "pionPlus": 211, "pionMinus": -211,
    "kaonPlus": 321, "kaonMinus": -321, "proton": 2212, "pion0": 111, "photon": 22,
}
PARTICLES = tuple(PDG_IDS)
#: The experiment's default classes: one of each topology family (see README).
DEFAULT_PARTICLES = ("electron", "muon", "pionPlus", "photon", "pion0", "proton", "kaonPlus")
#: Wire planes in the order of ``features[:, view]``.
VIEW_NAMES = ("induction", "collection")
DEFAULT_EVENTS_PER_CLASS = 300
TEST_EVENTS_PER_CLASS = 24
#: Bumped whenever the same config + seed would give different events (part of the cache key).
FORMAT_VERSION = 1

# Particle data [MeV, cm]
M_E, M_MU, M_PI, M_PI0, M_K, M_P = 0.51099895, 105.6584, 139.5704, 134.9768, 493.677, 938.2721
_MU, _PI, _K, _P = range(4)  # tracked species
_MASS = np.array([M_MU, M_PI, M_K, M_P])
_CTAU = np.array([65865.0, 780.45, 371.2, np.inf])  # c tau [cm]
_STOPPED, _INTERACTED, _DECAYED, _EXITED = range(4)


@dataclasses.dataclass(frozen=True)
class LArSimConfig(SimConfig):
    """Every geometry, physics and readout parameter of the simulator, in one place (physics.md values).

    Coordinates [cm]: x drift distance from the wire planes (0..47), y up (-20..20), z along the beam
    (0..90). Energies in MeV inside, GeV in the files. Frozen and hashable; its JSON goes into every file.
    """

    # --- geometry and readout ---------------------------------------------------------------------------
    tpc_x_cm: tuple = _f((0.0, 47.0), "Drift coordinate range of the active volume [cm] (wires at x=0).")
    tpc_y_cm: tuple = _f((-20.0, 20.0), "Vertical range of the active volume [cm].")
    tpc_z_cm: tuple = _f((0.0, 90.0), "Beam-axis range of the active volume [cm].")
    n_wires: int = _f(240, "Wires per plane.")
    wire_pitch_cm: float = _f(0.4, "Wire pitch [cm].")
    wire_angles_deg: tuple = _f((60.0, -60.0), "Wire angle from the vertical, per plane (induction, collection).")
    n_ticks: int = _f(4096, "Time ticks per wire.")
    tick_us: float = _f(0.128, "Tick length [us] (7.8 MHz sampling).")
    drift_velocity_cm_us: float = _f(0.16, "Electron drift velocity [cm/us] (~500 V/cm).")
    trigger_offset_ticks: float = _f(900.0, "Tick at which charge from x=0 arrives (pre-trigger window).")
    electron_lifetime_us: float = _f(1000.0, "Drift-electron lifetime [us] (attenuation exp(-t/tau)).")
    shaping_sigma_ticks: float = _f(4.0, "Gaussian sigma of the (deconvolved) pulse [ticks].")
    diffusion_long_cm2_us: float = _f(6.2e-6, "Longitudinal diffusion constant D_L [cm^2/us].")
    gain_adc_ticks_per_ke: tuple = _f((4.5, 6.0), "Pulse area [ADC x ticks] per 1000 drift electrons, "
                                      "per plane (induction, collection).")
    noise_adc: tuple = _f((3.0, 2.5), "Gaussian electronics noise per tick [ADC], per plane, white.")
    adc_range: tuple = _f((-4096.0, 4095.0), "Digitiser range [ADC]: values are clipped (12-bit-like).")
    # --- liquid argon -----------------------------------------------------------------------------------
    density_g_cm3: float = _f(1.396, "LAr density [g/cm^3].")
    radiation_length_cm: float = _f(14.0, "X0 [cm].")
    critical_energy_mev: float = _f(32.0, "E_c [MeV].")
    moliere_radius_cm: float = _f(9.04, "Moliere radius [cm].")
    w_ion_ev: float = _f(23.6, "Energy per ionisation electron [eV].")
    recomb_alpha: float = _f(0.93, "Modified box model alpha (ArgoNeuT).")
    recomb_beta_cm_mev: float = _f(0.307, "Modified box model beta / (rho E) [cm/MeV] (0.212 at 0.5 kV/cm).")
    # --- beam -------------------------------------------------------------------------------------------
    energy_min_gev: float = _f(0.1, "Lowest kinetic energy [GeV] (flat spectrum).")
    energy_max_gev: float = _f(1.0, "Highest kinetic energy [GeV] (LArIAT beam: 0.2-1.4 GeV/c).")
    beam_x_cm: tuple = _f((10.0, 37.0), "Entry point drift-coordinate range at z=0 [cm] (uniform).")
    beam_y_cm: tuple = _f((-12.0, 12.0), "Entry point height range at z=0 [cm] (uniform).")
    beam_angle_sigma_rad: float = _f(0.12, "Gaussian spread of the direction slopes dx/dz and dy/dz [rad].")
    # --- tracks -----------------------------------------------------------------------------------------
    step_cm: float = _f(0.3, "Largest tracking step [cm]; steps also lose at most `step_energy_fraction`.")
    step_energy_fraction: float = _f(0.15, "Largest fraction of the kinetic energy lost in one step.")
    stop_energy_mev: float = _f(1.0, "Kinetic energy below which a particle deposits the rest and stops.")
    dedx_fluct: float = _f(0.12, "Relative width of the Moyal (Landau-like) fluctuation of step deposits.")
    interaction_length_cm: tuple = _f((1.0e9, 110.0, 130.0, 84.0), "Inelastic interaction length [cm] "
                                      "for (mu, pi, K, p); muons do not interact.")
    min_interaction_mev: float = _f(20.0, "No hadronic interaction below this kinetic energy.")
    muminus_capture: float = _f(0.75, "Probability that a stopped mu- is captured (no Michel electron).")
    max_generations: int = _f(4, "Secondary generations followed (deeper ones are dropped).")
    # --- hadronic final states --------------------------------------------------------------------------
    leading_probability: float = _f(0.6, "Probability that an interacting hadron continues (same species).")
    leading_fraction: tuple = _f((0.2, 0.9), "Uniform range of the leading particle's energy fraction.")
    leading_angle_rad: float = _f(0.35, "Mean (exponential) deflection of the leading particle [rad].")
    proton_multiplicity: float = _f(1.2, "Mean number of knocked-out protons per interaction (Poisson).")
    proton_energy_mev: float = _f(40.0, "Mean (exponential) kinetic energy of knocked-out protons [MeV].")
    pi0_probability: float = _f(0.25, "Probability of a pi0 in an interaction above 200 MeV.")
    pion_probability: float = _f(0.15, "Probability of an extra charged pion in an interaction above 300 MeV.")
    binding_mev: float = _f(20.0, "Energy lost to binding and neutrons per interaction [MeV] (invisible).")
    capture_proton_multiplicity: float = _f(1.0, "Mean protons from a stopped pi- or K- capture.")
    capture_proton_energy_mev: float = _f(30.0, "Mean kinetic energy of capture protons [MeV].")
    # --- EM showers -------------------------------------------------------------------------------------
    conversion_length_x0: float = _f(9.0 / 7.0, "Mean photon conversion length [X0].")
    trunk_length_x0: float = _f(0.4, "Mean (exponential) length of the single-track start of a shower [X0].")
    em_b: float = _f(0.5, "Gamma-profile slope b [1/X0]; a = 1 + b t_max, t_max = ln(E/E_c) + C.")
    em_c_electron: float = _f(-0.5, "C of t_max for electrons.")
    em_c_photon: float = _f(0.5, "C of t_max for photons.")
    branch_length_cm: float = _f(2.5, "Mean (exponential) length of shower sub-tracks [cm].")
    branch_angle_rad: float = _f(0.3, "Sub-track angle spread at the shower start; grows by the same per "
                                 "unit depth/t_max.")
    core_radius_rm: float = _f(0.1, "Transverse sigma of sub-track starts at the shower start [R_M].")
    blip_fraction: float = _f(0.2, "Fraction of the shower energy in isolated blips (Compton electrons).")
    blip_energy_mev: float = _f(1.0, "Mean energy of one blip [MeV].")
    blip_radius_rm: float = _f(0.6, "Transverse sigma of blips [R_M].")
    point_spacing_cm: float = _f(0.3, "Spacing of the deposit points of shower sub-tracks [cm].")
    # --- output -----------------------------------------------------------------------------------------
    truth_capacity: int = _f(4096, "Points per event in images3D (padding); denser events are merged on a "
                             "coarser grid until they fit.")
    truth_shape: tuple = _f((94, 80, 180), "Default binning stored with images3D (0.5 cm voxels).")
    chunk_events: int = _f(16, "Events simulated per vectorised batch. It fixes how the random stream is "
                           "consumed, so changing it changes the events (not their distributions).")

    def __post_init__(self):
        for name in ("tpc_x_cm", "tpc_y_cm", "tpc_z_cm", "beam_x_cm", "beam_y_cm", "leading_fraction",
                     "adc_range"):
            v = tuple(float(x) for x in getattr(self, name))
            object.__setattr__(self, name, v)
            if len(v) != 2 or not v[0] < v[1]:
                raise ValueError(f"{name} must be (low, high) with low < high, got {v!r}")
        for name, n in (("wire_angles_deg", 2), ("gain_adc_ticks_per_ke", 2), ("noise_adc", 2),
                        ("interaction_length_cm", 4), ("truth_shape", 3)):
            v = tuple(getattr(self, name))
            if len(v) != n:
                raise ValueError(f"{name} needs {n} values, got {v!r}")
            object.__setattr__(self, name, tuple(int(x) for x in v) if name == "truth_shape" else
                               tuple(float(x) for x in v))
        if not 0 < self.energy_min_gev <= self.energy_max_gev:
            raise ValueError("need 0 < energy_min_gev <= energy_max_gev")
        if self.n_ticks % 8 or self.n_wires < 1 or self.chunk_events < 1 or self.truth_capacity < 1:
            raise ValueError("n_ticks must be a multiple of 8; n_wires, chunk_events, truth_capacity >= 1")
        positive = ("wire_pitch_cm", "tick_us", "drift_velocity_cm_us", "electron_lifetime_us",
                    "shaping_sigma_ticks", "density_g_cm3", "radiation_length_cm", "critical_energy_mev",
                    "moliere_radius_cm", "w_ion_ev", "step_cm", "step_energy_fraction", "stop_energy_mev",
                    "conversion_length_x0", "trunk_length_x0", "em_b", "branch_length_cm", "blip_energy_mev",
                    "point_spacing_cm")
        bad = [p for p in positive if not getattr(self, p) > 0]
        if bad:
            raise ValueError(f"these must be > 0: {bad}")

    # derived quantities
    @property
    def region(self) -> tuple:
        return (self.tpc_x_cm, self.tpc_y_cm, self.tpc_z_cm)

    @property
    def cm_per_tick(self) -> float:
        return self.drift_velocity_cm_us * self.tick_us


# ---------------------------------------------------------------------------------------------------------
# Physics helpers (vectorized)
# ---------------------------------------------------------------------------------------------------------

_K_BETHE, _Z_OVER_A, _I_MEV = 0.307075, 18.0 / 39.948, 188.0e-6
_STERNHEIMER = (5.2146, 0.2014, 3.0, 0.19559, 3.0)  # -C, x0, x1, a, k for liquid argon (PDG)


def bethe_dedx(T, mass, density: float = 1.396) -> np.ndarray:
    """Mean dE/dx [MeV/cm] of a unit-charge particle of kinetic energy ``T`` and ``mass`` [MeV] in LAr.

    Bethe-Bloch with the full T_max and Sternheimer's density correction; beta*gamma is floored at 0.05
    (the formula fails below; the last MeV is deposited at once, see ``stop_energy_mev``).
    """
    T, mass = np.asarray(T, np.float64), np.asarray(mass, np.float64)
    gamma = 1.0 + T / mass
    bg2 = np.maximum(gamma * gamma - 1.0, 0.0025)
    gamma = np.sqrt(1.0 + bg2)
    beta2 = bg2 / (1.0 + bg2)
    r = M_E / mass
    tmax = 2.0 * M_E * bg2 / (1.0 + 2.0 * gamma * r + r * r)
    cbar, x0, x1, a, k = _STERNHEIMER
    x = 0.5 * np.log10(bg2)
    delta = np.where(x >= x1, 2 * math.log(10) * x - cbar,
                     np.where(x >= x0, 2 * math.log(10) * x - cbar + a * np.abs(x1 - x) ** k, 0.0))
    return (_K_BETHE * _Z_OVER_A * density / beta2
            * (0.5 * np.log(2.0 * M_E * bg2 * tmax / (_I_MEV * _I_MEV)) - beta2 - 0.5 * delta))


def _moyal(rng, n) -> np.ndarray:
    """Moyal variates (a Landau approximation): -ln(z^2) for standard normal z; mean gamma_E + ln 2."""
    z = rng.standard_normal(n)
    return -np.log(np.maximum(z * z, 1e-300))


_MOYAL_MEAN = 0.5772156649 + math.log(2.0)


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _isotropic(rng, n) -> np.ndarray:
    cost = rng.uniform(-1.0, 1.0, n)
    phi = rng.uniform(0.0, 2 * np.pi, n)
    sint = np.sqrt(1.0 - cost * cost)
    return np.stack([sint * np.cos(phi), sint * np.sin(phi), cost], axis=1)


def _basis(d):
    """Two unit vectors perpendicular to each direction in ``d`` (n, 3)."""
    ref = np.where(np.abs(d[:, 2:3]) < 0.9, np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0]]))
    u = _unit(_cross(ref, d))
    return u, _cross(d, u)


def _cross(a, b):
    """``np.cross`` of (n, 3) arrays, the same arithmetic without its per-call overhead (a hot loop)."""
    a0, a1, a2 = a[:, 0], a[:, 1], a[:, 2]
    b0, b1, b2 = b[:, 0], b[:, 1], b[:, 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=1)


def _tilt(d, theta, phi):
    """Directions at polar angle ``theta`` and azimuth ``phi`` around ``d``."""
    u, v = _basis(d)
    st = np.sin(theta)[:, None]
    return _unit(np.cos(theta)[:, None] * d + st * (np.cos(phi)[:, None] * u + np.sin(phi)[:, None] * v))


def _two_body(rng, parent_mass, p_vec, m1, m2):
    """Isotropic two-body decay boosted to the lab: momenta (n, 3) of both daughters [MeV]."""
    n = len(p_vec)
    pstar = math.sqrt(max((parent_mass ** 2 - (m1 + m2) ** 2) * (parent_mass ** 2 - (m1 - m2) ** 2), 0.0)) \
        / (2 * parent_mass)
    dirs = _isotropic(rng, n)
    pmag = np.linalg.norm(p_vec, axis=1)
    e = np.sqrt(pmag * pmag + parent_mass ** 2)
    gamma = e / parent_mass
    bhat = np.divide(p_vec, pmag[:, None], out=np.zeros_like(p_vec), where=pmag[:, None] > 0)
    beta = pmag / e
    out = []
    for sign, m in ((1.0, m1), (-1.0, m2)):
        ps = sign * pstar * dirs
        es = math.sqrt(pstar * pstar + m * m)
        par = (ps * bhat).sum(axis=1)
        out.append(ps + (((gamma - 1.0) * par + gamma * beta * es)[:, None]) * bhat)
    return out


@functools.lru_cache(maxsize=1)
def _michel_table():
    """Inverse CDF of the Michel spectrum x^2 (3 - 2x), x = E / 52.8 MeV."""
    x = np.linspace(0.0, 1.0, 2001)
    cdf = 2 * x ** 3 - x ** 4
    return cdf, x


def _michel_energy(rng, n):
    cdf, x = _michel_table()
    return 52.83 * np.interp(rng.uniform(0.0, 1.0, n), cdf, x)


# ---------------------------------------------------------------------------------------------------------
# Deposits and particles
# ---------------------------------------------------------------------------------------------------------


class _Deposits:
    """Energy deposits of a chunk: event index, position [cm], energy [MeV], local dE/dx [MeV/cm]."""

    def __init__(self):
        self.parts = []

    def add(self, ev, pos, de, dedx):
        if len(ev):
            self.parts.append((np.asarray(ev, np.int64), np.asarray(pos, np.float64),
                               np.asarray(de, np.float64), np.broadcast_to(np.asarray(dedx, np.float64),
                                                                           np.shape(de))))

    def arrays(self):
        if not self.parts:
            return np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0), np.zeros(0)
        return tuple(np.concatenate([p[i] for p in self.parts]) for i in range(4))


def _empty_tracks():
    return {"ev": np.zeros(0, np.int64), "sp": np.zeros(0, np.int64), "q": np.zeros(0), "pos": np.zeros((0, 3)),
            "dir": np.zeros((0, 3)), "T": np.zeros(0), "primary": np.zeros(0, bool)}


def _cat(dicts):
    dicts = [d for d in dicts if len(d["ev"])]
    if not dicts:
        return _empty_tracks()
    return {k: np.concatenate([d[k] for d in dicts]) for k in dicts[0]}


def _tracks(ev, sp, q, pos, direction, T, primary=False):
    n = len(ev)
    return {"ev": np.asarray(ev, np.int64), "sp": np.broadcast_to(np.asarray(sp, np.int64), (n,)).copy(),
            "q": np.broadcast_to(np.asarray(q, np.float64), (n,)).copy(), "pos": np.asarray(pos, np.float64),
            "dir": _unit(np.asarray(direction, np.float64)), "T": np.asarray(T, np.float64),
            "primary": np.broadcast_to(np.asarray(primary, bool), (n,)).copy()}


def _em(ev, pos, direction, energy, photon, primary=False):
    n = len(ev)
    return {"ev": np.asarray(ev, np.int64), "pos": np.asarray(pos, np.float64),
            "dir": _unit(np.asarray(direction, np.float64)), "E": np.asarray(energy, np.float64),
            "photon": np.broadcast_to(np.asarray(photon, bool), (n,)).copy(),
            "primary": np.broadcast_to(np.asarray(primary, bool), (n,)).copy()}


def _cat_em(dicts):
    dicts = [d for d in dicts if len(d["ev"])]
    if not dicts:
        return _em(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3)) + [0, 0, 1], np.zeros(0), False)
    return {k: np.concatenate([d[k] for d in dicts]) for k in dicts[0]}


def _inside(pos, cfg, margin=0.0):
    lo = np.array([cfg.tpc_x_cm[0], cfg.tpc_y_cm[0], cfg.tpc_z_cm[0]]) - margin
    hi = np.array([cfg.tpc_x_cm[1], cfg.tpc_y_cm[1], cfg.tpc_z_cm[1]]) + margin
    return np.all((pos >= lo) & (pos <= hi), axis=-1)


def _transport(tr, rng, cfg, dep):
    """Step all tracks together until each stops, interacts, decays or leaves; returns the end states."""
    n = len(tr["ev"])
    ends = {k: v.copy() for k, v in tr.items()}
    ends["outcome"] = np.full(n, _EXITED, np.int64)
    ends["path"] = np.zeros(n)
    if n == 0:
        return ends
    mass = _MASS[tr["sp"]]
    lam = np.asarray(cfg.interaction_length_cm)[tr["sp"]]
    p0 = np.sqrt(tr["T"] * (tr["T"] + 2 * mass))
    s_int = rng.exponential(1.0, n) * lam
    s_dec = rng.exponential(1.0, n) * _CTAU[tr["sp"]] * p0 / mass
    pos, d, T = tr["pos"].copy(), tr["dir"].copy(), tr["T"].copy()
    path = np.zeros(n)
    alive = np.ones(n, bool)
    x0 = cfg.radiation_length_cm
    for _ in range(100000):
        a = np.flatnonzero(alive)
        if a.size == 0:
            break
        Ta, ma = T[a], mass[a]
        dedx = bethe_dedx(Ta, ma, cfg.density_g_cm3)
        s = np.minimum(cfg.step_cm, np.maximum(0.005, cfg.step_energy_fraction * Ta / dedx))
        room = np.minimum(s_int[a], s_dec[a]) - path[a]
        hit = room <= s
        s = np.where(hit, np.maximum(room, 0.0), s)
        de = dedx * s * np.maximum(0.0, 1.0 + cfg.dedx_fluct * (_moyal(rng, a.size) - _MOYAL_MEAN))
        stop = Ta - de < cfg.stop_energy_mev
        de = np.where(stop, Ta, de)
        mid = pos[a] + d[a] * (0.5 * s)[:, None]
        dep.add(tr["ev"][a], mid, de, np.where(s > 0, de / np.maximum(s, 1e-9), dedx))
        pos[a] += d[a] * s[:, None]
        path[a] += s
        Tn = Ta - de
        T[a] = Tn
        # Highland multiple scattering over the step (log term per radiation length), capped per step.
        e = Tn + ma
        pmom = np.sqrt(np.maximum(Tn * (Tn + 2 * ma), 1e-6))
        beta = pmom / e
        theta0 = 13.6 / (beta * pmom) * np.sqrt(s / x0) * (1 + 0.038 * np.log(1.0 / np.maximum(beta * beta, 1e-6)))
        theta0 = np.minimum(theta0, 0.5)
        u, v = _basis(d[a])
        k1, k2 = (rng.standard_normal((2, a.size)) * theta0)
        d[a] = _unit(d[a] + k1[:, None] * u + k2[:, None] * v)
        out = ~_inside(pos[a], cfg, margin=0.5)
        interacted = hit & ~stop & (s_int[a] <= s_dec[a])
        low = interacted & (Tn < cfg.min_interaction_mev)
        s_int[a[low]] = np.inf  # too slow to interact: keep stepping
        interacted &= ~low
        decayed = hit & ~stop & (s_dec[a] < s_int[a])
        ended = stop | interacted | decayed | out
        outcome = np.select([stop, interacted, decayed], [_STOPPED, _INTERACTED, _DECAYED], _EXITED)
        idx = a[ended]
        ends["outcome"][idx] = outcome[ended]
        alive[idx] = False
    ends["pos"], ends["dir"], ends["T"], ends["path"] = pos, d, T, path
    return ends


def _products(ends, rng, cfg, dep):
    """Secondaries of ended tracks: (new tracks, new EM particles)."""
    new_tr, new_em = [], []
    sp, out, q = ends["sp"], ends["outcome"], ends["q"]
    ev, pos, d, T = ends["ev"], ends["pos"], ends["dir"], ends["T"]

    def emit_pi0(idx, p_vec):
        if len(idx) == 0:
            return
        g1, g2 = _two_body(rng, M_PI0, p_vec, 0.0, 0.0)
        for g in (g1, g2):
            e = np.linalg.norm(g, axis=1)
            new_em.append(_em(ev[idx], pos[idx], g + 1e-12, e, True))

    def protons(idx, mean_n, mean_t, budget):
        """Poisson numbers of protons with exponential energies, scaled to fit ``budget`` per parent."""
        if len(idx) == 0:
            return
        k = rng.poisson(mean_n, len(idx))
        owner = np.repeat(np.arange(len(idx)), k)
        tp = rng.exponential(mean_t, owner.size) + 2.0
        tot = np.bincount(owner, tp, minlength=len(idx))
        scale = np.minimum(1.0, np.maximum(budget, 0.0) / np.maximum(tot, 1e-9))
        tp = tp * scale[owner]
        keep = tp > cfg.stop_energy_mev
        o = idx[owner[keep]]
        dirs = _unit(_isotropic(rng, keep.sum()) + 0.5 * d[o])
        new_tr.append(_tracks(ev[o], _P, 1.0, pos[o], dirs, tp[keep]))

    # -- stopped muons and pi+: Michel electrons (pi+ -> mu+ (4.1 MeV, ~1.5 mm) -> e+)
    stopped = out == _STOPPED
    mu_stop = stopped & (sp == _MU)
    capt = mu_stop & (q < 0) & (rng.uniform(size=len(sp)) < cfg.muminus_capture)
    pip_stop = stopped & (sp == _PI) & (q > 0)
    michel = np.flatnonzero((mu_stop & ~capt) | pip_stop)
    dep.add(ev[pip_stop], pos[pip_stop], np.full(pip_stop.sum(), 4.12), 8.0)
    if michel.size:
        new_em.append(_em(ev[michel], pos[michel], _isotropic(rng, michel.size), _michel_energy(rng, michel.size),
                          False))
    # -- stopped pi- and K-: nuclear capture stars
    pim_stop = np.flatnonzero(stopped & (sp == _PI) & (q < 0))
    protons(pim_stop, cfg.capture_proton_multiplicity, cfg.capture_proton_energy_mev, 100.0)
    km_stop = np.flatnonzero(stopped & (sp == _K) & (q < 0))
    protons(km_stop, 1.5 * cfg.capture_proton_multiplicity, cfg.capture_proton_energy_mev, 250.0)
    with_pi = km_stop[rng.uniform(size=km_stop.size) < 0.6]
    if with_pi.size:
        new_tr.append(_tracks(ev[with_pi], _PI, np.where(rng.uniform(size=with_pi.size) < 0.5, 1.0, -1.0),
                              pos[with_pi], _isotropic(rng, with_pi.size), rng.uniform(50, 200, with_pi.size)))
    # -- kaon decays (stopped K+ or K+- in flight): 64 % mu nu, 21 % pi pi0, the rest treated as mu nu
    k_dec = np.flatnonzero(((stopped & (q > 0)) | (out == _DECAYED)) & (sp == _K))
    if k_dec.size:
        pk = np.sqrt(np.maximum(T[k_dec] * (T[k_dec] + 2 * M_K), 0.0))[:, None] * d[k_dec]
        chan = rng.uniform(size=k_dec.size) < 0.207
        for sel, m1, m2, kind in ((~chan, M_MU, 0.0, _MU), (chan, M_PI, M_PI0, _PI)):
            idx = k_dec[sel]
            if idx.size == 0:
                continue
            p1, p2 = _two_body(rng, M_K, pk[sel], m1, m2)
            pm = np.linalg.norm(p1, axis=1)
            new_tr.append(_tracks(ev[idx], kind, q[idx], pos[idx], p1, np.sqrt(pm * pm + m1 * m1) - m1))
            if kind == _PI:
                emit_pi0(idx, p2)
    # -- pion decays in flight: pi -> mu nu (a kink)
    pi_dec = np.flatnonzero((out == _DECAYED) & (sp == _PI))
    if pi_dec.size:
        pp = np.sqrt(T[pi_dec] * (T[pi_dec] + 2 * M_PI))[:, None] * d[pi_dec]
        p1, _ = _two_body(rng, M_PI, pp, M_MU, 0.0)
        pm = np.linalg.norm(p1, axis=1)
        new_tr.append(_tracks(ev[pi_dec], _MU, q[pi_dec], pos[pi_dec], p1, np.sqrt(pm * pm + M_MU ** 2) - M_MU))
    # -- hadronic interactions: leading particle, protons, maybe pi0 and a charged pion
    inter = np.flatnonzero(out == _INTERACTED)
    if inter.size:
        budget = T[inter] - cfg.binding_mev
        lead = rng.uniform(size=inter.size) < cfg.leading_probability
        frac = rng.uniform(*cfg.leading_fraction, inter.size)
        tl = np.where(lead, frac * budget, 0.0)
        li = inter[lead]
        if li.size:
            theta = np.minimum(rng.exponential(cfg.leading_angle_rad, li.size), np.pi)
            dirs = _tilt(d[li], theta, rng.uniform(0, 2 * np.pi, li.size))
            new_tr.append(_tracks(ev[li], sp[li], q[li], pos[li], dirs, tl[lead]))
        rest = budget - tl
        p0 = (rng.uniform(size=inter.size) < cfg.pi0_probability) & (T[inter] > 200.0)
        t_pi0 = np.where(p0, rng.uniform(0.1, 0.4, inter.size) * rest, 0.0)
        if p0.any():
            idx = inter[p0]
            tp = t_pi0[p0]
            pmag = np.sqrt(tp * (tp + 2 * M_PI0))
            dirs = _unit(_isotropic(rng, idx.size) + d[idx])
            emit_pi0(idx, pmag[:, None] * dirs)
        rest = rest - t_pi0
        pc = (rng.uniform(size=inter.size) < cfg.pion_probability) & (T[inter] > 300.0)
        t_pc = np.where(pc, rng.uniform(0.05, 0.3, inter.size) * rest, 0.0)
        if pc.any():
            idx = inter[pc]
            new_tr.append(_tracks(ev[idx], _PI, np.where(rng.uniform(size=idx.size) < 0.5, 1.0, -1.0), pos[idx],
                                  _unit(_isotropic(rng, idx.size) + d[idx]), t_pc[pc]))
        protons(inter, cfg.proton_multiplicity, cfg.proton_energy_mev, rest - t_pc)
    return _cat(new_tr), _cat_em(new_em)


def _segments(ev, start, direction, length, energy, spacing, dedx, dep):
    """Deposit straight segments as points every ``spacing`` cm, energy shared equally (vectorized)."""
    if len(ev) == 0:
        return
    npts = np.maximum(1, np.ceil(length / spacing)).astype(np.int64)
    owner = np.repeat(np.arange(len(ev)), npts)
    first = np.repeat(np.cumsum(npts) - npts, npts)
    k = np.arange(owner.size) - first
    frac = (k + 0.5) / npts[owner]
    pts = start[owner] + direction[owner] * (frac * length[owner])[:, None]
    dedx = np.asarray(dedx, np.float64)
    dep.add(ev[owner], pts, (energy / npts)[owner], dedx[owner] if dedx.ndim else dedx)


def _showers(em, rng, cfg, dep):
    """EM showers: conversion gap (photons), a 1- (e) or 2-MIP (gamma pair) trunk, then sub-tracks from a
    Gamma longitudinal profile and isolated blips. Returns the length of the primary's own path (photon
    conversion distance, electron trunk) per particle."""
    n = len(em["ev"])
    if n == 0:
        return np.zeros(0)
    x0 = cfg.radiation_length_cm
    E = em["E"]
    ph = em["photon"]
    gap = np.where(ph, rng.exponential(cfg.conversion_length_x0 * x0, n), 0.0)
    start = em["pos"] + em["dir"] * gap[:, None]
    nmip = np.where(ph, 2.0, 1.0)
    mip = 2.12
    trunk = np.minimum(rng.exponential(cfg.trunk_length_x0 * x0, n) + 0.5, E / (nmip * mip))
    e_trunk = trunk * nmip * mip
    _segments(em["ev"], start, em["dir"], trunk, e_trunk, cfg.point_spacing_cm, nmip * mip, dep)
    body = np.maximum(E - e_trunk, 0.0)
    tmax = np.maximum(np.log(np.maximum(E, 1e-3) / cfg.critical_energy_mev) + np.where(ph, cfg.em_c_photon,
                                                                                      cfg.em_c_electron), 0.2)
    a = 1.0 + cfg.em_b * tmax
    base = start + em["dir"] * trunk[:, None]
    rm = cfg.moliere_radius_cm
    # sub-tracks
    e_branch = body * (1.0 - cfg.blip_fraction)
    mean_len = cfg.branch_length_cm + 0.3
    nb = rng.poisson(e_branch / (mip * mean_len))
    owner = np.repeat(np.arange(n), nb)
    if owner.size:
        t = rng.gamma(a[owner], 1.0 / cfg.em_b)
        tau = np.minimum(t / tmax[owner], 3.0)
        r = rng.rayleigh(cfg.core_radius_rm * rm * (1.0 + tau))
        phi = rng.uniform(0, 2 * np.pi, owner.size)
        u, v = _basis(em["dir"][owner])
        origin = (base[owner] + em["dir"][owner] * (t * x0)[:, None]
                  + (r * np.cos(phi))[:, None] * u + (r * np.sin(phi))[:, None] * v)
        theta = np.abs(rng.normal(0.0, cfg.branch_angle_rad * (1.0 + tau)))
        dirs = _tilt(em["dir"][owner], np.minimum(theta, np.pi), rng.uniform(0, 2 * np.pi, owner.size))
        length = rng.exponential(cfg.branch_length_cm, owner.size) + 0.3
        e_seg = length * mip
        scale = e_branch / np.maximum(np.bincount(owner, e_seg, minlength=n), 1e-9)
        _segments(em["ev"][owner], origin, dirs, length, e_seg * scale[owner], cfg.point_spacing_cm, mip, dep)
    # blips (and all of the body when no sub-track was drawn)
    e_blip = np.where(nb > 0, body * cfg.blip_fraction, body)
    kb = np.where(e_blip > 0, np.maximum(1, rng.poisson(e_blip / cfg.blip_energy_mev)), 0)
    ob = np.repeat(np.arange(n), kb)
    if ob.size:
        t = rng.gamma(a[ob], 1.3 / cfg.em_b)
        r = rng.rayleigh(cfg.blip_radius_rm * rm, ob.size)
        phi = rng.uniform(0, 2 * np.pi, ob.size)
        u, v = _basis(em["dir"][ob])
        pts = (base[ob] + em["dir"][ob] * (t * x0)[:, None] + (r * np.cos(phi))[:, None] * u
               + (r * np.sin(phi))[:, None] * v)
        w = rng.exponential(1.0, ob.size)
        w = w * (e_blip / np.maximum(np.bincount(ob, w, minlength=n), 1e-12))[ob]
        dep.add(em["ev"][ob], pts, w, 4.0)
    return np.where(ph, gap, trunk)


def _primaries(particle, n, rng, cfg, energies):
    """Kinetic energy [MeV], entry point and direction of each event's primary."""
    t = (rng.uniform(cfg.energy_min_gev, cfg.energy_max_gev, n) if energies is None
         else np.asarray(energies, np.float64).reshape(n)) * 1000.0
    pos = np.stack([rng.uniform(*cfg.beam_x_cm, n), rng.uniform(*cfg.beam_y_cm, n), np.full(n, cfg.tpc_z_cm[0])],
                   axis=1)
    slopes = rng.normal(0.0, cfg.beam_angle_sigma_rad, (n, 2))
    d = _unit(np.concatenate([slopes, np.ones((n, 1))], axis=1))
    return t, pos, d


_TRACKED = {"muon": (_MU, -1.0), "antimuon": (_MU, 1.0), "pionPlus": (_PI, 1.0), "pionMinus": (_PI, -1.0),
            "kaonPlus": (_K, 1.0), "kaonMinus": (_K, -1.0), "proton": (_P, 1.0)}
_MASS_OF = {"electron": M_E, "antielectron": M_E, "photon": 0.0, "pion0": M_PI0, "muon": M_MU, "antimuon": M_MU,
            "pionPlus": M_PI, "pionMinus": M_PI, "kaonPlus": M_K, "kaonMinus": M_K, "proton": M_P}


def _simulate_deposits(particle, n, rng, cfg, energies=None):
    """Transport one chunk: truth per event and every deposit (event, position, energy, dE/dx)."""
    if particle not in PDG_IDS:
        raise ValueError(f"unknown particle {particle!r}; expected one of {PARTICLES}")
    t, pos, d = _primaries(particle, n, rng, cfg, energies)
    ev = np.arange(n)
    dep = _Deposits()
    track_length = np.zeros(n)
    tracks, em = _empty_tracks(), _cat_em([])
    if particle in _TRACKED:
        sp, q = _TRACKED[particle]
        tracks = _tracks(ev, sp, q, pos, d, t, primary=True)
    elif particle == "pion0":
        p = np.sqrt(t * (t + 2 * M_PI0))[:, None] * d
        g1, g2 = _two_body(rng, M_PI0, p, 0.0, 0.0)
        em = _cat_em([_em(ev, pos, g + 1e-12, np.linalg.norm(g, axis=1), True) for g in (g1, g2)])
    else:
        em = _em(ev, pos, d, t, particle == "photon", primary=True)
    for generation in range(cfg.max_generations + 1):
        if len(tracks["ev"]) == 0 and len(em["ev"]) == 0:
            break
        lengths = _showers(em, rng, cfg, dep)
        track_length[em["ev"][em["primary"]]] = lengths[em["primary"]]
        if len(tracks["ev"]) == 0:
            break
        ends = _transport(tracks, rng, cfg, dep)
        track_length[ends["ev"][ends["primary"]]] = ends["path"][ends["primary"]]
        if generation == cfg.max_generations:
            break
        tracks, em = _products(ends, rng, cfg, dep)
    mass = _MASS_OF[particle]
    pmag = np.sqrt(t * (t + 2 * mass))
    truth = {"Energy": t / 1000.0, "px": pmag * d[:, 0] / 1000.0, "py": pmag * d[:, 1] / 1000.0,
             "pz": pmag * d[:, 2] / 1000.0, "pdg": np.full(n, PDG_IDS[particle], np.int32),
             "Track_length": track_length}
    return truth, dep.arrays()


# ---------------------------------------------------------------------------------------------------------
# Readout: drift, wires, shaping, noise
# ---------------------------------------------------------------------------------------------------------


def wire_coordinate(y, z, angle_deg: float) -> np.ndarray:
    """Position [cm] measured across the wires of a plane whose wires make ``angle_deg`` with the vertical."""
    a = math.radians(angle_deg)
    return -np.asarray(y) * math.sin(a) + np.asarray(z) * math.cos(a)


@functools.lru_cache(maxsize=4)
def _readout(cfg: LArSimConfig):
    """Per plane: first wire position; the Gaussian kernel half width; the noise lookup tables."""
    ys, zs = np.array(cfg.tpc_y_cm), np.array(cfg.tpc_z_cm)
    wmin = []
    for ang in cfg.wire_angles_deg:
        corners = wire_coordinate(ys[[0, 0, 1, 1]], zs[[0, 1, 0, 1]], ang)
        centre = 0.5 * (corners.min() + corners.max())
        wmin.append(centre - 0.5 * cfg.n_wires * cfg.wire_pitch_cm)
    drift_us = (cfg.tpc_x_cm[1] - cfg.tpc_x_cm[0]) / cfg.drift_velocity_cm_us
    sig_max = math.sqrt(cfg.shaping_sigma_ticks ** 2
                        + 2 * cfg.diffusion_long_cm2_us * drift_us / cfg.cm_per_tick ** 2)
    half = math.ceil(4 * sig_max) + 1
    # Integer-valued (digitised) Gaussian noise by table lookup: exact quantiles of rint(sigma * z).
    u = (np.arange(65536) + 0.5) / 65536
    tables = [np.rint(ndtri(u) * s).astype(np.float16) for s in cfg.noise_adc]
    return np.array(wmin), half, tables


def _recombination(dedx, cfg):
    """Modified box model: fraction of the ionisation charge that escapes recombination."""
    xi = cfg.recomb_beta_cm_mev * np.maximum(dedx, 0.1)
    return np.log(cfg.recomb_alpha + xi) / xi


def _digitize(n, deposits, rng, cfg, out):
    """Fill ``out`` (n, 2, W, T) float16 with the signal of the deposits plus digitised noise.

    The noise (integer ADC counts, by table lookup of uniform 16-bit integers) is written straight into
    the float16 output; the signal is histogrammed (exact Gaussian integrals per tick) only over the
    tick range the event touches, rounded to ADC counts and added there, then clipped to the ADC range.
    """
    ev, pos, de, dedx = deposits
    wmin, half, tables = _readout(cfg)
    W, T = cfg.n_wires, cfg.n_ticks
    inside = _inside(pos, cfg)
    ev, pos, de, dedx = ev[inside], pos[inside], de[inside], dedx[inside]
    drift_us = (pos[:, 0] - cfg.tpc_x_cm[0]) / cfg.drift_velocity_cm_us
    electrons = de * 1e6 / cfg.w_ion_ev * _recombination(dedx, cfg) * np.exp(-drift_us / cfg.electron_lifetime_us)
    tick = cfg.trigger_offset_ticks + (pos[:, 0] - cfg.tpc_x_cm[0]) / cfg.cm_per_tick
    sigma = np.sqrt(cfg.shaping_sigma_ticks ** 2 + 2 * cfg.diffusion_long_cm2_us * drift_us / cfg.cm_per_tick ** 2)
    t0 = np.floor(tick).astype(np.int64) - half
    k = np.arange(2 * half + 2)
    cdf = ndtr((t0[:, None] + k[None, :] - tick[:, None]) / sigma[:, None])
    shape = np.diff(cdf, axis=1)  # charge in tick [t, t+1) of each pulse (exact Gaussian integrals)
    wires = [np.floor((wire_coordinate(pos[:, 1], pos[:, 2], ang) - wmin[p]) / cfg.wire_pitch_cm).astype(np.int64)
             for p, ang in enumerate(cfg.wire_angles_deg)]
    order = np.argsort(ev, kind="stable")
    bounds = np.searchsorted(ev[order], np.arange(n + 1))
    width = 2 * half + 1
    lo_adc, hi_adc = cfg.adc_range
    for i in range(n):
        flat = out[i].reshape(2, W * T)
        for plane in range(2):
            u = rng.integers(0, 65536, W * T, dtype=np.uint16)
            np.take(tables[plane], u, out=flat[plane])
        rows = order[bounds[i]:bounds[i + 1]]
        if rows.size == 0:
            continue
        a = max(int(t0[rows].min()), 0)
        b = min(int(t0[rows].max()) + width, T)
        if b <= a:
            continue
        span = b - a
        ticks = t0[rows, None] + np.arange(width)[None, :] - a  # relative to the window [a, b)
        ok_t = (ticks >= 0) & (ticks < span)
        idx_parts, w_parts = [], []
        for plane in range(2):
            wire = wires[plane][rows]
            good = ok_t & ((wire >= 0) & (wire < W))[:, None]
            area = electrons[rows] * 1e-3 * cfg.gain_adc_ticks_per_ke[plane]
            idx_parts.append(((plane * W + wire)[:, None] * span + ticks)[good])
            w_parts.append((area[:, None] * shape[rows])[good])
        signal = np.bincount(np.concatenate(idx_parts), np.concatenate(w_parts), minlength=2 * W * span)
        # only the samples the signal touches change (noise alone is far inside the ADC range)
        hit = np.flatnonzero(signal)
        flat = (hit // span) * T + a + hit % span  # index into out[i] as (plane * W + wire) * T + tick
        event = out[i].reshape(-1)
        total = np.rint(signal[hit]).astype(np.float32) + event[flat]
        np.clip(total, lo_adc, hi_adc, out=total)
        event[flat] = total


def _truth_points(n, deposits, cfg):
    """Per-event truth points inside the TPC as a SparseTensor, merged on a coarser grid if over capacity."""
    ev, pos, de, _ = deposits
    inside = _inside(pos, cfg)
    ev, pos, de = ev[inside], pos[inside], de[inside]
    order = np.argsort(ev, kind="stable")
    ev, pos, de = ev[order], pos[order], de[order]
    counts = np.bincount(ev, minlength=n)
    lo = np.array([r[0] for r in cfg.region])
    over = np.flatnonzero(counts > cfg.truth_capacity)
    if over.size:
        bounds = np.concatenate([[0], np.cumsum(counts)])
        keep_c, keep_v, keep_e = [], [], []
        for i in range(n):
            c, v = pos[bounds[i]:bounds[i + 1]], de[bounds[i]:bounds[i + 1]]
            voxel = cfg.point_spacing_cm
            while len(c) > cfg.truth_capacity:
                cell = np.floor((c - lo) / voxel).astype(np.int64)
                uniq, inv = np.unique(cell, axis=0, return_inverse=True)
                inv = inv.reshape(-1)
                v = np.bincount(inv, v)
                c = lo + (uniq + 0.5) * voxel
                voxel *= 2
            keep_c.append(c)
            keep_v.append(v)
            keep_e.append(np.full(len(v), i))
        logger.debug("merged the truth points of %d event(s) above the capacity %d", over.size, cfg.truth_capacity)
        pos, de, ev = np.concatenate(keep_c), np.concatenate(keep_v), np.concatenate(keep_e)
        counts = np.bincount(ev, minlength=n)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return SparseTensor(pos.astype(np.float32), de.astype(np.float32), offsets, shape=cfg.truth_shape,
                        region=cfg.region, axes=("x", "y", "z"))


def _simulate_chunk(particle, n, rng, cfg, energies=None, features=None):
    truth, deposits = _simulate_deposits(particle, n, rng, cfg, energies)
    if features is None:
        features = np.empty((n, 2, cfg.n_wires, cfg.n_ticks), np.float16)
    _digitize(n, deposits, rng, cfg, features)
    out = {k: np.asarray(v, np.int32 if k == "pdg" else np.float32) for k, v in truth.items()}
    out["features"] = features
    out["truth3d"] = _truth_points(n, deposits, cfg)
    return out


def _iter_chunks(particle, n, rng, cfg, energies=None):
    for start in range(0, n, cfg.chunk_events):
        m = min(cfg.chunk_events, n - start)
        yield _simulate_chunk(particle, m, rng, cfg, None if energies is None else energies[start:start + m])


def simulate_events(particle: str, n: int, rng: np.random.Generator, config: LArSimConfig | None = None,
                    energies=None) -> dict:
    """Simulate ``n`` events of ``particle`` in memory (no I/O).

    Returns the 2D-file arrays (``features`` (n, 2, W, T) float16, ``Energy``, ``px``, ``py``, ``pz``,
    ``Track_length`` float32, ``pdg`` int32) and ``truth3d``, a :class:`~dlkit.sparse.SparseTensor` of the
    deposits. ``energies`` (GeV, kinetic) fixes the energy of each event instead of the flat spectrum.
    """
    cfg = config or LArSimConfig()
    if energies is not None:
        energies = np.broadcast_to(np.asarray(energies, np.float64), (n,))
    chunks = list(_iter_chunks(particle, n, rng, cfg, energies))
    if not chunks:
        raise ValueError("n must be >= 1")
    out = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0] if k != "truth3d"}
    truths = [c["truth3d"] for c in chunks]
    counts = np.concatenate([t.counts for t in truths])
    out["truth3d"] = SparseTensor(np.concatenate([t.coords for t in truths]),
                                  np.concatenate([t.values for t in truths]),
                                  np.concatenate([[0], np.cumsum(counts)]), shape=cfg.truth_shape,
                                  region=cfg.region, axes=("x", "y", "z"))
    return out


# ---------------------------------------------------------------------------------------------------------
# Files and datasets
# ---------------------------------------------------------------------------------------------------------


def file_seed_sequence(seed: int, particle: str, file_index: int) -> np.random.SeedSequence:
    """The seed of one file: independent of every other file, so files can be made in any order."""
    return np.random.SeedSequence(entropy=int(seed), spawn_key=(PDG_IDS[particle] % 2**32, int(file_index)))


def _h5_options(compression):
    if compression is None:
        return {}
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    level = 1
    if isinstance(compression, str) and compression.startswith("gzip"):
        level = int(compression[4:] or 1)
    return {"compression": "gzip", "compression_opts": level, "shuffle": True}


def _check_compression(compression):
    ok = compression is None or compression == "lzf" or (
        isinstance(compression, str) and compression.startswith("gzip") and compression[4:] in ("", *"123456789"))
    if not ok:
        raise ValueError(f"compression must be None, 'gzip' (level 1), 'gzip1'..'gzip9' or 'lzf', got {compression!r}")


def _deflate_event(event: np.ndarray, level: int) -> bytes:
    """One event's ``features`` chunk through HDF5's shuffle + deflate filters, done here.

    The shuffle is HDF5's (all first bytes of the float16 values, then all second bytes); the deflate
    stream uses zlib's run-length strategy, which any inflate reads like HDF5's own output: on the
    digitised noise it is ~2.3x faster than the default strategy and ~20 % smaller.
    """
    shuffled = np.ascontiguousarray(np.ascontiguousarray(event).view(np.uint8).reshape(-1, event.itemsize).T)
    z = zlib.compressobj(level, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    return z.compress(shuffled) + z.flush()


def _feature_writer(dset, compression):
    """``write(start, block)`` storing events ``block`` (m, 2, W, T) at ``dset[start:start + m]``.

    gzip: each event (one HDF5 chunk) is shuffled and deflated by :func:`_deflate_event` in a few threads
    (zlib releases the GIL) and written with ``write_direct_chunk``, the file declaring the same filters.
    """
    if not (isinstance(compression, str) and compression.startswith("gzip")):
        def write(start, block):
            dset[start:start + len(block)] = block
        return write
    level = int(compression[4:] or 1)
    threads = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()))

    def write(start, block):
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            for j, data in enumerate(pool.map(_deflate_event, block, [level] * len(block))):
                dset.id.write_direct_chunk((start + j, 0, 0, 0), data)
    return write


#: The per-event deposit columns of hit files, float32: position [cm] and deposited energy [MeV].
DEPOSIT_COLUMNS = ("dep_x", "dep_y", "dep_z", "dep_q")
#: The per-event scalars written beside them (those of the 2d files).
_SCALARS = {"Energy": np.float32, "px": np.float32, "py": np.float32, "pz": np.float32, "pdg": np.int32,
            "Track_length": np.float32}


def deposit_columns(truth: SparseTensor) -> dict:
    """The points of a ``truth3d`` :class:`~dlkit.sparse.SparseTensor` as :data:`DEPOSIT_COLUMNS`, each a
    :class:`dlkit.jagged.Jagged` (``dep_x`` drift, ``dep_y`` up, ``dep_z`` beam [cm]; ``dep_q`` [MeV])."""
    coords = np.asarray(truth.coords, np.float32)
    columns = {k: Jagged(np.ascontiguousarray(coords[:, axis]), truth.offsets)
               for axis, k in enumerate(DEPOSIT_COLUMNS[:3])}
    columns["dep_q"] = Jagged(np.asarray(truth.values, np.float32), truth.offsets)
    return columns


def _check_hits(hits):
    if hits is not None and hits not in FORMATS:
        raise ValueError(f"hits must be None or one of {', '.join(FORMATS)}, got {hits!r}")


def hit_file_name(particle: str, file_index: int, hits: str) -> str:
    """``<particle>_<i>.root`` (``.parquet``, ``.h5``): the deposit file of a ``hits`` dataset."""
    return f"{particle}_{file_index}{EXTENSIONS[hits]}"


def file_names(particle: str, file_index: int) -> tuple[str, str]:
    """LArIAT's file names: ``<particle>_<i>.2d.h5`` and ``<particle>_<i>.3d.h5``."""
    return f"{particle}_{file_index}.2d.h5", f"{particle}_{file_index}.3d.h5"


def write_file(directory, particle: str, n: int, seed: int, file_index: int, config: LArSimConfig | None = None,
               compression: str | None = "gzip", truth3d: bool = True, progress=None, hits: str | None = None) -> Path:
    """Simulate and write one file set (2d, and 3d unless ``truth3d`` is False) atomically; returns the 2d path.

    ``features`` is chunked one event per chunk (what the readers decompress at a time); ``compression``
    None, ``"gzip"`` (level 1, with shuffle: the default, ~4.3x smaller), ``"gzipN"`` or ``"lzf"``.
    ``progress``: optional callable(n_events_done) called after each chunk. ``hits`` (one of
    :data:`dlkit.jagged.FORMATS`): instead of the file set, the same events' deposits as one file
    :func:`hit_file_name` (:func:`deposit_columns` and the 2d file's scalars; the file's metadata holds the
    config, seed, particle, ...), whose path is returned; ``compression`` and ``truth3d`` do not apply.
    The wire signals are still simulated (the random stream runs through them), only not written.
    """
    import h5py

    import dlkit
    cfg = config or LArSimConfig()
    _check_compression(compression)
    _check_hits(hits)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(file_seed_sequence(seed, particle, file_index))
    attrs = {"simulation_config": cfg.to_json(), "seed": int(seed), "particle": particle,
             "file_index": int(file_index), "dlkit_version": dlkit.__version__, "format_version": FORMAT_VERSION,
             "generator": "lartpcdnn.simulate", "views": json.dumps(list(VIEW_NAMES)),
             "features_unit": "ADC counts (deconvolved, pedestal subtracted)"}
    if hits is not None:
        path = directory / hit_file_name(particle, file_index, hits)
        meta = {**attrs, "units": "dep_x, dep_y, dep_z: cm; dep_q: deposited energy, MeV; Energy: GeV"}
        with EventWriter(path, format=hits, metadata=meta, n_events=n) as writer:
            for chunk in _iter_chunks(particle, n, rng, cfg):
                columns = deposit_columns(chunk["truth3d"])
                columns.update({k: chunk[k] for k in _SCALARS})
                writer.write(columns)
                if progress is not None:
                    progress(len(chunk["Energy"]))
        return path
    name2d, name3d = file_names(particle, file_index)
    paths = [directory / name2d] + ([directory / name3d] if truth3d else [])
    opts = _h5_options(compression)
    scalars = _SCALARS
    truths, energy, pdg = [], [], []
    with contextlib.ExitStack() as files:  # both renamed into place at the end, or neither
        tmps = [files.enter_context(atomic_file(p)) for p in paths]
        with h5py.File(tmps[0], "w") as f:
            f.attrs.update(attrs)
            feats = f.create_dataset("features", shape=(n, 2, cfg.n_wires, cfg.n_ticks), dtype=np.float16,
                                     chunks=(1, 2, cfg.n_wires, cfg.n_ticks), **opts)
            dsets = {k: f.create_dataset(k, shape=(n,), dtype=t) for k, t in scalars.items()}
            write_features = _feature_writer(feats, compression)
            start = 0
            for chunk in _iter_chunks(particle, n, rng, cfg):
                m = len(chunk["Energy"])
                write_features(start, chunk["features"])
                for k, ds in dsets.items():
                    ds[start:start + m] = chunk[k]
                truths.append(chunk["truth3d"])
                energy.append(chunk["Energy"])
                pdg.append(chunk["pdg"])
                start += m
                if progress is not None:
                    progress(m)
        if truth3d:
            counts = np.concatenate([t.counts for t in truths])
            st = SparseTensor(np.concatenate([t.coords for t in truths]), np.concatenate([t.values for t in truths]),
                              np.concatenate([[0], np.cumsum(counts)]), shape=cfg.truth_shape, region=cfg.region,
                              axes=("x", "y", "z"))
            with h5py.File(tmps[1], "w") as f:
                f.attrs.update(attrs)
                st.write_h5(f, "images3D", capacity=cfg.truth_capacity, compression="gzip")
                f.create_dataset("Energy", data=np.concatenate(energy))
                f.create_dataset("pdg", data=np.concatenate(pdg))
    return paths[0]


def _write_job(job, progress=None):
    """One file set of :func:`write_dataset` (module level: :func:`dlkit.datasets.write_files` pickles it)."""
    directory, particle, n, file_index, seed, cfg_dict, compression, truth3d, hits = job
    return write_file(directory, particle, n, seed, file_index, LArSimConfig.from_dict(cfg_dict), compression,
                      truth3d, progress, hits), n


def _plan(out_dir, particles, events_per_class, events_per_file):
    jobs = []
    for particle in particles:
        if particle not in PDG_IDS:
            raise ValueError(f"unknown particle {particle!r}; expected some of {PARTICLES}")
        for i, start in enumerate(range(0, events_per_class, events_per_file)):
            jobs.append((Path(out_dir) / particle, particle, min(events_per_file, events_per_class - start), i))
    return jobs


def write_dataset(out_dir, particles=DEFAULT_PARTICLES, events_per_class: int = DEFAULT_EVENTS_PER_CLASS,
                  events_per_file: int = 100, seed: int = 0, config: LArSimConfig | None = None,
                  compression: str | None = "gzip", truth3d: bool = True, progress: bool = True,
                  workers: int | None = None, hits: str | None = None) -> list[Path]:
    """Write ``<out_dir>/<particle>/<particle>_<i>.{2d,3d}.h5`` for each particle; returns the 2d paths.

    Each file is seeded from (seed, particle, file index), so the result does not depend on ``workers``
    (spawned processes each writing whole files; default: the available cores unless the dataset is tiny)
    or on the order files are made in. ``hits`` (``"root"``, ``"rntuple"``, ``"parquet"``, ``"hdf5"``): the
    same events' deposits as ``<particle>_<i>.root`` (``.parquet``, ``.h5``) instead (:func:`write_file`);
    returns those paths.
    """
    cfg = config or LArSimConfig()
    _check_compression(compression)
    _check_hits(hits)
    if events_per_class < 1 or events_per_file < 1:
        raise ValueError("events_per_class and events_per_file must be >= 1")
    cfg_dict = cfg.to_dict()
    jobs = [(directory, particle, n, i, seed, cfg_dict, compression, truth3d, hits)
            for directory, particle, n, i in _plan(out_dir, particles, events_per_class, events_per_file)]
    # a spawned worker costs ~1 s of imports: worth it from ~100 events on
    return write_files(_write_job, jobs, sum(j[2] for j in jobs), "lartpcdnn.simulate", workers=workers,
                       parallel_from=100, progress=progress)


def dataset_key(config: LArSimConfig, seed: int, particles, events_per_class: int, events_per_file: int,
                compression: str | None = "gzip", truth3d: bool = True, hits: str | None = None) -> str:
    """Hash naming a cached dataset: everything that changes its bytes (``hits``: its format, if hit files)."""
    record = {"config": config.to_dict(), "seed": int(seed), "particles": list(particles),
              "events_per_class": int(events_per_class), "events_per_file": int(events_per_file),
              "compression": compression, "truth3d": bool(truth3d), "format": FORMAT_VERSION}
    if hits is not None:  # image datasets keep the keys they had before hit files existed
        record.update(hits=hits, compression=None, truth3d=False)
    blob = json.dumps(record, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_dataset(path=None, events_per_class: int = DEFAULT_EVENTS_PER_CLASS, events_per_file: int = 100,
                    seed: int = 0, config: LArSimConfig | None = None, particles=DEFAULT_PARTICLES,
                    compression: str | None = "gzip", truth3d: bool = True, progress: bool = True,
                    workers: int | None = None, hits: str | None = None) -> Path:
    """Path of a complete simulated dataset, made if missing.

    Default location: ``$DLKIT_DATA/lartpcdnn/lariat-<key>`` or ``~/.cache/dlkit/lartpcdnn/...``, the key a
    hash of config, seed and sizes (:func:`dataset_key`); built and marked complete by
    :func:`dlkit.datasets.cached_dataset`, so a killed run never leaves a dataset that a later call would reuse.
    ``hits``: the same events' deposit files of this format (:func:`write_dataset`), cached apart, in
    ``lariat-hits-<format>-<key>``.
    """
    cfg = config or LArSimConfig()
    particles = tuple(particles)
    _check_hits(hits)
    key = dataset_key(cfg, seed, particles, events_per_class, events_per_file, compression, truth3d, hits)
    name = f"lariat-{key}" if hits is None else f"lariat-hits-{hits}-{key}"
    path = Path(path) if path is not None else data_root("lartpcdnn") / name

    def build(tmp):
        logger.info("simulating the default LArIAT-layout dataset (%d events x %d classes) into %s; "
                       "done once, then reused", events_per_class, len(particles), path)
        return write_dataset(tmp, particles, events_per_class, events_per_file, seed, cfg, compression, truth3d,
                             progress, workers, hits)

    meta = {"seed": int(seed), "particles": list(particles), "events_per_class": int(events_per_class),
            "events_per_file": int(events_per_file), "compression": compression, "truth3d": bool(truth3d),
            "format": FORMAT_VERSION, "config": cfg.to_dict()}
    if hits is not None:
        meta.update(hits=hits, compression=None, truth3d=False)
    return cached_dataset(path, key, build, meta)


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = LArSimConfig.cli_parser(
        "python -m lartpcdnn.simulate",
        "Simulate LArIAT-layout HDF5 files: <out>/<particle>/<particle>_<i>.2d.h5 (+ .3d.h5 truth).",
        "--set noise_adc=4,3")
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--events-per-class", type=int, default=DEFAULT_EVENTS_PER_CLASS,
                        help="events per particle (default %(default)s)")
    parser.add_argument("--events-per-file", type=int, default=100, help="events per file (default %(default)s)")
    parser.add_argument("--particles", nargs="+", default=list(DEFAULT_PARTICLES), choices=PARTICLES,
                        metavar="PARTICLE", help=f"particles to simulate, of {', '.join(PARTICLES)} "
                        f"(default: {' '.join(DEFAULT_PARTICLES)})")
    parser.add_argument("--all-particles", action="store_true", help="all eleven LArIAT particle types")
    parser.add_argument("--seed", type=int, default=0, help="event seed; each file derives its own from "
                        "(seed, particle, file index) (default %(default)s)")
    parser.add_argument("--emin", type=float, default=None, help="lowest kinetic energy [GeV] (default 0.1)")
    parser.add_argument("--emax", type=float, default=None, help="highest kinetic energy [GeV] (default 1.0)")
    parser.add_argument("--compression", choices=("none", "gzip", "gzip4", "lzf"), default="gzip",
                        help="HDF5 compression of features (default gzip level 1: ~4.3x smaller, see README)")
    parser.add_argument("--no-3d", action="store_true", help="do not write the .3d.h5 truth files")
    parser.add_argument("--hits", choices=FORMATS, default=None,
                        help="write the events' 3D deposits (dep_x, dep_y, dep_z [cm], dep_q [MeV]) in this format "
                        "instead of the HDF5 file sets: <particle>_<i>.root/.parquet/.h5")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = LArSimConfig.from_cli(parser, args, energy_min_gev=args.emin, energy_max_gev=args.emax)
    compression = None if args.compression == "none" else args.compression
    particles = PARTICLES if args.all_particles else tuple(args.particles)
    paths = write_dataset(args.out, particles, args.events_per_class, args.events_per_file, args.seed, cfg,
                          compression, truth3d=not args.no_3d, progress=not args.no_progress, workers=args.workers,
                          hits=args.hits)
    logger.info("wrote %d file sets under %s", len(paths), args.out)
    return EXIT_OK


if __name__ == "__main__":
    # Run the importable module, not a second copy named __main__, so spawned workers and pickles agree.
    from lartpcdnn.simulate import main as _main

    sys.exit(_main())
