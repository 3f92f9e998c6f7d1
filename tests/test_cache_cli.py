"""python -m dlkit.cache: every cache listed with its size and what made it, cleaned by age or all, never one a
running generator reads; DLKIT_CACHE_MAX_GB evicts the least recently used."""

import os
import time

import h5py
import numpy as np
import pytest

from dlkit import cache as dlcache
from dlkit.datasets import cached_dataset
from dlkit.generators import MultiClassGenerator, SampleSpec


def write_samples(root, n=200, width=64):
    """Two classes, one file each: a generator cache of about 2 x n x width x 4 bytes."""
    specs = []
    for i, name in enumerate(("A", "B")):
        path = root / f"{name}.h5"
        with h5py.File(path, "w") as f:
            f["X"] = np.random.default_rng(i).normal(size=(n, width)).astype(np.float32)
        specs.append(SampleSpec(str(path), ["X"], name))
    return specs


def build_cache(specs, cache_dir, seed=0):
    with MultiClassGenerator(specs, 50, n_workers=1, cache=cache_dir, seed=seed) as gen:
        for _ in gen:
            pass
        return gen.cache_path


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    cache_dir, data_root = tmp_path / "cache", tmp_path / "data"
    cache_dir.mkdir(mode=0o700)
    data_root.mkdir(mode=0o700)
    monkeypatch.setenv("DLKIT_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("DLKIT_DATA", str(data_root))
    return cache_dir, data_root


def test_list_names_every_cache_with_its_size_and_sources(tmp_path, dirs, capsys):
    cache_dir, data_root = dirs
    specs = write_samples(tmp_path)
    path = build_cache(specs, cache_dir)
    dataset = cached_dataset(data_root / "mypkg" / "sim-1", "k123", lambda tmp: [_write(tmp / "a.h5")],
                             meta={"seed": 7})
    found = {e.path: e for e in dlcache.entries()}
    assert set(found) == {path, dataset}
    entry = found[path]
    assert entry.kind == "generator cache" and entry.size == os.path.getsize(path) and not entry.in_use
    assert "classes A, B" in entry.made_by and f"2 source file(s) in {tmp_path}" in entry.made_by
    assert found[dataset].size == sum(p.stat().st_size for p in dataset.iterdir())  # a.h5 and COMPLETE.json
    assert '"seed": 7' in found[dataset].made_by
    assert dlcache.main(["list"]) == 0
    out = capsys.readouterr().out
    assert str(path) in out and str(dataset) in out and "2 entries" in out


def _write(path):
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(10)
    return path


def test_clean_by_age_and_all_keeps_what_a_running_generator_reads(tmp_path, dirs, capsys):
    cache_dir, _ = dirs
    specs = write_samples(tmp_path)
    old = build_cache(specs, cache_dir)
    week = time.time() - 8 * 86400
    os.utime(old, (week, week))
    (tmp_path / "b").mkdir()
    specs_b = write_samples(tmp_path / "b")
    recent = build_cache(specs_b, cache_dir)
    assert dlcache.main(["clean", "--older-than", "7d"]) == 0
    assert not old.exists() and recent.exists()
    assert "removed 1 entries" in capsys.readouterr().out
    with MultiClassGenerator(specs_b, 50, n_workers=1, cache=cache_dir) as gen:
        next(iter(gen))  # a later run reading the cache holds it
        assert gen.cache_path == recent
        assert [e.in_use for e in dlcache.entries()] == [True]
        assert dlcache.main(["clean", "--all"]) == 0
        captured = capsys.readouterr()
        assert recent.exists() and "in use by a running job" in captured.err and "1 in use kept" in captured.out
    assert dlcache.main(["clean", "--all"]) == 0
    assert not recent.exists() and not list(cache_dir.glob("dlkit-*"))


def test_size_limit_evicts_the_least_recently_used(tmp_path, dirs, monkeypatch):
    cache_dir, _ = dirs
    for sub in ("1", "2", "3"):
        (tmp_path / sub).mkdir()
    first = build_cache(write_samples(tmp_path / "1"), cache_dir)
    hour = time.time() - 3600
    os.utime(first, (hour, hour))
    second = build_cache(write_samples(tmp_path / "2"), cache_dir)
    size = os.path.getsize(first)
    monkeypatch.setenv(dlcache.MAX_GB_ENV, str(2.5 * size / 2**30))  # room for two caches, not three
    third = build_cache(write_samples(tmp_path / "3"), cache_dir)
    assert not first.exists() and second.exists() and third.exists()
    monkeypatch.setenv(dlcache.MAX_GB_ENV, "lots")
    with pytest.raises(ValueError, match="DLKIT_CACHE_MAX_GB='lots'"):
        dlcache.evict_to_limit(cache_dir)
    assert [e.kind for e in dlcache.entries(datasets=False)] == ["generator cache"] * 2


def test_eviction_keeps_the_premixed_file_a_constructed_generator_will_read(tmp_path, dirs, monkeypatch):
    """calodnn builds its train and validation generators on premixed files in the cache directory before
    training starts: the size limit, triggered by one generator's new cache, must not remove the other's input."""
    cache_dir, _ = dirs
    premixed = cache_dir / "calodnn-premix"
    premixed.mkdir()
    path = premixed / "premix-0123456789abcdef-0.h5"
    with h5py.File(path, "w") as f:
        f["X"] = np.arange(400 * 64, dtype=np.float32).reshape(400, 64)
    old = time.time() - 86400
    os.utime(path, (old, old))  # the least recently used entry
    waiting = MultiClassGenerator([SampleSpec(str(path), ["X"], "mixed")], 50, n_workers=1, cache=False)
    try:
        monkeypatch.setenv(dlcache.MAX_GB_ENV, "1e-9")  # nothing fits: evict everything that may go
        (tmp_path / "other").mkdir()
        build_cache(write_samples(tmp_path / "other"), cache_dir)
        assert path.exists()  # held by the waiting generator
        assert sum(len(b["X"]) for b in waiting) == 400
    finally:
        waiting.close()
    assert [e.path for e in dlcache.entries(datasets=False) if e.kind == "premix"] == [path]
    assert not [e for e in dlcache.entries(datasets=False) if e.in_use]
