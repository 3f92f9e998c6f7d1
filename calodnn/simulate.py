"""Fast parametric simulation of the LCD (CLIC) calorimeter dataset, written in its HDF5 layout.

Why: the real LCD files cannot be downloaded here, yet the experiment needs data with the same layout and
the same physics trends (e/gamma/pi0/pi separation, energy resolution, pi0 merging at high energy). Nothing is
transported: each event is a handful of parametrised showers (Gamma-function longitudinal profiles, core +
halo Gaussian transverse profiles integrated analytically over the cells) plus MIP tracks, then sampling
fluctuations, calibration non-uniformity, cell noise and a zero-suppression threshold. Every geometry and
physics parameter lives in :class:`CaloSimConfig`; ``calodnn/README.md`` ("Simulator") says what is left out.

Layout written by :func:`write_dataset`: ``<out>/<Particle>/<Particle>_<i>.h5`` with datasets ``ECAL``
(N, X, Y, L), ``HCAL`` (N, X, Y, L) float32 (calibrated deposited energy in GeV per cell), ``energy`` (N,)
float32 GeV, ``pdgID`` (N,) int32 and the scalar features of :func:`compute_features`. With ``hits``
(``"root"``, ``"rntuple"``, ``"parquet"``, ``"hdf5"``) the same events are written as hit lists instead,
``<out>/<Particle>/<Particle>_<i>.{root,parquet,h5}`` (:func:`hits_from_images`, :mod:`dlkit.jagged`).

>>> import numpy as np
>>> ev = simulate_events("Ele", 3, np.random.default_rng(1))
>>> ev["ECAL"].shape, ev["HCAL"].shape, ev["ECAL"].dtype.name
((3, 25, 25, 25), (3, 5, 5, 60), 'float32')
"""

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
from scipy.special import erf, gammainc, ndtri

from dlkit.datasets import atomic_file, cached_dataset, data_root, write_files
from dlkit.jagged import EXTENSIONS, FORMATS, EventWriter, Jagged
from dlkit.simconfig import SimConfig
from dlkit.simconfig import documented as _f
from dlkit.protocol import EXIT_OK

logger = logging.getLogger(__name__)

__all__ = [
    "CaloSimConfig",
    "PARTICLES",
    "FEATURE_NAMES",
    "PDG_IDS",
    "DEFAULT_EVENTS_PER_CLASS",
    "TEST_EVENTS_PER_CLASS",
    "TRUTH_KEYS",
    "simulate_events",
    "compute_features",
    "HIT_COLUMNS",
    "hits_from_images",
    "file_seed_sequence",
    "write_file",
    "write_dataset",
    "dataset_key",
    "default_dataset",
    "main",
]

#: Particle directory names of the LCD layout, in the canonical order.
PARTICLES = ("Ele", "Gamma", "Pi0", "ChPi")
#: |PDG id| per particle; the charged ones get a random sign per event.
PDG_IDS = {"Ele": 11, "Gamma": 22, "Pi0": 111, "ChPi": 211}
#: Events per class of the default dataset (4 x 5000) and of a ``--Test``-size one (4 x 1000).
DEFAULT_EVENTS_PER_CLASS = 5000
TEST_EVENTS_PER_CLASS = 1000
#: Bumped whenever the same config + seed would give different events (part of the cache key).
FORMAT_VERSION = 2  # 2: hadron showers in the ECAL (prompt EM part), dead material, per-section e/h
#: Per-event truth of :func:`simulate_events` (``truth=True``), energies in GeV at the EM scale (what calibrated
#: cells would hold with no sampling fluctuation, noise, threshold or lateral loss; the non-EM part of hadron
#: showers after its 1/(e/h), the dead material's as deposited): ``truth_ecal_deposit``, ``truth_dead`` (in
#: the dead material between ECAL and HCAL), ``truth_hcal_deposit``, ``truth_leak`` (past the HCAL's back),
#: and for charged pions (NaN otherwise) ``truth_interaction_lambda`` (first interaction depth [lambda_int]
#: from the ECAL face), ``truth_f_em`` and ``truth_f_prompt`` (the EM fraction of the shower and its first-interaction part).
TRUTH_KEYS = ("truth_ecal_deposit", "truth_dead", "truth_hcal_deposit", "truth_leak", "truth_interaction_lambda",
              "truth_f_em", "truth_f_prompt")
#: Moments 1..N_MOMENTS of the energy-weighted x, y and layer distributions.
N_MOMENTS = 6


@dataclasses.dataclass(frozen=True)
class CaloSimConfig(SimConfig):
    """Every geometry and physics parameter of the simulator, in one place (defaults: physics.md).

    Coordinates: x, y transverse (mm, 0 on the grid centre), depth along the particle direction from the
    ECAL front face. Stored cell values are calibrated energies in GeV (the sampling fraction is divided
    out), so the ECAL+HCAL sum of an electron is its energy minus leakage and threshold losses; with
    ``raw_visible_energy`` they are the visible energies instead (deposit x the layer's sampling fraction).
    Frozen and hashable: the geometry derived from it is cached, and its JSON goes into every file.
    """

    # --- geometry -------------------------------------------------------------------------------------
    ecal_shape: tuple = _f((25, 25, 25), "ECAL cells (x, y, layers).")
    hcal_shape: tuple = _f((5, 5, 60), "HCAL cells (x, y, layers).")
    ecal_cell_mm: float = _f(5.1, "ECAL cell pitch [mm] (silicon pads).")
    hcal_cell_mm: float = _f(30.6, "HCAL cell pitch [mm] (scintillator tiles, 6x the ECAL's).")
    ecal_thin_layers: int = _f(17, "Number of front ECAL layers with thin absorber; the rest are thick.")
    ecal_thin_layer_x0: float = _f(0.686, "Thin ECAL layer thickness [X0] (2.4 mm W, X0(W)=3.5 mm).")
    ecal_thick_layer_x0: float = _f(1.371, "Thick ECAL layer thickness [X0] (4.8 mm W).")
    ecal_lambda_total: float = _f(0.8, "Total ECAL depth [lambda_int] (79.2 mm of W / lambda_int(W) = 99 mm); "
                                  "shared over the layers like X0 (one material), so a charged pion's first "
                                  "interaction is drawn with each layer's own lambda_int: 1 - e^-0.8 = 55 % of "
                                  "them interact in the ECAL.")
    ecal_depth_mm: float = _f(200.0, "Total ECAL depth [mm] (absorber + sensors + gaps); sets the "
                              "effective lambda_int in mm and the lateral drift of inclined tracks.")
    dead_x0: float = _f(1.4, "Dead material between the ECAL and the HCAL [X0] (ECAL back plate, services, "
                        "cryostat-like support: ~25 mm steel-equivalent, X0(Fe) = 17.6 mm). No cell sees the "
                        "energy deposited there, so a plain sum cannot recover it; its share depends on where "
                        "the shower is when it crosses the gap.")
    dead_lambda: float = _f(0.15, "Dead material between the ECAL and the HCAL [lambda_int] (25 mm / "
                            "lambda_int(Fe) = 168 mm); pions may interact in it.")
    dead_mm: float = _f(60.0, "Depth of the ECAL-HCAL gap [mm] (dead material + air): the lateral drift of "
                        "inclined tracks across it.")
    hcal_layer_x0: float = _f(1.1, "HCAL layer thickness [X0] (19 mm steel + scintillator).")
    hcal_lambda_total: float = _f(7.5, "Total HCAL depth [lambda_int], equal per layer.")
    hcal_depth_mm: float = _f(1590.0, "Total HCAL depth [mm] (60 x 26.5 mm).")
    ecal_moliere_mm: float = _f(9.3, "Moliere radius of the ECAL [mm] (W: 9.3 mm ~ 1.8 cells).")
    hcal_moliere_mm: float = _f(24.0, "Effective Moliere radius of the steel/scintillator HCAL [mm].")
    calo_distance_mm: float = _f(1500.0, "Distance from the pi0 decay (beam line) to the ECAL face [mm].")
    # --- beam ------------------------------------------------------------------------------------------
    energy_min_gev: float = _f(10.0, "Lowest true energy [GeV] (flat spectrum).")
    energy_max_gev: float = _f(510.0, "Highest true energy [GeV] (flat spectrum).")
    impact_spread_cells: float = _f(1.0, "Impact point uniform in a square of this side [ECAL cells] "
                                    "around the grid centre (1.0 = within the central cell).")
    incidence_sigma_rad: float = _f(0.005, "Gaussian spread of the incidence angle per axis [rad].")
    pi0_mass_gev: float = _f(0.1349768, "pi0 mass [GeV].")
    # --- EM showers ------------------------------------------------------------------------------------
    em_critical_energy_gev: float = _f(0.008, "Critical energy E_c of the ECAL [GeV] (W: ~8 MeV).")
    em_b: float = _f(0.5, "Gamma-profile slope b [1/X0]; a = 1 + b t_max.")
    em_c_electron: float = _f(-0.5, "t_max = ln(E/E_c) + C: C for electrons (start at the face).")
    em_c_photon: float = _f(0.5, "t_max = ln(E/E_c) + C: C for photons (from the conversion point).")
    em_tmax_fluct: float = _f(0.1, "Event-by-event Gaussian spread of ln t_max (EM).")
    em_b_fluct: float = _f(0.05, "Event-by-event Gaussian spread of ln b (EM).")
    photon_conversion_x0: float = _f(9.0 / 7.0, "Mean photon conversion depth [X0] (exponential).")
    em_track_x0: float = _f(1.0, "Length [X0] over which the primary e (or the converted e+e- pair) is "
                            "drawn as MIP deposits before its shower takes over.")
    em_core_sigma_rm: float = _f(0.12, "EM core Gaussian sigma at the shower start [R_M].")
    em_core_growth_rm: float = _f(0.12, "EM core sigma growth per unit tau = depth / t_max [R_M].")
    em_halo_sigma_rm: float = _f(0.5, "EM halo Gaussian sigma at the shower start [R_M].")
    em_halo_growth_rm: float = _f(0.15, "EM halo sigma growth per unit tau [R_M].")
    em_core_fraction: float = _f(0.85, "EM core energy fraction at the shower start.")
    em_core_fraction_slope: float = _f(0.1, "Decrease of the EM core fraction per unit tau.")
    tau_cap: float = _f(3.0, "tau (depth / t_max) beyond which showers stop broadening.")
    # --- charged pions ---------------------------------------------------------------------------------
    pion_interaction_lambda: float = _f(1.0, "Mean free path of the charged pion to its first hadronic "
                                        "interaction [lambda_int] (1 = the nuclear interaction length; the "
                                        "depth is drawn through the layers, each with its own lambda_int).")
    had_tmax_slope: float = _f(0.2, "Hadronic t_max = slope ln(E/GeV) + offset [lambda_int] from the "
                               "interaction point, E the energy left after the first interaction's pi0s.")
    had_tmax_offset: float = _f(0.7, "Hadronic t_max offset [lambda_int].")
    had_b: float = _f(0.9, "Hadronic Gamma-profile slope b [1/lambda_int].")
    had_tmax_fluct: float = _f(0.2, "Event-by-event Gaussian spread of ln t_max (hadronic).")
    had_b_fluct: float = _f(0.1, "Event-by-event Gaussian spread of ln b (hadronic).")
    had_em_tmax_scale: float = _f(0.6, "t_max of the later-generation EM (pi0) part / t_max of the hadronic "
                                  "part [lambda_int units]: pi0s come from the early generations.")
    had_k: float = _f(0.82, "Mean EM fraction f_em = 1 - (E/E0)^(k-1) of the whole shower (Groom; E the "
                      "pion energy).")
    had_e0_gev: float = _f(1.0, "E0 of the f_em formula [GeV].")
    had_prompt_em_mean: float = _f(0.3, "Mean fraction of the energy carried by the pi0s of the first "
                                   "interaction (f_1, part of f_em). They shower in X0 units from the "
                                   "interaction point, so a pion interacting early in the 23-X0 ECAL leaves "
                                   "them there: the electron-like part of a hadron shower (Bock et al.'s X0 "
                                   "component).")
    had_prompt_em_concentration: float = _f(1.5, "f_1 ~ Beta(m nu, (1-m) nu): nu. Small: a long tail towards "
                                            "f_1 = 1 (leading-pi0 and charge-exchange-like events, the pions "
                                            "that look like electrons).")
    had_prompt_photons: float = _f(4.0, "The first interaction's pi0 energy is shared by this many photons "
                                   "(sets their shower t_max = ln(E_1 / n / E_c) + C_photon).")
    had_fem_concentration: float = _f(12.0, "The EM fraction of the rest of the cascade f_r ~ Beta(m nu, "
                                      "(1-m) nu), its mean m such that f_em = f_1 + (1 - f_1) f_r has the "
                                      "mean of the formula: nu (smaller = larger event-by-event "
                                      "fluctuations).")
    ecal_e_over_h: float = _f(1.3, "e/h of the ECAL: the non-EM part of a hadron shower deposited there is "
                              "seen with response 1/(e/h) (non-compensating; calibrated cells are at the EM "
                              "scale).")
    hcal_e_over_h: float = _f(1.3, "e/h of the HCAL (steel/scintillator).")
    had_response_fluct: float = _f(0.1, "Relative Gaussian spread of the non-EM visible energy "
                                   "(nuclear binding losses), per event.")
    had_core_sigma_lambda: float = _f(0.08, "Hadronic core sigma at the interaction [lambda_int].")
    had_core_growth_lambda: float = _f(0.04, "Hadronic core sigma growth per unit tau [lambda_int].")
    had_halo_sigma_lambda: float = _f(0.3, "Hadronic halo sigma at the interaction [lambda_int].")
    had_halo_growth_lambda: float = _f(0.1, "Hadronic halo sigma growth per unit tau [lambda_int].")
    had_core_fraction: float = _f(0.6, "Energy fraction of the hadronic core.")
    # --- MIP -------------------------------------------------------------------------------------------
    ecal_mip_gev_per_x0: float = _f(0.0115, "Calibrated MIP deposit (most probable) per X0 of ECAL "
                                    "[GeV] (~8 MeV per thin layer: 5.3 MeV in 2.4 mm W / e:mip ~0.7).")
    hcal_mip_gev: float = _f(0.025, "Calibrated MIP deposit (most probable) per HCAL layer [GeV].")
    mip_landau_width: float = _f(0.1, "Landau (Moyal) width of MIP deposits, relative to the MPV.")
    # --- detector response -----------------------------------------------------------------------------
    ecal_spot_gev: float = _f(0.03, "ECAL sampling: variance per cell = spot * E (compound-Poisson "
                              "'spots'); stochastic term ~ sqrt(spot) = 17 %/sqrt(E) [GeV].")
    hcal_spot_gev: float = _f(0.15, "HCAL sampling spot energy [GeV] (sqrt = 39 %/sqrt(E)).")
    ecal_noise_gev: float = _f(0.001, "ECAL Gaussian cell noise sigma [GeV] (~1/8 MIP).")
    hcal_noise_gev: float = _f(0.003, "HCAL Gaussian cell noise sigma [GeV].")
    noise_threshold_sigma: float = _f(3.0, "Zero suppression: cells below this many noise sigmas -> 0.")
    calib_spread: float = _f(0.015, "Per-cell calibration non-uniformity (relative Gaussian sigma).")
    detector_seed: int = _f(20160, "Seed of the fixed calibration maps, independent of the event seed.")
    # --- raw (visible) energy: off by default (calibrated cells) ------------------------------------------
    raw_visible_energy: bool = _f(False, "Store the *visible* energy (what the sensors see, GeV) instead of "
                                  "the calibrated deposit: each layer's deposit times its sampling fraction "
                                  "(thin/thick ECAL, HCAL), noise and threshold in visible units. A plain sum "
                                  "of cells then mis-weights the thick layers and the HCAL, as real raw "
                                  "data do; a per-layer calibration undoes it.")
    ecal_sampling_fraction_thin: float = _f(0.0353, "Visible fraction of the deposit in a thin ECAL layer "
                                            "(0.5 mm Si behind 2.4 mm W: MIP dE/dx ratio 0.19/5.5 MeV); used "
                                            "with raw_visible_energy.")
    ecal_sampling_fraction_thick: float = _f(0.0180, "Visible fraction in a thick ECAL layer (0.5 mm Si "
                                             "behind 4.8 mm W); used with raw_visible_energy.")
    hcal_sampling_fraction: float = _f(0.027, "Visible fraction in an HCAL layer (3 mm scintillator behind "
                                       "19 mm steel); used with raw_visible_energy.")
    # --- numerics --------------------------------------------------------------------------------------
    chunk_events: int = _f(100, "Events simulated per vectorised batch. It fixes how the random stream is "
                           "consumed, so changing it changes the events (not their distributions).")

    def __post_init__(self):
        for name in ("ecal_shape", "hcal_shape"):
            shape = getattr(self, name)
            if isinstance(shape, list):
                object.__setattr__(self, name, tuple(shape))
                shape = getattr(self, name)
            if len(shape) != 3 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in shape):
                raise ValueError(f"{name} must be three positive ints, got {shape!r}")
            object.__setattr__(self, name, tuple(int(s) for s in shape))
        if not 0 < self.energy_min_gev <= self.energy_max_gev:
            raise ValueError("need 0 < energy_min_gev <= energy_max_gev")
        if self.chunk_events < 1 or self.ecal_thin_layers < 0:
            raise ValueError("chunk_events must be >= 1 and ecal_thin_layers >= 0")
        positive = ("ecal_cell_mm", "hcal_cell_mm", "ecal_thin_layer_x0", "ecal_thick_layer_x0",
                    "ecal_lambda_total", "ecal_depth_mm", "hcal_layer_x0", "hcal_lambda_total",
                    "hcal_depth_mm", "ecal_moliere_mm", "hcal_moliere_mm", "em_critical_energy_gev", "em_b",
                    "photon_conversion_x0", "pion_interaction_lambda", "had_b", "ecal_e_over_h",
                    "hcal_e_over_h", "had_prompt_em_concentration", "had_prompt_photons",
                    "had_fem_concentration", "em_core_sigma_rm", "em_halo_sigma_rm",
                    "had_core_sigma_lambda", "had_halo_sigma_lambda", "calo_distance_mm")
        positive += ("ecal_sampling_fraction_thin", "ecal_sampling_fraction_thick", "hcal_sampling_fraction")
        bad = [p for p in positive if not getattr(self, p) > 0]
        bad += [p for p in ("dead_x0", "dead_lambda", "dead_mm") if not getattr(self, p) >= 0]
        if not 0 < self.had_prompt_em_mean < 1:
            bad.append("had_prompt_em_mean (in (0, 1))")
        if bad:
            raise ValueError(f"these must be > 0 (dead_*: >= 0): {bad}")


# ---------------------------------------------------------------------------------------------------------
# Geometry derived from the config (cached: the config is frozen and hashable)
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class _Geometry:
    n_ecal: int  # ECAL layers; the combined layer axis is ECAL layers, the dead layer, then HCAL layers
    dead: int  # index of the dead-material layer on the combined axis (== n_ecal); never rendered
    hcal: slice  # the HCAL layers on the combined axis
    x0_edges: np.ndarray  # (Ltot+1,) depth of layer boundaries [X0]
    lam_edges: np.ndarray  # (Ltot+1,) depth of layer boundaries [lambda_int]
    x0_centers: np.ndarray  # (Ltot,)
    lam_centers: np.ndarray  # (Ltot,)
    depth_mm: np.ndarray  # (Ltot,) depth of layer centres [mm]
    moliere_mm: np.ndarray  # (Ltot,) R_M of the section a layer belongs to
    lambda_mm: np.ndarray  # (Ltot,) effective lambda_int [mm] of the section
    mip_gev: np.ndarray  # (Ltot,) most probable MIP deposit per layer [GeV]
    ecal_edges_mm: np.ndarray  # (X+1,) ECAL cell boundaries, x and y share the pitch
    ecal_edges_y_mm: np.ndarray
    hcal_edges_mm: np.ndarray
    hcal_edges_y_mm: np.ndarray
    ecal_calib: np.ndarray  # (X, Y, L) float32 per-cell calibration factors
    hcal_calib: np.ndarray
    sampling_fraction: np.ndarray  # (Ltot,) visible / deposited energy per layer (raw_visible_energy; dead: 0)
    inv_e_over_h: np.ndarray  # (Ltot,) response to the non-EM part of hadron showers, 1/(e/h) of the section


def _cell_edges(n: int, pitch: float) -> np.ndarray:
    return (np.arange(n + 1, dtype=np.float64) - n / 2.0) * pitch


@functools.lru_cache(maxsize=8)
def _geometry(cfg: CaloSimConfig) -> _Geometry:
    ex, ey, el = cfg.ecal_shape
    hx, hy, hl = cfg.hcal_shape
    n_thin = min(cfg.ecal_thin_layers, el)
    ecal_x0 = np.array([cfg.ecal_thin_layer_x0] * n_thin + [cfg.ecal_thick_layer_x0] * (el - n_thin))
    ecal_lam = ecal_x0 * (cfg.ecal_lambda_total / ecal_x0.sum())
    ecal_mm = ecal_x0 * (cfg.ecal_depth_mm / ecal_x0.sum())
    hcal_x0 = np.full(hl, cfg.hcal_layer_x0)
    hcal_lam = np.full(hl, cfg.hcal_lambda_total / hl)
    hcal_mm = np.full(hl, cfg.hcal_depth_mm / hl)

    def edges(th):
        return np.concatenate([[0.0], np.cumsum(th)])

    # One dead layer between the sections: showers develop through it, no cell is rendered for it.
    x0_edges = edges(np.concatenate([ecal_x0, [cfg.dead_x0], hcal_x0]))
    lam_edges = edges(np.concatenate([ecal_lam, [cfg.dead_lambda], hcal_lam]))
    mm_edges = edges(np.concatenate([ecal_mm, [cfg.dead_mm], hcal_mm]))
    sec = np.r_[np.zeros(el, bool), True, np.ones(hl, bool)]
    # Calibration maps: a fixed property of "the detector", so seeded apart from the events.
    crng = np.random.default_rng(np.random.SeedSequence(cfg.detector_seed))
    ecal_calib = (1.0 + cfg.calib_spread * crng.standard_normal(cfg.ecal_shape)).astype(np.float32)
    hcal_calib = (1.0 + cfg.calib_spread * crng.standard_normal(cfg.hcal_shape)).astype(np.float32)
    dead_mip = cfg.dead_x0 * cfg.hcal_mip_gev / cfg.hcal_layer_x0  # MIP loss in steel-like dead material
    geo = _Geometry(
        n_ecal=el,
        dead=el,
        hcal=slice(el + 1, el + 1 + hl),
        x0_edges=x0_edges,
        lam_edges=lam_edges,
        x0_centers=0.5 * (x0_edges[1:] + x0_edges[:-1]),
        lam_centers=0.5 * (lam_edges[1:] + lam_edges[:-1]),
        depth_mm=0.5 * (mm_edges[1:] + mm_edges[:-1]),
        moliere_mm=np.where(sec, cfg.hcal_moliere_mm, cfg.ecal_moliere_mm),
        lambda_mm=np.where(sec, cfg.hcal_depth_mm / cfg.hcal_lambda_total,
                           cfg.ecal_depth_mm / cfg.ecal_lambda_total),
        mip_gev=np.concatenate([ecal_x0 * cfg.ecal_mip_gev_per_x0, [dead_mip], np.full(hl, cfg.hcal_mip_gev)]),
        ecal_edges_mm=_cell_edges(ex, cfg.ecal_cell_mm),
        ecal_edges_y_mm=_cell_edges(ey, cfg.ecal_cell_mm),
        hcal_edges_mm=_cell_edges(hx, cfg.hcal_cell_mm),
        hcal_edges_y_mm=_cell_edges(hy, cfg.hcal_cell_mm),
        ecal_calib=ecal_calib,
        hcal_calib=hcal_calib,
        sampling_fraction=np.concatenate([
            np.where(np.arange(el) < n_thin, cfg.ecal_sampling_fraction_thin, cfg.ecal_sampling_fraction_thick),
            [0.0], np.full(hl, cfg.hcal_sampling_fraction)]),
        inv_e_over_h=np.concatenate([np.full(el, 1.0 / cfg.ecal_e_over_h), [1.0],
                                     np.full(hl, 1.0 / cfg.hcal_e_over_h)]),
    )
    for f in dataclasses.fields(geo):
        value = getattr(geo, f.name)
        if isinstance(value, np.ndarray):
            value.setflags(write=False)  # cached and shared: nobody may modify it
    return geo


# ---------------------------------------------------------------------------------------------------------
# Showers: each returns Gaussian "terms" (energy per layer, centre, sigma) and MIP "tracks", all over the
# combined ECAL+HCAL layer axis, shape (n, Ltot)
# ---------------------------------------------------------------------------------------------------------


class _Deposits:
    """Collects transverse Gaussian terms and point-like track deposits of a batch of events, and the energy
    that leaves through the back (truth)."""

    def __init__(self, n):
        self.terms = []  # (energy, cx, cy, sigma_mm), each (n, Ltot)
        self.tracks = []  # (energy, cx, cy), each (n, Ltot)
        self.leak = np.zeros(n)  # energy past the last layer [GeV, calibrated]
        self.truth = {}  # per-event truth of the shower models (charged pions)

    def add_term(self, energy, cx, cy, sigma):
        self.terms.append((energy, cx, cy, sigma))

    def add_track(self, energy, cx, cy):
        self.tracks.append((energy, cx, cy))

    def layer_energy(self):
        """(n, Ltot) energy per layer of all terms and tracks, before any detector response."""
        total = sum(t[0] for t in self.terms) if self.terms else 0.0
        return total + (sum(t[0] for t in self.tracks) if self.tracks else 0.0)


def _gamma_profile(energy, a, b, t0, edges):
    """Energy per layer of E b (b t)^(a-1) e^(-bt) / Gamma(a) started at t0: exact layer integrals."""
    x = np.clip(edges[None, :] - t0[:, None], 0.0, None) * b[:, None]
    cdf = gammainc(a[:, None], x)
    return energy[:, None] * np.diff(cdf, axis=1)


def _overlap(edges, start, stop):
    """Fraction of each layer (edges) covered by [start, stop) per event: (n, Ltot)."""
    lo = np.maximum(edges[None, :-1], start[:, None])
    hi = np.minimum(edges[None, 1:], stop[:, None])
    width = np.diff(edges)
    return np.clip(hi - lo, 0.0, None) / np.where(width > 0, width, 1.0)[None, :]  # a 0-thick dead layer: 0


def _landau(rng, shape, width):
    """Landau-like factor (Moyal: -ln z^2, z normal) with its most probable value at 1."""
    z = rng.standard_normal(shape)
    return np.clip(1.0 + width * -np.log(z * z + 1e-300), 0.0, None)


def _axis(x, slope, geo):
    """Transverse position (n, Ltot) of a straight line crossing the face at x with slope dx/dz."""
    return x[:, None] + slope[:, None] * geo.depth_mm[None, :]


def _em_shower(dep, energy, t0, c, multiplicity, x, y, sx, sy, rng, cfg, geo, tmax_energy=None):
    """An e/gamma shower starting at depth t0 [X0], preceded by `multiplicity` MIP tracks.

    ``tmax_energy``: the energy that sets t_max when the shower is several photons' (a hadron shower's pi0s).
    """
    n = energy.shape[0]
    track = multiplicity * _overlap(geo.x0_edges, t0, t0 + cfg.em_track_x0) * geo.mip_gev[None, :]
    shower_e = np.clip(energy - track.sum(axis=1), 0.0, None)
    track = track * _landau(rng, track.shape, cfg.mip_landau_width)
    # Guard against t_max <= 0 for sub-critical photons (soft pi0 photons): numerics, not physics.
    e_t = energy if tmax_energy is None else tmax_energy
    tmax = np.maximum(np.log(np.maximum(e_t, 1e-6) / cfg.em_critical_energy_gev) + c, 0.1)
    tmax = tmax * np.exp(cfg.em_tmax_fluct * rng.standard_normal(n))
    b = cfg.em_b * np.exp(cfg.em_b_fluct * rng.standard_normal(n))
    w = _gamma_profile(shower_e, 1.0 + b * tmax, b, t0, geo.x0_edges)
    dep.leak += shower_e - w.sum(axis=1)
    tau = np.clip((geo.x0_centers[None, :] - t0[:, None]) / tmax[:, None], 0.0, cfg.tau_cap)
    p_core = np.clip(cfg.em_core_fraction - cfg.em_core_fraction_slope * tau, 0.0, 1.0)
    rm = geo.moliere_mm[None, :]
    cx, cy = _axis(x, sx, geo), _axis(y, sy, geo)
    dep.add_term(w * p_core, cx, cy, (cfg.em_core_sigma_rm + cfg.em_core_growth_rm * tau) * rm)
    dep.add_term(w * (1.0 - p_core), cx, cy, (cfg.em_halo_sigma_rm + cfg.em_halo_growth_rm * tau) * rm)
    dep.add_track(track, cx, cy)


def _interaction_depth(n, rng, cfg, geo):
    """First hadronic interaction [lambda_int from the ECAL face], drawn layer by layer.

    Each layer (ECAL, dead material, HCAL) is crossed with probability e^(-its lambda_int / path); the
    interaction point within the layer that stops the pion is exponential there too. Equivalent to one
    exponential in cumulative lambda_int, written per layer so that each layer's own lambda_int enters.
    Past the last layer (punch-through) the depth is beyond the HCAL and no shower is seen.
    """
    lam = np.diff(geo.lam_edges) / cfg.pion_interaction_lambda
    survive = np.exp(-lam)
    u = rng.random(n)
    # P(reach layer j) = prod_{i<j} survive_i; the pion stops in the first layer j with u > P(reach j+1).
    reach = np.concatenate([[1.0], np.cumprod(survive)])
    layer = np.searchsorted(-reach[1:], -u, side="left")  # reach is decreasing
    inside = layer < lam.size
    j = np.minimum(layer, lam.size - 1)
    # Within the layer: exponential truncated to it, by inverting u against the layer's own survival.
    frac = np.where(inside, np.log(np.clip(reach[j] / np.maximum(u, 1e-300), 1.0, None)) / np.maximum(lam[j], 1e-12),
                    0.0)
    depth = geo.lam_edges[j] + np.clip(frac, 0.0, 1.0) * np.diff(geo.lam_edges)[j]
    return np.where(inside, depth, geo.lam_edges[-1] + rng.exponential(cfg.pion_interaction_lambda, n))


def _beta_around(rng, mean, nu):
    mean = np.clip(mean, 1e-3, 1.0 - 1e-3)
    return rng.beta(mean * nu, (1.0 - mean) * nu)


def _hadron_shower(dep, energy, x, y, sx, sy, rng, cfg, geo):
    """A charged pion: MIP track to its first interaction, then a non-compensating shower in three parts.

    - prompt EM (fraction f_1): the pi0s of the first interaction, photon showers in X0 units from the
      interaction point; in the tungsten ECAL (23 X0 but 0.8 lambda_int) they stay where they start;
    - later EM (f_em - f_1) and non-EM (1 - f_em): Gamma profiles in lambda_int from the interaction point,
      the EM one earlier; the non-EM part is seen with 1/(e/h) of the section it deposits in.
    f_em = f_1 + (1 - f_1) f_r fluctuates per event (both Beta) with the mean 1 - (E/E0)^(k-1).
    What reaches the dead layer or passes the last layer is lost.
    """
    n = energy.shape[0]
    t_int = _interaction_depth(n, rng, cfg, geo)
    x_int = np.interp(t_int, geo.lam_edges, geo.x0_edges)  # the same point in X0
    track = _overlap(geo.lam_edges, np.zeros(n), t_int) * geo.mip_gev[None, :]
    shower_e = np.clip(energy - track.sum(axis=1), 0.0, None)
    track = track * _landau(rng, track.shape, cfg.mip_landau_width)
    mean_fem = np.clip(1.0 - (np.maximum(energy, 1e-3) / cfg.had_e0_gev) ** (cfg.had_k - 1.0), 0.02, 0.98)
    m1 = np.minimum(cfg.had_prompt_em_mean, 0.9 * mean_fem)
    f1 = _beta_around(rng, m1, cfg.had_prompt_em_concentration)
    f_rest = _beta_around(rng, (mean_fem - m1) / (1.0 - m1), cfg.had_fem_concentration)
    f_em = f1 + (1.0 - f1) * f_rest
    response = np.clip(1.0 + cfg.had_response_fluct * rng.standard_normal(n), 0.05, None)
    e_prompt = f1 * shower_e
    e_late = (f_em - f1) * shower_e
    e_had = (1.0 - f_em) * shower_e * response  # the deposit; its visible share is set per section below
    # The cascade after the first interaction carries what its pi0s did not take: its depth scales with that.
    tmax = cfg.had_tmax_slope * np.log(np.maximum((1.0 - f1) * shower_e, 1.0)) + cfg.had_tmax_offset
    tmax = tmax * np.exp(cfg.had_tmax_fluct * rng.standard_normal(n))
    b = cfg.had_b * np.exp(cfg.had_b_fluct * rng.standard_normal(n))
    tmax_em = cfg.had_em_tmax_scale * tmax
    w_had = _gamma_profile(e_had, 1.0 + b * tmax, b, t_int, geo.lam_edges)
    w_em = _gamma_profile(e_late, 1.0 + b * tmax_em, b, t_int, geo.lam_edges)
    dep.leak += e_had - w_had.sum(axis=1) + e_late - w_em.sum(axis=1)
    w_had = w_had * geo.inv_e_over_h[None, :]
    depth = geo.lam_centers[None, :] - t_int[:, None]
    cx, cy = _axis(x, sx, geo), _axis(y, sy, geo)
    # Prompt EM part: the photons of the first interaction, an EM shower from the interaction point.
    _em_shower(dep, e_prompt, x_int, cfg.em_c_photon, 0, x, y, sx, sy, rng, cfg, geo,
               tmax_energy=e_prompt / cfg.had_prompt_photons)
    # Later EM part: the e/gamma transverse shape of the section.
    tau = np.clip(depth / tmax_em[:, None], 0.0, cfg.tau_cap)
    p_core = np.clip(cfg.em_core_fraction - cfg.em_core_fraction_slope * tau, 0.0, 1.0)
    rm = geo.moliere_mm[None, :]
    dep.add_term(w_em * p_core, cx, cy, (cfg.em_core_sigma_rm + cfg.em_core_growth_rm * tau) * rm)
    dep.add_term(w_em * (1.0 - p_core), cx, cy, (cfg.em_halo_sigma_rm + cfg.em_halo_growth_rm * tau) * rm)
    # Non-EM part: broader, in units of the section's lambda_int.
    tau = np.clip(depth / tmax[:, None], 0.0, cfg.tau_cap)
    lam = geo.lambda_mm[None, :]
    pc = cfg.had_core_fraction
    core = (cfg.had_core_sigma_lambda + cfg.had_core_growth_lambda * tau) * lam
    halo = (cfg.had_halo_sigma_lambda + cfg.had_halo_growth_lambda * tau) * lam
    dep.add_term(w_had * pc, cx, cy, core)
    dep.add_term(w_had * (1 - pc), cx, cy, halo)
    dep.add_track(track, cx, cy)
    dep.truth.update(interaction_lambda=t_int, f_em=f_em, f_prompt=f1)


def _pi0_photons(energy, rng, cfg):
    """pi0 -> gamma gamma, isotropic in the pi0 frame: photon energies and lab angles to the pi0 axis."""
    n = energy.shape[0]
    m = cfg.pi0_mass_gev
    beta = np.sqrt(np.clip(1.0 - (m / energy) ** 2, 0.0, 1.0))
    z = 0.5 * (1.0 + beta * rng.uniform(-1.0, 1.0, n))  # flat in cos(theta*)
    e1, e2 = z * energy, (1.0 - z) * energy
    cos_open = np.clip(1.0 - m * m / (2.0 * np.maximum(e1 * e2, 1e-300)), -1.0, 1.0)
    opening = np.arccos(cos_open)
    # Transverse momentum balance: tan(theta1) = E2 sin(theta) / (E1 + E2 cos(theta)).
    th1 = np.arctan2(e2 * np.sin(opening), e1 + e2 * np.cos(opening))
    th2 = opening - th1
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    return e1, e2, th1, th2, phi, opening


def _cell_fractions(edges, center, sigma):
    """Fraction of a 1-D Gaussian in each cell: erf differences, (n, L, X) float32."""
    z = (edges[None, None, :] - center[:, :, None]) / (math.sqrt(2.0) * sigma[:, :, None])
    c = erf(z)
    return (0.5 * (c[:, :, 1:] - c[:, :, :-1])).astype(np.float32)


def _render(dep, layers, edges_x, edges_y, shape, n):
    """Noise-free energy image (n, X, Y, L) of the deposits that fall on the given layer slice.

    Separable Gaussians make each term an outer product of per-axis cell fractions; summed over terms with
    one batched matmul per (event, layer), then put into the (x, y, layer) order of the files.
    """
    nx, ny, nl = shape
    ax = np.empty((n, nl, nx, len(dep.terms)), np.float32)
    by = np.empty((n, nl, len(dep.terms), ny), np.float32)
    for k, (w, cx, cy, sig) in enumerate(dep.terms):
        ax[..., k] = _cell_fractions(edges_x, cx[:, layers], sig[:, layers]) * w[:, layers, None]
        by[:, :, k, :] = _cell_fractions(edges_y, cy[:, layers], sig[:, layers])
    img = np.ascontiguousarray(np.matmul(ax, by).transpose(0, 2, 3, 1))
    flat_idx, values = [], []
    for w, cx, cy in dep.tracks:
        w, cx, cy = w[:, layers], cx[:, layers], cy[:, layers]
        ix = np.searchsorted(edges_x, cx) - 1
        iy = np.searchsorted(edges_y, cy) - 1
        ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (w > 0)
        ev, lay = np.nonzero(ok)
        flat_idx.append(((ev * nx + ix[ok]) * ny + iy[ok]) * nl + lay)
        values.append(w[ok])
    flat_idx = np.concatenate(flat_idx) if flat_idx else np.zeros(0, np.int64)
    values = np.concatenate(values) if values else np.zeros(0)
    flat_idx, inverse = np.unique(flat_idx, return_inverse=True)  # two tracks may share a cell
    values = np.bincount(inverse, weights=values, minlength=flat_idx.size).astype(np.float32)
    return img, (flat_idx, values)


def _respond(shower, tracks, calib, spot, noise, threshold, rng):
    """Detector response, in place on `shower` (n, X, Y, L): sampling, calibration, noise, zero suppression.

    Sampling fluctuations: per cell a lognormal factor with mean 1 and variance spot/E, i.e. the first two
    moments of a compound Poisson of "spots" of energy `spot`, positive and skewed like it in cells with
    little energy (where a Gaussian would fake hits through the threshold). MIP track deposits (`tracks`:
    flat indices, energies) carry their own Landau fluctuation and are added after it.

    Speed: only cells with signal above 1e-3 noise sigmas (~20 % of the ECAL) are treated one by one; in
    the others the signal is negligible, and the pure-noise cells that pass the threshold are drawn
    directly: a binomial count, uniform positions, values from the Gaussian tail above the threshold. That
    is the same distribution as noise in every cell, for a fraction of the random numbers.
    """
    flat = shower.reshape(-1)
    cells = int(np.prod(shower.shape[1:]))
    t_idx, t_val = tracks
    p_tail = 0.5 * math.erfc(threshold / (math.sqrt(2.0) * noise)) if noise > 0 else 0.0
    sparse = p_tail < 0.01
    if sparse:
        mask = flat > np.float32(1e-3 * noise)
        mask[t_idx] = True
        idx = np.flatnonzero(mask)
    else:  # a low threshold: noise everywhere
        idx = np.arange(flat.size)
    e = flat[idx]
    var = np.maximum(e, np.float32(1e-30))
    if np.ndim(spot):  # one spot per layer (the last axis)
        np.divide(np.asarray(spot, np.float32)[idx % shower.shape[-1]], var, out=var)
    else:
        np.divide(np.float32(spot), var, out=var)
    np.log1p(var, out=var)  # sigma^2 of ln(factor)
    factor = np.sqrt(var)
    factor *= rng.standard_normal(e.shape, dtype=np.float32)
    var *= np.float32(-0.5)
    factor += var
    np.exp(factor, out=factor)
    e *= factor
    e[np.searchsorted(idx, t_idx)] += t_val
    e *= calib.reshape(-1)[idx % cells]
    e += np.float32(noise) * rng.standard_normal(e.shape, dtype=np.float32)
    keep = e >= np.float32(threshold)
    flat[:] = 0.0
    flat[idx[keep]] = e[keep]
    if sparse and p_tail > 0:
        n_fake = rng.binomial(flat.size - idx.size, p_tail)
        pos = np.zeros(0, np.int64)
        while pos.size < n_fake:  # uniform positions among the cells without signal, no repeats
            cand = rng.integers(0, flat.size, size=2 * (n_fake - pos.size) + 16)
            cand = np.concatenate([pos, cand[~mask[cand]]])
            _, first = np.unique(cand, return_index=True)
            pos = cand[np.sort(first)][:n_fake]
        u = rng.random(n_fake)
        flat[pos] = (noise * -ndtri(p_tail * u)).astype(np.float32)
    return shower


def _simulate_chunk(particle, energy, rng, cfg, truth=False):
    """One vectorised batch: the events of `energy` (n,) for one particle (``truth``: add TRUTH_KEYS)."""
    geo = _geometry(cfg)
    n = energy.shape[0]
    x = (rng.random(n) - 0.5) * cfg.impact_spread_cells * cfg.ecal_cell_mm
    y = (rng.random(n) - 0.5) * cfg.impact_spread_cells * cfg.ecal_cell_mm
    sx, sy = cfg.incidence_sigma_rad * rng.standard_normal((2, n))
    dep = _Deposits(n)
    if particle == "Ele":
        _em_shower(dep, energy, np.zeros(n), cfg.em_c_electron, 1, x, y, sx, sy, rng, cfg, geo)
    elif particle == "Gamma":
        t0 = rng.exponential(cfg.photon_conversion_x0, n)
        _em_shower(dep, energy, t0, cfg.em_c_photon, 2, x, y, sx, sy, rng, cfg, geo)
    elif particle == "Pi0":
        e1, e2, th1, th2, phi, _ = _pi0_photons(energy, rng, cfg)
        cphi, sphi = np.cos(phi), np.sin(phi)
        d = cfg.calo_distance_mm
        for e_g, th, sign in ((e1, th1, 1.0), (e2, th2, -1.0)):
            tx, ty = sign * np.tan(th) * cphi, sign * np.tan(th) * sphi
            t0 = rng.exponential(cfg.photon_conversion_x0, n)
            _em_shower(dep, e_g, t0, cfg.em_c_photon, 2, x + d * tx, y + d * ty, sx + tx, sy + ty,
                       rng, cfg, geo)
    elif particle == "ChPi":
        _hadron_shower(dep, energy, x, y, sx, sy, rng, cfg, geo)
    else:
        raise ValueError(f"unknown particle {particle!r}; expected one of {PARTICLES}")
    sign = rng.choice(np.array([-1, 1], np.int32), n) if particle in ("Ele", "ChPi") else 1
    out = {
        "energy": energy.astype(np.float32),
        "pdgID": (np.full(n, PDG_IDS[particle], np.int32) * sign).astype(np.int32),
    }
    ne = geo.n_ecal
    if truth:
        layer_e = dep.layer_energy()
        nan = np.full(n, np.nan)
        out.update({
            "truth_ecal_deposit": layer_e[:, :ne].sum(axis=1),
            "truth_dead": layer_e[:, geo.dead],
            "truth_hcal_deposit": layer_e[:, geo.hcal].sum(axis=1),
            "truth_leak": dep.leak,
            **{f"truth_{k}": dep.truth.get(k, nan) for k in ("interaction_lambda", "f_em", "f_prompt")},
        })
    for name, layers, ex, ey, shape, calib, spot, noise, f_ref in (
        ("ECAL", slice(0, ne), geo.ecal_edges_mm, geo.ecal_edges_y_mm, cfg.ecal_shape, geo.ecal_calib,
         cfg.ecal_spot_gev, cfg.ecal_noise_gev, cfg.ecal_sampling_fraction_thin),
        ("HCAL", geo.hcal, geo.hcal_edges_mm, geo.hcal_edges_y_mm, cfg.hcal_shape, geo.hcal_calib,
         cfg.hcal_spot_gev, cfg.hcal_noise_gev, cfg.hcal_sampling_fraction),
    ):
        img, tracks = _render(dep, layers, ex, ey, shape, n)
        if cfg.raw_visible_energy:
            # Visible = f * deposit with the same relative fluctuations: variance f^2 spot E = (f spot) E_visible,
            # one spot per layer. The electronics noise is the same in every sensor: the calibrated noise of
            # the section's reference layers times their f (so noise / MIP is unchanged there).
            frac = geo.sampling_fraction[layers].astype(np.float32)
            img *= frac
            flat_idx, values = tracks
            tracks = (flat_idx, values * frac[flat_idx % shape[2]])
            spot = spot * geo.sampling_fraction[layers]
            noise = noise * f_ref
        out[name] = _respond(img, tracks, calib, spot, noise, cfg.noise_threshold_sigma * noise, rng)
    out.update(compute_features(out["ECAL"], out["HCAL"]))
    return out


def _iter_chunks(particle, n, rng, cfg, energies=None, truth=False):
    """Yield the event dicts of n events in batches of cfg.chunk_events (the reproducibility unit)."""
    if particle not in PDG_IDS:
        raise ValueError(f"unknown particle {particle!r}; expected one of {PARTICLES}")
    if energies is not None:
        energies = np.asarray(energies, dtype=np.float64)
        if energies.shape != (n,):
            raise ValueError(f"energies must have shape ({n},), got {energies.shape}")
    for start in range(0, n, cfg.chunk_events):
        m = min(cfg.chunk_events, n - start)
        if energies is None:
            e = rng.uniform(cfg.energy_min_gev, cfg.energy_max_gev, m)
        else:
            e = energies[start:start + m]
        yield _simulate_chunk(particle, e, rng, cfg, truth)


def simulate_events(particle: str, n: int, rng: np.random.Generator, config: CaloSimConfig | None = None,
                    *, energies: np.ndarray | None = None, truth: bool = False) -> dict[str, np.ndarray]:
    """Simulate n events of one particle; a pure function of (particle, n, rng state, config).

    ``energies`` (n,) [GeV] replaces the flat spectrum (for resolution studies). Returns the file's
    datasets: ``ECAL``, ``HCAL``, ``energy``, ``pdgID`` and the features of :func:`compute_features`;
    with ``truth`` also :data:`TRUTH_KEYS` (float64 (n,), never written to files), for tests and studies
    of what the detector cannot see. The events are the same with or without ``truth``.
    """
    cfg = config or CaloSimConfig()
    out = None
    start = 0
    for chunk in _iter_chunks(particle, n, rng, cfg, energies, truth):
        if out is None:
            out = {k: np.empty((n, *v.shape[1:]), v.dtype) for k, v in chunk.items()}
        m = chunk["energy"].shape[0]
        for k, v in chunk.items():
            out[k][start:start + m] = v
        start += m
    if out is None:  # n == 0
        out = _simulate_chunk(particle, np.zeros(0), rng, cfg, truth)
    return out


# ---------------------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------------------


def _feature_names():
    names = []
    for det in ("ECAL", "HCAL"):
        names += [f"{det}_E", f"{det}_nHits", f"{det}_ratioFirstLayerToTotalE",
                  f"{det}_ratioFirstLayerToSecondLayerE"]
        names += [f"{det}moment{ax}{k}" for ax in "XYZ" for k in range(1, N_MOMENTS + 1)]
    return tuple(names + ["HCAL_ECAL_ERatio", "HCAL_ECAL_nHitsRatio"])


#: The scalar features written next to the images, in file order.
FEATURE_NAMES = _feature_names()


def _ratio(num, den):
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def compute_features(ecal: np.ndarray, hcal: np.ndarray) -> dict[str, np.ndarray]:
    """The LCD scalar features of images (N, X, Y, L), float32 (N,) each.

    ``<det>_E``: sum of the cells; ``<det>_nHits``: cells != 0; ``ratioFirstLayerToTotalE`` = layer 0 / total,
    ``ratioFirstLayerToSecondLayerE`` = layer 0 / layer 1; ``<det>moment{X,Y,Z}{k}``: for k = 1 the
    energy-weighted mean of the cell index along x, y or the layer index (z), for k >= 2 the k-th central
    moment of that energy-weighted distribution, in cell (layer) units^k. ``HCAL_ECAL_ERatio`` and
    ``HCAL_ECAL_nHitsRatio`` = HCAL / ECAL. Any ratio or moment with an empty denominator is 0.
    Works on real files as well as simulated ones.
    """
    out = {}
    sums = {}
    for det, img in (("ECAL", ecal), ("HCAL", hcal)):
        img = np.asarray(img)
        xl = img.sum(axis=2, dtype=np.float64)  # (n, X, L)
        proj = {"X": xl.sum(axis=2), "Y": img.sum(axis=(1, 3), dtype=np.float64), "Z": xl.sum(axis=1)}
        total = proj["Z"].sum(axis=1)
        nhits = np.count_nonzero(img, axis=(1, 2, 3))
        sums[det] = (total, nhits)
        out[f"{det}_E"] = total
        out[f"{det}_nHits"] = nhits
        out[f"{det}_ratioFirstLayerToTotalE"] = _ratio(proj["Z"][:, 0], total)
        second = proj["Z"][:, 1] if proj["Z"].shape[1] > 1 else np.zeros_like(total)
        out[f"{det}_ratioFirstLayerToSecondLayerE"] = _ratio(proj["Z"][:, 0], second)
        for ax, p in proj.items():
            coord = np.arange(p.shape[1], dtype=np.float64)
            mean = _ratio(p @ coord, total)
            out[f"{det}moment{ax}1"] = mean
            dev = coord[None, :] - mean[:, None]
            powk = dev * dev
            for k in range(2, N_MOMENTS + 1):
                out[f"{det}moment{ax}{k}"] = _ratio((p * powk).sum(axis=1), total)
                powk = powk * dev
    out["HCAL_ECAL_ERatio"] = _ratio(sums["HCAL"][0], sums["ECAL"][0])
    out["HCAL_ECAL_nHitsRatio"] = _ratio(sums["HCAL"][1], sums["ECAL"][1])
    return {k: np.asarray(out[k], dtype=np.float32) for k in FEATURE_NAMES}


# ---------------------------------------------------------------------------------------------------------
# Files and datasets
# ---------------------------------------------------------------------------------------------------------


def file_seed_sequence(seed: int, particle: str, file_index: int) -> np.random.SeedSequence:
    """The seed of one file: independent of every other file, so files can be made in any order."""
    return np.random.SeedSequence(entropy=int(seed), spawn_key=(PDG_IDS[particle], int(file_index)))


#: The per-event hit columns of hit files (:func:`hits_from_images`), float32 each.
HIT_COLUMNS = ("hit_x", "hit_y", "hit_z", "hit_e", "hit_det")


@functools.lru_cache(maxsize=8)
def _cell_centres(cfg: CaloSimConfig):
    """Per detector: (x, y, z) cell-centre coordinates [mm] along each image axis, float32."""
    geo = _geometry(cfg)

    def mid(edges):
        return (0.5 * (edges[1:] + edges[:-1])).astype(np.float32)

    out = ((mid(geo.ecal_edges_mm), mid(geo.ecal_edges_y_mm), geo.depth_mm[:geo.n_ecal].astype(np.float32)),
            (mid(geo.hcal_edges_mm), mid(geo.hcal_edges_y_mm), geo.depth_mm[geo.hcal].astype(np.float32)))
    for axes in out:
        for a in axes:
            a.setflags(write=False)  # cached and shared
    return out


def hits_from_images(ecal: np.ndarray, hcal: np.ndarray, config: CaloSimConfig | None = None) -> dict:
    """The cells of images (N, X, Y, L) with nonzero energy (those above the zero suppression) as hit lists.

    Returns :data:`HIT_COLUMNS` as :class:`dlkit.jagged.Jagged` columns of N events, float32: ``hit_x``,
    ``hit_y`` (transverse, mm, 0 on the grid centre) and ``hit_z`` (depth of the layer centre from the ECAL
    front face, mm; the HCAL layers lie behind the ECAL and the dead material) of the cell centre,
    ``hit_e`` (the cell's energy, GeV, as in the image) and ``hit_det`` (0. ECAL, 1. HCAL: float32 like the
    other features). Per event the ECAL hits come first, then the HCAL's, each in the images' C order
    (x, then y, then layer). Vectorised over the whole batch: one ``np.flatnonzero`` per detector.
    """
    cfg = config or CaloSimConfig()
    ecal, hcal = np.asarray(ecal), np.asarray(hcal)
    n = ecal.shape[0]
    if ecal.shape != (n, *cfg.ecal_shape) or hcal.shape != (n, *cfg.hcal_shape):
        raise ValueError(f"images of shapes {ecal.shape}, {hcal.shape} do not fit the config's "
                         f"{cfg.ecal_shape}, {cfg.hcal_shape}")
    found = []
    for det, img, centres in ((0, ecal, _cell_centres(cfg)[0]), (1, hcal, _cell_centres(cfg)[1])):
        cells = int(np.prod(img.shape[1:]))
        flat = img.reshape(-1)
        idx = np.flatnonzero(flat)
        ev, cell = np.divmod(idx, cells)
        ix, iy, il = np.unravel_index(cell, img.shape[1:])
        found.append((ev, np.bincount(ev, minlength=n), (centres[0][ix], centres[1][iy], centres[2][il],
                                                          flat[idx].astype(np.float32), det)))
    counts = found[0][1] + found[1][1]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    out = {k: np.empty(offsets[-1], np.float32) for k in HIT_COLUMNS}
    before = np.zeros(n, np.int64)  # hits of the event written before this detector's
    for ev, det_counts, columns in found:
        det_offsets = np.zeros(n + 1, np.int64)
        np.cumsum(det_counts, out=det_offsets[1:])
        pos = offsets[ev] + before[ev] + (np.arange(ev.size) - det_offsets[ev])
        for k, v in zip(HIT_COLUMNS, columns):
            out[k][pos] = v
        before += det_counts
    return {k: Jagged(v, offsets) for k, v in out.items()}


def _dataset_kwargs(shape, dtype, compression):
    """Uncompressed: contiguous (a slice of events is one read). gzip: chunks of ~1 MiB of whole events,
    which fit h5py's default 1 MiB chunk cache."""
    if compression is None:
        return {}
    event_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    rows = int(max(1, min(shape[0], (1 << 20) // max(event_bytes, 1))))
    return {"compression": compression, "chunks": (rows, *shape[1:]), "shuffle": True}


def _check_hits(hits, compression):
    if hits is not None and hits not in FORMATS:
        raise ValueError(f"hits must be None or one of {', '.join(FORMATS)}, got {hits!r}")
    if hits is not None and compression is not None:
        raise ValueError("compression is for the HDF5 image files; hit files use their format's own")


def write_file(path, particle: str, n: int, seed: int, file_index: int, config: CaloSimConfig | None = None,
               compression: str | None = None, progress=None, hits: str | None = None) -> Path:
    """Simulate and write one file atomically (:func:`dlkit.datasets.atomic_file`).

    ``progress``: optional callable(n_events_done) called after each batch. ``hits``: write the events as
    hit lists in this format of :data:`dlkit.jagged.FORMATS` instead of images (the same events: the
    columns of :func:`hits_from_images`, then ``energy``, ``pdgID`` and the features; the file's metadata
    holds the config, seed, particle, ...); ``path`` must have the format's extension.
    """
    import dlkit

    cfg = config or CaloSimConfig()
    path = Path(path)
    _check_hits(hits, compression)
    rng = np.random.default_rng(file_seed_sequence(seed, particle, file_index))
    if hits is not None:
        meta = {"simulation_config": cfg.to_json(), "seed": int(seed), "particle": particle,
                "file_index": int(file_index), "dlkit_version": dlkit.__version__,
                "format_version": FORMAT_VERSION, "generator": "calodnn.simulate",
                "units": "hit_x, hit_y, hit_z: mm (cell centre); hit_e, energy: GeV; hit_det: 0 ECAL, 1 HCAL"}
        with EventWriter(path, format=hits, metadata=meta, n_events=n) as writer:
            for chunk in _iter_chunks(particle, n, rng, cfg):
                columns = hits_from_images(chunk["ECAL"], chunk["HCAL"], cfg)
                columns.update({k: chunk[k] for k in ("energy", "pdgID", *FEATURE_NAMES)})
                writer.write(columns)
                if progress is not None:
                    progress(len(chunk["energy"]))
        return path
    shapes = {"ECAL": ((n, *cfg.ecal_shape), np.float32), "HCAL": ((n, *cfg.hcal_shape), np.float32),
              "energy": ((n,), np.float32), "pdgID": ((n,), np.int32)}
    shapes.update({k: ((n,), np.float32) for k in FEATURE_NAMES})
    with atomic_file(path) as tmp:
        with h5py.File(tmp, "w") as f:
            dsets = {k: f.create_dataset(k, shape=s, dtype=d, **_dataset_kwargs(s, d, compression))
                     for k, (s, d) in shapes.items()}
            f.attrs["simulation_config"] = cfg.to_json()
            f.attrs["seed"] = int(seed)
            f.attrs["particle"] = particle
            f.attrs["file_index"] = int(file_index)
            f.attrs["dlkit_version"] = dlkit.__version__
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["generator"] = "calodnn.simulate"
            start = 0
            for chunk in _iter_chunks(particle, n, rng, cfg):
                m = chunk["energy"].shape[0]
                for k, ds in dsets.items():
                    ds[start:start + m] = chunk[k]
                start += m
                if progress is not None:
                    progress(m)
    return path


def _write_job(job, progress=None):
    """One file of :func:`write_dataset` (module level: :func:`dlkit.datasets.write_files` pickles it)."""
    path, particle, n, file_index, seed, cfg_dict, compression, hits = job
    return write_file(path, particle, n, seed, file_index, CaloSimConfig.from_dict(cfg_dict), compression,
                      progress=progress, hits=hits), n


def _plan(out_dir, particles, events_per_class, events_per_file, ext=".h5"):
    jobs = []
    for particle in particles:
        if particle not in PDG_IDS:
            raise ValueError(f"unknown particle {particle!r}; expected some of {PARTICLES}")
        for i, start in enumerate(range(0, events_per_class, events_per_file)):
            jobs.append((Path(out_dir) / particle / f"{particle}_{i}{ext}", particle,
                         min(events_per_file, events_per_class - start), i))
    return jobs


def write_dataset(out_dir, particles=PARTICLES, events_per_class: int = DEFAULT_EVENTS_PER_CLASS,
                  events_per_file: int = 1000, seed: int = 0, config: CaloSimConfig | None = None,
                  compression: str | None = None, progress: bool = True, workers: int | None = None,
                  hits: str | None = None) -> list[Path]:
    """Write ``<out_dir>/<Particle>/<Particle>_<i>.h5`` for each particle; returns the paths written.

    Each file is seeded from (seed, particle, file index), so the result does not depend on ``workers``
    or on the order files are made in. ``workers`` processes (spawned, default: the available cores for
    big datasets, 1 for small ones) each write whole files. ``hits`` (``"root"``, ``"rntuple"``,
    ``"parquet"``, ``"hdf5"``): the same events as hit-list files ``<Particle>_<i>.root`` (``.parquet``,
    ``.h5``) instead of images (:func:`write_file`).
    """
    cfg = config or CaloSimConfig()
    if compression not in (None, "gzip", "lzf"):
        raise ValueError("compression must be None, 'gzip' or 'lzf'")
    _check_hits(hits, compression)
    if events_per_class < 1 or events_per_file < 1:
        raise ValueError("events_per_class and events_per_file must be >= 1")
    cfg_dict = cfg.to_dict()
    ext = ".h5" if hits is None else EXTENSIONS[hits]
    jobs = [(path, particle, n, i, seed, cfg_dict, compression, hits)
            for path, particle, n, i in _plan(out_dir, particles, events_per_class, events_per_file, ext)]
    return write_files(_write_job, jobs, sum(j[2] for j in jobs), "calodnn.simulate", workers=workers,
                       progress=progress)


#: Fields added after FORMAT_VERSION 1: at their defaults they do not enter :func:`dataset_key`, so datasets
#: cached before they existed keep their key (their events are unchanged).
_KEY_OPTIONAL_FIELDS = ("raw_visible_energy", "ecal_sampling_fraction_thin", "ecal_sampling_fraction_thick",
                        "hcal_sampling_fraction")
_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(CaloSimConfig)}


def dataset_key(config: CaloSimConfig, seed: int, particles, events_per_class: int, events_per_file: int,
                compression: str | None = None, hits: str | None = None) -> str:
    """Hash naming a cached dataset: everything that changes its bytes (``hits``: its format, if hit files)."""
    cfg = {k: v for k, v in config.to_dict().items()
           if not (k in _KEY_OPTIONAL_FIELDS and v == _FIELD_DEFAULTS[k])}
    record = {"config": cfg, "seed": int(seed), "particles": list(particles),
              "events_per_class": int(events_per_class), "events_per_file": int(events_per_file),
              "compression": compression, "format": FORMAT_VERSION}
    if hits is not None:  # image datasets keep the keys they had before hit files existed
        record["hits"] = hits
    blob = json.dumps(record, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_dataset(path=None, events_per_class: int = DEFAULT_EVENTS_PER_CLASS, events_per_file: int = 1000,
                    seed: int = 0, config: CaloSimConfig | None = None, particles=PARTICLES,
                    compression: str | None = None, progress: bool = True,
                    workers: int | None = None, hits: str | None = None) -> Path:
    """Path of a complete simulated dataset, made if missing.

    Default location: ``$DLKIT_DATA/calodnn/lcd-<key>`` or ``~/.cache/dlkit/calodnn/lcd-<key>``, the key a
    hash of config, seed and sizes (:func:`dataset_key`); built and marked complete by
    :func:`dlkit.datasets.cached_dataset`, so a killed run never leaves a partial dataset that is reused.
    ``hits``: the same events as hit-list files of this format (:func:`write_dataset`), cached apart, in
    ``lcd-hits-<format>-<key>``.
    """
    cfg = config or CaloSimConfig()
    _check_hits(hits, compression)
    key = dataset_key(cfg, seed, particles, events_per_class, events_per_file, compression, hits)
    name = f"lcd-{key}" if hits is None else f"lcd-hits-{hits}-{key}"
    path = Path(path) if path is not None else data_root("calodnn") / name
    meta = {"seed": int(seed), "particles": list(particles), "events_per_class": int(events_per_class),
            "events_per_file": int(events_per_file), "compression": compression, "format": FORMAT_VERSION,
            "config": cfg.to_dict()}
    if hits is not None:
        meta["hits"] = hits
    return cached_dataset(path, key, lambda tmp: write_dataset(tmp, particles, events_per_class, events_per_file,
                                                               seed, cfg, compression, progress, workers, hits),
                          meta)


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = CaloSimConfig.cli_parser(
        "python -m calodnn.simulate", "Simulate LCD-layout calorimeter HDF5 files: <out>/<Particle>/<Particle>_<i>.h5.",
        "--set ecal_shape=51,51,25 --set ecal_noise_gev=0.002")
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--events-per-class", type=int, default=DEFAULT_EVENTS_PER_CLASS,
                        help="events per particle (default %(default)s)")
    parser.add_argument("--events-per-file", type=int, default=1000,
                        help="events per file (default %(default)s)")
    parser.add_argument("--particles", nargs="+", default=list(PARTICLES), choices=PARTICLES,
                        help="particles to simulate (default: all four)")
    parser.add_argument("--seed", type=int, default=0, help="event seed; each file derives its own from "
                        "(seed, particle, file index) (default %(default)s)")
    parser.add_argument("--emin", type=float, default=None, help="lowest energy [GeV] (default 10)")
    parser.add_argument("--emax", type=float, default=None, help="highest energy [GeV] (default 510)")
    parser.add_argument("--compression", choices=("none", "gzip", "lzf"), default="none",
                        help="HDF5 compression (default none: contiguous, fastest to read)")
    parser.add_argument("--hits", choices=FORMATS, default=None,
                        help="write the events as hit lists (hit_x, hit_y, hit_z [mm], hit_e [GeV], hit_det) in "
                        "this format instead of images: <Particle>_<i>.root/.parquet/.h5")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = CaloSimConfig.from_cli(parser, args, energy_min_gev=args.emin, energy_max_gev=args.emax)
    compression = None if args.compression == "none" else args.compression
    if args.hits is not None and compression is not None:
        parser.error("--compression is for the HDF5 image files; hit files use their format's own")
    paths = write_dataset(args.out, tuple(args.particles), args.events_per_class, args.events_per_file,
                          args.seed, cfg, compression, progress=not args.no_progress, workers=args.workers,
                          hits=args.hits)
    logger.info("wrote %d files under %s", len(paths), args.out)
    return EXIT_OK


if __name__ == "__main__":
    # Run the importable module, not a second copy named __main__, so spawned workers and pickles agree.
    from calodnn.simulate import main as _main

    sys.exit(_main())
