"""calodnn.simulate's physics against textbook formulas (physics.md), not against the simulator's own output.

Each check uses a few hundred to a few thousand events (seconds) and a tolerance of several statistical
standard errors (plus, where named, a small systematic allowance for what the formula leaves out), with fixed
seeds: they do not flake.
"""

import numpy as np
import pytest
from scipy.special import gammainc
from scipy.stats import gamma

from calodnn.simulate import CaloSimConfig, simulate_events

CFG = CaloSimConfig()
#: A detector that contains everything: no dead material, a deep and wide HCAL (for formula-level responses).
CONTAINED = CaloSimConfig(hcal_shape=(21, 21, 60), hcal_lambda_total=15.0, hcal_depth_mm=3180.0, dead_x0=0.0,
                          dead_lambda=0.0, dead_mm=0.0)


def _sim(particle, n, seed, energy, config=CFG):
    return simulate_events(particle, n, np.random.default_rng(seed), config, energies=np.full(n, float(energy)),
                           truth=True)


def _f_em(energy, k=0.82, e0=1.0):
    """Groom's mean EM fraction of a hadron shower."""
    return 1.0 - (energy / e0) ** (k - 1.0)


def test_pions_interact_in_the_ecal_as_its_lambda_int_says():
    n = 3000
    ev = _sim("ChPi", n, 1, 50.0)
    t = ev["truth_interaction_lambda"]
    lam_ecal = 0.079 / 0.099  # 79.2 mm of tungsten / lambda_int(W) = 99 mm
    assert CFG.ecal_lambda_total == pytest.approx(lam_ecal, abs=0.01)
    for depth, what in ((lam_ecal, "ECAL"), (lam_ecal + CFG.dead_lambda, "ECAL + dead material"), (2.0, "2 lambda")):
        p = 1.0 - np.exp(-depth)
        frac = np.mean(t < depth)
        assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / n), (what, frac, p)
    # The depth is exponential within the ECAL too (each layer its own lambda_int): the mean depth of those
    # interacting in the ECAL is the truncated exponential's.
    inside = t[t < lam_ecal]
    mean = 1.0 - lam_ecal * np.exp(-lam_ecal) / (1.0 - np.exp(-lam_ecal))
    assert abs(inside.mean() - mean) < 4 * inside.std() / np.sqrt(inside.size)
    # Seen in the cells: pions interacting early in the ECAL leave much more there than a MIP track does.
    mip_track = CFG.ecal_mip_gev_per_x0 * (17 * CFG.ecal_thin_layer_x0 + 8 * CFG.ecal_thick_layer_x0)
    early = t < 0.5 * lam_ecal
    assert np.median(ev["ECAL_E"][early]) > 10 * mip_track
    assert np.median(ev["ECAL_E"][t > lam_ecal + CFG.dead_lambda]) < 2 * mip_track
    assert np.mean(ev["ECAL_E"] / (ev["ECAL_E"] + ev["HCAL_E"]) > 0.5) > 0.05  # the issue: none were


@pytest.mark.parametrize("energy", [10.0, 50.0, 300.0])
def test_mean_em_fraction_follows_the_formula_and_fluctuates(energy):
    n = 800
    f = _sim("ChPi", n, int(energy), energy)["truth_f_em"]
    assert abs(f.mean() - _f_em(energy)) < 4 * f.std() / np.sqrt(n), (f.mean(), _f_em(energy))
    assert 0.05 < f.std() < 0.3  # event by event, not a constant
    assert np.all((f >= 0) & (f <= 1))


def test_electron_longitudinal_containment_follows_the_gamma_profile():
    """Cumulative ECAL energy fraction vs depth against the Gamma profile's CDF (scipy.stats.gamma), averaged
    over the simulated event-by-event spreads of ln t_max and ln b (Gauss-Hermite), t_max = ln(E/E_c) - 0.5."""
    n, energy = 300, 100.0
    ev = _sim("Ele", n, 3, energy)
    total = ev["ECAL_E"].astype(np.float64) + ev["HCAL_E"]
    cum = np.cumsum(ev["ECAL"].sum(axis=(1, 2), dtype=np.float64), axis=1) / total[:, None]
    x0 = np.r_[np.full(17, 0.686), np.full(8, 1.371)]
    depth = np.cumsum(x0)
    tmax0 = np.log(energy / 0.008) - 0.5
    z, w = np.polynomial.hermite_e.hermegauss(16)
    w = w / w.sum()
    expected = np.zeros_like(depth)
    for zi, wi in zip(z, w):
        for zj, wj in zip(z, w):
            tmax, b = tmax0 * np.exp(0.1 * zi), 0.5 * np.exp(0.05 * zj)
            expected += wi * wj * gamma.cdf(b * depth, 1.0 + b * tmax)
    for layer in (3, 7, 11, 16, 20, 24):
        err = cum[:, layer].std() / np.sqrt(n)
        # 0.01: zero-suppressed cells in the sparse tail and the track's MIP hits, which the profile leaves out.
        assert abs(cum[:, layer].mean() - expected[layer]) < 5 * err + 0.01, (layer, cum[:, layer].mean(),
                                                                            expected[layer])
    # The tail beyond the 22.6 X0 ECAL: some of it stays in the dead material, the rest reaches the HCAL.
    a, b = 1.0 + 0.5 * tmax0, 0.5
    beyond = 1.0 - gammainc(a, b * depth[-1])
    dead = gammainc(a, b * (depth[-1] + CFG.dead_x0)) - gammainc(a, b * depth[-1])
    assert ev["truth_dead"].mean() / energy == pytest.approx(dead, rel=0.5)
    assert ev["truth_dead"].mean() / energy < beyond


def test_e_over_pi_at_50_gev():
    """Non-compensation: pi/e = f_em + (1 - f_em) h/e with e/h = 1.3 (Wigmans), so e/pi = 1.13 at 50 GeV."""
    energy, n = 50.0, 1000
    f = _f_em(energy)
    e_over_pi = 1.0 / (f + (1.0 - f) / 1.3)
    # 1. Fully contained, at the EM scale before any cell effect: exactly the formula (plus the MIP track the
    #    pion leaves before it interacts, < 1 % of its energy, and the 10 % response spread's clipping).
    pi = _sim("ChPi", n, 4, energy, CONTAINED)
    seen = (pi["truth_ecal_deposit"] + pi["truth_hcal_deposit"] + pi["truth_leak"]) / energy
    assert abs(seen.mean() - 1.0 / e_over_pi) < 4 * seen.std() / np.sqrt(n) + 0.01, (seen.mean(), 1 / e_over_pi)
    # 2. The default detector's cells: at least the formula's e/pi, at most that with 25 % of the pion's
    #    energy lost to the 5x5-cell HCAL window, the dead material and the back.
    ele, pi = _sim("Ele", n, 5, energy), _sim("ChPi", n, 6, energy)
    s_e = ele["ECAL_E"].astype(np.float64) + ele["HCAL_E"]
    s_pi = pi["ECAL_E"].astype(np.float64) + pi["HCAL_E"]
    ratio = s_e.mean() / s_pi.mean()
    err = ratio * np.hypot(s_e.std() / s_e.mean(), s_pi.std() / s_pi.mean()) / np.sqrt(n)
    assert e_over_pi - 4 * err < ratio < e_over_pi / 0.75 + 4 * err, (ratio, e_over_pi)
    assert abs(s_e.mean() / energy - 1.0) < 0.03  # electrons: calibrated at the EM scale
