"""A fixture for the tests that need a running Slurm: ``slurm`` (import it into the test module).

It asks ``sinfo`` whether a node is up. If not, it starts one only where CI asks for system-level setup
(``DLKIT_CI=1``, which ``.ci/run`` sets) and this is root: ``.ci/start-slurm`` (installs and starts a one-node
Slurm, idempotent). A plain ``pytest`` on a workstation installs and starts nothing: the tests skip, saying how
to run them (``sudo .ci/start-slurm``). The reason is shown as a warning too, since ``pytest -q`` does not
print skip reasons. Under CI they skip only when Slurm truly cannot start there (start-slurm exit 77: not
root, no apt-get, the packages cannot be installed); any other failure to start it fails them.
"""

import fcntl
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

START_SLURM = Path(__file__).resolve().parent.parent / ".ci" / "start-slurm"
CANNOT = 77  # start-slurm's "cannot start Slurm here"
#: Set by .ci/run: the tests may install and start system services (here: Slurm).
CI_SETUP = "DLKIT_CI"


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
    if os.environ.get(CI_SETUP) != "1":
        return False, ("Slurm is not running; start it with `sudo .ci/start-slurm` (a one-node Slurm), or let the "
                       f"tests start it as CI does ({CI_SETUP}=1 as root)")
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


#: Held by the test that uses the one-node Slurm: under pytest-xdist the tests of other workers wait for it (the
#: node's CPUs are few, and a job of one test queued behind another's would eat its time limit).
LOCK = Path(os.environ.get("TMPDIR", "/tmp")) / f"dlkit-tests-slurm-{os.getuid()}.lock"
_STATE: dict = {}


@pytest.fixture
def slurm():
    """Skip (saying why) where Slurm cannot run; otherwise make sure it runs, and hold it for this test alone."""
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, after the test
        if "result" not in _STATE:
            try:
                _STATE["result"] = ensure_slurm()
            except RuntimeError as exc:
                _STATE["result"] = (None, str(exc))
        ok, why = _STATE["result"]
        if ok is None:
            pytest.fail(why)
        if not ok:
            warnings.warn(f"Slurm tests skipped: {why}", stacklevel=1)
            pytest.skip(f"Slurm cannot start here: {why}")
        yield why
