"""dlkit.generators failures: bad input raises clearly (file and key named), dead readers raise within
seconds, and nothing - processes, /dev/shm segments, partial caches - is left after close, errors,
garbage collection, interpreter exit, Ctrl-C or a killed consumer."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
from test_generators import KEYS, _readers, no_leftovers, write_dataset  # noqa: F401 - autouse fixture

from dlkit.generators import (
    DataError,
    GeneratorError,
    MultiClassGenerator,
    SampleSpec,
    WorkerDiedError,
    _shm,
    make_samples_from_dirs,
)


@pytest.fixture
def data(tmp_path):
    """A private copy of the dataset (tests here damage files)."""
    return write_dataset(str(tmp_path / "data"))


@pytest.fixture
def samples(data):
    return make_samples_from_dirs(data, KEYS)


def alive(pid: int) -> bool:
    """Process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids, seconds=15.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


# --------------------------------------------------------------------------------------- bad input
def test_missing_file(samples):
    bad = samples + [SampleSpec("/nonexistent/dir/ghost.h5", KEYS, "A")]
    with pytest.raises(DataError, match="ghost.h5.*file not found") as ei:
        MultiClassGenerator(bad, 32)
    assert ei.value.file == "/nonexistent/dir/ghost.h5"


def test_missing_key(samples):
    with h5py.File(samples[4].file, "a") as f:
        del f["H"]
    with pytest.raises(DataError) as ei:
        MultiClassGenerator(samples, 32)
    assert ei.value.file == samples[4].file and ei.value.key == "H"
    assert "dataset not found" in str(ei.value) and samples[4].file in str(ei.value)


def test_shape_and_dtype_and_length_mismatch(samples):
    path = samples[5].file
    with h5py.File(path, "a") as f:
        n = f["X"].shape[0]
        del f["X"]
        f["X"] = np.zeros((n, 4, 4), np.float32)
    with pytest.raises(DataError, match=r"per-event shape \(4, 4\) differs from \(4, 3\)") as ei:
        MultiClassGenerator(samples, 32)
    assert (ei.value.file, ei.value.key) == (path, "X")
    with h5py.File(path, "a") as f:
        del f["X"]
        f["X"] = np.zeros((n, 4, 3), np.float64)
    with pytest.raises(DataError, match="dtype float64 differs from float32"):
        MultiClassGenerator(samples, 32)
    with h5py.File(path, "a") as f:
        del f["X"]
        f["X"] = np.zeros((n - 1, 4, 3), np.float32)
    with pytest.raises(DataError, match="events but") as ei:
        MultiClassGenerator(samples, 32)
    assert ei.value.key == "H" and "'X' has" in str(ei.value)


def test_truncated_and_garbage_files(samples, tmp_path):
    path = samples[2].file
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(DataError, match="truncated") as ei:
        MultiClassGenerator(samples, 32)
    assert ei.value.file == path
    with open(path, "wb") as f:
        f.write(b"this is not an HDF5 file" * 100)
    with pytest.raises(DataError, match="cannot open as HDF5") as ei:
        MultiClassGenerator(samples, 32)
    assert ei.value.file == path


@pytest.mark.timeout(60)
def test_file_truncated_after_start_raises_in_consumer(samples):
    path = samples[7].file
    with MultiClassGenerator(samples, 32, n_workers=2, shuffle=False) as gen:
        gen.start()
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 3000)
        t = time.monotonic()
        with pytest.raises(DataError) as ei:
            for b in gen:
                pass
        assert time.monotonic() - t < 10
        assert ei.value.file == path and ei.value.key in KEYS
        assert "end of file" in str(ei.value)
        with pytest.raises(GeneratorError, match="stopped after an error"):
            gen[0]
    assert _readers() == []


@pytest.mark.timeout(60)
def test_corrupt_compressed_chunk_raises_naming_file_and_key(tmp_path):
    path = str(tmp_path / "z.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "X", data=np.random.rand(200, 50).astype(np.float32), chunks=(20, 50), compression="gzip"
        )
        f["id"] = np.arange(200)
        info = f["X"].id.get_chunk_info(5)
    with open(path, "r+b") as f:
        f.seek(info.byte_offset + 10)
        f.write(os.urandom(max(1, info.size - 20)))
    spec = [SampleSpec(path, ["X", "id"], "A")]
    with MultiClassGenerator(spec, 16, n_workers=1, shuffle=False) as gen, pytest.raises(DataError) as ei:
        for b in gen:
            pass
    assert ei.value.file == os.path.abspath(path) and ei.value.key == "X"
    assert "Traceback" not in str(ei.value)


@pytest.mark.timeout(60)
def test_killed_reader_raises_within_seconds(samples):
    with MultiClassGenerator(samples, 16, n_workers=2) as gen:
        gen[0]
        os.kill(gen.worker_pids[1], signal.SIGKILL)
        t = time.monotonic()
        with pytest.raises(WorkerDiedError, match="killed by SIGKILL"):
            for _ in range(1000):
                for b in gen:
                    pass
        assert time.monotonic() - t < 5
    assert _readers() == []


class Boom:
    def __call__(self, arrays):
        if arrays["X"].shape[0] > 2:  # the consumer's 2-event probe passes
            raise ValueError("bad normalisation constant")
        return arrays


def test_preprocess_errors(samples):
    with MultiClassGenerator(samples, 16, n_workers=1, preprocess=Boom()) as gen:
        with pytest.raises(GeneratorError, match="preprocess failed.*ValueError: bad normalisation constant"):
            gen[0]
    with pytest.raises(TypeError, match="picklable"):
        MultiClassGenerator(samples, 16, preprocess=lambda a: a)


def test_bad_arguments(samples):
    with pytest.raises(ValueError):
        MultiClassGenerator(samples, 0)
    with pytest.raises(ValueError, match="start_method"):
        MultiClassGenerator(samples, 16, start_method="threads")
    with pytest.raises(ValueError, match="unknown classes"):
        MultiClassGenerator(samples, 16, rates={"Z": 1})
    with pytest.raises(ValueError, match="not enough for one batch"):
        MultiClassGenerator(samples, 10**6, last_batch="drop")
    with MultiClassGenerator(samples, 16, n_workers=1) as gen, pytest.raises(IndexError):
        gen[len(gen)]


@pytest.mark.timeout(60)
def test_holding_every_batch_fails_clearly_instead_of_hanging(samples):
    with MultiClassGenerator(samples, 8, n_workers=1, queue_depth=1) as gen:
        held = []
        with pytest.raises(GeneratorError, match="still referenced"):
            for b in gen:
                held.append(b)
        del held


# --------------------------------------------------------------------------------------- cleanup
def test_close_is_idempotent_and_exceptions_clean_up(samples):
    gen = MultiClassGenerator(samples, 16, n_workers=2)
    gen.close()
    gen.close()
    with pytest.raises(GeneratorError, match="closed"):
        gen[0]
    with pytest.raises(RuntimeError, match="user error"):
        with MultiClassGenerator(samples, 16, n_workers=2) as gen:
            gen[0]
            raise RuntimeError("user error")
    assert _readers() == []


def test_garbage_collection_cleans_up(samples):
    gen = MultiClassGenerator(samples, 16, n_workers=2)
    batch = gen[0]
    pids = gen.worker_pids
    del gen
    gc.collect()
    assert wait_gone(pids) == []
    assert batch["X"].shape == (16, 4, 3)  # a batch still held stays readable after the generator is gone


SCRIPT = textwrap.dedent("""
    import faulthandler, os, signal, sys, time
    faulthandler.dump_traceback_later(25, exit=True)  # a hang prints where every thread is (the test shows it)
    # a terminal's Python: SIGINT raises KeyboardInterrupt and is not blocked. A test process may hand its
    # children SIGINT ignored or blocked (both are inherited through exec): once under two pytest-xdist
    # workers the Ctrl-C below never arrived
    print(f"SIGINT was {signal.getsignal(signal.SIGINT)}, blocked {sorted(signal.pthread_sigmask(signal.SIG_BLOCK, []))}",
          file=sys.stderr, flush=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    from dlkit.generators import MultiClassGenerator, make_samples_from_dirs
    data, mode, cache = sys.argv[1], sys.argv[2], sys.argv[3]
    gen = MultiClassGenerator(make_samples_from_dirs(data, ["X", "id"]), 8, n_workers=2,
                              cache=cache if cache != "-" else False)
    gen.start()
    print(" ".join(map(str, gen.worker_pids)), flush=True)
    gen[0]
    if mode == "exit":
        sys.exit(0)  # no close(): the interpreter's exit must clean up
    if mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    print("looping", flush=True)
    while True:  # until Ctrl-C
        for b in gen:
            time.sleep(0.001)
""")


def run_script(data, mode, cache="-"):
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, data, mode, str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )


def no_segments_of(pid):
    return [n for n in _shm.list_ours() if n.startswith(f"{_shm.PREFIX}{pid}_")]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["exit", "sigint", "sigkill"])
def test_no_leftovers_after_exit_ctrl_c_or_killed_consumer(data, mode):
    proc = run_script(data, mode)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    if mode == "sigint":
        assert proc.stdout.readline().strip() == "looping"
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"no exit 30 s after {mode}: {proc.stderr.read()[-6000:]}")
    err = proc.stderr.read()
    if mode == "exit":
        assert proc.returncode == 0, err
    if mode == "sigint":
        assert "KeyboardInterrupt" in err
    assert wait_gone(pids) == [], f"readers survived {mode}"
    assert no_segments_of(proc.pid) == []
    assert "leaked shared_memory" not in err


@pytest.mark.timeout(90)
def test_killed_first_epoch_never_leaves_a_usable_cache(data, tmp_path):
    cache = tmp_path / "cache"
    proc = run_script(data, "sigkill", cache)
    pids = [int(p) for p in proc.stdout.readline().split()]
    proc.wait(timeout=30)
    assert wait_gone(pids) == []
    leftovers = os.listdir(cache)
    assert leftovers and all(".tmp-" in n for n in leftovers)  # partial, never renamed
    samples = make_samples_from_dirs(data, ["X", "id"])
    with MultiClassGenerator(samples, 8, n_workers=2, cache=cache) as gen:
        gen.start()
        assert all(not os.path.exists(cache / n) for n in leftovers)  # stale temporary removed
        assert not gen.cache_path.exists()
        for b in gen:
            pass
        assert gen.cache_path.exists()
    shutil.rmtree(cache)
