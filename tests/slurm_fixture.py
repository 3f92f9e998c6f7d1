"""A session fixture for the tests that need a running Slurm: ``slurm`` (import it into the test module).

It asks ``sinfo`` whether a node is up; if not and this is root, it runs ``.ci/start-slurm`` (installs and
starts a one-node Slurm, idempotent). The tests skip - the reason shown as a warning too, since ``pytest -q``
does not print skip reasons - only when Slurm truly cannot start here (start-slurm exit 77: not root, no
apt-get, the packages cannot be installed); any other failure to start it fails them.
"""

import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

START_SLURM = Path(__file__).resolve().parent.parent / ".ci" / "start-slurm"
CANNOT = 77  # start-slurm's "cannot start Slurm here"


def slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        result = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    states = {s.strip().rstrip("*~#") for s in result.stdout.split()}
    return result.returncode == 0 and bool(states & {"idle", "mixed", "allocated", "completing"})


def ensure_slurm() -> tuple[bool, str]:
    """(True, how) with Slurm up; (False, why) where it cannot start here. Raises if it should have started."""
    if slurm_up():
        return True, "running"
    if os.geteuid() != 0:
        return False, "Slurm is not running and starting it needs root (sudo .ci/start-slurm)"
    result = subprocess.run([str(START_SLURM)], capture_output=True, text=True, timeout=900)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    why = lines[-1] if lines else f"exit {result.returncode}"
    if result.returncode == 0 and slurm_up():
        return True, "started by .ci/start-slurm"
    if result.returncode == CANNOT:
        return False, why
    raise RuntimeError(f".ci/start-slurm failed (exit {result.returncode}):\n{result.stderr[-3000:]}")


@pytest.fixture(scope="session")
def slurm():
    """Skip (saying why) where Slurm cannot run; otherwise make sure it runs."""
    try:
        ok, why = ensure_slurm()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    if not ok:
        warnings.warn(f"Slurm tests skipped: {why}", stacklevel=1)
        pytest.skip(f"Slurm cannot start here: {why}")
    return why
