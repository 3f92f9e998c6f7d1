"""python -m dlkit.cache goes by the last use a run recorded, not by access times: a dataset or generator cache
used a second ago is listed as used then, however old its files look, and clean --older-than keeps it."""

import os
import re
import time
from datetime import datetime

import h5py
import numpy as np
import pytest

from dlkit import cache as dlcache
from dlkit.datasets import cached_dataset
from dlkit.generators import MultiClassGenerator, SampleSpec

TEN_DAYS = 10 * 86400


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    cache_dir, data_root, state = tmp_path / "cache", tmp_path / "data", tmp_path / "state"
    for d in (cache_dir, data_root):
        d.mkdir(mode=0o700)
    monkeypatch.setenv("DLKIT_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("DLKIT_DATA", str(data_root))
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return cache_dir, data_root


def _write(path):
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(10)
    return path


def _age_by_ten_days(path, access_only=False):
    """Every file and directory under ``path`` accessed (and, unless ``access_only``, modified) ten days ago."""
    old = time.time() - TEN_DAYS
    for p in [*path.rglob("*"), path] if path.is_dir() else [path]:
        os.utime(p, (old, p.stat().st_mtime if access_only else old))


def _listed_use(capsys, path) -> float:
    """The "last use" that `python -m dlkit.cache list` prints for ``path``, as epoch seconds."""
    assert dlcache.main(["list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"kind\s+size\s+last use\s+unused for\s+in use\s+made by\s+path", out)  # every column named
    row = next(line for line in out.splitlines() if line.rstrip().endswith(str(path)))
    stamp = re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row).group(0)
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timestamp()


def test_list_shows_a_dataset_use_made_a_second_ago(dirs, capsys):
    _, data_root = dirs
    path = data_root / "mypkg" / "sim-1"
    build = lambda tmp: [_write(tmp / "a.h5")]  # noqa: E731
    cached_dataset(path, "k1", build)
    _age_by_ten_days(path)
    assert _listed_use(capsys, path) < time.time() - TEN_DAYS + 60  # made ten days ago, no use recorded since
    assert dlcache.main(["clean", "--older-than", "7d", "--dry-run"]) == 0
    assert "would remove 1 entries" in capsys.readouterr().out

    used = time.time()
    assert cached_dataset(path, "k1", build) == path  # a run uses it
    _age_by_ten_days(path, access_only=True)  # access times (which relatime rarely updates) say nothing
    assert int(used) - 1 <= _listed_use(capsys, path) <= time.time() + 1
    assert dlcache.main(["clean", "--older-than", "7d"]) == 0
    assert "removed 0 entries" in capsys.readouterr().out and path.is_dir()


def test_list_shows_a_generator_cache_use_made_a_second_ago(tmp_path, dirs, capsys):
    cache_dir, _ = dirs
    source = tmp_path / "A.h5"
    with h5py.File(source, "w") as f:
        f["X"] = np.arange(200 * 4, dtype=np.float32).reshape(200, 4)
    specs = [SampleSpec(str(source), ["X"], "A")]
    with MultiClassGenerator(specs, 50, n_workers=1, cache=cache_dir) as gen:
        for _ in gen:
            pass
        cache = gen.cache_path
    _age_by_ten_days(cache)
    assert _listed_use(capsys, cache) < time.time() - TEN_DAYS + 60

    used = time.time()
    with MultiClassGenerator(specs, 50, n_workers=1, cache=cache_dir) as gen:
        next(iter(gen))  # a later run reads the cache
        assert gen.cache_path == cache
    _age_by_ten_days(cache, access_only=True)
    assert int(used) - 1 <= _listed_use(capsys, cache) <= time.time() + 1
    assert [e.path for e in dlcache.clean(older_than=7 * 86400, dry_run=True)[0]] == []


def test_clean_dry_run_alone_says_what_each_age_would_remove(dirs, capsys):
    _, data_root = dirs
    path = cached_dataset(data_root / "mypkg" / "sim-2", "k2", lambda tmp: [_write(tmp / "a.h5")])
    _age_by_ten_days(path)
    assert dlcache.main(["clean", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "give --older-than AGE (or --all)" in out
    assert re.search(r"--older-than\s+7d: 1 entries", out) and re.search(r"--older-than\s+30d: 0 entries", out)
    assert path.is_dir()  # nothing removed
