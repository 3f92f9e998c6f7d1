"""dlkit.experiment: flag resolution warnings, seeded model construction, resuming with -p."""

import json
import logging
import re

import numpy as np
import pytest

import keras
from dlkit import ModelWrapper
from dlkit.experiment import load_or_build, make_parser, resolve_run

DEFAULTS = {"Width": 8, "Depth": 1, "Epochs": 1, "Seed": 0, "OutputBase": "TrainedModels", "Cache": True,
            "LoadPreviousModel": False}


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "scan.py"
    path.write_text('Config = {"Depth": 1}\nParams = {"Width": [4, 8], "Seed": [0]}\n')
    return path


def setup(argv, config_file, tmp_path):
    args = make_parser("test").parse_args(["-C", str(config_file), "--OutputBase", str(tmp_path / "out"), *argv])
    return args, resolve_run(args, DEFAULTS, "Test", flag_keys={"OutputBase": "OutputBase"})


def test_set_overridden_by_scan_point_warns(config_file, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="dlkit.experiment"):
        _, run = setup(["-s", "1", "--set", "Width=64", "--set", "Depth=2"], config_file, tmp_path)
    assert run.config["Width"] == 8 and run.config["Depth"] == 2  # the scan point wins, as in DLKit
    (message,) = [r.getMessage() for r in caplog.records]
    assert "Width=64" in message and "scan point 1" in message and "Width=8" in message


def test_flags_that_do_not_apply_warn(config_file, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="dlkit.experiment"):
        _, run = setup(["--nopremix", "--nocache"], config_file, tmp_path)
    assert run.config["Cache"] is False and "Premix" not in run.config
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "--nopremix does not apply" in messages[0]


class Dense(ModelWrapper):
    def Build(self):
        inputs = keras.Input((4,))
        self.Model = keras.Model(inputs, keras.layers.Dense(self.Config["Width"])(inputs))


def _compile(wrapper):
    wrapper.BuildOptimizer("SGD", lr=0.1)
    wrapper.Compile(Loss="mse")


def test_same_scan_point_builds_the_same_initial_weights(config_file, tmp_path):
    weights = []
    for _ in range(2):
        np.random.default_rng().random()  # global state in between must not matter
        keras.utils.set_random_seed(int(np.random.default_rng().integers(1 << 30)))
        args, run = setup(["-s", "0"], config_file, tmp_path)
        wrapper = load_or_build(args, run, lambda name, **kw: Dense(name, **kw), _compile)
        weights.append([w.copy() for w in wrapper.Model.get_weights()])
    assert all(np.array_equal(a, b) for a, b in zip(*weights))
    assert np.any(weights[0][0] != 0)


@pytest.mark.parametrize("how", [["-p"], ["--set", "LoadPreviousModel=true"]])
def test_load_previous_by_flag_or_config_entry(config_file, tmp_path, how):
    args, run = setup(["-s", "0"], config_file, tmp_path)
    first = load_or_build(args, run, lambda name, **kw: Dense(name, **kw), _compile)
    first.Model.set_weights([np.full_like(w, 0.25) for w in first.Model.get_weights()])
    first.Save()
    args, run = setup(["-s", "0", *how], config_file, tmp_path)
    again = load_or_build(args, run, lambda name, **kw: Dense(name, **kw), _compile)
    assert again.OutDir != first.OutDir  # a new directory, continuing from the save
    assert all(np.all(w == 0.25) for w in again.Model.get_weights())


@pytest.fixture(scope="module")
def lcd(tmp_path_factory):
    from calodnn.simulate import write_dataset

    root = tmp_path_factory.mktemp("lcd")
    write_dataset(root, events_per_class=200, events_per_file=100, seed=5, progress=False)
    return root


def _newest(base):
    numbered = [(int(m.group(1) or 0), d) for d in base.iterdir()
                if (m := re.fullmatch(r"CaloDNN_.*?(?:\.(\d+))?", d.name)) and d.is_dir()]
    return max(numbered)[1]


def test_load_previous_trains_the_remaining_epochs(lcd, tmp_path, monkeypatch):
    from calodnn.ClassificationExperiment import cli as run
    from dlkit.metadata import chained_history

    monkeypatch.setenv("DLKIT_CACHE_DIR", str(tmp_path / "cache"))
    base = tmp_path / "out"
    argv = ["--Test", "--OutputBase", str(base), "--data", str(lcd), "--NoAnalysis", "--set", "BatchSize=64"]
    assert run(argv) == 0  # --Test: 2 epochs
    first = json.loads((_newest(base) / "MetaData.json").read_text())
    assert first["Epochs"] == 2 and first["TotalEpochs"] == 2

    assert run([*argv, "-p", "--set", "Epochs=3"]) == 0  # one more epoch, not 3 more
    md = json.loads((_newest(base) / "MetaData.json").read_text())
    assert md["Status"] == "completed" and md["TotalEpochs"] == 3 and md["Epochs"] == 1
    assert len(md["EpochTime"]) == 1 and md["InitialEpoch"] == 2
    assert md["InputDir"] == first["OutDir"]
    assert len(chained_history(md)["loss"]) == 3

    assert run([*argv, "-p", "--set", "Epochs=3"]) == 0  # already there: 0 epochs, still completed
    again = json.loads((_newest(base) / "MetaData.json").read_text())
    assert again["OutDir"] != md["OutDir"] and again["InputDir"] == md["OutDir"]
    assert again["Status"] == "completed" and "already done" in again["StopReason"]
    assert again["Epochs"] == 0 and again["EpochTime"] == [] and again["TotalEpochs"] == 3
    assert len(chained_history(again)["loss"]) == 3
    assert (_newest(base) / "model.keras").is_file()  # saved: a later -p resumes from here


def test_test_flag_output_location_is_what_its_help_says(tmp_path):
    parser = make_parser("test")
    assert "an --OutputBase given on the command line is used as it is" in " ".join(parser.format_help().split())
    config = tmp_path / "c.py"
    config.write_text("Config = {}\n")
    flag_keys = {"OutputBase": "OutputBase"}
    args = parser.parse_args(["-C", str(config), "--Test"])
    assert resolve_run(args, DEFAULTS, "T", flag_keys=flag_keys).output_base.name == "TrainedModels.Test"
    args = parser.parse_args(["-C", str(config), "--Test", "--OutputBase", str(tmp_path / "mine")])
    assert resolve_run(args, DEFAULTS, "T", flag_keys=flag_keys).output_base == tmp_path / "mine"
    config.write_text("Config = {'OutputBase': 'Scans'}\n")  # a config file's OutputBase gets .Test
    args = parser.parse_args(["-C", str(config), "--Test"])
    assert resolve_run(args, DEFAULTS, "T", flag_keys=flag_keys).output_base.name == "Scans.Test"


@pytest.mark.parametrize("module", ["calodnn.ClassificationExperiment", "calodnn.RegressionExperiment",
                                    "lartpcdnn.ClassificationExperiment", "clustercount.PeakFindingExperiment",
                                    "clustercount.ClusterizationExperiment", "dlkit.ScanAnalysis", "dlkit.scan",
                                    "dlkit.cache"])
def test_help_imports_no_deep_learning_backend(module):
    """--help is read before anything heavy is imported (it took 10-20 s and 800 MB with TensorFlow)."""
    import subprocess
    import sys

    code = ("import runpy, sys\nsys.argv = ['prog', '--help']\n"
            f"try:\n    runpy.run_module({module!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('LOADED', sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch', 'sklearn') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "usage:" in result.stdout, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "LOADED []", result.stdout[-500:]
