"""dlkit.export: ONNX export of every model kind the experiments train, checked with onnxruntime on held-out
events; the metadata round trip; one-line errors naming a layer without an ONNX conversion; dlkit-predict's
three formats read back with h5py, pyarrow and uproot; an interrupted prediction; hls4ml's C simulation.

Each model kind is trained once per session (smallest ``--Test`` settings, 1 epoch, no analysis). On JAX and
torch (tests/backends.sh) only ``test_onnx_of_a_model_trained_on_this_backend`` runs: its one small model is
trained on that backend and exported on TensorFlow (a subprocess).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'dlkit[export]')")
pytest.importorskip("tf2onnx", reason="tf2onnx is not installed (pip install 'dlkit[export]')")

import onnxruntime as ort  # noqa: E402

from dlkit.protocol import EXIT_OK, EXIT_USER_ERROR  # noqa: E402

TOL = 1e-5  # float32: onnxruntime against Keras, absolute (scores) and relative (energies in GeV)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The session's data and cache directories (the runs' premixed files and derived datasets go there)."""
    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLKIT_CACHE_DIR", str(root / "cache"))
        mp.setenv("DLKIT_DATA", str(root / "data"))
        mp.setenv("XDG_STATE_HOME", str(root / "state"))
        yield root


def _config(world, name: str, **entries):
    """A config file without a scan grid: every entry given here is the run's."""
    path = world / f"{name}.py"
    path.write_text(f"Config = {entries!r}\n")
    return path


def _train(world, module, data, name, **entries):
    """One --Test run, 1 epoch, no analysis; returns its directory."""
    import importlib

    experiment = importlib.import_module(module)
    result = experiment.run(config=_config(world, name, Epochs=1, **entries), Test=True, data=str(data),
                            OutputBase=world / "runs", NoAnalysis=True, Workers=1)
    assert result.ok, result.summary
    return result.run_dir


class Runs:
    """Each model kind, trained when first asked for: (run directory, data directory)."""

    def __init__(self, world):
        self.world, self.made = world, {}

    def __getitem__(self, kind):
        if kind not in self.made:
            self.made[kind] = getattr(self, kind.replace("-", "_"))()
        return self.made[kind]

    def lcd(self):
        from calodnn.simulate import write_dataset

        root = self.world / "lcd"
        if not root.exists():
            write_dataset(root, events_per_class=150, events_per_file=75, seed=5, progress=False, workers=1)
        return root

    def calo_dense(self):  # the small classifier: HCAL only, standardized (fitted constants in MetaData)
        return _train(self.world, "calodnn.ClassificationExperiment", self.lcd(), "dense", ECAL=False, Width=16,
                      Depth=1, optimizer="Adam", lr=0.003, BatchSize=64, Standardize=["HCAL"]), self.lcd()

    def calo_cnn(self):  # the 3D CNN on ECAL beside a dense HCAL branch
        return _train(self.world, "calodnn.ClassificationExperiment", self.lcd(), "cnn", Model="CNN", CNNFilters=2,
                      Depth=1, Width=8, optimizer="Adam", lr=0.001, BatchSize=64, MaxEvents=300), self.lcd()

    def calo_calibration(self):  # the layer-sum calibration MLP on raw visible energies
        from calodnn.configs import REGRESSION_SIM_CONFIG
        from calodnn.simulate import CaloSimConfig, write_dataset

        root = self.world / "lcd-raw"
        write_dataset(root, particles=("Ele", "Gamma"), events_per_class=300, events_per_file=300, seed=6,
                      config=CaloSimConfig(**REGRESSION_SIM_CONFIG), progress=False, workers=1)
        return _train(self.world, "calodnn.RegressionExperiment", root, "calib", Model="LayerMLP", Width=16, Depth=2,
                      loss="MRSE", Particles=["Ele", "Gamma"], BatchSize=64, lr=0.003), root

    def lartpc_cnn(self):  # the two-view (siamese) CNN
        from lartpcdnn.simulate import write_dataset

        root = self.world / "lariat"
        particles = ["electron", "muon", "proton"]
        write_dataset(root, particles, events_per_class=10, events_per_file=5, seed=3, truth3d=False,
                      progress=False, workers=1)
        return _train(self.world, "lartpcdnn.ClassificationExperiment", root, "lartpc", Particles=particles,
                      Filters=2, Depth=1, Width=8, BatchSize=8), root

    def waves(self):
        from clustercount.simulate import write_dataset

        root = self.world / "waves"
        if not root.exists():
            write_dataset(root, n_waveforms=400, waveforms_per_file=200, seed=3, progress=False, workers=1)
        return root

    def _derived(self, kind):
        return next((self.world / "data" / "clustercount").glob(f"{kind}-*"))

    def peak_lstm(self):  # the LSTM peak finder
        run = _train(self.world, "clustercount.PeakFindingExperiment", self.waves(), "peaks", Neurons=4,
                     MaxEvents=3000, BatchSize=250, lr=0.001)
        return run, self._derived("peaks")

    def cluster_cnn(self):  # the 1D CNN cluster counter (on the derivative algorithm's peaks)
        run = _train(self.world, "clustercount.ClusterizationExperiment", self.waves(), "clusters",
                     PeakModel="derivative", PID=False, Filters=2, ConvLayers=1, Neurons=8, BatchSize=100,
                     lr=0.001)
        return run, self._derived("clusters")


@pytest.fixture(scope="session")
def runs(world):
    return Runs(world)


KINDS = ["calo_dense", "calo_cnn", "calo_calibration", "lartpc_cnn", "peak_lstm", "cluster_cnn"]


def _held_out(run_dir, data):
    """The run's test-split events, pre-processed as its inputs (in dlkit-predict's order)."""
    from dlkit.export import read_events_of

    return read_events_of(run_dir, data, split="test", n_workers=1)


def _keras(run_dir):
    from dlkit.saving import load_model

    return load_model(run_dir / "model.keras", compile=False)


def _ort(path, x_by_name):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.asarray(x_by_name[i.name], np.float32) for i in session.get_inputs()}
    return session, session.run(None, feeds)


def _jsonable(value):
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_equals_keras_on_held_out_events_and_metadata_round_trips(runs, kind):
    """The held-out (test split) events of each --Test run - a few dozen to a few hundred, all there are -
    through onnxruntime and Keras: equal to 1e-5; the metadata read back is what the run says."""
    from dlkit.export import export_onnx, load_run, read_onnx_metadata
    from dlkit.metadata import read_metadata

    run_dir, data = runs[kind]
    path = export_onnx(run_dir)
    assert path == run_dir / "model.onnx"
    run = load_run(run_dir)
    events = _held_out(run_dir, data)
    x = {name: events[name] for name in run.recipe.inputs}
    n = len(next(iter(x.values())))
    assert n >= 6, n
    session, got = _ort(path, x)
    model = _keras(run_dir)
    want = model.predict([x[t.name] for t in model.inputs] if len(model.inputs) > 1 else x[model.inputs[0].name],
                         verbose=0)
    np.testing.assert_allclose(got[0], want, rtol=TOL, atol=TOL)

    meta = read_onnx_metadata(path)
    described = _jsonable(run.describe(model))
    for key in ("dlkit_version", "run_name", "experiment", "config_sha256", "hyperparam_hash", "inputs", "outputs",
                "preprocessing", "fitted", "class_names", "configuration"):
        assert meta[key] == described[key], key
    md = read_metadata(run_dir)
    assert meta["fitted"] == md.get("Fitted") and meta["configuration"] == md["Configuration"]
    assert [i.name for i in session.get_inputs()] == [spec["name"] for spec in meta["inputs"]]
    assert [o.name for o in session.get_outputs()] == [spec["name"] for spec in meta["outputs"]]
    for spec, i in zip(meta["inputs"], session.get_inputs()):
        assert spec["dtype"] == "float32" and i.type == "tensor(float)" and i.shape[0] == "batch"
        assert spec["shape"][1:] == list(i.shape[1:])
    assert meta["check"]["max_rel_diff"] < 1e-4 and meta["exporter"].startswith("keras ")
    output = meta["outputs"][0]
    if kind in ("calo_dense", "calo_cnn", "lartpc_cnn"):
        assert output["kind"] == "classification" and output["classes"] == md["Configuration"]["Particles"]
        assert output["columns"] == [f"score_{c}" for c in output["classes"]]
    elif kind == "calo_calibration":
        assert (output["target"], output["unit"], output["columns"]) == ("energy", "GeV", ["energy_pred"])
    elif kind == "peak_lstm":
        assert output["kind"] == "binary classification" and output["columns"] == ["score_signal"]
    else:
        assert (output["target"], output["unit"]) == ("n_clusters", "clusters")
    if kind == "calo_dense":  # the fitted constants, and the order they are applied in
        steps = meta["preprocessing"]
        assert [s["step"] for s in steps] == ["Normalize", "Standardize"]
        assert steps[1]["constants"]["HCAL"]["center"] == md["Fitted"]["Standardize"]["constants"]["HCAL"]["center"]


def test_onnx_of_a_model_trained_on_this_backend(runs):
    """On JAX and torch (tests/backends.sh) the run is trained on that backend and exported on TensorFlow in a
    subprocess; onnxruntime equals this backend's Keras on the held-out events."""
    import keras

    from dlkit.export import export_onnx, read_onnx_metadata

    run_dir, data = runs["calo_dense"]
    out = run_dir / f"model-{keras.backend.backend()}.onnx"
    export_onnx(run_dir, out)
    assert read_onnx_metadata(out)["trained_backend"] == keras.backend.backend()
    events = _held_out(run_dir, data)
    _, got = _ort(out, {"HCAL": events["HCAL"]})
    want = _keras(run_dir).predict(events["HCAL"], verbose=0)
    np.testing.assert_allclose(got[0], want, rtol=TOL, atol=TOL)


def _fake_run(directory, model, name="Custom_run"):
    """A run directory holding ``model`` (what dlkit saves, minus the training)."""
    from dlkit.metadata import file_sha256

    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / "model.keras")
    md = {"Name": name, "Status": "completed", "History": {}, "Configuration": {"Seed": 0},
          "ModelSHA256": file_sha256(directory / "model.keras")}
    (directory / "MetaData.json").write_text(json.dumps(md))
    return directory


def test_a_layer_without_onnx_conversion_is_one_line_naming_it(tmp_path, capsys):
    import keras
    import tensorflow as tf

    from dlkit.export import ExportError, export_onnx
    from dlkit.export.cli import export_main

    @keras.saving.register_keras_serializable(package="dlkit_test_export")
    class SortInPython(keras.layers.Layer):
        def call(self, x):
            y = tf.numpy_function(lambda a: np.sort(a, axis=-1), [x], tf.float32)
            y.set_shape(x.shape)
            return y

    inp = keras.Input((8,), name="x")
    out = keras.layers.Dense(1, name="out")(SortInPython(name="python_sort")(keras.layers.Dense(4, name="d0")(inp)))
    run = _fake_run(tmp_path / "run", keras.Model(inp, out))
    with pytest.raises(ExportError) as caught:
        export_onnx(run)
    message = str(caught.value)
    assert "layer 'python_sort' (SortInPython)" in message and "PyFunc" in message and "\n" not in message
    capsys.readouterr()
    assert export_main([str(run)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err == f"error: {message}" and len(err.splitlines()) == 1
    assert not (run / "model.onnx").exists()
    assert export_main([str(tmp_path / "missing")]) == EXIT_USER_ERROR
    assert "no such run directory" in capsys.readouterr().err


def _read(path):
    """A score file back with its own reader: {column: numpy array}."""
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path) as f:
            return {k: f[k][()] for k in f}, dict(f.attrs)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[b"dlkit.jagged"])["metadata"]  # dlkit.jagged's layout
        return {name: table.column(name).to_numpy() for name in table.column_names}, meta
    import uproot

    from dlkit.jagged import read_metadata

    with uproot.open(path) as f:
        return {k: np.asarray(v) for k, v in f["events"].arrays(library="np").items()}, read_metadata(path)


def test_predict_writes_the_three_formats_in_file_order(runs, tmp_path, capsys):
    """dlkit-predict on the whole dataset: HDF5, parquet and ROOT read back with h5py, pyarrow and uproot equal
    model.predict on the same events in the same order; --onnx equals Keras; truth and provenance are right."""
    from dlkit.export import predict, read_events_of
    from dlkit.export.cli import predict_main

    run_dir, data = runs["calo_dense"]
    events = read_events_of(run_dir, data, n_workers=1)
    want = _keras(run_dir).predict(events["HCAL"], verbose=0)
    classes = ["Ele", "Gamma", "Pi0", "ChPi"]
    files = sorted({str(p) for c in classes for p in (data / c).glob("*.h5")})
    capsys.readouterr()
    assert predict_main([str(run_dir), "--data", str(data), "--out", str(tmp_path / "s.root"), "--workers", "1",
                         "--batch-size", "100"]) == EXIT_OK
    assert "s.root: 600 events, columns score_Ele" in capsys.readouterr().out
    predict(run_dir, data, tmp_path / "s.h5", n_workers=1, batch_size=128)
    result = predict(run_dir, data, tmp_path / "s.parquet", onnx=True, n_workers=1)
    assert result.events == 600 and result.columns[:4] == [f"score_{c}" for c in classes]
    for name in ("s.root", "s.h5", "s.parquet"):
        cols, meta = _read(tmp_path / name)
        assert list(cols)[:4] == result.columns[:4] and set(cols) == set(result.columns)
        scores = np.stack([cols[f"score_{c}"] for c in classes], axis=1)
        np.testing.assert_allclose(scores, want, rtol=TOL, atol=TOL, err_msg=name)
        source = json.loads(meta["source_files"])
        assert sorted(source) == files and json.loads(meta["class_names"]) == classes
        assert meta["run_name"] == run_dir.name and meta["experiment"] == "calodnn.ClassificationExperiment"
        entry_file = [source.index(f) for f in _entry_files(run_dir, data)]
        np.testing.assert_array_equal(cols["source_file"], np.asarray(entry_file)[events["_entry"]])
        np.testing.assert_array_equal(cols["event"], events["_event"])
        np.testing.assert_array_equal(cols["true_class"], events["class_index"])
        np.testing.assert_array_equal(cols["true_energy"], events["energy"])
    assert (cols["event"] < 75).all() and len(np.unique(cols["source_file"])) == 8  # 2 files of 75 per class


def _entry_files(run_dir, data):
    from dlkit.export import load_run
    from dlkit.export.prediction import _samples

    return [s.file for s in _samples(load_run(run_dir), data, None)[0]]


def test_an_interrupted_prediction_leaves_no_file(runs, tmp_path, monkeypatch):
    import dlkit.export.prediction as predict_module

    run_dir, data = runs["calo_dense"]
    real = predict_module._keras_runner
    calls = []

    def interrupted_after_one_batch(run):
        run_batch, model_file, model = real(run)

        def once(batch):
            calls.append(len(batch["HCAL"]))
            if len(calls) > 1:
                raise KeyboardInterrupt
            return run_batch(batch)

        return once, model_file, model

    monkeypatch.setattr(predict_module, "_keras_runner", interrupted_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        predict_module.predict(run_dir, data, tmp_path / "scores.h5", n_workers=1, batch_size=100)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []  # neither the file nor its hidden temporary


def _hls_or_skip():
    pytest.importorskip("hls4ml", reason="hls4ml is not installed (pip install 'dlkit[export]')")
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no g++ on this machine: hls4ml's C simulation is compiled with it")


def test_hls4ml_classifier_auc_equals_keras(runs):
    """The small classifier (HCAL only, dense) as an hls4ml project at ap_fixed<24,10>: the C simulation's
    one-vs-rest AUCs on the held-out events within 0.005 of Keras'."""
    _hls_or_skip()
    from sklearn.metrics import roc_auc_score

    from dlkit.export import export_hls4ml, read_events_of

    run_dir, data = runs["calo_dense"]
    project = export_hls4ml(run_dir, precision="ap_fixed<24,10>").compile()
    assert (project.path / "dlkit_hls4ml.json").is_file() and project.upstream is None
    info = json.loads((project.path / "dlkit_hls4ml.json").read_text())
    assert info["precision"] == "ap_fixed<24,10>" and info["class_names"] == ["Ele", "Gamma", "Pi0", "ChPi"]
    events = read_events_of(run_dir, data, n_workers=1)  # every event: the AUCs then rest on 600, not 120
    keras_scores = _keras(run_dir).predict(events["HCAL"], verbose=0)
    hls_scores = project.predict(events["HCAL"]).reshape(keras_scores.shape)
    truth = events["class_index"]
    for k in range(keras_scores.shape[1]):
        auc_keras = roc_auc_score(truth == k, keras_scores[:, k])
        auc_hls = roc_auc_score(truth == k, hls_scores[:, k])
        assert abs(auc_hls - auc_keras) < 0.005, (k, auc_keras, auc_hls)


def test_hls4ml_calibration_resolution_at_fixed_energies(runs, world):
    """calodnn's layer-sum calibration MLP as firmware on the per-layer sums: at 20, 50, 100 and 200 GeV
    (photons, simulated apart) the C simulation's resolution sigma/E within 2 % of Keras'."""
    _hls_or_skip()
    from calodnn.configs import REGRESSION_SIM_CONFIG
    from calodnn.simulate import CaloSimConfig, simulate_events

    from dlkit.export import export_hls4ml, load_run

    run_dir, _ = runs["calo_calibration"]
    project = export_hls4ml(run_dir).compile()
    assert project.firmware.inputs[0].shape[1:] == (25 + 60,)  # starts at the per-layer energies
    run = load_run(run_dir)
    rng = np.random.default_rng(11)
    model = _keras(run_dir)
    for energy in (20.0, 50.0, 100.0, 200.0):
        cells = simulate_events("Gamma", 300, rng, CaloSimConfig(**REGRESSION_SIM_CONFIG),
                                energies=np.full(300, energy))
        batch = run.preprocess()({k: np.asarray(cells[k], np.float32) for k in ("ECAL", "HCAL")})
        x = [batch["ECAL"], batch["HCAL"]]
        e_keras = model.predict(x, verbose=0).reshape(-1)
        e_hls = project.predict(x).reshape(-1)
        res_keras, res_hls = np.std(e_keras) / np.mean(e_keras), np.std(e_hls) / np.mean(e_hls)
        assert abs(res_hls / res_keras - 1) < 0.02, (energy, res_keras, res_hls)
        assert abs(np.mean(e_hls) / np.mean(e_keras) - 1) < 0.01, energy
