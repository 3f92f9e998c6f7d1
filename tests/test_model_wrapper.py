"""dlkit.ModelWrapper: output directories, atomic saves, metadata, resume chains, optimizers."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import keras
from dlkit import ModelWrapper
from dlkit.metadata import read_saved_pair
from dlkit.model_wrapper import MetaDataError, chained_history, read_metadata, to_jsonable

SCRIPTS = Path(__file__).parent / "scripts"


class Dense(ModelWrapper):
    def Build(self):
        inputs = keras.Input((4,))
        x = inputs
        for _ in range(self.Config.get("Depth", 1)):
            x = keras.layers.Dense(self.Config.get("Width", 8), activation="relu")(x)
        self.Model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(128, 4)).astype("float32")
    labels = (x[:, 0] > 0).astype(int)
    return x, keras.utils.to_categorical(labels, 2)


def make(tmp_path, name="Dense", **kw):
    wrapper = Dense(name, OutputBase=tmp_path / "TrainedModels", Config={"Width": 8, "Depth": 1}, **kw)
    wrapper.Build()
    wrapper.BuildOptimizer("Adam", lr=0.01)
    wrapper.Compile(Loss="categorical_crossentropy", Metrics=["accuracy"])
    return wrapper


def test_train_save_metadata(tmp_path, data):
    x, y = data
    wrapper = make(tmp_path, ScanPoint={"Width": 8, "Depth": 1}, HyperParamSet=3)
    wrapper.Train(x, y, Epochs=3, BatchSize=32, validation_data=(x, y), verbose=0)
    out = wrapper.Save()
    assert out == tmp_path / "TrainedModels" / "Dense"
    md = read_metadata(out)
    assert md["Status"] == "completed" and md["StopReason"] == "completed 3 epochs"
    assert md["Epochs"] == 3 and len(md["EpochTime"]) == 3
    assert set(md["History"]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in md["History"].values())
    assert md["Configuration"] == {"Width": 8, "Depth": 1}
    assert md["HyperParamSet"] == 3 and len(md["HyperParamHash"]) == 8
    assert md["Width"] == 8 and md["Depth"] == 1  # scanned values as top-level keys (ScanTable)
    assert md["Optimizer"] == "Adam" and md["Loss"] == "categorical_crossentropy"
    prov = md["Provenance"]
    assert prov["keras_version"] == keras.__version__ and prov["backend"] == keras.backend.backend()
    assert prov["dlkit_version"] and prov["host"] and md["StartTime"] and md["EndTime"]
    # The saved model predicts what the trained one does.
    reloaded = keras.saving.load_model(out / "model.keras")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), wrapper.Model.predict(x, verbose=0), rtol=1e-6)
    # Nothing temporary left behind.
    assert sorted(p.name for p in out.iterdir()) == ["MetaData.json", "model.keras"]


def test_second_run_of_same_name_gets_new_directory(tmp_path, data):
    dirs = []
    for _ in range(3):
        wrapper = make(tmp_path)
        dirs.append(wrapper.Initialize().name)
    assert dirs == ["Dense", "Dense.1", "Dense.2"]


def test_processes_claiming_one_name_at_once_get_distinct_directories(tmp_path):
    # No timeouts that a loaded machine could exceed: the processes import only dlkit.metadata (race_helpers,
    # not this module), the barrier has no timeout, and pytest-timeout bounds the whole test.
    from race_helpers import claim

    n = 8
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=claim, args=(str(tmp_path), barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    claimed = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0] * n
    assert sorted(Path(c).name for c in claimed) == sorted(["Race"] + [f"Race.{i}" for i in range(1, n)])
    assert all(Path(c).is_dir() for c in claimed)


def test_make_output_dir_claims_through_claim_run_dir(tmp_path):
    from dlkit.metadata import claim_run_dir
    from dlkit.model_wrapper import ModelWrapper

    assert claim_run_dir(tmp_path, "Race").name == "Race"
    assert ModelWrapper("Race", OutputBase=tmp_path).MakeOutputDir().name == "Race.1"


def test_resume_restores_optimizer_state_and_chains_history(tmp_path, data):
    x, y = data
    first = make(tmp_path)
    first.Train(x, y, Epochs=2, BatchSize=32, verbose=0)
    first_dir = first.Save()
    iterations = int(first.Model.optimizer.iterations.numpy())
    assert iterations == 2 * 4

    second = Dense("Dense", OutputBase=tmp_path / "TrainedModels", LoadPrevious=True)
    second.Initialize()
    assert second.OutDir.name == "Dense.1" and second.MetaData["InputDir"] == str(first_dir)
    assert int(second.Model.optimizer.iterations.numpy()) == iterations  # optimizer state restored
    for a, b in zip(second.Model.optimizer.variables, first.Model.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    second.Train(x, y, Epochs=3, BatchSize=32, verbose=0)
    second.Save()
    md = read_metadata(second.OutDir)
    assert len(md["InputMetaData"]) == 1 and md["InputMetaData"][0]["InputMetaData"] == []
    assert md["Epochs"] == 3 and md["TotalEpochs"] == 5
    full = chained_history(md)
    assert full["loss"] == md["InputMetaData"][0]["History"]["loss"] + md["History"]["loss"]
    assert read_metadata(first_dir)["Epochs"] == 2  # the first run is untouched

    third = Dense("Dense", OutputBase=tmp_path / "TrainedModels", LoadPrevious=True)
    third.Initialize()
    assert third.MetaData["InputDir"] == str(second.OutDir)
    assert len(third.MetaData["InputMetaData"]) == 2


class EpochsSeen(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_initial_epoch_trains_the_remaining_epochs_with_numbers_continuing(tmp_path, data):
    x, y = data
    first = make(tmp_path)
    first.Train(x, y, Epochs=2, BatchSize=32, verbose=0)
    first.Save()
    assert first.PreviousEpochs == 0 and first.MetaData["InitialEpoch"] == 0

    second = Dense("Dense", OutputBase=tmp_path / "TrainedModels", LoadPrevious=True)
    second.Initialize()
    assert second.ContinuesPrevious and second.PreviousEpochs == 2
    seen = EpochsSeen()
    history = second.Train(x, y, Epochs=3, BatchSize=32, Callbacks=[seen], InitialEpoch=second.PreviousEpochs,
                           verbose=0)
    second.Save()
    assert seen.epochs == [2] and history.epoch == [2]  # Keras' own numbering continues
    assert int(second.Model.optimizer.iterations.numpy()) == 3 * 4  # one more epoch of 4 batches
    md = json.loads((second.OutDir / "MetaData.json").read_text())
    assert md["Status"] == "completed" and md["StopReason"] == "completed 3 epochs (1 in this run, 2 before)"
    assert md["Epochs"] == 1 and len(md["EpochTime"]) == 1 and md["TotalEpochs"] == 3 and md["InitialEpoch"] == 2
    assert len(md["History"]["loss"]) == 1 and len(chained_history(md)["loss"]) == 3

    # Already there: nothing is trained (no fit, no callbacks), and the run is completed.
    third = Dense("Dense", OutputBase=tmp_path / "TrainedModels", LoadPrevious=True)
    third.Initialize()
    assert third.PreviousEpochs == 3
    weights = [w.copy() for w in third.Model.get_weights()]
    seen = EpochsSeen()
    history = third.Train(x, y, Epochs=3, BatchSize=32, Callbacks=[seen], InitialEpoch=third.PreviousEpochs,
                          verbose=0)
    third.Save()
    assert seen.epochs == [] and history.history == {}
    assert all(np.array_equal(a, b) for a, b in zip(weights, third.Model.get_weights()))
    md = read_metadata(third.OutDir)
    assert md["Status"] == "completed" and "already done" in md["StopReason"] and "3 epochs" in md["StopReason"]
    assert md["Epochs"] == 0 and md["EpochTime"] == [] and md["TotalEpochs"] == 3


def test_initial_epoch_default_and_load_of_a_directory(tmp_path, data):
    x, y = data
    first = make(tmp_path)
    first.Train(x, y, Epochs=2, BatchSize=32, verbose=0)
    out = first.Save()
    loaded = Dense("Dense", OutputBase=tmp_path / "TrainedModels").Load(out)  # like -L DIR: not a resume
    assert not loaded.ContinuesPrevious and loaded.PreviousEpochs == 2 and "InitialEpoch" not in loaded.MetaData
    seen = EpochsSeen()
    loaded.Train(x, y, Epochs=2, BatchSize=32, Callbacks=[seen], verbose=0)  # InitialEpoch=0: 2 more
    assert seen.epochs == [0, 1]
    assert loaded.MetaData["Epochs"] == 2 and loaded.MetaData["TotalEpochs"] == 4
    assert loaded.MetaData["StopReason"] == "completed 2 epochs"
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match="InitialEpoch must be an integer >= 0"):
            loaded.Train(x, y, Epochs=3, InitialEpoch=bad, verbose=0)
    with pytest.raises(TypeError, match="both InitialEpoch and initial_epoch"):
        loaded.Train(x, y, Epochs=3, InitialEpoch=1, initial_epoch=1, verbose=0)


def test_load_previous_without_saves_starts_fresh(tmp_path):
    wrapper = Dense("Fresh", OutputBase=tmp_path, LoadPrevious=True)
    assert wrapper.find_previous() is None


def test_corrupt_metadata_error_names_file(tmp_path, data):
    x, y = data
    wrapper = make(tmp_path)
    wrapper.Train(x, y, Epochs=1, BatchSize=64, verbose=0)
    out = wrapper.Save()
    (out / "MetaData.json").write_text('{"Name": "Dense", "Hist')
    with pytest.raises(MetaDataError, match=r"MetaData\.json: corrupt metadata JSON"):
        Dense("Dense").Load(out)
    with pytest.raises(MetaDataError, match="no metadata file"):
        read_metadata(tmp_path)


def test_save_is_atomic_when_writing_fails(tmp_path, data, monkeypatch):
    x, y = data
    wrapper = make(tmp_path)
    wrapper.Train(x, y, Epochs=1, BatchSize=64, verbose=0)
    out = wrapper.Save()
    before = (out / "model.keras").read_bytes(), (out / "MetaData.json").read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(wrapper.Model, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        wrapper.Save()
    assert ((out / "model.keras").read_bytes(), (out / "MetaData.json").read_bytes()) == before
    assert sorted(p.name for p in out.iterdir()) == ["MetaData.json", "model.keras"]


def test_safe_mode_kept_by_default(tmp_path):
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs))
    wrapper = ModelWrapper("Lambda", OutputBase=tmp_path)
    wrapper.Model = model
    wrapper.BuildOptimizer("SGD")
    wrapper.Compile(Loss="mse")
    out = wrapper.Save()
    with pytest.raises(MetaDataError, match="cannot load model"):
        ModelWrapper("Lambda").Load(out)
    loaded = ModelWrapper("Lambda").Load(out, safe_mode=False)
    np.testing.assert_allclose(loaded.Model.predict(np.ones((1, 2)), verbose=0), [[2.0, 2.0]])


def test_optimizer_by_name_and_decay_schedule():
    wrapper = ModelWrapper("Opt")
    opt = wrapper.BuildOptimizer("SGD", lr=0.1, decay=0.01, momentum=0.9)
    assert isinstance(opt, keras.optimizers.SGD) and opt.momentum == 0.9
    schedule = opt.learning_rate if callable(opt.learning_rate) else opt._learning_rate
    for step in (0, 1, 10, 1000):  # Keras 2 decay: lr / (1 + decay * iterations)
        assert float(schedule(step)) == pytest.approx(0.1 / (1 + 0.01 * step), rel=1e-6)
    assert float(wrapper.BuildOptimizer("RMSprop", lr=0.001).learning_rate) == pytest.approx(0.001)
    with pytest.raises(ValueError, match="did you mean SGD"):
        wrapper.BuildOptimizer("SDG")
    with pytest.raises(ValueError, match="invalid parameter"):
        wrapper.BuildOptimizer("Adam", momentum=0.9)


def test_to_jsonable():
    value = {"a": np.float32(1.5), "b": np.arange(3), "c": (1, 2), "d": float("nan"), "e": np.int64(7),
             "f": Path("/x"), "g": len}
    assert json.loads(json.dumps(to_jsonable(value))) == {
        "a": 1.5, "b": [0, 1, 2], "c": [1, 2], "d": None, "e": 7, "f": "/x", "g": "builtins.len"}


def test_failed_training_is_flagged(tmp_path, data):
    x, y = data
    wrapper = make(tmp_path)

    class Boom(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        wrapper.Train(x, y, Epochs=1, BatchSize=32, Callbacks=[Boom()], verbose=0)
    md = read_metadata(wrapper.OutDir)
    assert md["Status"] == "failed" and "boom" in md["StopReason"]


@pytest.mark.timeout(180)
def test_sigterm_mid_fit_saves_and_exits_with_documented_code(tmp_path):
    from dlkit.callbacks import EXIT_CODE_INTERRUPTED

    ready = tmp_path / "ready"
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "train_until_signal.py"), str(tmp_path / "TM"), str(ready)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 150
        while not ready.exists():
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_CODE_INTERRUPTED, output[-3000:]
    out = tmp_path / "TM" / "Tiny"
    md = read_metadata(out)
    assert md["Status"] == "interrupted" and md["StopReason"].startswith("signal SIGTERM")
    assert 1 <= md["Epochs"] < 1000 and len(md["History"]["loss"]) == md["Epochs"]
    model = keras.saving.load_model(out / "model.keras")
    assert model.optimizer.iterations.numpy() > 0
    # and it is resumable
    resumed = ModelWrapper("Tiny", OutputBase=tmp_path / "TM", LoadPrevious=True)
    resumed.Initialize()
    assert resumed.MetaData["InputDir"] == str(out)


def _kill_during_save(tmp_path, mode, k):
    out = tmp_path / f"{mode}{k}"
    result = subprocess.run([sys.executable, str(SCRIPTS / "kill_during_save.py"), mode, str(out), str(k)],
                            capture_output=True, text=True, timeout=180)
    return result, out / "Dense"


def test_a_kill_at_any_step_of_a_save_leaves_a_consistent_resumable_pair(tmp_path):
    """The model and MetaData.json of a run always belong together: killed at each file operation of the
    second epoch's save (a model file cut half-way included), the directory loads, and the model's optimizer
    has taken exactly as many steps as MetaData records epochs (4 batches each)."""
    killed = []
    for k in range(1, 20):
        result, run = _kill_during_save(tmp_path, "pair", k)
        if result.returncode == 0:
            assert "done" in result.stdout
            break
        assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
        killed.append(result.stdout.strip())
        loaded = Dense("Dense", OutputBase=tmp_path / "resume").Load(run)
        epochs = len(read_saved_pair(run)["History"]["loss"])  # what Load resumed from
        assert loaded.MetaData["InputMetaData"][-1]["History"] == read_saved_pair(run)["History"]
        assert epochs in (1, 2) and int(loaded.Model.optimizer.iterations.numpy()) == 4 * epochs, killed[-1]
    assert "killed at replace model.keras" in killed and "killed at replace MetaData.json" in killed, killed
    assert any(k.startswith("killed at write .model.keras") for k in killed), killed


def test_a_kill_during_a_checkpoint_save_keeps_the_previous_checkpoint(tmp_path):
    killed = []
    for k in range(1, 6):
        result, run = _kill_during_save(tmp_path, "checkpoint", k)
        if result.returncode == 0:
            break
        killed.append(result.stdout.strip())
        checkpoint = keras.saving.load_model(run / "Checkpoint.keras")  # whole: the first epoch's or the second's
        assert int(checkpoint.optimizer.iterations.numpy()) in (4, 8), killed[-1]
    assert killed and killed[0].startswith("killed at write"), killed


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_files_honour_the_umask(tmp_path, data, umask):
    """MetaData.json and model.keras are as readable as any new file (a colleague on the cluster reads them);
    they were 0600, from mkstemp."""
    x, y = data
    old = os.umask(umask)
    try:
        wrapper = make(tmp_path)
        wrapper.Train(x, y, Epochs=1, BatchSize=32, verbose=0)
        out = wrapper.Save()
        wrapper.finish(Status="completed")  # a metadata-only write after the save
    finally:
        os.umask(old)
    for name in ("MetaData.json", "model.keras"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_save_taken_over_while_writing_lands_nothing(tmp_path):
    """A takeover between the holder's fence check and its save's rename: the fenced holder exits 76 and
    nothing of its second save lands (the first save's pair stands, no pending file is left)."""
    import hashlib

    from dlkit.protocol import ENV_DIR, ENV_POINT, ENV_TOKEN, EXIT_FENCED

    ledger = tmp_path / "ledger"
    (ledger / "leases" / "0").mkdir(parents=True)
    env = dict(os.environ, **{ENV_DIR: str(ledger), ENV_POINT: "0", ENV_TOKEN: "TOKEN"}, TF_CPP_MIN_LOG_LEVEL="3")
    script = Path(__file__).parent / "scripts" / "fenced_save.py"
    proc = subprocess.run([sys.executable, str(script), str(ledger), str(tmp_path / "TM")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_FENCED, proc.stderr[-2000:]
    assert "first save" in proc.stdout and "second save returned" not in proc.stdout
    run_dir = tmp_path / "TM" / "Fenced"
    assert sorted(p.name for p in run_dir.iterdir()) == ["MetaData.json", "model.keras"]
    metadata = json.loads((run_dir / "MetaData.json").read_text())
    assert metadata["ModelSHA256"] == hashlib.sha256((run_dir / "model.keras").read_bytes()).hexdigest()
