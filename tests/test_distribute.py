"""dlkit.distribute: DataParallel over 2 devices trains the weights one device trains (JAX: 2 virtual CPU devices,
TensorFlow: 2 logical CPUs; in subprocesses, since the device count is set before the backend starts), also
with a last batch that does not split evenly; torch is refused in one line (exit 2); each Precision trains a
--Test run whose saved model loads and predicts in float32; 2 Slurm tasks (srun -n 2, JAX) train one model:
every event once per epoch over the two, one run directory, the same weights on both, a SIGTERM to the job
saves once and both exit 75, -p resumes both; the Slurm engine's --ntasks-per-point/--gpus-per-point.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from slurm_fixture import slurm  # noqa: F401  (the fixture)

import keras
from calodnn.simulate import write_dataset
from dlkit.distribute import EvenBatches, PRECISIONS, float32_outputs
from dlkit.scan.engines.slurm import SlurmEngine
from dlkit.scan.ledger import ScanError

SCRIPT = Path(__file__).parent / "scripts" / "data_parallel_same_weights.py"


@pytest.fixture(scope="module")
def lcd(tmp_path_factory):
    path = tmp_path_factory.mktemp("lcd")
    write_dataset(path, events_per_class=300, events_per_file=150, seed=5, progress=False)
    return path


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_two_devices_train_the_weights_of_one(backend, lcd, env, tmp_path):
    """Global batch 26 over 2 devices; 423 training events: the last batch (7) is padded to 8 at weight 0."""
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (tests/backends.sh runs the jax case)")
    if backend == "jax" and os.environ.get("KERAS_BACKEND") == "torch":
        pytest.skip("tests/backends.sh runs it in its jax pass")
    env = dict(env, KERAS_BACKEND=backend, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    extra = ["BatchSize=26", "MaxEvents=605", 'Particles=["Ele", "Gamma", "Pi0"]']
    done = subprocess.run([sys.executable, str(SCRIPT), str(lcd), str(tmp_path / "out"), *extra], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    one, two = result["devices"]
    assert one["replicas"] == 1 and two["replicas"] == 2 and two["data_parallel"] and two["backend"] == backend
    assert result["padded"] == [7, 8]  # (the check is not vacuous: the uneven last batch was trained)
    assert result["max_abs_diff"] < 1e-5


def test_data_parallel_on_torch_is_refused_in_one_line(lcd, tmp_path, monkeypatch, capsys):
    from calodnn import ClassificationExperiment

    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    code = ClassificationExperiment.cli(["--Test", "--data", str(lcd), "--OutputBase", str(tmp_path / "out"),
                                         "--set", "DataParallel=true"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert "'DataParallel'" in err and "torch" in err and "KERAS_BACKEND=jax" in err
    assert not (tmp_path / "out").exists()  # refused before any data or run directory


def test_even_batches_keep_the_loss_of_the_batch():
    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            n = 4 if i == 0 else 3
            return {"a": np.arange(n * 2, dtype="float32").reshape(n, 2)}, np.arange(n, dtype="float32")

    even = EvenBatches(Batches(), 2)
    assert len(even) == 2 and isinstance(even, keras.utils.PyDataset)
    x, y, w = even[0]
    assert len(y) == 4 and np.all(w == 1)
    x, y, w = even[1]
    assert x["a"].shape == (4, 2) and np.array_equal(y, [0, 1, 2, 0]) and np.array_equal(x["a"][3], [0, 1])
    np.testing.assert_allclose(w, [4 / 3, 4 / 3, 4 / 3, 0])
    loss = keras.losses.MeanSquaredError()
    target = np.full(3, 0.5, "float32")
    padded_target = np.concatenate([target, target[:1]])
    assert float(loss(y[:, None], padded_target[:, None], sample_weight=w)) == pytest.approx(
        float(loss(y[:3, None], target[:, None])), rel=1e-6)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_precision_trains_a_test_run_and_the_saved_model_predicts_float32(precision, lcd, env, tmp_path):
    from calodnn import ClassificationExperiment
    from dlkit.saving import load_model

    result = ClassificationExperiment.run(Test=True, data=lcd, OutputBase=tmp_path / "out", NoAnalysis=True,
                                          BatchSize=64, Precision=precision)
    assert result.exit_code == 0
    assert keras.config.dtype_policy().name == "float32"  # the run put the process' policy back
    md = json.loads((result.run_dir / "MetaData.json").read_text())
    assert md["Devices"]["precision"] == precision and md["Configuration"]["Precision"] == precision
    assert all(isinstance(v, float) and np.isfinite(v) for v in md["History"]["loss"] + md["History"]["val_loss"])
    model = load_model(result.run_dir / "model.keras", compile=False)  # (predicting: no optimizer)
    policies = {layer.dtype_policy.name for layer in model.layers if layer.weights}
    assert policies == ({"float32"} if precision == "float32" else {precision, "float32"})
    assert model.get_layer("classes").dtype_policy.name == "float32"  # the outputs' layer
    scaled = isinstance(result.wrapper.Model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (precision == "mixed_float16")  # loss scaling with float16 only
    x = {i.name: np.random.default_rng(0).random((5, *i.shape[1:]), dtype="float32") for i in model.inputs}
    predicted = model.predict(x, verbose=0)
    assert predicted.dtype == np.float32 and np.allclose(predicted.sum(axis=1), 1, atol=1e-3)


def test_float32_outputs_leaves_a_float32_model_alone():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    assert float32_outputs(model) == []


def test_gpu_check_without_a_gpu_stops_in_one_line(env, tmp_path):
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script)], env=dict(env, CUDA_VISIBLE_DEVICES="", KERAS_BACKEND="jax"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.startswith("gpu_check:")]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "no GPU" in lines[0] or "JAX is not installed" in lines[0]
    assert done.stdout == ""


TWO_TASKS = Path(__file__).parent / "scripts" / "two_tasks.py"


def test_two_slurm_tasks_train_one_model_stop_together_and_resume(slurm, env, tmp_path):  # noqa: F811
    """43 events in batches of 8 (6 per epoch; the last, 3, padded to 4 and split 2 + 2 at weight 0 for one copy)
    over 2 tasks of one CPU each; SIGTERM to the job (scancel) in epoch 2, then -p."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (tests/backends.sh runs this test in its jax pass)")
    if os.environ.get("KERAS_BACKEND") == "torch":
        pytest.skip("tests/backends.sh runs it in its jax pass")
    data, out, record = tmp_path / "data", tmp_path / "out", tmp_path / "record"
    data.mkdir(), record.mkdir()
    rng = np.random.default_rng(3)
    ids = []
    for k, (name, n) in enumerate((("a", 21), ("b", 22))):
        with h5py.File(data / f"{name}.h5", "w") as f:
            f["X"] = (rng.normal(size=(n, 4)) + k).astype(np.float32)
        ids += [k * 1000 + i for i in range(n)]
    env = dict(env, KERAS_BACKEND="jax", DLKIT_RECORD=str(record))
    srun = ["srun", "-n", "2", "--time=5", sys.executable, str(TWO_TASKS), "--data", str(data), "--OutputBase",
            str(out)]
    stopped = subprocess.run(srun, env=dict(env, DLKIT_SCANCEL_AT="8"), cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert [p.name for p in out.iterdir()] == ["Two"]  # one run directory: rank 0's
    first = json.loads((out / "Two" / "MetaData.json").read_text())
    assert first["Status"] == "interrupted" and first["TotalEpochs"] == 1 and first["MidEpoch"]["epoch"] == 1
    assert first["Devices"]["processes"] == 2 and first["Devices"]["replicas"] == 2

    resumed = subprocess.run([*srun, "-p"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.count(f"continuing epoch 2 at batch {first['MidEpoch']['batch'] + 1} of 6") == 2
    assert sorted(p.name for p in out.iterdir()) == ["Two", "Two.1"]
    last = json.loads((out / "Two.1" / "MetaData.json").read_text())
    assert last["Status"] == "completed" and last["TotalEpochs"] == 2 and last["InputDir"] == str(out / "Two")

    records = [json.loads(p.read_text()) for p in sorted(record.glob("task*.json"))]
    assert sorted(r["rank"] for r in records) == [0, 0, 1, 1]
    trained = {0: {}, 1: {}}  # rank -> stream position -> event ids (both runs)
    for r in records:
        trained[r["rank"]].update({int(k): v for k, v in r["trained"].items()})
    for epoch in range(2):
        served = [i for rank in (0, 1) for position, batch in trained[rank].items() if position // 6 == epoch
                  for i in batch]
        assert sorted(served) == ids, f"epoch {epoch + 1}: not every event exactly once over the two processes"
        assert all(any(position // 6 == epoch for position in trained[rank]) for rank in (0, 1))
    final = {r["rank"]: r["weights"] for r in records if r["mid_epoch"] is None}
    assert final[0] == final[1]  # one model
    from dlkit.saving import load_model

    saved = load_model(out / "Two.1" / "model.keras").get_weights()
    assert all(np.array_equal(a, np.asarray(b, np.float32)) for a, b in zip(saved, final[0]))


def test_slurm_engine_gives_a_point_tasks_and_gpus(tmp_path):
    from scan_helpers import write_config

    from dlkit.scan.api import open_scan

    ledger = open_scan("toy", write_config(tmp_path, n=2), name="tasks", output_base=tmp_path / "TrainedModels")
    where = dict(python="python", pythonpath=None, workdir=str(tmp_path))
    text = SlurmEngine().write_script(ledger, [0, 1], ntasks_per_point=2, gpus_per_point=8, **where)
    assert "#SBATCH --ntasks=2\n" in text and "#SBATCH --gpus-per-task=4\n" in text
    assert "export DLKIT_POINT_TASKS=2\n" in text
    plain = SlurmEngine().write_script(ledger, [0, 1], **where)
    assert "--ntasks" not in plain and "DLKIT_POINT_TASKS" not in plain and "gpus-per-task" not in plain
    for options, message in ((dict(ntasks_per_point=2, gpus_per_point=3), "does not split over"),
                             (dict(gpus_per_point=1, gres="gpu:1"), "use one of them"),
                             (dict(ntasks_per_point=0), "must be an integer >= 1")):
        with pytest.raises(ScanError, match=message):
            SlurmEngine().write_script(ledger, [0], **where, **options)
