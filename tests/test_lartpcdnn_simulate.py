"""lartpcdnn.simulate: LArIAT layout and dtypes, reproducibility, and the physics against independent references."""

import json
import math
import subprocess
import sys

import h5py
import numpy as np
import pytest

import lartpcdnn.simulate as sim
from dlkit.sparse import SparseTensor
from lartpcdnn.simulate import (
    LArSimConfig,
    bethe_dedx,
    default_dataset,
    simulate_events,
    wire_coordinate,
    write_file,
)


def _deposits(particle, n, seed, energy=None, cfg=None):
    """Truth and deposits without the (slow) digitisation."""
    cfg = cfg or LArSimConfig()
    energies = None if energy is None else np.full(n, float(energy))
    return sim._simulate_deposits(particle, n, np.random.default_rng(seed), cfg, energies)


def test_file_set_layout_dtypes_and_attrs(tmp_path):
    paths = sim.write_dataset(tmp_path, ("muon", "photon"), events_per_class=5, events_per_file=3, seed=4,
                              progress=False, workers=1)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "muon/muon_0.2d.h5", "muon/muon_1.2d.h5", "photon/photon_0.2d.h5", "photon/photon_1.2d.h5"]
    with h5py.File(tmp_path / "muon" / "muon_0.2d.h5") as f:
        feats = f["features"]
        assert feats.shape == (3, 2, 240, 4096) and feats.dtype == np.float16
        assert feats.chunks == (1, 2, 240, 4096) and feats.compression == "gzip"
        for key, dtype in (("Energy", np.float32), ("px", np.float32), ("py", np.float32), ("pz", np.float32),
                           ("pdg", np.int32), ("Track_length", np.float32)):
            assert f[key].shape == (3,) and f[key].dtype == dtype, key
        assert set(f["pdg"][()]) == {13}
        assert np.all((f["Energy"][()] >= 0.1) & (f["Energy"][()] <= 1.0))
        # momentum = sqrt(T (T + 2m)) along the beam (+z), from the same kinetic energy
        t = f["Energy"][()].astype(np.float64)
        p = np.sqrt(f["px"][()] ** 2 + f["py"][()] ** 2 + f["pz"][()] ** 2)
        np.testing.assert_allclose(p, np.sqrt(t * (t + 2 * sim.M_MU / 1000)), rtol=1e-5)
        assert np.all(f["pz"][()] > 0) and np.all(f["Track_length"][()] > 0)
        x = feats[()].astype(np.float32)
        assert np.array_equal(x, np.rint(x))  # digitised: integer ADC counts
        attrs = dict(f.attrs)
        assert attrs["particle"] == "muon" and attrs["seed"] == 4 and json.loads(attrs["views"]) == ["induction",
                                                                                                       "collection"]
        assert LArSimConfig.from_dict(json.loads(attrs["simulation_config"])) == LArSimConfig()
    with h5py.File(tmp_path / "photon" / "photon_1.3d.h5") as f:
        g = f["images3D"]
        assert g["C"].shape == (2, 4096, 3) and g["C"].dtype == np.float32 and g["V"].shape == (2, 4096)
        assert g["N"].dtype == np.int32 and f["pdg"][()].tolist() == [22, 22]
    truth = SparseTensor.read_h5(tmp_path / "photon" / "photon_1.3d.h5")
    assert len(truth) == 2 and truth.region == LArSimConfig().region and truth.shape == (94, 80, 180)
    lo = np.array([r[0] for r in truth.region])
    hi = np.array([r[1] for r in truth.region])
    assert np.all((truth.coords >= lo) & (truth.coords <= hi))  # only charge inside the TPC
    assert np.all(truth.values > 0)


def test_reproducible_per_file_and_independent_of_order(tmp_path):
    cfg = LArSimConfig(chunk_events=2)
    a = write_file(tmp_path / "a", "pionMinus", 3, seed=9, file_index=1, config=cfg, compression=None)
    b = write_file(tmp_path / "b", "pionMinus", 3, seed=9, file_index=1, config=cfg, compression="lzf")
    c = write_file(tmp_path / "c", "pionMinus", 3, seed=9, file_index=0, config=cfg, truth3d=False)
    with h5py.File(a) as fa, h5py.File(b) as fb, h5py.File(c) as fc:
        assert np.array_equal(fa["features"][()], fb["features"][()])  # same seed and index, any compression
        assert np.array_equal(fa["Energy"][()], fb["Energy"][()])
        assert not np.array_equal(fa["Energy"][()], fc["Energy"][()])  # another file index: other events
    assert not (tmp_path / "c" / "pionMinus_0.3d.h5").exists()
    assert not list(tmp_path.rglob("*.tmp-*"))
    with pytest.raises(ValueError, match="compression"):
        write_file(tmp_path / "d", "muon", 1, 0, 0, compression="zstd")


def test_bethe_bloch_minimum_ionisation_and_proton_range():
    bg = np.logspace(-0.5, 3, 2000)
    t = sim.M_MU * (np.sqrt(1 + bg ** 2) - 1)
    dedx = bethe_dedx(t, sim.M_MU)
    assert abs(dedx.min() - 2.12) < 0.04  # PDG: liquid argon 1.519 MeV cm2/g x 1.396 g/cm3
    assert 2.5 < bg[np.argmin(dedx)] < 4.5
    # CSDA range of a 100 MeV proton from the same dE/dx, and the stepped tracks agree with it
    tt = np.linspace(0.5, 100.0, 20000)
    csda = np.trapezoid(1.0 / bethe_dedx(tt, sim.M_P), tt)
    assert 7.0 < csda < 8.5  # PSTAR for argon: ~10.4 g/cm2 -> ~7.5 cm
    cfg = LArSimConfig(interaction_length_cm=(1e9, 1e9, 1e9, 1e9), dedx_fluct=0.0)
    truth, _ = _deposits("proton", 40, 1, energy=0.1, cfg=cfg)
    np.testing.assert_allclose(np.mean(truth["Track_length"]), csda, rtol=0.05)


def test_tracks_mip_dedx_bragg_peak_and_energy_sum():
    cfg = LArSimConfig(interaction_length_cm=(1e9, 1e9, 1e9, 1e9))
    rng = np.random.default_rng(2)
    # through-going 0.8 GeV muons: deposited energy per cm = the mean Bethe-Bloch loss
    t, pos, d = sim._primaries("muon", 30, rng, cfg, np.full(30, 0.8))
    dep = sim._Deposits()
    ends = sim._transport(sim._tracks(np.arange(30), sim._MU, -1.0, pos, d, t, primary=True), rng, cfg, dep)
    ev, _, de, _ = dep.arrays()
    per_cm = np.bincount(ev, de, minlength=30) / ends["path"]
    np.testing.assert_allclose(per_cm.mean(), bethe_dedx(790.0, sim.M_MU), rtol=0.03)
    assert np.all(ends["outcome"] == sim._EXITED)
    # stopping 150 MeV protons: all energy deposited, the last cm holds a Bragg peak
    t, pos, d = sim._primaries("proton", 20, rng, cfg, np.full(20, 0.15))
    dep = sim._Deposits()
    ends = sim._transport(sim._tracks(np.arange(20), sim._P, 1.0, pos, d, t, primary=True), rng, cfg, dep)
    assert np.all(ends["outcome"] == sim._STOPPED)
    ev, p, de, _ = dep.arrays()
    np.testing.assert_allclose(np.bincount(ev, de, minlength=20), 150.0, rtol=1e-9)
    for i in range(20):
        mine = ev == i
        dist = np.linalg.norm(p[mine] - ends["pos"][i], axis=1)  # distance before the end point
        last, first = de[mine][dist < 1.0].sum(), de[mine][dist > ends["path"][i] - 1.0].sum()
        assert last > 3 * first


def test_em_showers_conversion_gap_and_containment():
    truth, (ev, pos, de, _) = _deposits("photon", 300, 3, energy=0.5)
    gap = truth["Track_length"]
    # the conversion distance is exponential with mean 9/7 X0 = 18 cm
    np.testing.assert_allclose(gap.mean(), 9 / 7 * 14.0, rtol=0.15)
    # electrons start depositing at the entry point (z = 0); photons only after the gap
    _, (eve, pose, dee, _) = _deposits("electron", 50, 4, energy=0.5)
    entry_e = np.array([pose[eve == i][:, 2].min() for i in range(50)])
    entry_g = np.array([pos[ev == i][:, 2].min() for i in range(300)])
    assert np.median(entry_e) < 1.0 and np.median(entry_g) > 8.0
    # energy is conserved: all of it is deposited somewhere (leakage only out of the TPC)
    np.testing.assert_allclose(np.bincount(eve, dee, minlength=50), 500.0, rtol=1e-6)
    np.testing.assert_allclose(np.bincount(ev, de, minlength=300), 500.0, rtol=1e-6)


def test_pi0_decay_kinematics_and_michel_spectrum():
    rng = np.random.default_rng(5)
    t = rng.uniform(100, 1000, 500)
    pmag = np.sqrt(t * (t + 2 * sim.M_PI0))
    p = pmag[:, None] * sim._isotropic(rng, 500)
    g1, g2 = sim._two_body(rng, sim.M_PI0, p, 0.0, 0.0)
    e1, e2 = np.linalg.norm(g1, axis=1), np.linalg.norm(g2, axis=1)
    np.testing.assert_allclose(g1 + g2, p, atol=1e-6)
    np.testing.assert_allclose(e1 + e2, t + sim.M_PI0, rtol=1e-9)
    mass = np.sqrt(np.maximum((e1 + e2) ** 2 - ((g1 + g2) ** 2).sum(axis=1), 0))
    np.testing.assert_allclose(mass, sim.M_PI0, rtol=1e-6)
    opening = np.arccos(np.clip((g1 * g2).sum(axis=1) / (e1 * e2), -1, 1))
    assert np.all(opening >= 2 * np.arcsin(sim.M_PI0 / (t + sim.M_PI0)) - 1e-6)  # the minimum opening angle
    # stopped mu+: every one gives a Michel electron, spectrum x^2 (3 - 2x): mean 0.7 x 52.8 MeV
    n = 2000
    ends = {"ev": np.arange(n), "sp": np.full(n, sim._MU), "q": np.ones(n), "pos": np.full((n, 3), 20.0),
            "dir": np.tile([0.0, 0.0, 1.0], (n, 1)), "T": np.zeros(n), "outcome": np.full(n, sim._STOPPED),
            "primary": np.ones(n, bool), "path": np.ones(n)}
    tracks, em = sim._products(ends, rng, LArSimConfig(), sim._Deposits())
    assert len(tracks["ev"]) == 0 and len(em["ev"]) == n and em["E"].max() <= 52.83
    np.testing.assert_allclose(em["E"].mean(), 0.7 * 52.83, rtol=0.03)
    ends["q"] = -ends["q"]  # mu-: 75 % captured in argon
    _, em = sim._products(ends, rng, LArSimConfig(), sim._Deposits())
    np.testing.assert_allclose(len(em["ev"]) / n, 0.25, atol=0.04)


def test_readout_projection_charge_and_noise():
    """Digitised charge sits where the deposits project, with the total expected from the deposits."""
    cfg = LArSimConfig(noise_adc=(0.0, 0.0), chunk_events=4)
    rng = np.random.default_rng(6)
    _, deposits = sim._simulate_deposits("muon", 4, rng, cfg, np.full(4, 0.5))
    out = np.zeros((4, 2, 240, 4096), np.float16)
    sim._digitize(4, deposits, rng, cfg, out)
    ev, pos, de, dedx = deposits
    inside = sim._inside(pos, cfg)
    ev, pos, de, dedx = ev[inside], pos[inside], de[inside], dedx[inside]
    wmin, _, _ = sim._readout(cfg)
    drift = pos[:, 0] / cfg.drift_velocity_cm_us
    q = de * 1e6 / cfg.w_ion_ev * sim._recombination(dedx, cfg) * np.exp(-drift / cfg.electron_lifetime_us)
    tick = cfg.trigger_offset_ticks + pos[:, 0] / cfg.cm_per_tick  # pulse centre (continuous tick)
    for plane, angle in enumerate(cfg.wire_angles_deg):
        wire = np.floor((wire_coordinate(pos[:, 1], pos[:, 2], angle) - wmin[plane]) / cfg.wire_pitch_cm) + 0.5
        area = q * 1e-3 * cfg.gain_adc_ticks_per_ke[plane]
        for i in range(4):
            img = out[i, plane].astype(np.float64)
            m = (ev == i) & (wire >= 0) & (wire < 240)
            np.testing.assert_allclose(img.sum(), area[m].sum(), rtol=0.02)  # rounding to ADC counts only
            w_mean = (img.sum(axis=1) * (np.arange(240) + 0.5)).sum() / img.sum()
            t_mean = (img.sum(axis=0) * (np.arange(4096) + 0.5)).sum() / img.sum()
            assert abs(w_mean - np.average(wire[m], weights=area[m])) < 0.3
            assert abs(t_mean - np.average(tick[m], weights=area[m])) < 0.3
    # noise: before the trigger offset there is no signal, only integer Gaussian noise of the configured sigma
    noisy = simulate_events("proton", 2, np.random.default_rng(7))["features"][:, :, :, :800].astype(np.float64)
    for plane, sigma in enumerate(LArSimConfig().noise_adc):
        assert abs(noisy[:, plane].mean()) < 0.02
        np.testing.assert_allclose(noisy[:, plane].std(), sigma, rtol=0.03)


def test_truth_points_merge_when_over_capacity():
    cfg = LArSimConfig(truth_capacity=64)
    _, deposits = sim._simulate_deposits("electron", 3, np.random.default_rng(8), cfg, np.full(3, 0.4))
    st = sim._truth_points(3, deposits, cfg)
    ev, pos, de, _ = deposits
    inside = sim._inside(pos, cfg)
    assert np.all(st.counts <= 64)
    np.testing.assert_allclose([v.sum() for v in st.V], np.bincount(ev[inside], de[inside], minlength=3), rtol=1e-5)


def test_default_dataset_is_made_once(tmp_path, monkeypatch):
    monkeypatch.setenv("DLKIT_DATA", str(tmp_path))
    path = default_dataset(events_per_class=2, events_per_file=2, particles=("muon", "proton"), progress=False)
    assert path.parent == tmp_path / "lartpcdnn" and (path / "COMPLETE.json").is_file()
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*.h5"))
    assert files == ["muon/muon_0.2d.h5", "muon/muon_0.3d.h5", "proton/proton_0.2d.h5", "proton/proton_0.3d.h5"]
    mtime = (path / "muon" / "muon_0.2d.h5").stat().st_mtime_ns
    assert default_dataset(events_per_class=2, events_per_file=2, particles=("muon", "proton")) == path
    assert (path / "muon" / "muon_0.2d.h5").stat().st_mtime_ns == mtime
    other = default_dataset(events_per_class=1, events_per_file=2, particles=("muon", "proton"), progress=False)
    assert other != path


def test_cli(tmp_path):
    out = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-m", "lartpcdnn.simulate", "--out", str(out), "--events-per-class", "2",
                           "--particles", "kaonMinus", "--no-progress", "--emin", "0.2", "--emax", "0.3",
                           "--set", "noise_adc=1,1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out / "kaonMinus" / "kaonMinus_0.2d.h5") as f:
        assert f["pdg"][()].tolist() == [-321, -321]
        assert np.all((f["Energy"][()] >= 0.2) & (f["Energy"][()] <= 0.3))
        assert json.loads(f.attrs["simulation_config"])["noise_adc"] == [1.0, 1.0]
    bad = subprocess.run([sys.executable, "-m", "lartpcdnn.simulate", "--out", str(out), "--set", "noise=3"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--set expects FIELD=VALUE" in bad.stderr


def test_config_validation():
    with pytest.raises(ValueError, match="energy_min_gev"):
        LArSimConfig(energy_min_gev=2.0, energy_max_gev=1.0)
    with pytest.raises(ValueError, match="noise_adc needs 2"):
        LArSimConfig(noise_adc=(1.0,))
    with pytest.raises(ValueError, match="unknown LArSimConfig fields"):
        LArSimConfig.from_dict({"bogus": 1})
    assert math.isclose(LArSimConfig().cm_per_tick, 0.16 * 0.128)


def test_gzip_features_are_the_uncompressed_ones_through_hdf5s_own_filters(tmp_path):
    """The simulator deflates each event itself: HDF5 must read back exactly the uncompressed values."""
    cfg = LArSimConfig(chunk_events=3)
    plain = write_file(tmp_path / "none", "electron", 5, seed=2, file_index=0, config=cfg, compression=None,
                       truth3d=False)
    for compression, level in (("gzip", 1), ("gzip9", 9)):
        path = write_file(tmp_path / compression, "electron", 5, seed=2, file_index=0, config=cfg,
                          compression=compression, truth3d=False)
        with h5py.File(plain) as fa, h5py.File(path) as fb:
            feats = fb["features"]
            assert feats.compression == "gzip" and feats.compression_opts == level and feats.shuffle
            assert feats.chunks == (1, 2, 240, 4096)
            assert np.array_equal(fa["features"][()], feats[()])
            assert np.array_equal(fa["features"][2:4], feats[2:4])  # chunk by chunk too
            assert feats.id.get_storage_size() < fa["features"].id.get_storage_size() / 3
