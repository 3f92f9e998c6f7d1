"""A stop signal at any phase of an experiment run (data setup, training, analysis, the final save) ends it with
exit code 75 and leaves nothing of it running within 2 s: no reader process, no shared-memory segment."""

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from calodnn.simulate import write_dataset

pytestmark = pytest.mark.timeout(300)

#: The experiment shell's INFO line that starts each phase.
PHASES = {"data setup": r"setting up the data", "training": r": training$", "analysis": r"analysis of the test",
          "saving": r": saving$"}


@pytest.fixture(scope="module")
def lcd(tmp_path_factory):
    root = tmp_path_factory.mktemp("lcd")
    write_dataset(root, events_per_class=300, events_per_file=150, seed=5, progress=False)
    return root


def tagged_processes(tag: str) -> list[int]:
    """The processes whose environment carries ``tag`` (the run and every process it started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if tag.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def shm_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir()} if Path("/dev/shm").is_dir() else set()


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_a_signal_at_any_phase_exits_75_and_leaves_nothing(lcd, tmp_path, phase, signum):
    tag = f"DLKIT_SIGNAL_TEST={uuid.uuid4().hex}"
    env = dict(os.environ, DLKIT_CACHE_DIR=str(tmp_path / "cache"), DLKIT_SIGNAL_TEST=tag.split("=")[1])
    shm_before = shm_segments()
    with open(tmp_path / "stdout", "w") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "calodnn.ClassificationExperiment", "--Test", "--data",
                                 str(lcd), "--set", "BatchSize=64", "--set", "EnergyBins=[10, 510, 4]",
                                 "--set", "Epochs=3", "-s", "12"], stdout=stdout, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=tmp_path)
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "dlkit.experiment INFO" in line or "calodnn.analysis INFO" in line:
                if re.search(PHASES[phase], line.strip()):
                    proc.send_signal(signum)
                    break
        else:
            pytest.fail(f"the run ended before its {phase} phase: {''.join(seen)[-3000:]}")
        rest = proc.stderr.read()
        code = proc.wait()
    assert code == 75, "".join(seen)[-2000:] + rest[-3000:]
    assert "Traceback" not in rest, rest[-3000:]
    deadline = time.monotonic() + 2.0
    while tagged_processes(tag.split("=")[1]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not tagged_processes(tag.split("=")[1]), f"processes left after the {phase} phase's signal"
    # the run's own segments (named after its pid: other test processes may hold theirs meanwhile)
    assert not {s for s in shm_segments() - shm_before if s.startswith(f"dlkit_{proc.pid}_") or s.startswith("psm_")}
