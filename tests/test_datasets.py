"""dlkit.datasets: complete-marker directories and atomic files."""

import json
import multiprocessing
import os
import stat
import subprocess
import sys

import pytest

from dlkit.datasets import (
    COMPLETE_MARKER,
    atomic_file,
    cached_dataset,
    data_root,
    read_complete,
    remove_stale_tmp,
    tmp_name,
)


def _build(tmp):
    (tmp / "a.txt").write_text("a")
    (tmp / "sub").mkdir()
    (tmp / "sub" / "b.txt").write_text("b")
    return [tmp / "a.txt", tmp / "sub" / "b.txt"]


def test_build_once_then_reuse(tmp_path):
    calls = []
    path = tmp_path / "ds"

    def build(tmp):
        calls.append(tmp)
        return _build(tmp)

    assert cached_dataset(path, "k1", build, {"seed": 3}) == path
    assert cached_dataset(path, "k1", build) == path
    assert len(calls) == 1
    info = json.loads((path / COMPLETE_MARKER).read_text())
    assert info == {"key": "k1", "seed": 3, "files": ["a.txt", "sub/b.txt"]}
    assert read_complete(path) == info
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary left


def test_other_key_and_foreign_directory_are_errors(tmp_path):
    path = tmp_path / "ds"
    cached_dataset(path, "k1", _build)
    with pytest.raises(FileExistsError, match="key k1, wanted k2"):
        cached_dataset(path, "k2", _build)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("x")
    with pytest.raises(FileExistsError, match="no COMPLETE.json"):
        cached_dataset(foreign, "k", _build)


def test_failed_build_leaves_nothing_and_is_retried(tmp_path):
    path = tmp_path / "ds"

    def broken(tmp):
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        cached_dataset(path, "k", broken)
    assert list(tmp_path.iterdir()) == []
    assert read_complete(path) is None
    cached_dataset(path, "k", _build)
    assert (path / "a.txt").read_text() == "a"


def test_stale_tmp_of_dead_process_removed_live_one_kept(tmp_path):
    path = tmp_path / "ds"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = tmp_path / f"ds.tmp-{int(dead.stdout)}"
    stale.mkdir()
    (stale / "partial").write_text("x")
    live = tmp_name(path)  # this process: alive
    live.write_text("in progress")
    remove_stale_tmp(path)
    assert not stale.exists()
    assert live.exists()


def _race(args):
    path, key = args
    return str(cached_dataset(path, key, _build))


def test_concurrent_builders_end_with_one_copy(tmp_path):
    path = tmp_path / "ds"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        out = pool.map(_race, [(path, "k")] * 3)
    assert set(out) == {str(path)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert read_complete(path)["key"] == "k"


def test_atomic_file(tmp_path):
    target = tmp_path / "f.txt"
    with atomic_file(target) as tmp:
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    with pytest.raises(ValueError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise ValueError("crash")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_corrupt_marker_names_the_file(tmp_path):
    path = tmp_path / "ds"
    path.mkdir()
    (path / COMPLETE_MARKER).write_text("{not json")
    with pytest.raises(ValueError, match="COMPLETE.json"):
        read_complete(path)


def test_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DLKIT_DATA", str(tmp_path))
    assert data_root("calodnn") == tmp_path / "calodnn"
    monkeypatch.delenv("DLKIT_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root("x") == tmp_path / "cache" / "dlkit" / "x"


def test_atomic_file_is_hidden_unique_readable_and_its_dead_leftovers_go(tmp_path):
    """The one atomic write (dlkit.datasets.atomic_file, also behind dlkit.metadata.atomic_write)."""
    target = tmp_path / "MetaData.json"
    with atomic_file(target) as first, atomic_file(target) as second:  # two writers in one process
        assert first != second and first.name.startswith(".MetaData.json.tmp-")
        first.write_text("1")
        second.write_text("2")
    assert target.read_text() == "1"  # the outer block ends last: its rename wins
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = tmp_path / f".MetaData.json.tmp-{int(dead.stdout)}-abc123"
    stale.write_text("half")
    live = tmp_path / f".MetaData.json.tmp-{os.getpid()}-def456"
    live.write_text("in progress")
    with atomic_file(target, suffix=".npz") as tmp:
        assert tmp.suffix == ".npz"
        tmp.write_text("3")
    assert not stale.exists() and live.exists() and target.read_text() == "3"
