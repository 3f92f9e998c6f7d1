"""lartpcdnn.ClassificationExperiment end to end in --Test mode, its analysis, data set-up and error cases."""

import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from dlkit.metadata import read_metadata
from lartpcdnn.analysis import binned_efficiency, efficiency_at_fake_rate, efficiency_table
from lartpcdnn.simulate import DEFAULT_PARTICLES, write_dataset


@pytest.fixture(scope="module")
def lariat(tmp_path_factory):
    root = tmp_path_factory.mktemp("lariat")
    write_dataset(root, DEFAULT_PARTICLES, events_per_class=14, events_per_file=7, seed=3, truth3d=False,
                  progress=False, workers=1)
    return root



def run(argv):
    from lartpcdnn.ClassificationExperiment import cli

    return cli(argv)


def test_end_to_end_cli_subprocess(lariat, env, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lartpcdnn.ClassificationExperiment", "--Test", "--data", str(lariat),
                           "-s", "0", "--set", "EnergyBins=[0.1, 1.0, 3]"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "TrainedModels.Test" / "LArTPCDNN_Depth4_Filters8_Width64_lr0.001"
    md = read_metadata(out)
    assert md["Status"] == "completed" and md["Epochs"] == 2 and md["HyperParamSet"] == 0
    assert md["ScanPoint"] == {"Depth": 4, "Filters": 8, "Width": 64, "lr": 0.001}
    assert md["NTestEvents"] == 7 * 3  # 20 % of 14 events per class
    for name in DEFAULT_PARTICLES:
        assert 0.0 <= md[f"{name}_AUC"] <= 1.0 and 0.0 <= md[f"{name}_Eff1pctFake"] <= 1.0
    assert 0.0 <= md["electron_photon_AUC"] <= 1.0 and "muon_pionPlus_AUC" in md
    for stem in ("ROC", "AUCvsEnergy", "EfficiencyvsEnergy", "Confusion", "History"):
        assert (out / f"{stem}.png").stat().st_size > 1000 and (out / f"{stem}.pdf").exists()
    for table in ("Efficiency", "AUCvsEnergy", "EfficiencyvsEnergy", "Confusion", "PairAUC"):
        assert (out / f"{table}.csv").exists()
    assert "eff @ 1% fake" in proc.stdout and "electron vs photon" in proc.stdout
    # the scan point is the model: a shared (siamese) trunk: the stem and 4 conv blocks of 8 doubling filters
    import keras

    model = keras.saving.load_model(out / "model.keras")
    trunk = model.get_layer("trunk")
    convs = [layer for layer in trunk.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [8, 16, 32, 64, 128]
    assert model.get_layer("head_dense").units == 64
    assert [layer.name for layer in model.layers].count("trunk") == 1  # one trunk, called on both views
    assert model.input_shape == [(None, 240, 256), (None, 240, 256)]


def test_dense_baseline_and_no_cache(lariat, env, tmp_path):
    from lartpcdnn.configs import CONFIG_DIR

    argv = ["--Test", "--data", str(lariat), "-C", str(CONFIG_DIR / "Dense_7Class.py"), "-s", "0", "--nocache",
            "--set", "Particles=[\"electron\", \"muon\", \"proton\"]", "--set", "Epochs=1", "--NoAnalysis"]
    assert run(argv) == 0
    md = read_metadata(tmp_path / "TrainedModels.Test" / "LArTPCDNN_Depth2_Width64_lr0.001")
    assert md["Configuration"]["Model"] == "Dense" and md["N_classes"] == 3
    # 2 views x (60 x 64 pooled -> 64 -> 64) + 128 -> 3
    assert md["Parameters"] == 2 * (60 * 64 * 64 + 64 + 64 * 64 + 64) + 128 * 3 + 3
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("*.cache"))


@pytest.mark.parametrize("argv, message", [
    (["-s", "999"], "valid -s values are 0..23"),
    (["--set", "NormScale=0"], "NormScale"),
    (["--set", "Filtres=3"], "did you mean 'Filters'"),
    (["--set", "Particles=[\"electron\", \"tau\"]"], "tau"),
    (["--data", "/nonexistent/lariat"], "/nonexistent/lariat"),
    (["--set", "ScanWindowSize=1000"], "window 1000"),
])
def test_user_errors_are_one_line(lariat, env, tmp_path, capsys, argv, message):
    code = run(["--Test", "--data", str(lariat), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert message in err and len(err.splitlines()) == 1


def test_simulates_the_default_dataset_on_first_use(env, tmp_path):
    from lartpcdnn.ClassificationExperiment import DEFAULTS
    from lartpcdnn.data import setup_data

    config = dict(DEFAULTS, Particles=["muon", "photon"], SimEventsPerClass=10, SimEventsPerFile=5, BatchSize=4,
                  Workers=1, ScanWindowSize=None, DownSampleFactor=16)
    with setup_data(config) as data:
        assert data.data_dir.parent == tmp_path / "data" / "lartpcdnn" and (data.data_dir / "COMPLETE.json").exists()
        assert data.input_shapes == {"induction": (240, 256), "collection": (240, 256)}
        (ind, col), y, energy = data.read_test()
    assert ind.shape == (4, 240, 256) and ind.dtype == np.float16 and y.shape == (4, 2)
    assert np.all((energy >= 0.1) & (energy <= 1.0)) and np.all(np.abs(col) <= 1.0)


def test_efficiency_at_fake_rate_against_roc_curve():
    rng = np.random.default_rng(0)
    for n_b in (50, 300, 1000):
        s, b = rng.normal(2, 1, 400), rng.normal(0, 1, n_b)
        fpr, tpr, _ = roc_curve(np.r_[np.ones(400), np.zeros(n_b)], np.r_[s, b], drop_intermediate=False)
        for f in (0.0, 0.01, 0.1):
            assert efficiency_at_fake_rate(s, b, f) == pytest.approx(tpr[fpr <= f + 1e-12].max())
    assert np.isnan(efficiency_at_fake_rate([], [0.5]))
    # a perfect classifier is 100 % efficient at any fake rate; a random one ~ the fake rate
    y = np.repeat(np.arange(3), 200)
    perfect = np.eye(3)[y]
    table, _, md = efficiency_table(y, perfect, ["a", "b", "c"])
    assert table["efficiency at 1% fake"].tolist() == [1.0, 1.0, 1.0] and md["a_AUC"] == 1.0
    assert md["c_Eff1pctFake"] == 1.0 and table["n_background"].tolist() == [400, 400, 400]
    noise = rng.dirichlet(np.ones(3), 600)
    _, _, md = efficiency_table(y, noise, ["a", "b", "c"], fake_rate=0.1)
    assert all(0.0 <= md[f"{k}_Eff10pctFake"] < 0.25 for k in "abc")
    binned = binned_efficiency(y, perfect, np.tile([0.2, 0.7], 300), [0.0, 0.5, 1.0], ["a", "b", "c"])
    assert binned["n_events"].tolist() == [300, 300] and np.all(binned[["a", "b", "c"]].to_numpy() == 1.0)
