"""dlkit.config: plain-Python config files, layered resolution and validation."""

import re
import textwrap

import pytest

from dlkit.config import ConfigError, check_value, load_config, resolve_config

DEFAULTS = {"Epochs": 10, "BatchSize": 1024, "optimizer": "RMSprop", "lr": 0.01, "Width": 64,
            "BatchNormLayers": False, "Particles": ["Ele", "Gamma"], "RunningTime": None, "Shape": (25, 25)}


def write(tmp_path, text, name="cfg.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_load_config_real_python_values(tmp_path):
    path = write(tmp_path, """
        import math
        Config = {"optimizer": "SGD", "lr": 0.1, "BatchNormLayers": True, "Width": int(math.sqrt(1024))}
        Params = {"Width": [32, 64], "Depth": range(1, 3)}
        """)
    config, params = load_config(path)
    assert config == {"optimizer": "SGD", "lr": 0.1, "BatchNormLayers": True, "Width": 32}
    assert params == {"Width": [32, 64], "Depth": [1, 2]}


def test_load_config_runs_in_own_namespace(tmp_path):
    path = write(tmp_path, "Config = {}\nleaked_name = 1\n")
    config, params = load_config(path)
    assert config == {} and params is None
    assert "leaked_name" not in globals()


@pytest.mark.parametrize(
    "text, message",
    [
        ("X = 1\n", "defines no 'Config'"),
        ("Config = [1]\n", "'Config' must be a dict"),
        ("Config = {}\nParams = {'Width': 32}\n", r"Params\['Width'\] must be a list"),
        ("Config = {}\nParams = {'Width': []}\n", r"Params\['Width'\] is empty"),
        ("Config = {1: 2}\n", "is not a string"),
        ("Config = {'a': undefined_name}\n", "failed to load: NameError"),
    ],
)
def test_load_config_errors_name_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.py")


def test_layer_order_defaults_config_flags_scan_point():
    resolved = resolve_config(
        DEFAULTS,
        ("config file c.py", {"lr": 0.1, "Width": 128, "Epochs": 3}),
        ("command line", {"Epochs": 2, "Width": 256}),
        ("scan point 5", {"Width": 512}),
    )
    assert resolved["lr"] == 0.1          # config over default
    assert resolved["Epochs"] == 2        # flags over config
    assert resolved["Width"] == 512       # scan point last
    assert resolved["BatchSize"] == 1024  # untouched default
    assert DEFAULTS["Width"] == 64        # defaults not mutated


def test_unknown_key_names_key_source_and_closest():
    with pytest.raises(ConfigError) as info:
        resolve_config(DEFAULTS, ("config file scan.py", {"Widht": 32}))
    msg = str(info.value)
    assert "'Widht'" in msg and "scan.py" in msg and "did you mean 'Width'" in msg


def test_unknown_key_case_insensitive_hint():
    with pytest.raises(ConfigError, match="did you mean 'BatchNormLayers'"):
        resolve_config(DEFAULTS, ("command line", {"batchnormlayers": True}))


@pytest.mark.parametrize(
    "key, value, expected",
    [("Width", "64", "int"), ("lr", "0.1", "float"), ("BatchNormLayers", 1, "bool"), ("Width", True, "int"),
     ("optimizer", 3, "str"), ("Particles", "Ele", "list")],
)
def test_wrong_type_names_key_value_and_type(key, value, expected):
    with pytest.raises(ConfigError) as info:
        resolve_config(DEFAULTS, ("config file c.py", {key: value}))
    msg = str(info.value)
    assert repr(key) in msg and repr(value) in msg and f"expected {expected}" in msg


def test_type_coercions():
    resolved = resolve_config(DEFAULTS, ("c", {"lr": 1, "Shape": [5, 5], "Particles": ("Ele",),
                                                "RunningTime": 3600}))
    assert resolved["lr"] == 1.0 and isinstance(resolved["lr"], float)
    assert resolved["Shape"] == (5, 5)
    assert resolved["Particles"] == ["Ele"]
    assert resolved["RunningTime"] == 3600  # default None accepts any value


def test_declared_types_for_none_defaults():
    with pytest.raises(ConfigError, match="expected int or float"):
        resolve_config(DEFAULTS, ("flags", {"RunningTime": "1h"}), types={"RunningTime": (int, float)})
    assert resolve_config(DEFAULTS, ("flags", {"RunningTime": None}), types={"RunningTime": (int, float)})[
        "RunningTime"] is None


def test_check_value_numpy_scalars():
    np = pytest.importorskip("numpy")
    assert check_value("lr", np.float32(0.5), 0.1) == 0.5
    assert check_value("Width", np.int64(3), 1) == 3


@pytest.mark.parametrize("layer, message", [
    ({"Epochs": 0}, "command line: entry 'Epochs' = 0 is out of range; expected >= 1"),
    ({"Epochs": -1}, "entry 'Epochs' = -1 is out of range; expected >= 1"),
    ({"BatchSize": 0}, "entry 'BatchSize' = 0 is out of range; expected >= 1"),
    ({"lr": -1}, "entry 'lr' = -1.0 is out of range; expected > 0"),
    ({"lr": 0}, "entry 'lr' = 0.0 is out of range; expected > 0"),
    ({"RunningTime": -5}, "entry 'RunningTime' = -5 is out of range; expected > 0"),
    ({"lr": float("nan")}, "entry 'lr' = nan is out of range"),
])
def test_numbers_out_of_range_are_errors_naming_the_key(layer, message):
    with pytest.raises(ConfigError) as info:
        resolve_config(DEFAULTS, ("command line", layer), types={"RunningTime": (int, float)})
    assert message in str(info.value)


def test_ranges_of_an_experiment_and_the_layer_a_value_came_from():
    from dlkit.config import Range, above, at_least

    defaults = {"Epochs": 3, "Width": 64, "Scale": 1.0, "Frac": 0.5, "Free": 1.0}
    ranges = {"Epochs": at_least(0), "Scale": above(0), "Frac": Range(0, 1, low_open=True, high_open=True)}
    assert resolve_config(defaults, ("c", {"Epochs": 0}), ranges=ranges)["Epochs"] == 0  # widened for it
    for layer, where, text in (({"Scale": 0.0}, "config file a.py", "> 0"), ({"Frac": 1}, "scan point 3", "in (0, 1)"),
                               ({"Width": 0}, "scan point 3", ">= 1"), ({"Free": float("inf")}, "config file a.py",
                                                                        "a finite number")):
        with pytest.raises(ConfigError, match=rf"^{where}: entry '{list(layer)[0]}' .* expected {re.escape(text)}$"):
            resolve_config(defaults, ("config file a.py", {}), (where, layer), ranges=ranges)
    assert 0.5 in Range(0, 1) and 1 not in Range(0, 1, high_open=True) and float("nan") not in Range()


@pytest.mark.parametrize("flags, key", [(["--set", "Epochs=0"], "Epochs"), (["--set", "BatchSize=-5"], "BatchSize"),
                                        (["-r", "-5"], "RunningTime"), (["--set", "lr=-1"], "lr")])
def test_experiment_cli_refuses_out_of_range_numbers_before_any_data(tmp_path, flags, key):
    import subprocess
    import sys

    config = write(tmp_path, "Config = {}\n")  # no grid: a scan point would override lr
    result = subprocess.run([sys.executable, "-m", "calodnn.ClassificationExperiment", "--Test", "-C", str(config),
                             "--data", str(tmp_path / "no-data-needed"), "--OutputBase", str(tmp_path / "TM"), *flags],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"entry '{key}'" in lines[0] and "out of range" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "TM").exists()


def test_none_is_accepted_where_a_type_is_declared_as_the_docstring_says():
    # an entry with a value by default, switched off with None: declaring its type allows None
    assert check_value("NormScale", None, 50.0, (int, float)) is None
    assert check_value("ScanWindowSize", None, 256, int) is None
    with pytest.raises(ConfigError, match="'Width' = None"):
        check_value("Width", None, 64)  # no declared type: None is not an int
    from lartpcdnn.ClassificationExperiment import DEFAULTS as LAR, TYPES as LAR_TYPES

    resolved = resolve_config(LAR, ("command line", {"ScanWindowSize": None, "NormScale": None}), types=LAR_TYPES)
    assert resolved["ScanWindowSize"] is None and resolved["NormScale"] is None
    assert all(type(None) not in (t if isinstance(t, tuple) else (t,)) for t in LAR_TYPES.values())
