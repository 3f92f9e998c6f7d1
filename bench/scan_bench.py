#!/usr/bin/env python
"""Benchmark of dlkit.scan's local engine (by hand, never in CI; a few minutes on 2 cores).

    python bench/scan_bench.py                       # all three, 5 repeats each
    python bench/scan_bench.py --only overhead --repeats 7 --points 40

  overhead  per-point overhead of ``dlkit-scan run`` on a no-op experiment (``toy`` with
            Epochs=0: parse, resolve the config, claim a run directory, write MetaData.json, exit) against a
            plain bash loop running the same commands one after the other; target < 0.2 s per point
  slots     wall time of a 4-point scan of a single-threaded CPU-bound experiment (the toy with Busy=True,
            2 epochs of 1.5 s) with 1 and with 2 slots; target >= 1.8x
  status    ``python -m dlkit.scan status`` on a 1000-point ledger (900 done, 50 failed, 30 pending after
            an interruption, 20 running), the whole command including interpreter start-up; target < 1 s

  dask      the Dask engine (a LocalCluster of 2 workers) against the local engine (2 slots) on the same no-op
            points, per point; and the driver's memory (VmRSS, sampled every 0.2 s) over a ``--dask-points``
            no-op scan: flat means the futures are released as they finish

Each figure is the median of ``--repeats`` runs; every run starts from an empty OutputBase.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# the no-op experiment lives with the tests: put tests/ on this process's path and its subprocesses'
sys.path.insert(0, str(REPO / "tests"))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "tests"), os.environ.get("PYTHONPATH")) if p)


def timed(cmd, **kwargs) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
    return time.perf_counter() - t0


def write_config(directory: Path, points: int) -> Path:
    path = directory / "bench_scan.py"
    path.write_text(f"Config = {{'Epochs': 0}}\nParams = {{'Width': {list(range(1, points + 1))}}}\n")
    return path


def scan(config: Path, out: Path, slots: int, *flags: str, engine: str = "local") -> list[str]:
    return [sys.executable, "-m", "dlkit.scan", "run", "--experiment", "toy", "-C", str(config),
            "--OutputBase", str(out), "--slots", str(slots), "--engine", engine, "--no-progress", "--", *flags]


def bench_overhead(work: Path, repeats: int, points: int) -> dict:
    config = write_config(work, points)
    loop = (f'for i in $(seq 0 {points - 1}); do "{sys.executable}" -m toy -C "{config}" -s $i '
            f'--OutputBase "$1"; done')
    loop_times, scan_times = [], []
    for r in range(repeats):
        out = work / f"loop{r}"
        loop_times.append(timed(["bash", "-c", loop, "bash", str(out)]))
        out = work / f"scan{r}"
        scan_times.append(timed(scan(config, out, 1)))
    loop_s, scan_s = statistics.median(loop_times), statistics.median(scan_times)
    return {"points": points, "bash_loop_s": loop_s, "scan_s": scan_s,
            "per_point_loop_s": loop_s / points, "per_point_scan_s": scan_s / points,
            "overhead_per_point_s": (scan_s - loop_s) / points, "target_s": 0.2}


def bench_slots(work: Path, repeats: int) -> dict:
    config = work / "bench_slots.py"
    config.write_text("Config = {'Epochs': 2, 'EpochTime': 1.5, 'Busy': True}\nParams = {'Width': [1, 2, 3, 4]}\n")
    results = {}
    for slots in (1, 2):
        times = []
        for r in range(repeats):
            times.append(timed(scan(config, work / f"slots{slots}_{r}", slots)))
        results[slots] = statistics.median(times)
    return {"one_slot_s": results[1], "two_slots_s": results[2], "speedup": results[1] / results[2],
            "ideal_s": 4 * 2 * 1.5, "target": 1.8}


def make_ledger(out: Path, points: int = 1000) -> Path:
    """A ledger as a long scan leaves it, written with the Ledger API (no experiment runs)."""
    from dlkit.scan.ledger import Ledger

    config = write_config(out.parent, points)
    ledger = Ledger.at(out, "bench")
    ledger.create_or_check({"experiment": "toy", "config": str(config), "config_sha256": "x",
                            "params": {"Width": list(range(1, points + 1))}, "size": points,
                            "points": list(range(points)), "flags": [], "metric": None})
    from dlkit.scan.ledger import Decision

    for i in range(points):
        token = ledger.new_token()
        ledger.record_start(i, token, {"attempt": 1, "host": "bench", "argv": ["x"], "resume": False})
        if i < 900 or i >= 950 and i < 980:
            code, outcome = (0, "done") if i < 900 else (75, "interrupted")
        elif i < 950:
            code, outcome = 1, "crashed"
        else:
            ledger.acquire(i, token, {"host": "bench", "pid": 1})
            continue
        attempt = ledger.record_end(i, token, {"exit_code": code, "outcome": outcome, "epochs": 10,
                                               "run_dir": f"{out}/Toy_Width{i + 1}", "host": "bench",
                                               "metric": 0.5, "last_error": None if code == 0 else "RuntimeError"})
        state = {"done": "done", "crashed": "failed"}.get(outcome, "pending")
        ledger.finish_point(i, attempt, Decision(state, outcome))
    return ledger.path


def bench_status(work: Path, repeats: int) -> dict:
    out = work / "status" / "TrainedModels"
    out.parent.mkdir()
    path = make_ledger(out)
    cmd = [sys.executable, "-m", "dlkit.scan", "status", str(out)]
    times = [timed(cmd) for _ in range(repeats)]
    bare = [timed([sys.executable, "-c", "pass"]) for _ in range(repeats)]
    from dlkit.scan.api import status_rows
    from dlkit.scan.ledger import Ledger

    t0 = time.perf_counter()
    rows = status_rows(Ledger(path))
    in_process = time.perf_counter() - t0
    assert len(rows) == 1000
    return {"points": 1000, "status_cli_s": statistics.median(times), "python_startup_s": statistics.median(bare),
            "status_rows_in_process_s": in_process, "target_s": 1.0}


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def bench_dask(work: Path, repeats: int, points: int, memory_points: int) -> dict:
    config = write_config(work, points)
    local, dask = [], []
    for r in range(repeats):
        local.append(timed(scan(config, work / f"dlocal{r}", 2)))
        dask.append(timed(scan(config, work / f"ddask{r}", 2, engine="dask")))
    (work / "mem").mkdir()
    config = write_config(work / "mem", memory_points)
    proc = subprocess.Popen(scan(config, work / "dmem", 2, engine="dask"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    samples = []
    t0 = time.perf_counter()
    while proc.poll() is None:
        rss = _rss_kib(proc.pid)
        if rss:
            samples.append((time.perf_counter() - t0, rss))
        time.sleep(0.2)
    assert proc.returncode == 0
    steady = [rss for t, rss in samples if t > 0.2 * samples[-1][0]]  # after start-up
    quarter = max(1, len(steady) // 4)
    return {"points": points, "local_s": statistics.median(local), "dask_s": statistics.median(dask),
            "per_point_local_s": statistics.median(local) / points, "per_point_dask_s": statistics.median(dask) / points,
            "dask_overhead_per_point_s": (statistics.median(dask) - statistics.median(local)) / points,
            "memory_points": memory_points, "memory_scan_s": samples[-1][0] if samples else None,
            "driver_rss_first_quarter_mib": statistics.median(steady[:quarter]) / 1024,
            "driver_rss_last_quarter_mib": statistics.median(steady[-quarter:]) / 1024,
            "driver_rss_max_mib": max(steady) / 1024}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--points", type=int, default=20, help="points of the overhead scan")
    p.add_argument("--dask-points", type=int, default=300, help="points of the Dask memory scan")
    p.add_argument("--only", default="overhead,slots,status,dask")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dlkit-scan-bench-"))
    os.chdir(work)
    results = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
                          f"Python {platform.python_version()}", "repeats": args.repeats}
    try:
        only = args.only.split(",")
        if "overhead" in only:
            results["overhead"] = bench_overhead(work, args.repeats, args.points)
        if "slots" in only:
            results["slots"] = bench_slots(work, args.repeats)
        if "status" in only:
            results["status"] = bench_status(work, args.repeats)
        if "dask" in only:
            results["dask"] = bench_dask(work, args.repeats, args.points, args.dask_points)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
