"""lartpcdnn's point models on the 3D deposits: --Test runs of DeepSets, ParticleNet and the transformer
(metrics, saved model, -p resume, -L load), the deposit read against pyarrow, config errors, the comparison
study on a tiny sample."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from dlkit.config import ConfigError
from lartpcdnn.simulate import DEFAULT_PARTICLES, write_dataset

POINT_MODELS = ("DeepSets", "ParticleNet", "Transformer")
#: Small point models and few points: each --Test run takes a few seconds.
SMALL = dict(MaxPoints=32, PointWidth=16, PointDepth=1, Neighbours=4, Heads=2, AUCBootstrap=0, Workers=1,
             EnergyBins=[0.1, 1.0, 3])


@pytest.fixture(scope="module")
def hits(tmp_path_factory):
    root = tmp_path_factory.mktemp("lariat-hits")
    write_dataset(root, DEFAULT_PARTICLES, events_per_class=14, events_per_file=7, seed=3, progress=False,
                  workers=1, hits="parquet")
    return root


def experiment(**kwargs):
    from lartpcdnn.ClassificationExperiment import run

    return run(Test=True, **kwargs)


def reference(files_and_ranges, max_points, energy_min=None):
    """Deposits of the events ``[(file, start, stop)]`` read with pyarrow: sorted by dep_q (descending, stable),
    clipped, scaled by hand ((x - centre) / 20 cm, log(q / MeV)), zero-padded; and the energies."""
    centre = np.array([23.5, 0.0, 45.0])
    points, masks, energies = [], [], []
    for file, start, stop in files_and_ranges:
        table = pq.read_table(file).to_pydict()
        for i in range(start, stop):
            if energy_min is not None and not table["Energy"][i] >= energy_min:
                continue
            q = np.asarray(table["dep_q"][i], np.float64)
            order = np.argsort(-q, kind="stable")[:max_points]
            xyz = np.stack([np.asarray(table[k][i], np.float64) for k in ("dep_x", "dep_y", "dep_z")], 1)
            p = np.zeros((max_points, 4))
            p[:len(order), :3] = (xyz[order] - centre) / 20.0
            p[:len(order), 3] = np.log(q[order])
            points.append(p)
            masks.append(np.arange(max_points) < len(order))
            energies.append(table["Energy"][i])
    return np.array(points), np.array(masks), np.array(energies, np.float32)


@pytest.mark.parametrize("energy_min", [None, 0.4])
def test_deposit_read_equals_pyarrow(hits, env, energy_min):
    from lartpcdnn.ClassificationExperiment import DEFAULTS
    from lartpcdnn.data import setup_data

    config = dict(DEFAULTS, DataDir=str(hits), Model="ParticleNet", MaxPoints=300, BatchSize=8, Workers=1,
                  EnergyMin=energy_min, AllowEmptyClasses=True)
    with setup_data(config) as data:
        assert data.input_shapes == {"deposits": (300, 4), "deposits_mask": (300,)}
        x, y, energy = data.read_test()
        samples = data.test_samples
    assert sorted(x) == ["deposits", "deposits_mask"] and x["deposits"].dtype == np.float32
    points, mask, ref_energy = reference([(s.file, s.start, s.stop) for s in samples], 300, energy_min)
    np.testing.assert_array_equal(energy, ref_energy)
    np.testing.assert_array_equal(x["deposits_mask"], mask)
    np.testing.assert_allclose(x["deposits"], points, rtol=1e-5, atol=1e-5)
    assert mask.sum(1).max() == 300 > mask.sum(1).min()  # some events clipped, some padded
    if energy_min is not None:
        assert len(energy) and energy.min() >= energy_min
    assert y.shape == (len(energy), len(DEFAULT_PARTICLES))


@pytest.mark.parametrize("model", POINT_MODELS)
def test_test_run_of_each_point_model(hits, env, tmp_path, model):
    from dlkit.saving import load_model

    result = experiment(data=str(hits), Model=model, OutputBase=str(tmp_path / "runs"), **SMALL)
    assert result.ok, result.summary
    md = result.wrapper.MetaData
    assert md["Status"] == "completed" and md["Epochs"] == 2 and md["Configuration"]["Model"] == model
    assert md["input_shapes"] == {"deposits": [32, 4], "deposits_mask": [32]}
    assert md["NTestEvents"] == 7 * 3
    for name in DEFAULT_PARTICLES:
        assert 0.0 <= result.metrics[f"{name}_AUC"] <= 1.0
        eff = result.metrics[f"{name}_Eff1pctFake"]
        assert result.metrics[f"{name}_Eff1pctFake_lower"] <= eff <= result.metrics[f"{name}_Eff1pctFake_upper"]
    assert (result.run_dir / "ROC.png").exists() and (result.run_dir / "Efficiency.csv").exists()
    # the saved model loads (dlkit's point layers) and predicts what the trained one does
    saved = load_model(result.run_dir / "model.keras")
    rng = np.random.default_rng(0)
    x = {"deposits": rng.normal(size=(5, 32, 4)).astype(np.float32),
         "deposits_mask": np.arange(32) < np.array([[9], [32], [1], [20], [3]])}
    np.testing.assert_allclose(saved.predict(x, verbose=0), result.wrapper.Model.predict(x, verbose=0), atol=1e-6)
    assert saved.output_shape == (None, 7)


def test_resume_and_load(hits, env, tmp_path):
    common = dict(data=str(hits), Model="DeepSets", OutputBase=str(tmp_path / "runs"), **SMALL)
    first = experiment(Epochs=1, NoAnalysis=True, **common)
    assert first.ok and first.wrapper.MetaData["TotalEpochs"] == 1
    resumed = experiment(Epochs=2, LoadPrevious=True, NoAnalysis=True, **common)  # -p: one more, up to Epochs=2
    md = resumed.wrapper.MetaData
    assert resumed.ok and md["TotalEpochs"] == 2 and len(md["History"]["loss"]) == 1
    assert resumed.run_dir != first.run_dir
    loaded = experiment(LoadModel=str(resumed.run_dir), NoTrain=True, **common)  # -L: the saved model analysed
    assert loaded.ok and loaded.wrapper.MetaData["TotalEpochs"] == 2
    assert 0.0 <= loaded.metrics["electron_Eff1pctFake"] <= 1.0 and (loaded.run_dir / "ROC.png").exists()
    x = {"deposits": np.random.default_rng(1).normal(size=(4, 32, 4)).astype(np.float32),
         "deposits_mask": np.arange(32) < np.array([[32], [7], [1], [16]])}
    np.testing.assert_allclose(loaded.wrapper.Model.predict(x, verbose=0), resumed.wrapper.Model.predict(x, verbose=0),
                               atol=1e-6)
    # dlkit-predict (the prediction_inputs hook) reads the deposits as the run did: the test split's scores
    import pyarrow.parquet as pq

    from dlkit.export.prediction import predict
    from lartpcdnn.data import setup_data

    predict(resumed.run_dir, hits, tmp_path / "scores.parquet", split="test", n_workers=1)
    table = pq.read_table(tmp_path / "scores.parquet").to_pydict()
    with setup_data(resumed.config) as data:
        x_test, y_test, _ = data.read_test()
    expected = resumed.wrapper.Model.predict(x_test, verbose=0)
    np.testing.assert_array_equal(table["true_class"], y_test.argmax(1))  # both in class, file, event order
    scores = np.stack([table[f"score_{c}"] for c in DEFAULT_PARTICLES], 1)
    np.testing.assert_allclose(scores, expected, atol=1e-5)


@pytest.mark.parametrize("entries, message", [
    ({"Model": "PointNet"}, "'Model' = 'PointNet'"),
    ({"Model": "DeepSets", "Hits": "csv"}, "'Hits' = 'csv'"),
    ({"Model": "Transformer", "PointWidth": 16, "Heads": 3}, "'Heads' = 3"),
    ({"Model": "DeepSets", "Pooling": "median"}, "'Pooling' = 'median'"),
    ({"Model": "DeepSets", "MaxPoints": 0}, "'MaxPoints'"),
    ({"Model": "DeepSets", "PointScale": -1.0}, "'PointScale'"),
])
def test_bad_entries_are_one_line_config_errors(hits, env, tmp_path, entries, message):
    with pytest.raises(ConfigError, match=message) as info:
        experiment(data=str(hits), OutputBase=str(tmp_path / "runs"), **entries)
    assert len(str(info.value).splitlines()) == 1


def test_no_deposit_files_is_a_config_error(hits, env, tmp_path):
    with pytest.raises(ConfigError, match="Hits"):
        experiment(data=str(hits), Model="DeepSets", Hits="root", OutputBase=str(tmp_path / "runs"), **SMALL)


def test_mirror_and_scaling():
    from lartpcdnn.data import MirrorDriftPoints
    from lartpcdnn.preprocess import ScaleDeposits

    raw = np.zeros((64, 3, 4), np.float32)
    raw[:, :2] = [[47.0, 20.0, 90.0, np.e], [0.0, -20.0, 0.0, 1.0]]
    mask = np.array([True, True, False])[None].repeat(64, 0)
    batch = ScaleDeposits()({"deposits": raw.copy(), "deposits_mask": mask})
    np.testing.assert_allclose(batch["deposits"][0], [[1.175, 1, 2.25, 1], [-1.175, -1, -2.25, 0], [0, 0, 0, 0]],
                               rtol=1e-6)
    flipped = MirrorDriftPoints(seed=1)({"deposits": batch["deposits"].copy()})["deposits"]
    changed = flipped[:, 0, 0] != batch["deposits"][:, 0, 0]
    assert 10 < changed.sum() < 54  # about half the events, whole events
    np.testing.assert_array_equal(flipped[changed, :2, 0], -batch["deposits"][changed, :2, 0])
    np.testing.assert_array_equal(flipped[:, :, 1:], batch["deposits"][:, :, 1:])
    assert not flipped[:, 2].any()  # padding stays 0


def test_compare_models_tiny(env, tmp_path):
    from lartpcdnn.point_study import compare_models, markdown, sorted_points

    particles = ["electron", "photon", "pion0"]
    table = compare_models(events_per_class=10, epochs=1, seed=2, models=("CNN", "DeepSets"), particles=particles,
                           max_points=16, batch=8,
                           point_config={"PointWidth": 8, "PointDepth": 1, "Neighbours": 4, "Heads": 2},
                           workers=1, chunk=10, cache=tmp_path / "chunks")
    assert list(table["model"]) == ["CNN", "DeepSets"]
    assert table.attrs["events"] == [21, 3, 6] and table.attrs["epochs"] == 1
    for c in particles:
        assert ((table[f"{c}_eff_lower"] <= table[f"{c}_eff"]) & (table[f"{c}_eff"] <= table[f"{c}_eff_upper"])).all()
    assert (table["seconds_per_epoch"] > 0).all() and (table["parameters"] > 0).all()
    assert "| CNN |" in markdown(table)
    assert "the two-view CNN's for electron, photon, pion0" in table.attrs["target"]

    from dlkit.sparse import SparseTensor  # sorted_points: the Collection's order, clipping and count
    st = SparseTensor(np.arange(15, dtype=np.float32).reshape(5, 3), np.array([1, 3, 2, 3, 5], np.float32),
                      np.array([0, 4, 4, 5]))
    pts, count = sorted_points(st, 3)
    assert count.tolist() == [4, 0, 1]
    assert pts[0, :, 3].tolist() == [3, 3, 2] and pts[0, 0, 0] == 3 and pts[0, 1, 0] == 9  # ties: file order
    assert not pts[1].any() and pts[2, 0].tolist() == [12, 13, 14, 5]


def test_points_config_has_one_point_per_model():
    from dlkit.config import load_config
    from lartpcdnn.ClassificationExperiment import DEFAULTS
    from lartpcdnn.configs import CONFIG_DIR
    from lartpcdnn.models import check_model_name

    config, params = load_config(CONFIG_DIR / "Points_7Class.py")
    assert [check_model_name(m) for m in params["Model"]] == ["transformer", "particlenet", "deepsets"]
    assert set(config) <= set(DEFAULTS) and config["PointWidth"] % config["Heads"] == 0
