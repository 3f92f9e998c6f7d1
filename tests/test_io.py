"""dlkit.io: CSV and ROOT files into HDF5 that the generators read; bad input reported with its location."""

import gzip
import subprocess
import sys

import h5py
import numpy as np
import pytest

from dlkit.generators import DataError
from dlkit.io import convert_csv, convert_root, main


@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 5, (123, 6)), rng.uniform(10, 100, 123)


def _write_csv(path, layers, energy, header=True, delimiter=","):
    with open(path, "w") as f:
        f.write("# BHCal layer sums, then E_truth\n")
        if header:
            f.write(delimiter.join([f"L{i}" for i in range(layers.shape[1])] + ["E_truth"]) + "\n")
        for i, (row, e) in enumerate(zip(layers, energy)):
            if i == 50:
                f.write("\n# a comment in the middle\n")
            f.write(delimiter.join(repr(float(v)) for v in [*row, e]) + "\n")


@pytest.mark.parametrize("chunk_rows", [7, 50_000])
def test_csv_round_trip(tmp_path, table, chunk_rows):
    layers, energy = table
    src, dst = tmp_path / "bhcal.csv", tmp_path / "out" / "bhcal.h5"
    _write_csv(src, layers, energy)
    assert convert_csv(src, dst, chunk_rows=chunk_rows, progress=False) == dst
    with h5py.File(dst, "r") as f:
        np.testing.assert_allclose(f["layers"][()], layers.astype(np.float32))
        np.testing.assert_allclose(f["energy"][()], energy.astype(np.float32))
        assert f["layers"].dtype == np.float32 and list(f.attrs["columns"])[-1] == "E_truth"
        assert f["layers"].chunks is None  # contiguous: the generators read it raw
    assert sorted(p.name for p in dst.parent.iterdir()) == ["bhcal.h5"]


def test_csv_whitespace_gzip_first_column_energy(tmp_path, table):
    layers, energy = table
    src = tmp_path / "events.txt.gz"
    with gzip.open(src, "wt") as f:
        for row, e in zip(layers, energy):
            f.write(" ".join(repr(float(v)) for v in [e, *row]) + "\n")
    dst = convert_csv(src, tmp_path / "e.h5", energy_column=0, layers_key="L", energy_key="E", progress=False)
    with h5py.File(dst, "r") as f:
        np.testing.assert_allclose(f["L"][()], layers.astype(np.float32))
        np.testing.assert_allclose(f["E"][()], energy.astype(np.float32))
        assert "columns" not in f.attrs


@pytest.mark.parametrize("body, where", [
    ("1,2,3\n4,5,6\n# c\n7,x,9\n", "line 4, column 2: 'x' is not a number"),
    ("1,2,3\n4,5,6,7\n", "line 2: expected 3 columns, got 4"),
    ("1,2,3\n4,,6\n", "line 2, column 2: '' is not a number"),
    ("1,2,3\n4,nan,6\n", "line 2, column 2: 'nan' is not finite"),
    ("# only a comment\n\n", "no data rows"),
])
def test_csv_bad_rows_name_file_and_line(tmp_path, body, where):
    src = tmp_path / "bad.csv"
    src.write_text(body)
    with pytest.raises(DataError) as info:
        convert_csv(src, tmp_path / "bad.h5", chunk_rows=2, progress=False)
    assert where in str(info.value) and "bad.csv" in str(info.value)
    assert list(tmp_path.iterdir()) == [src]  # nothing half-written


def test_csv_allow_nan_and_missing_file(tmp_path):
    src = tmp_path / "nan.csv"
    src.write_text("1,2,3\n4,nan,6\n")
    with h5py.File(convert_csv(src, tmp_path / "nan.h5", allow_nan=True, progress=False)) as f:
        assert np.isnan(f["layers"][1, 1])
    with pytest.raises(DataError, match="not found"):
        convert_csv(tmp_path / "nope.csv", tmp_path / "x.h5", progress=False)


def _write_root(path, n=50):
    uproot = pytest.importorskip("uproot")
    rng = np.random.default_rng(1)
    data = {f"L{i}": rng.random(n).astype(np.float32) for i in range(12)}  # L10, L11 test natural order
    data["E_truth"] = rng.uniform(1, 100, n)
    data["pos"] = rng.random((n, 3))
    with uproot.recreate(path) as f:
        f.mktree("events", {k: (v.dtype, v.shape[1:]) if v.ndim > 1 else v.dtype for k, v in data.items()})
        f["events"].extend(data)
    return data


def test_root_round_trip_in_chunks(tmp_path):
    data = _write_root(tmp_path / "sim.root")
    dst = convert_root(tmp_path / "sim.root", tmp_path / "sim.h5", "events",
                       {"energy": "E_truth", "layers": "L*", "pos": "pos"}, step_size=16, progress=False)
    with h5py.File(dst, "r") as f:
        np.testing.assert_array_equal(f["layers"][()], np.stack([data[f"L{i}"] for i in range(12)], axis=1))
        np.testing.assert_allclose(f["energy"][()], data["E_truth"].astype(np.float32))
        np.testing.assert_allclose(f["pos"][()], data["pos"].astype(np.float32))
        assert list(f["layers"].attrs["branches"])[-2:] == ["L10", "L11"]


def test_root_errors_name_file_tree_and_branch(tmp_path, capsys):
    uproot = pytest.importorskip("uproot")
    _write_root(tmp_path / "sim.root")
    with pytest.raises(DataError, match="'E_nope'.*branch not found in tree 'events'"):
        convert_root(tmp_path / "sim.root", tmp_path / "x.h5", "events", {"energy": "E_nope"}, progress=False)
    with pytest.raises(DataError, match="tree 'evts' not found.*events"):
        convert_root(tmp_path / "sim.root", tmp_path / "x.h5", "evts", ["E_truth"], progress=False)
    import awkward as ak

    with uproot.recreate(tmp_path / "jagged.root") as f:
        f.mktree("t", {"hits": "var * float64", "E": np.float64})
        f["t"].extend({"hits": ak.Array([[1.0, 2.0], [3.0], []]), "E": np.array([1.0, 2.0, 3.0])})
    assert main(["root", str(tmp_path / "jagged.root"), str(tmp_path / "j.h5"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'hits'" in err and "jagged" in err and "jagged.root" in err
    assert not (tmp_path / "j.h5").exists()


def test_converted_files_feed_the_generator(tmp_path, table, monkeypatch):
    from dlkit.generators import MultiClassGenerator, make_samples_from_dirs

    monkeypatch.setenv("DLKIT_CACHE_DIR", str(tmp_path / "cache"))
    layers, energy = table
    _write_csv(tmp_path / "a.csv", layers, energy)
    convert_csv(tmp_path / "a.csv", tmp_path / "data" / "BHCal" / "a.h5", progress=False)
    samples = make_samples_from_dirs(tmp_path / "data", ["layers", "energy"])
    with MultiClassGenerator(samples, 32, shuffle=False, n_workers=1) as gen:
        arrays = gen.read_all()
    np.testing.assert_allclose(arrays["layers"], layers.astype(np.float32))
    np.testing.assert_allclose(arrays["energy"], energy.astype(np.float32))


def test_cli(tmp_path, table):
    layers, energy = table
    _write_csv(tmp_path / "a.csv", layers, energy, header=False, delimiter=";")
    proc = subprocess.run([sys.executable, "-m", "dlkit.io", "csv", str(tmp_path / "a.csv"), str(tmp_path / "a.h5"),
                           "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "a.h5", "r") as f:
        np.testing.assert_allclose(f["energy"][()], energy.astype(np.float32))
    (tmp_path / "b.csv").write_text("1;2\n3;x\n")
    proc = subprocess.run([sys.executable, "-m", "dlkit.io", "csv", str(tmp_path / "b.csv"), str(tmp_path / "b.h5")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1:] == [
        f"error: file '{tmp_path / 'b.csv'}': line 2, column 2: 'x' is not a number"]
