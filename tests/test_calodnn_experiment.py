"""calodnn.ClassificationExperiment end to end on a tiny simulated dataset, and its error cases."""

import json
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

from calodnn.simulate import write_dataset
from dlkit.metadata import read_metadata


@pytest.fixture(scope="module")
def lcd(tmp_path_factory):
    root = tmp_path_factory.mktemp("lcd")
    write_dataset(root, events_per_class=300, events_per_file=150, seed=5, progress=False)
    return root


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("DLKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return dict(os.environ, DLKIT_CACHE_DIR=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="3")


def run(argv):
    from calodnn.ClassificationExperiment import cli

    return cli(argv)


def small(lcd, *extra):
    return ["--Test", "--data", str(lcd), "--set", "BatchSize=64", "--set", "EnergyBins=[10, 510, 4]", *extra]


def test_end_to_end_cli_subprocess(lcd, env, tmp_path):
    env = {k: v for k, v in env.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # what a user gets: dlkit's own quieting
    proc = subprocess.run([sys.executable, "-m", "calodnn.ClassificationExperiment", *small(lcd), "-s", "12"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for noise in ("absl::InitializeLog", "oneDNN custom operations", "cuda drivers", "cpu_feature_guard",
                  "GeneratorDataset"):  # TensorFlow's start-up and teardown lines do not reach the user's log
        assert noise not in proc.stderr, proc.stderr[-3000:]
    out = tmp_path / "TrainedModels.Test" / "CaloDNN_Depth1_Width64_decay0.01_lr0.1"
    md = read_metadata(out)
    assert md["Status"] == "completed" and md["Epochs"] == 2 and md["HyperParamSet"] == 12
    assert md["Configuration"]["Width"] == 64 and md["Configuration"]["Epochs"] == 2  # --Test is in the config
    assert md["ScanPoint"] == {"Depth": 1, "Width": 64, "decay": 0.01, "lr": 0.1}
    for name in ("Ele", "Gamma", "Pi0", "ChPi", "GammaPi0"):  # each AUC inside its bootstrap interval
        assert 0.0 <= md[f"{name}_AUC_lower"] <= md[f"{name}_AUC"] <= md[f"{name}_AUC_upper"] <= 1.0
        row = re.search(rf"^{name}_AUC +(\S+) \[(\S+), (\S+)\]$", proc.stdout, re.M)  # and in the summary
        assert row and abs(float(row.group(2)) - md[f"{name}_AUC_lower"]) < 1e-4, proc.stdout[-2000:]
    assert md["ChPi_AUC"] > 0.9  # pions are the easy class even after 2 epochs on tiny data
    for stem in ("ROC", "AUCvsEnergy", "Confusion", "History", "GammaPi0_AUCvsEnergy"):
        assert (out / f"{stem}.png").stat().st_size > 1000 and (out / f"{stem}.pdf").exists()
    assert "Ele_AUC" in proc.stdout  # the summary table
    # a batch log: one line per epoch, no progress-bar redraws (ANSI codes, carriage returns)
    assert "\x1b[" not in proc.stdout and "\r" not in proc.stdout and "━" not in proc.stdout
    assert "Epoch 2/2" in proc.stdout and len(proc.stdout) < 20_000
    assert re.search(r"^wall time: (\d+ min )?\d+ s$", proc.stdout, re.M), proc.stdout[-500:]
    assert "\nnext: python -m dlkit.ScanAnalysis TrainedModels.Test " in proc.stdout
    # The scan point really reached the model: one hidden layer of 64 per branch.
    import keras

    model = keras.saving.load_model(out / "model.keras")
    dense = [layer for layer in model.layers if layer.name.endswith("_dense0")]
    assert {layer.units for layer in dense} == {64}
    assert not any(layer.name.endswith("_dense1") for layer in model.layers)


def test_second_run_new_directory_and_load_model_chains_history(lcd, env, tmp_path):
    assert run(small(lcd, "-s", "0", "--nopremix")) == 0
    assert run(small(lcd, "-s", "0", "--nopremix", "--NoAnalysis")) == 0
    base = tmp_path / "TrainedModels.Test"
    first, second = base / "CaloDNN_Depth1_Width32_decay0.1_lr0.1", base / "CaloDNN_Depth1_Width32_decay0.1_lr0.1.1"
    assert read_metadata(first)["Status"] == "completed" and read_metadata(second)["Status"] == "completed"
    assert run(small(lcd, "-s", "0", "-L", str(first), "--NoAnalysis")) == 0
    third = read_metadata(base / "CaloDNN_Depth1_Width32_decay0.1_lr0.1.2")
    assert third["InputDir"] == str(first) and third["TotalEpochs"] == 4
    assert len(third["InputMetaData"]) == 1


def test_running_time_stops_and_saves(lcd, env, tmp_path):
    assert run(small(lcd, "-r", "1", "--set", "Epochs=500", "--NoAnalysis")) == 0
    md = read_metadata(tmp_path / "TrainedModels.Test" / "CaloDNN_Depth1_Width32_decay0.1_lr0.1")
    assert md["Status"] == "stopped" and 1 <= md["Epochs"] < 500
    assert "TimeStopping" in md["StopReason"] or "time" in md["StopReason"].lower()
    assert (tmp_path / "TrainedModels.Test" / "CaloDNN_Depth1_Width32_decay0.1_lr0.1" / "model.keras").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-s", "999"], "valid -s values are 0..179"),
        (["--set", "Widht=3"], "did you mean 'Width'"),
        (["--set", "Epochs=two"], "expected int"),
        (["--data", "/nonexistent/lcd"], "/nonexistent/lcd"),
        (["--set", "ECALNorm=0"], "ECALNorm"),
    ],
)
def test_user_errors_are_one_line(lcd, env, tmp_path, capsys, argv, message):
    code = run(["--Test", "--data", str(lcd), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "TrainedModels.Test").exists() or not any((tmp_path / "TrainedModels.Test").iterdir())


def test_config_file_typo_names_file_and_key(lcd, env, tmp_path, capsys):
    config = tmp_path / "scan.py"
    config.write_text("Config = {'Epoch': 3}\nParams = {'Width': [8, 16]}\n")
    assert run(["--Test", "--data", str(lcd), "-C", str(config)]) == 2
    err = capsys.readouterr().err
    assert "scan.py" in err and "'Epoch'" in err and "did you mean 'Epochs'" in err


def test_wrong_shape_file_is_a_clear_error(lcd, env, tmp_path, capsys):
    bad = tmp_path / "bad"
    for particle in ("Ele", "Gamma", "Pi0", "ChPi"):
        (bad / particle).mkdir(parents=True)
        for f in sorted((lcd / particle).glob("*.h5")):
            (bad / particle / f.name).symlink_to(f)
    with h5py.File(bad / "Pi0" / "Pi0_9.h5", "w") as f:
        f["ECAL"] = np.zeros((10, 24, 25, 25), np.float32)
        f["HCAL"] = np.zeros((10, 5, 5, 60), np.float32)
        f["energy"] = np.ones(10, np.float32)
    assert run(["--Test", "--data", str(bad), "--nopremix"]) == 2
    err = capsys.readouterr().err
    assert "Pi0_9.h5" in err and "ECAL" in err


def test_resolved_config_is_json(lcd, env, tmp_path):
    assert run(small(lcd, "-s", "5", "--NoAnalysis", "--set", "optimizer=Adam")) == 0
    md_path = next((tmp_path / "TrainedModels.Test").iterdir()) / "MetaData.json"
    config = json.loads(md_path.read_text())["Configuration"]
    assert config["optimizer"] == "Adam" and config["Width"] == 32 and config["decay"] == 0.01


def test_tensorboard_logs_each_epoch_and_scan_analysis_names_the_logdir(lcd, env, tmp_path, capsys):
    """--tensorboard: Keras' logs in the run directory, their per-epoch loss the run's History (read back with
    TensorBoard's own event reader), and ScanAnalysis prints the tensorboard command for the scan."""
    pytest.importorskip("tensorboard", reason="TensorBoard is not installed (pip install 'dlkit[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    from dlkit.ScanAnalysis import main as scan_analysis

    assert run(small(lcd, "-s", "0", "--tensorboard", "--NoAnalysis")) == 0
    base = tmp_path / "TrainedModels.Test"
    out = base / "CaloDNN_Depth1_Width32_decay0.1_lr0.1"
    md = read_metadata(out)
    assert md["Configuration"]["TensorBoard"] is True
    events = EventAccumulator(str(out / "tensorboard" / "train"), size_guidance={"tensors": 0})
    events.Reload()
    logged = [float(make_ndarray(event.tensor_proto)) for event in events.Tensors("epoch_loss")]
    assert logged == pytest.approx(md["History"]["loss"], rel=1e-5)
    capsys.readouterr()
    assert scan_analysis([str(base)]) == 0
    assert f"tensorboard --logdir {base}" in capsys.readouterr().out
