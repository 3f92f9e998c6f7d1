"""Bad input on the experiment command line: one line naming the flag or directory, exit code 2, before any data
is set up or any model is built."""

import subprocess
import sys

import pytest


def cli(tmp_path, *flags):
    config = tmp_path / "cfg.py"
    config.write_text("Config = {}\n")
    return subprocess.run([sys.executable, "-m", "calodnn.ClassificationExperiment", "--Test", "-C", str(config),
                           "--OutputBase", str(tmp_path / "TM"), *flags], capture_output=True, text=True,
                          timeout=180)


def error_line(result) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


def test_missing_data_directory_is_called_a_directory(tmp_path):
    missing = tmp_path / "nonexistent"
    line = error_line(cli(tmp_path, "--data", str(missing)))
    assert line == f"error: directory '{missing}': sample directory not found"


def test_missing_class_directory_is_called_a_directory(tmp_path):
    (tmp_path / "data" / "Ele").mkdir(parents=True)
    line = error_line(cli(tmp_path, "--data", str(tmp_path / "data")))
    assert line.startswith("error: directory ") and "file '" not in line


@pytest.mark.parametrize("what", ["missing", "no-model", "no-metadata"])
def test_load_model_directory_is_checked_before_the_data(tmp_path, what):
    directory = tmp_path / "model"
    if what != "missing":
        directory.mkdir()
    if what == "no-model":
        (directory / "MetaData.json").write_text('{"Name": "x", "Status": "completed"}')
    # the data directory is missing too: the -L error must come first, before any data setup
    line = error_line(cli(tmp_path, "-L", str(directory), "--data", str(tmp_path / "no-data")))
    assert "sample directory" not in line
    assert {"missing": f"-L {directory}: no such model directory", "no-model": "no model.keras in it",
            "no-metadata": "MetaData.json"}[what] in line
