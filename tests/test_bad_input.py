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


def _lcd_with_an_empty_class(root):
    """A calodnn dataset whose ChPi files hold no events (h5py datasets of length 0)."""
    import h5py

    from calodnn.simulate import write_dataset

    write_dataset(root, events_per_class=60, events_per_file=60, seed=5, progress=False)
    for path in (root / "ChPi").glob("*.h5"):
        with h5py.File(path, "r") as f:
            arrays = {k: f[k][:0] for k in f}
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                f.create_dataset(k, data=v)
    return root


def test_a_class_without_events_is_an_error_naming_it_and_its_files(tmp_path):
    from dlkit.generators import DataError, MultiClassGenerator, make_samples_from_dirs, split_samples

    root = _lcd_with_an_empty_class(tmp_path / "lcd")
    line = error_line(cli(tmp_path, "--data", str(root)))
    assert "class 'ChPi' has no events" in line and str(root / "ChPi") in line and "AllowEmptyClasses" in line
    samples = make_samples_from_dirs(root, ["ECAL", "energy"], classes=["Ele", "ChPi"])
    assert len(split_samples(samples, [0.5, 0.5], allow_empty_classes=True)[0]) == 1  # allowed: Ele only
    with pytest.raises(DataError, match="class 'ChPi' has no events in its file"):
        MultiClassGenerator(samples, 16, n_workers=1)
    with pytest.raises(DataError, match="class 'Gamma' has no events \\(no file of it is given\\)"):
        MultiClassGenerator(samples[:1], 16, class_index_map={"Ele": 0, "Gamma": 1}, n_workers=1)
    with MultiClassGenerator(samples, 16, n_workers=1, allow_empty_classes=True) as gen:
        assert gen.events_per_epoch == 60
