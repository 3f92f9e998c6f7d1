"""calodnn's point models on hit lists: what the readers serve against a plain pyarrow read, a --Test run of
each point model in both experiments (trained, saved, analysed, resumed with -p, loaded with -L), and the
multi-task network's two heads."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from calodnn.simulate import write_dataset
from dlkit.metadata import read_metadata

from calodnn.configs import CONFIG_DIR

POINT_MODELS = ("DeepSets", "ParticleNet", "Transformer")
CONFIG = CONFIG_DIR / "Points_4Class.py"


@pytest.fixture(scope="module")
def hits(tmp_path_factory):
    root = tmp_path_factory.mktemp("lcd-hits")
    write_dataset(root, events_per_class=240, events_per_file=120, seed=5, progress=False, hits="parquet")
    return root


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("DLKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def small(data, *extra):
    return ["--Test", "--data", str(data), "--set", "BatchSize=64", "--set", "EnergyBins=[10, 510, 4]",
            "--set", "lr=0.003", *extra]


def points(data, model, multitask=False, *extra):
    """The point-model scan (calodnn/configs/Points_4Class.py) at the model's point."""
    index = 2 * POINT_MODELS.index(model) + int(multitask)
    return small(data, "-C", str(CONFIG), "-s", str(index), *extra)


def runs(tmp_path):
    return sorted((tmp_path / "TrainedModels.Test").iterdir(), key=lambda p: p.stat().st_mtime_ns)


def test_the_readers_serve_the_most_energetic_hits_scaled(hits, env):
    """The test split's first events against pyarrow: sorted by energy, clipped, scaled, masked."""
    from calodnn.ClassificationExperiment import DEFAULTS
    from calodnn.data import setup_data

    config = {**DEFAULTS, "DataDir": str(hits), "Model": "DeepSets", "MaxPoints": 24, "Premix": False,
              "Cache": False, "Workers": 1}
    with setup_data(config) as data:
        first = data.test_samples[0]
        arrays = data.read_test_arrays(data.class_names, data.normalize)
    table = pq.read_table(first.file).slice(first.start, 5).to_pydict()
    for i in range(5):
        e = np.asarray(table["hit_e"][i], np.float32)
        order = np.argsort(-e, kind="stable")[:24]
        x, y = (np.asarray(table[k][i], np.float64)[order] for k in ("hit_x", "hit_y"))
        w = e[order] / e[order].sum()  # positions from the kept hits' energy-weighted centroid
        expect = np.stack([(x - w @ x) / 10, (y - w @ y) / 10,
                           np.asarray(table["hit_z"][i], np.float32)[order] / 250,
                           np.log10(e[order]), np.asarray(table["hit_det"][i], np.float32)[order]], axis=1)
        n = len(order)
        assert arrays["hits_count"][i] == len(e) and arrays["hits_mask"][i].sum() == n
        np.testing.assert_allclose(arrays["hits"][i, :n], expect, rtol=1e-5, atol=1e-5)
        assert not arrays["hits"][i, n:].any()  # padding stays 0
    assert arrays["energy"][0] == pytest.approx(table["energy"][0])


@pytest.mark.parametrize("model", POINT_MODELS)
def test_each_point_model_trains_resumes_and_loads(model, hits, env, tmp_path):
    from calodnn.ClassificationExperiment import cli

    assert cli(points(hits, model, False, "--set", "Epochs=1")) == 0
    (out,) = runs(tmp_path)
    md = read_metadata(out)
    assert md["Status"] == "completed" and md["Configuration"]["Model"] == model
    assert md["input_shapes"]["hits"] == [32, 5]  # --Test: 32 points of 5 features
    assert md["ChPi_AUC"] > 0.8  # charged pions leave the ECAL: easy even after one epoch on tiny data
    assert cli(points(hits, model, False, "--set", "Epochs=2", "-p", "--NoAnalysis")) == 0  # resumed: 2 epochs
    resumed = read_metadata(runs(tmp_path)[-1])
    assert resumed["TotalEpochs"] == 2 and resumed["Status"] == "completed"


def test_multi_task_network_reports_aucs_and_the_resolution_fit(hits, env, tmp_path):
    from calodnn.ClassificationExperiment import cli

    assert cli(points(hits, "DeepSets", True, "--set", "Epochs=3")) == 0
    (out,) = runs(tmp_path)
    md = read_metadata(out)
    assert md["Loss"] == {"classes": "categorical_crossentropy", "energy": "MRSE"}
    assert {"classes_loss", "energy_loss", "val_energy_loss"} <= set(md["History"])
    for p in ("Ele", "Gamma", "Pi0", "ChPi"):
        assert 0.0 <= md[f"{p}_AUC"] <= 1.0 and f"{p}_Resolution_a" in md
    # the energy head starts from the calibrated hit sum: the electrons' energy is within 20 % already
    assert abs(md["Ele_MeanRelativeBias"]) < 0.2
    assert (out / "ResolutionFit.csv").exists() and (out / "Resolution.png").exists()
    # dlkit-predict (calodnn's prediction_inputs hook) reads the hits as the run did: both heads' test scores
    import pyarrow.parquet as pq

    from calodnn.data import setup_data
    from dlkit.export.prediction import predict

    predict(out, hits, tmp_path / "scores.parquet", split="test", n_workers=1)
    table = pq.read_table(tmp_path / "scores.parquet").to_pydict()
    with setup_data(md["Configuration"]) as data:
        x_test, y_test, _ = data.read_test()
    from dlkit.saving import load_model

    expected = load_model(out / "model.keras", compile=False).predict(x_test, verbose=0)
    np.testing.assert_array_equal(table["true_class"], y_test.argmax(1))
    scores = np.stack([table[f"score_{c}"] for c in ("Ele", "Gamma", "Pi0", "ChPi")], 1)
    np.testing.assert_allclose(scores, expected["classes"], atol=1e-5)
    np.testing.assert_allclose(table["energy_pred"], expected["energy"][:, 0], rtol=1e-5)
    assert cli(points(hits, "DeepSets", True, "--set", "Epochs=1", "-L", str(out))) == 0  # loaded, trained on
    loaded = read_metadata(runs(tmp_path)[-1])
    assert loaded["TotalEpochs"] == 4 and "Ele_Resolution_a" in loaded


@pytest.mark.parametrize("model", POINT_MODELS)
def test_regression_with_each_point_model(model, hits, env, tmp_path):
    from calodnn.RegressionExperiment import cli

    # -s 2: loss MRSE; the classification hits are calibrated: a hit sum / 100 is the energy / EnergyScale
    assert cli(small(hits, "-s", "2", "--set", f"Model={model}", "--set", 'Particles=["Ele", "Gamma"]',
                     "--set", "ECALNorm=100", "--set", "HCALNorm=100", "--set", "Epochs=1")) == 0
    (out,) = runs(tmp_path)
    md = read_metadata(out)
    assert md["Status"] == "completed" and md["Configuration"]["Model"] == model
    assert md["Loss"] == "MRSE"
    for p in ("Ele", "Gamma"):  # the head starts from the hit sums
        assert abs(md[f"{p}_MeanRelativeBias"]) < 0.2 and md[f"{p}_Resolution_a"] >= 0


def test_bad_point_model_entries_are_one_line_errors(hits, env, capsys):
    from calodnn.ClassificationExperiment import cli

    assert cli(points(hits, "DeepSets", False, "--set", "MaxPoints=0")) == 2
    assert "MaxPoints" in capsys.readouterr().err
    assert cli(small(hits, "--set", "Model=Dense", "--set", "MultiTask=1")) == 2
    assert "MultiTask" in capsys.readouterr().err
    assert cli(points(hits, "Transformer", False, "--set", "Heads=3")) == 2
    assert "'Heads' = 3" in capsys.readouterr().err
    assert cli(points(hits, "DeepSets", False, "--set", "Hits=csv")) == 2
    assert "'Hits'" in capsys.readouterr().err
    assert cli(small(hits, "--set", "Model=PointNet")) == 2
    assert "'Model'" in capsys.readouterr().err
