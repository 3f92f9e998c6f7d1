"""What the scan tests share: a toy scan config, the ledger of an OutputBase, and "exactly once" counted from the
attempt records and from the run directories on disk (plain json), independently of the ledger's own markers."""

import json
import time
from collections import Counter
from pathlib import Path

from dlkit.scan import Ledger, ScanError


def write_config(tmp_path, n=4, epochs=3, epoch_time=0.1, extra=""):
    """A toy config: ``n`` points (Width 1..n), ``epochs`` epochs of ``epoch_time`` s."""
    path = tmp_path / "toy_scan.py"
    path.write_text(f"Config = {{'Epochs': {epochs}, 'EpochTime': {epoch_time}{extra}}}\n"
                    f"Params = {{'Width': {list(range(1, n + 1))}}}\n")
    return path


def ledger_of(out) -> Ledger:
    (ledger,) = Ledger.find(out)
    return ledger


def ended_attempts(ledger, index):
    """The end records of point ``index``'s attempts, oldest first."""
    records = [json.loads(p.read_text()) for p in (ledger.path / "attempts" / str(index)).glob("*.end.json")]
    return sorted(records, key=lambda r: r["end_ts"])


def completed_runs(out) -> Counter:
    """HyperParamSet -> number of run directories whose MetaData.json says completed."""
    counts = Counter()
    for md in Path(out).glob("*/MetaData.json"):
        metadata = json.loads(md.read_text())
        if metadata.get("Status") == "completed":
            counts[metadata["HyperParamSet"]] += 1
    return counts


def assert_each_done_once(out, points):
    """Every point in ``points`` (an int n: range(n)) done exactly once: one attempt, one completed run dir."""
    points = list(range(points)) if isinstance(points, int) else list(points)
    ledger = ledger_of(out)
    for i in points:
        outcomes = [a.get("outcome") for a in ended_attempts(ledger, i)]
        assert outcomes.count("done") == 1, f"point {i}: attempts ended {outcomes}"
    assert completed_runs(out) == Counter({i: 1 for i in points})
    assert sorted(int(p.stem) for p in (ledger.path / "done").glob("*.json")) == sorted(points)


def wait_for(predicate, timeout=60, what="condition", poll=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def running_points(out):
    """Points whose lease has a progress report with at least one epoch done -> the lease owner."""
    try:
        ledger = ledger_of(out)
    except ScanError:
        return {}
    found = {}
    for lease in (ledger.path / "leases").iterdir():
        progress = lease / "progress.json"
        owner = lease / "owner.json"
        try:
            if progress.exists() and json.loads(progress.read_text()).get("epochs", 0) >= 1:
                found[int(lease.name)] = json.loads(owner.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return found


def scan_processes(ledger_path):
    """PIDs of live processes (not zombies) running under this ledger, found from /proc."""
    pids = []
    needle = f"DLKIT_SCAN_DIR={ledger_path}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids
