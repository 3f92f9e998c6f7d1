"""dlkit.Experiment: the five experiments as specs on one shared run, their notebook API and console scripts."""

import configparser
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from calodnn.simulate import write_dataset
from dlkit.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ["calodnn.ClassificationExperiment", "calodnn.RegressionExperiment", "lartpcdnn.ClassificationExperiment",
               "clustercount.PeakFindingExperiment", "clustercount.ClusterizationExperiment"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_each_experiment_module_is_a_spec_and_a_shim(name):
    from dlkit import Experiment

    module = importlib.import_module(name)
    spec = module.EXPERIMENT
    assert isinstance(spec, Experiment) and spec.module == name
    assert spec.defaults is module.DEFAULTS and spec.test_overrides is module.TEST_OVERRIDES
    assert module.run == spec.run and module.main == spec.main and module.cli == spec.cli
    assert not hasattr(module, "run_main")  # no copied run() bodies: the shared one is the only one


# -- the models read their hyperparameters from the experiment's DEFAULTS, not from their own -------------

def _layers(model, kind):
    found = [layer for layer in model._flatten_layers(include_self=False) if type(layer).__name__ == kind]
    return sorted(found, key=lambda layer: layer.name)


def _build(wrapper_class, *args, config, tmp_path):
    wrapper = wrapper_class("Spec", *args, Config=dict(config), OutputBase=tmp_path)
    return wrapper.Build()


def test_calodnn_classifier_from_defaults(tmp_path):
    from calodnn.ClassificationExperiment import DEFAULTS
    from calodnn.models import CaloClassifier

    shapes = {"ECAL": (8, 8, 8), "HCAL": (4, 4, 6)}
    model = _build(CaloClassifier, shapes, 4, config=DEFAULTS, tmp_path=tmp_path)
    hidden = [d for d in _layers(model, "Dense") if d.name != "classes"]
    assert len(hidden) == 2 * DEFAULTS["Depth"] and {d.units for d in hidden} == {DEFAULTS["Width"]}
    cnn = _build(CaloClassifier, shapes, 4, config={**DEFAULTS, "Model": "CNN"}, tmp_path=tmp_path)
    convs = _layers(cnn, "Conv3D")  # the default the issue found disagreeing (8 in DEFAULTS, 16 in the model)
    assert [c.filters for c in convs] == [DEFAULTS["CNNFilters"] * 2**i for i in range(DEFAULTS["Depth"])]


def test_calodnn_regressor_from_defaults(tmp_path):
    from calodnn.calibration import CaloRegressor
    from calodnn.RegressionExperiment import DEFAULTS

    shapes = {"ECAL": (8, 8, 8), "HCAL": (4, 4, 6)}
    config = {**DEFAULTS, "loss": "MSE"}
    model = _build(CaloRegressor, shapes, config=config, tmp_path=tmp_path)
    hidden = [d for d in _layers(model, "Dense") if d.units != 1]
    assert len(hidden) == DEFAULTS["Depth"] * 2 and {d.units for d in hidden} == {DEFAULTS["Width"]}
    cnn = _build(CaloRegressor, shapes, config={**config, "Model": "CNN"}, tmp_path=tmp_path)
    assert _layers(cnn, "Conv3D")[0].filters == DEFAULTS["CNNFilters"]


def test_lartpcdnn_classifier_from_defaults(tmp_path):
    from lartpcdnn.ClassificationExperiment import DEFAULTS
    from lartpcdnn.models import LArClassifier

    model = _build(LArClassifier, {"induction": (48, 64), "collection": (48, 64)}, 7, config=DEFAULTS,
                   tmp_path=tmp_path)
    convs = _layers(model, "Conv2D")
    assert min(c.filters for c in convs) == DEFAULTS["Filters"]
    hidden = [d for d in _layers(model, "Dense") if d.units != 7]
    assert {d.units for d in hidden} == {DEFAULTS["Width"]}


def test_clustercount_models_from_defaults(tmp_path):
    from clustercount.ClusterizationExperiment import DEFAULTS as CLUSTER
    from clustercount.models import ClusterCounterModel, PeakFinderModel
    from clustercount.PeakFindingExperiment import DEFAULTS as PEAK

    peak = _build(PeakFinderModel, (15, 1), config=PEAK, tmp_path=tmp_path)
    lstms = _layers(peak, "LSTM")
    assert len(lstms) == PEAK["LSTMLayers"] and {lstm.units for lstm in lstms} == {PEAK["Neurons"]}
    counter = _build(ClusterCounterModel, (256, 1), config=CLUSTER, tmp_path=tmp_path)
    convs = _layers(counter, "Conv1D")
    assert len(convs) == CLUSTER["ConvLayers"] and convs[0].filters == CLUSTER["Filters"]
    assert convs[0].kernel_size == (CLUSTER["KernelSize"],)


def test_a_model_has_no_hidden_default_of_its_own(tmp_path):
    from calodnn.ClassificationExperiment import DEFAULTS
    from calodnn.models import CaloClassifier

    config = {k: v for k, v in DEFAULTS.items() if k != "CNNFilters"}
    with pytest.raises(KeyError, match="CNNFilters"):
        _build(CaloClassifier, {"ECAL": (8, 8, 8)}, 4, config={**config, "Model": "CNN"}, tmp_path=tmp_path)


# -- the notebook API -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lcd(tmp_path_factory):
    root = tmp_path_factory.mktemp("lcd")
    write_dataset(root, events_per_class=300, events_per_file=150, seed=5, progress=False)
    return root


def test_run_from_python_returns_the_result_and_prints_nothing(lcd, tmp_path, monkeypatch, capfd):
    from calodnn import ClassificationExperiment

    monkeypatch.setenv("DLKIT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "Models"
    result = ClassificationExperiment.run(point=12, Test=True, data=str(lcd), OutputBase=out, Epochs=1,
                                          BatchSize=64, EnergyBins=[10.0, 510.0, 4], AUCBootstrap=0)
    captured = capfd.readouterr()
    assert captured.out == ""  # the CLI prints the summary, the API returns it
    assert result.ok and result.exit_code == 0
    assert result.run_dir.parent == out and (result.run_dir / "MetaData.json").is_file()
    metadata = json.loads((result.run_dir / "MetaData.json").read_text())
    assert metadata["Configuration"]["Epochs"] == 1 == result.config["Epochs"]
    assert metadata["HyperParamSet"] == 12 and len(metadata["History"]["loss"]) == 1
    for key in ("Ele_AUC", "Gamma_AUC", "Pi0_AUC", "ChPi_AUC"):
        assert result.metrics[key] == metadata[key]
    assert {"ROC", "Confusion"} <= set(result.figures) and "Ele_AUC" in result.summary
    assert result.wrapper.Model is not None and result.run_dir.name == result.setup.name


def test_run_from_python_checks_its_keywords_like_the_cli(lcd, tmp_path):
    from calodnn import ClassificationExperiment

    with pytest.raises(ConfigError, match=r"Epoch=.*did you mean Epochs"):
        ClassificationExperiment.run(Test=True, Epoch=3)
    with pytest.raises(ConfigError, match="Epochs"):  # a config entry of the wrong type
        ClassificationExperiment.run(Test=True, data=str(lcd), OutputBase=tmp_path, Epochs="3")
    with pytest.raises(ConfigError, match=r"NoTrain='yes'.*True or False"):
        ClassificationExperiment.run(Test=True, NoTrain="yes")
    plain = tmp_path / "plain.py"
    plain.write_text("Config = {'Epochs': 1}\n")
    with pytest.raises(ConfigError, match="-s 3: config .*plain.py defines no Params"):  # as the CLI's -s 3
        ClassificationExperiment.run(config=plain, point=3)


# -- console scripts ---------------------------------------------------------------------------------------

def console_scripts():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in cfg["options.entry_points"]["console_scripts"].splitlines() if line.strip()]
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


def test_console_scripts_cover_every_entry_point():
    scripts = console_scripts()
    assert {"calodnn-classify", "calodnn-regress", "lartpcdnn-classify", "clustercount-peakfinding",
            "clustercount-clusterization", "dlkit-scananalysis", "dlkit-scan", "dlkit-cache"} <= set(scripts)
    targets = {target.split(":")[0] for target in scripts.values()}
    assert set(EXPERIMENTS) <= targets


@pytest.mark.parametrize("script", sorted(console_scripts()))
def test_console_script_help_imports_no_backend(script):
    """What the installed script runs (its module:function), with --help: usage, and no TensorFlow/Keras."""
    module, function = console_scripts()[script].split(":")
    code = (f"import sys\nsys.argv = [{script!r}, '--help']\nfrom {module} import {function}\n"
            f"try:\n    {function}()\nexcept SystemExit:\n    pass\n"
            "print('LOADED', sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "usage:" in result.stdout, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "LOADED []", result.stdout[-500:]


@pytest.mark.parametrize("script", sorted(console_scripts()))
def test_console_script_usage_shows_its_own_name(script):
    """The installed script (pip puts it beside the interpreter) names itself in its usage line."""
    path = Path(sys.executable).parent / script
    if not path.exists():
        pytest.skip(f"{script} is not installed beside {sys.executable} (pip install . installs it)")
    result = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith(f"usage: {script} "), result.stdout[:300]
