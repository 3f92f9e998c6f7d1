"""calodnn energy regression: raw-visible-energy simulation, calibration models, analysis, the experiment."""

import dataclasses
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

import calodnn.simulate as sim
from calodnn.regression import REGRESSION_SIM_CONFIG, resolution_tables
from calodnn.simulate import CaloSimConfig, simulate_events, write_dataset
from dlkit.metadata import read_metadata

RAW = CaloSimConfig(**REGRESSION_SIM_CONFIG)


# ------------------------------------------------------------------------------------------ simulator

def test_raw_visible_energy_follows_the_sampling_fractions():
    n, energy = 150, 100.0
    # One batch (chunk_events = n): both runs then draw the same showers and differ only in the cells'
    # fluctuations (in several batches the second one's showers would come from a shifted random stream).
    cal = simulate_events("Ele", n, np.random.default_rng(1), CaloSimConfig(chunk_events=n),
                          energies=np.full(n, energy))
    raw = simulate_events("Ele", n, np.random.default_rng(1), dataclasses.replace(RAW, chunk_events=n),
                          energies=np.full(n, energy))
    thin = RAW.ecal_thin_layers
    layers_cal = cal["ECAL"].sum(axis=(1, 2)).mean(axis=0)
    layers_raw = raw["ECAL"].sum(axis=(1, 2)).mean(axis=0)
    ratio = layers_raw / layers_cal
    # Every ECAL layer with signal sees its section's fraction of the deposit (statistically).
    np.testing.assert_allclose(ratio[2:thin], RAW.ecal_sampling_fraction_thin, rtol=0.05)
    np.testing.assert_allclose(ratio[thin:-2], RAW.ecal_sampling_fraction_thick, rtol=0.08)
    assert raw["energy"].dtype == np.float32 and raw["ECAL"].shape == cal["ECAL"].shape


def test_plain_raw_sum_is_worse_than_the_per_layer_calibration():
    """The known sampling fractions undo the mis-weighting: the physics the learned calibrations recover."""
    n = 250
    ev = simulate_events("Gamma", n, np.random.default_rng(2), RAW, energies=np.full(n, 100.0))
    f = np.r_[np.where(np.arange(25) < RAW.ecal_thin_layers, RAW.ecal_sampling_fraction_thin,
                       RAW.ecal_sampling_fraction_thick), np.full(60, RAW.hcal_sampling_fraction)]
    per_layer = np.c_[ev["ECAL"].sum(axis=(1, 2)), ev["HCAL"].sum(axis=(1, 2))].astype(np.float64)
    plain = per_layer.sum(axis=1)
    weighted = (per_layer / f).sum(axis=1)
    rel_plain, rel_weighted = plain.std() / plain.mean(), weighted.std() / weighted.mean()
    assert 0.9 < weighted.mean() / 100.0 < 1.02  # calibrated back: the energy minus leakage
    assert rel_plain > 1.8 * rel_weighted, (rel_plain, rel_weighted)


def test_new_simulator_options_keep_the_default_events_and_cache_key():
    cfg = CaloSimConfig()
    old = {k: v for k, v in cfg.to_dict().items() if k not in sim._KEY_OPTIONAL_FIELDS}
    blob = json.dumps({"config": old, "seed": 0, "particles": list(sim.PARTICLES), "events_per_class": 5000,
                       "events_per_file": 1000, "compression": None, "format": sim.FORMAT_VERSION}, sort_keys=True)
    assert sim.dataset_key(cfg, 0, sim.PARTICLES, 5000, 1000) == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert sim.dataset_key(RAW, 0, sim.PARTICLES, 5000, 1000) != sim.dataset_key(cfg, 0, sim.PARTICLES, 5000, 1000)
    assert CaloSimConfig.from_json(RAW.to_json()) == RAW
    with pytest.raises(ValueError):
        CaloSimConfig(ecal_sampling_fraction_thick=0.0)
    fields = {f.name for f in dataclasses.fields(CaloSimConfig)}
    assert set(REGRESSION_SIM_CONFIG) <= fields


# ------------------------------------------------------------------------------------------ models

SHAPES = {"ECAL": (9, 9, 6), "HCAL": (3, 3, 8)}


def _tiny(n=64, seed=0):
    rng = np.random.default_rng(seed)
    ecal = rng.exponential(0.01, (n, *SHAPES["ECAL"])).astype(np.float32)
    hcal = rng.exponential(0.01, (n, *SHAPES["HCAL"])).astype(np.float32)
    energy = (100 * (ecal.sum(axis=(1, 2, 3)) + 2 * hcal.sum(axis=(1, 2, 3)))).astype(np.float32)
    return (ecal, hcal), energy


def test_linear_scale_closed_form_matches_least_squares():
    from calodnn.calibration import fit_linear_scale

    rng = np.random.default_rng(3)
    s = rng.uniform(1, 10, 500)
    e = 3.0 * s + rng.normal(0, 0.5, 500)
    k, *_ = np.linalg.lstsq(s[:, None], e, rcond=None)
    assert fit_linear_scale(s, e, "MSE") == pytest.approx(k[0], rel=1e-12)
    w = 1 / e
    assert fit_linear_scale(s, e, "MRSE") == pytest.approx(np.sum(w * s * e) / np.sum(w * s * s), rel=1e-12)
    with pytest.raises(ValueError, match="MSE, MRSE or MSRE"):
        fit_linear_scale(s, e, "MAE")


def test_models_start_from_the_plain_sum():
    from calodnn.calibration import build_regressor

    x, _ = _tiny(8)
    plain = 100 * (x[0].sum(axis=(1, 2, 3)) + x[1].sum(axis=(1, 2, 3)))
    for name in ("Linear", "PerChannel"):
        model = build_regressor(SHAPES, Model=name)
        np.testing.assert_allclose(model.predict(x, verbose=0)[:, 0], plain, rtol=1e-5)
    per_channel = build_regressor(SHAPES, Model="PerChannel")
    trainable = sum(int(np.prod(w.shape)) for w in per_channel.trainable_weights)
    assert trainable == np.prod(SHAPES["ECAL"]) + np.prod(SHAPES["HCAL"])  # one weight per cell
    two = build_regressor(SHAPES, Model="LayerMLP", Width=8, Depth=1, n_out=2)
    assert two.output_shape == (None, 2)


@pytest.mark.parametrize("model_name, loss", [("Linear", "MSE"), ("PerChannel", "MRSE"), ("LayerMLP", "MSRE"),
                                              ("Dense", "MRSE"), ("CNN", "MRSE"), ("LayerMLP", "GaussianNLL")])
def test_each_model_trains_saves_and_loads(tmp_path, model_name, loss):
    from calodnn.calibration import CaloRegressor
    from calodnn.RegressionExperiment import DEFAULTS, compile_model

    config = {**DEFAULTS, "Model": model_name, "Width": 8, "Depth": 1, "CNNFilters": 2, "loss": loss,
              "optimizer": "Adam", "lr": 0.01, "decay": 0.0, "momentum": 0.0, "EnergyScale": 100.0}
    x, y = _tiny()
    wrapper = CaloRegressor(f"Reg_{model_name}_{loss}", SHAPES, OutputBase=tmp_path, Config=config)
    wrapper.Build()
    compile_model(wrapper)
    wrapper.Train(x, y, Epochs=2, BatchSize=16, SaveEveryEpoch=False)
    out = wrapper.Save()
    expected = wrapper.Model.predict(x, verbose=0)
    assert expected.shape == (len(y), 2 if loss == "GaussianNLL" else 1)
    assert len(wrapper.History["loss"]) == 2 and np.isfinite(wrapper.History["loss"]).all()
    again = CaloRegressor("reload", SHAPES, OutputBase=tmp_path)
    again.Load(out)
    np.testing.assert_allclose(again.Model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)
    assert read_metadata(out)["Loss"] == loss


# ------------------------------------------------------------------------------------------ analysis

class _FakeModel:
    def __init__(self, out):
        self.out = out

    def predict(self, x, batch_size=None, verbose=0):
        return self.out


def test_gaussian_nll_analysis_uses_mu_and_sigma():
    from calodnn.regression import predict_energy

    mu = np.array([10.0, 50.0, 200.0])
    sigma = np.array([1.0, 2.0, 4.0])
    got_mu, got_sigma = predict_energy(_FakeModel(np.c_[mu, np.log(sigma**2)]), None)
    np.testing.assert_allclose(got_mu, mu)
    np.testing.assert_allclose(got_sigma, sigma)
    one, none = predict_energy(_FakeModel(mu[:, None]), None)
    np.testing.assert_allclose(one, mu)
    assert none is None


def test_resolution_tables_recover_known_resolution_per_particle():
    rng = np.random.default_rng(4)
    n = 6000
    e = rng.uniform(10, 510, 2 * n)
    index = np.repeat([0, 1], n)
    a = np.where(index == 0, 0.2, 0.5)
    sigma = e * a / np.sqrt(e)
    pred = e + sigma * rng.standard_normal(2 * n)
    tables, md = resolution_tables(e, pred, index, ["Ele", "ChPi"], np.linspace(10, 510, 11), sigma=sigma)
    assert set(tables) == {"Ele", "ChPi"}
    assert md["Ele_Resolution_a"] == pytest.approx(0.2, abs=0.02)
    assert md["ChPi_Resolution_a"] == pytest.approx(0.5, abs=0.05)
    assert md["Ele_PullWidth"] == pytest.approx(1.0, abs=0.05)
    assert md["Ele_NTestEvents"] == n and abs(md["Ele_MeanRelativeBias"]) < 0.005


def _paper_tables():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "paper_tables.py"
    spec = importlib.util.spec_from_file_location("paper_tables_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_tables_fit_correlation_of_a_and_c():
    """Fitted on a known curve: a and c anti-correlated; undefined when one of them sits at 0."""
    import pandas as pd

    from dlkit.analysis import fit_resolution

    pt = _paper_tables()
    e = np.linspace(35, 485, 10)
    y = np.sqrt(0.2**2 / e + 0.02**2)
    table = pd.DataFrame({"e_mean": e, "resolution": y, "resolution_err": 0.03 * y})
    fit = fit_resolution(table.e_mean, table.resolution, table.resolution_err)
    md = {f"Resolution_{k}": fit[k] for k in "abc"}
    rho = pt.fit_correlation(table, md)
    assert -1.0 < rho < -0.3, rho
    assert np.isnan(pt.fit_correlation(table, {**md, "Resolution_a": 0.0}))


def test_paper_tables_fixed_energy_check_small():
    """The no-training check: the plain raw sum has a much larger constant term than the ideal per-layer sum."""
    pt = _paper_tables()
    check = pt.fixed_energy_check(60, 0)
    for particle in ("Gamma", "Ele"):
        plain, ideal = check[(particle, "plain")][1], check[(particle, "ideal")][1]
        assert plain["Resolution_c"] > 3 * ideal["Resolution_c"]
        lo, hi = check[(particle, "sampling_ratio")]
        assert 0.8 < lo <= hi < 1.2
    assert 0 < check["landau"][2] < 0.1
    assert "ρ(a,c)" in pt.fixed_energy_markdown(check, 60)


# ------------------------------------------------------------------------------------------ experiment

@pytest.fixture(scope="module")
def lcd_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("lcdraw")
    write_dataset(root, events_per_class=240, events_per_file=120, seed=5, progress=False, config=RAW)
    return root



def run(argv):
    from calodnn.RegressionExperiment import cli

    return cli(argv)


def small(lcd, *extra):
    return ["--Test", "--data", str(lcd), "--set", "BatchSize=32", "--set", "EnergyBins=[10, 510, 3]", *extra]


def test_end_to_end_cli_subprocess_gaussian_nll(lcd_raw, env, tmp_path):
    # -s 7: Depth=1, Width=64, loss=GaussianNLL (keys sorted, last fastest)
    proc = subprocess.run([sys.executable, "-m", "calodnn.RegressionExperiment", *small(lcd_raw), "-s", "7"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "TrainedModels.Test" / "CaloReg_Depth1_Width64_lossGaussianNLL"
    md = read_metadata(out)
    assert md["Status"] == "completed" and md["Epochs"] == 2 and md["N_outputs"] == 2
    assert md["ScanPoint"] == {"Depth": 1, "Width": 64, "loss": "GaussianNLL"}
    for p in ("Ele", "Gamma", "Pi0", "ChPi"):
        for key in ("Resolution_a", "Resolution_b", "Resolution_c", "MeanBias", "PullWidth", "NTestEvents"):
            assert f"{p}_{key}" in md
    for stem in ("Resolution", "Response", "History"):
        assert (out / f"{stem}.png").stat().st_size > 1000
    assert (out / "Resolution_Ele.csv").exists()
    assert "a [GeV^1/2]" in proc.stdout  # the summary table
    from dlkit.analysis import ScanTable

    table = ScanTable(str(tmp_path / "TrainedModels.Test"))
    assert "Ele_Resolution_a" in table.columns and "ChPi_Resolution_c" in table.columns


def test_single_particle_linear_and_augmented_on_the_fly(lcd_raw, env, tmp_path, caplog):
    assert run(small(lcd_raw, "--set", 'Particles=["Ele"]', "--set", "Model=Linear", "--set", "lr=0.05")) == 0
    md = read_metadata(tmp_path / "TrainedModels.Test" / "CaloReg_Depth1_Width32_lossMSE")
    assert md["Configuration"]["Model"] == "Linear" and "Ele_Resolution_a" in md and "Gamma_Resolution_a" not in md
    assert abs(md["Ele_MeanRelativeBias"]) < 0.3  # one scale on the plain sum: near 1 from the start
    caplog.clear()
    assert run(small(lcd_raw, "--nopremix", "--set", "Augment=true", "--set", "Model=LayerMLP", "--NoAnalysis")) == 0
    assert any("Augment is on" in r.message for r in caplog.records)


@pytest.mark.parametrize("argv, message", [
    (["--set", "Model=Resnet"], "'Model'"),
    (["-C", "{config}"], "config entry 'loss'"),  # (a scan point's loss would override --set loss)
    (["--set", "Augment=sideways"], "'Augment'"),
    (["--set", "Widht=3"], "did you mean 'Width'"),
])
def test_user_errors_are_one_line(lcd_raw, env, tmp_path, capsys, argv, message):
    config = tmp_path / "badloss.py"
    config.write_text("Config = {'loss': 'MSEE'}\n")
    argv = [a.format(config=config) for a in argv]
    assert run(["--Test", "--data", str(lcd_raw), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "TrainedModels.Test").exists() or not any((tmp_path / "TrainedModels.Test").iterdir())


def test_bad_sim_config_names_the_entry(env, capsys):
    assert run(["--Test", "--set", 'SimConfig={"raw_visible_enrgy": true}']) == 2
    assert "SimConfig" in capsys.readouterr().err
