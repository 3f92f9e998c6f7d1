"""calodnn.simulate: LCD layout, reproducibility, geometry from the config, and the physics trends."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from scipy.optimize import curve_fit
from scipy.stats import rankdata

import calodnn.simulate as sim
from calodnn.simulate import (
    FEATURE_NAMES,
    CaloSimConfig,
    compute_features,
    default_dataset,
    file_seed_sequence,
    simulate_events,
    write_dataset,
    write_file,
)
from dlkit.datasets import COMPLETE_MARKER

EXPECTED_FEATURES = {
    f"{det}{name}"
    for det in ("ECAL", "HCAL")
    for name in ("_E", "_nHits", "_ratioFirstLayerToTotalE", "_ratioFirstLayerToSecondLayerE")
} | {f"{det}moment{ax}{k}" for det in ("ECAL", "HCAL") for ax in "XYZ" for k in range(1, 7)} | {
    "HCAL_ECAL_ERatio",
    "HCAL_ECAL_nHitsRatio",
}


def _read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}, dict(f.attrs)


def _auc(neg, pos):
    """Area under the ROC curve of a score (Mann-Whitney U / n0 n1)."""
    ranks = rankdata(np.r_[neg, pos])
    return (ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def _sim(particle, n, seed, energy=None, config=None):
    energies = None if energy is None else np.full(n, float(energy))
    return simulate_events(particle, n, np.random.default_rng(seed), config, energies=energies)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("lcd")
    paths = write_dataset(out, events_per_class=150, events_per_file=100, seed=7, progress=False, workers=1)
    return out, paths


def test_layout_shapes_dtypes_attrs(small_dataset):
    out, paths = small_dataset
    expected = [out / p / f"{p}_{i}.h5" for p in ("Ele", "Gamma", "Pi0", "ChPi") for i in (0, 1)]
    assert paths == expected
    assert sorted(out.rglob("*.h5")) == sorted(expected)
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    pdg = {"Ele": {11, -11}, "Gamma": {22}, "Pi0": {111}, "ChPi": {211, -211}}
    for path in expected:
        data, attrs = _read(path)
        n = 100 if path.stem.endswith("_0") else 50
        assert set(data) == {"ECAL", "HCAL", "energy", "pdgID"} | EXPECTED_FEATURES
        assert set(FEATURE_NAMES) == EXPECTED_FEATURES
        assert data["ECAL"].shape == (n, 25, 25, 25) and data["ECAL"].dtype == np.float32
        assert data["HCAL"].shape == (n, 5, 5, 60) and data["HCAL"].dtype == np.float32
        assert data["energy"].dtype == np.float32 and data["pdgID"].dtype == np.int32
        assert all(data[k].shape == (n,) and data[k].dtype == np.float32 for k in EXPECTED_FEATURES)
        assert np.all((data["energy"] >= 10) & (data["energy"] <= 510))
        particle = path.parent.name
        assert set(np.unique(data["pdgID"])) <= pdg[particle]
        assert attrs["particle"] == particle and attrs["seed"] == 7
        assert CaloSimConfig.from_json(attrs["simulation_config"]) == CaloSimConfig()
        assert "dlkit_version" in attrs
        for k, v in data.items():
            assert np.all(np.isfinite(v)), k
        assert data["ECAL"].min() >= 0 and data["HCAL"].min() >= 0
    charged = _read(out / "ChPi" / "ChPi_0.h5")[0]["pdgID"]
    assert set(np.unique(charged)) == {211, -211}


def test_features_match_images(small_dataset):
    out, _ = small_dataset
    for particle in ("Ele", "ChPi"):
        d, _ = _read(out / particle / f"{particle}_0.h5")
        for det in ("ECAL", "HCAL"):
            img = d[det].astype(np.float64)
            total = img.sum(axis=(1, 2, 3))
            np.testing.assert_allclose(d[f"{det}_E"], total, rtol=1e-5, atol=1e-6)
            hits = np.count_nonzero(d[det].reshape(len(img), -1), axis=1)
            np.testing.assert_array_equal(d[f"{det}_nHits"], hits)
            layers = img.sum(axis=(1, 2))
            ok = total > 0
            np.testing.assert_allclose(d[f"{det}_ratioFirstLayerToTotalE"][ok], (layers[:, 0] / total)[ok],
                                       rtol=1e-4)
            z = np.arange(img.shape[3])
            mean = (layers * z).sum(1)[ok] / total[ok]
            np.testing.assert_allclose(d[f"{det}momentZ1"][ok], mean, rtol=1e-4)
            var = (layers[ok] * (z - mean[:, None]) ** 2).sum(1) / total[ok]
            np.testing.assert_allclose(d[f"{det}momentZ2"][ok], var, rtol=1e-3, atol=1e-6)
            px = img.sum(axis=(2, 3))[ok]
            x = np.arange(img.shape[1])
            mx = (px * x).sum(1) / total[ok]
            m3 = (px * (x - mx[:, None]) ** 3).sum(1) / total[ok]
            np.testing.assert_allclose(d[f"{det}momentX3"][ok], m3, rtol=1e-3, atol=1e-4)
        ratio = np.divide(d["HCAL_E"], d["ECAL_E"], out=np.zeros(len(img), np.float32), where=d["ECAL_E"] > 0)
        np.testing.assert_allclose(d["HCAL_ECAL_ERatio"], ratio, rtol=1e-5)


def test_features_of_empty_images_are_zero():
    feats = compute_features(np.zeros((2, 4, 4, 3), np.float32), np.zeros((2, 2, 2, 5), np.float32))
    assert set(feats) == EXPECTED_FEATURES
    assert all(np.all(v == 0) for v in feats.values())


def test_reproducible_and_seed_dependent(tmp_path):
    kw = dict(particles=("Gamma", "ChPi"), events_per_class=60, events_per_file=30, progress=False)
    a = write_dataset(tmp_path / "a", seed=3, workers=1, **kw)
    b = write_dataset(tmp_path / "b", seed=3, workers=2, **kw)  # parallel files: same bytes
    c = write_dataset(tmp_path / "c", seed=4, workers=1, **kw)
    for pa, pb, pc in zip(a, b, c):
        da, _ = _read(pa)
        db, _ = _read(pb)
        dc, _ = _read(pc)
        for k in da:
            np.testing.assert_array_equal(da[k], db[k], err_msg=k)
        assert not np.array_equal(da["ECAL"], dc["ECAL"])
    # A file on its own (any order) equals the same file of the dataset, and the pure function.
    alone = write_file(tmp_path / "alone.h5", "ChPi", 30, 3, 1)
    d_alone, _ = _read(alone)
    d_set, _ = _read(a[3])
    assert a[3].name == "ChPi_1.h5"
    np.testing.assert_array_equal(d_alone["HCAL"], d_set["HCAL"])
    ev = simulate_events("ChPi", 30, np.random.default_rng(file_seed_sequence(3, "ChPi", 1)))
    for k in d_set:
        np.testing.assert_array_equal(ev[k], d_set[k], err_msg=k)


def test_other_geometry_shapes():
    cfg = CaloSimConfig(ecal_shape=(51, 51, 25), hcal_shape=(11, 11, 60))
    ev = _sim("Pi0", 20, 0, config=cfg)
    assert ev["ECAL"].shape == (20, 51, 51, 25) and ev["HCAL"].shape == (20, 11, 11, 60)
    odd = CaloSimConfig(ecal_shape=(12, 16, 30), hcal_shape=(4, 3, 10), ecal_thin_layers=20, chunk_events=7)
    ev = _sim("ChPi", 20, 0, config=odd)
    assert ev["ECAL"].shape == (20, 12, 16, 30) and ev["HCAL"].shape == (20, 4, 3, 10)
    assert np.all(ev["ECAL_E"] + ev["HCAL_E"] > 0)
    with pytest.raises(ValueError):
        CaloSimConfig(ecal_shape=(25, 25))


def test_config_json_roundtrip_and_validation():
    cfg = CaloSimConfig(ecal_noise_gev=0.002, hcal_shape=(7, 7, 40))
    assert CaloSimConfig.from_json(cfg.to_json()) == cfg
    assert hash(cfg) == hash(CaloSimConfig.from_json(cfg.to_json()))
    with pytest.raises(ValueError, match="unknown"):
        CaloSimConfig.from_dict({"ecal_nois_gev": 1.0})
    with pytest.raises(ValueError):
        CaloSimConfig(energy_min_gev=100, energy_max_gev=10)
    with pytest.raises(Exception):
        cfg.em_b = 1.0  # frozen


def test_energy_response_electrons_vs_pions():
    ele = _sim("Ele", 300, 1)
    pion = _sim("ChPi", 300, 2)
    r_e = ((ele["ECAL_E"] + ele["HCAL_E"]) / ele["energy"]).mean()
    r_pi = ((pion["ECAL_E"] + pion["HCAL_E"]) / pion["energy"]).mean()
    assert 0.85 < r_e < 1.02
    assert r_pi < 0.92 * r_e  # e/h > 1 and wider, leakier showers
    assert (ele["HCAL_E"] / ele["energy"]).mean() < 0.1  # EM showers stay mostly in the ECAL
    assert (pion["HCAL_E"] / pion["energy"]).mean() > 0.3


def test_photons_convert_later_than_electrons():
    ele = _sim("Ele", 400, 3, energy=50)
    gam = _sim("Gamma", 400, 4, energy=50)
    assert gam["ECAL_ratioFirstLayerToTotalE"].mean() < 0.8 * ele["ECAL_ratioFirstLayerToTotalE"].mean()
    assert gam["ECALmomentZ1"].mean() > ele["ECALmomentZ1"].mean()


def test_pi0_gamma_separation_falls_with_energy():
    def width(ev):
        return ev["ECALmomentX2"] + ev["ECALmomentY2"]

    auc = {}
    for e in (20, 400):
        auc[e] = _auc(width(_sim("Gamma", 200, 5, energy=e)), width(_sim("Pi0", 200, 6, energy=e)))
    assert auc[20] > 0.9  # two showers ~3 cm apart
    assert auc[400] < auc[20] - 0.15  # merged within a cell or two


def test_electron_resolution_stochastic_term():
    energies = np.array([10.0, 25.0, 50.0, 100.0, 200.0])
    rel = []
    for k, e in enumerate(energies):
        ev = _sim("Ele", 200, 10 + k, energy=e)
        total = ev["ECAL_E"].astype(np.float64) + ev["HCAL_E"]
        rel.append(total.std() / total.mean())

    def model(e, a, b, c):
        return np.sqrt(a**2 / e + (b / e) ** 2 + c**2)

    (a, b, c), _ = curve_fit(model, energies, rel, p0=(0.17, 0.05, 0.01), bounds=(0, 1))
    assert 0.08 < a < 0.30, (a, b, c)
    assert rel[0] > rel[-1]


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    real = sim._simulate_chunk
    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(sim, "_simulate_chunk", boom)
    cfg = CaloSimConfig(chunk_events=10)
    with pytest.raises(RuntimeError):
        write_file(tmp_path / "Ele_0.h5", "Ele", 30, 0, 0, cfg)
    assert list(tmp_path.iterdir()) == []


def test_default_dataset_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DLKIT_DATA", str(tmp_path))
    kw = dict(events_per_class=20, events_per_file=10, particles=("Ele", "Pi0"), progress=False)
    path = default_dataset(**kw)
    assert path.parent == tmp_path / "calodnn"
    meta = json.loads((path / COMPLETE_MARKER).read_text())
    assert meta["files"] == ["Ele/Ele_0.h5", "Ele/Ele_1.h5", "Pi0/Pi0_0.h5", "Pi0/Pi0_1.h5"]
    mtime = (path / "Ele" / "Ele_0.h5").stat().st_mtime_ns
    assert default_dataset(**kw) == path
    assert (path / "Ele" / "Ele_0.h5").stat().st_mtime_ns == mtime  # reused, not rewritten
    assert default_dataset(**{**kw, "seed": 1}) != path
    with pytest.raises(FileExistsError, match="another"):
        default_dataset(path, **{**kw, "seed": 1})
    assert not [p for p in (tmp_path / "calodnn").iterdir() if ".tmp" in p.name]

    # A run killed mid-way leaves nothing that a later call would take for a dataset.
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sim, "write_dataset", killed)
    target = tmp_path / "mine"
    with pytest.raises(KeyboardInterrupt):
        default_dataset(target, **kw)
    assert not target.exists() and not list(tmp_path.glob("mine.tmp*"))
    target.mkdir()
    (target / "junk").write_text("x")
    with pytest.raises(FileExistsError):
        default_dataset(target, **kw)


def test_cli(tmp_path):
    out = tmp_path / "cli"
    rc = sim.main(["--out", str(out), "--events-per-class", "12", "--events-per-file", "5", "--particles",
                   "Ele", "ChPi", "--seed", "2", "--emin", "20", "--emax", "30", "--no-progress",
                   "--set", "ecal_shape=9,9,12", "--set", "hcal_shape=3,3,8", "--set", "ecal_noise_gev=0.002",
                   "--compression", "gzip", "--log-level", "WARNING"])
    assert rc == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.h5"))
    assert files == [f"{p}/{p}_{i}.h5" for p in ("ChPi", "Ele") for i in range(3)]
    data, attrs = _read(out / "Ele" / "Ele_2.h5")
    assert data["ECAL"].shape == (2, 9, 9, 12) and data["HCAL"].shape == (2, 3, 3, 8)
    assert np.all((data["energy"] >= 20) & (data["energy"] <= 30))
    cfg = CaloSimConfig.from_json(attrs["simulation_config"])
    assert cfg.ecal_noise_gev == 0.002 and cfg.energy_min_gev == 20
    with h5py.File(out / "Ele" / "Ele_0.h5") as f:
        assert f["ECAL"].compression == "gzip"
    for bad in ("no_such_field=1", "ecal_shape=5,5", "ecal_noise_gev=abc"):
        with pytest.raises(SystemExit) as exc:
            sim.main(["--out", str(out), "--set", bad])
        assert exc.value.code == 2


def test_cli_help_lists_config_fields():
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, "-m", "calodnn.simulate", "--help"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert res.returncode == 0
    assert "--events-per-class" in res.stdout and "ecal_spot_gev" in res.stdout and "hcal_shape" in res.stdout
