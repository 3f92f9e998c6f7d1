"""Issue 26 item 1: a script without ``if __name__ == "__main__":`` (or the same code piped to ``python -``) that
simulates with spawned workers (dlkit.datasets.write_files) and reads with a generator's reader processes
either completes (dlkit starts its workers without re-importing the main module when it can) or, where the
workers must import the main module, ends within seconds with one line saying what to do; no process and no
shared-memory segment is left behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

GUARD = 'if __name__ == "__main__":'

HEADER = """\
import os
from pathlib import Path
from dlkit.datasets import write_files
out = Path(os.environ["SPAWN_OUT"])
jobs = [(str(out / f"c{c}_{i}.h5"), c, 20) for c in range(2) for i in range(2)]
"""

# the README snippet in miniature: simulate with 2 spawned workers, then read with 2 reader processes
LIBRARY_TASKS = HEADER + """\
from spawn_helpers import write_events
paths = write_files(write_events, jobs, 80, "miniature", workers=2)
from dlkit.generators import MultiClassGenerator, SampleSpec
specs = [SampleSpec(p, ["X"], f"c{job[1]}") for p, job in zip(paths, jobs)]
with MultiClassGenerator(specs, 16, n_workers=2, cache=False, seed=1) as gen:
    rows = sorted(float(x) for batch in gen for x in batch["X"][:, 0])
print("EVENTS", len(rows), round(sum(rows), 3))
"""

# the task defined in the script itself: the workers must import the main module
MAIN_TASK = HEADER + """\
import h5py
import numpy as np
def write_events(job, progress):
    path, cls, n = job
    with h5py.File(path, "w") as f:
        f["X"] = np.zeros((n, 3), np.float32)
    return path, n
write_files(write_events, jobs, 80, "miniature", workers=2)
print("EVENTS written")
"""

# a pre-process defined in the script: the generator's readers must import the main module
MAIN_PREPROCESS = HEADER + """\
from spawn_helpers import write_events
paths = [write_events(job, None)[0] for job in jobs]
def double(arrays):
    return {"X": 2 * arrays["X"]}
from dlkit.generators import MultiClassGenerator, SampleSpec
specs = [SampleSpec(p, ["X"], f"c{job[1]}") for p, job in zip(paths, jobs)]
with MultiClassGenerator(specs, 16, n_workers=2, cache=False, preprocess=double) as gen:
    print("EVENTS", sum(len(b["X"]) for b in gen))
"""


def _shm_segments() -> set:
    return {name for name in os.listdir("/dev/shm") if name.startswith("dlkit")}


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def _run(code: str, how: str, tmp_path) -> subprocess.CompletedProcess:
    """Run ``code`` as a script without a main guard (``how="script"``) or piped to ``python -`` in its own
    process group; afterwards nothing of that group may be left, nor a new dlkit shared-memory segment."""
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, SPAWN_OUT=str(out), TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    segments = _shm_segments()
    if how == "script":
        script = tmp_path / "run.py"
        script.write_text(code)
        assert GUARD not in code
        args, stdin = [sys.executable, str(script)], None
    else:
        args, stdin = [sys.executable, "-"], code
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path, start_new_session=True)
    t0 = time.monotonic()
    try:
        stdout, stderr = proc.communicate(stdin, timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{how} did not end within 60 s")
    print(f"{how}: exit {proc.returncode} after {time.monotonic() - t0:.1f} s")
    deadline = time.monotonic() + 10
    while _group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _group_members(proc.pid)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"
    left = {name for name in _shm_segments() - segments if name.startswith(f"dlkit_{proc.pid}_")}  # the run's own
    assert not left, f"shared memory left: {left}"
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("how", ["script", "stdin"])
def test_no_guard_completes_when_the_workers_need_nothing_from_main(how, tmp_path):
    result = _run(LIBRARY_TASKS, how, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # every event of the four files once: X[:, 0] = class + 3 row / 100 for rows 0..19, two files per class
    expected = sum(c + 3 * r / 100 for c in (0, 1) for _ in range(2) for r in range(20))
    assert f"EVENTS 80 {round(expected, 3)}" in result.stdout, result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("how", ["script", "stdin"])
def test_workers_that_must_import_main_end_the_run_with_one_line(how, tmp_path):
    result = _run(MAIN_TASK, how, tmp_path)
    assert result.returncode != 0 and "EVENTS" not in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: a worker process of miniature could not start: "), result.stderr[-3000:]
    if how == "script":
        assert "run.py again" in last and f"put the script's code under `{GUARD}`" in last
    else:
        assert "code piped to `python -`" in last and GUARD in last
    assert result.stderr.count("Traceback") <= 3  # the parent's and at most one per worker: no endless respawns


def test_readers_that_must_import_main_end_the_run_with_one_line(tmp_path):
    result = _run(MAIN_PREPROCESS, "script", tmp_path)
    assert result.returncode != 0 and "EVENTS" not in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dlkit.generators.errors.WorkerDiedError: reader process "), result.stderr[-3000:]
    assert "could not start" in last and f"put the script's code under `{GUARD}`" in last
    assert result.stderr.count("Traceback") <= 3
