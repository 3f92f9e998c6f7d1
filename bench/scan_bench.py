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

  claims    the worker's own CPU per claimed point at 1,000 and 20,000 points (zero-work toy points, the last
            --claims of the scan; the others already done); target: ratio <= 1.2
  workers   1,000 zero-work points by 16 concurrent workers (``dlkit-scan run --slots 1`` each): exactly once,
            counted from the run directories and the attempt records
  bigstatus ``status`` at 100,000 points (a synthetic ledger: :func:`make_big_ledger`); target < 2 s

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


def make_big_ledger(out: Path, points: int) -> Path:
    """A synthetic ledger of ``points`` grid points as a long scan leaves it, written fast (marker files written
    directly, without fsync, each with the dict ``finish_point`` writes; no attempt records): 98 % done, 1 %
    failed, 0.5 % retried and failed again, 0.5 % never run. The index journals hold a row for each marker
    except 1 % of them (writers killed between marker and append), spread over 16 journal files."""
    from dlkit.scan.ledger import Ledger

    config = write_config(out.parent, points)
    ledger = Ledger.at(out, "big")
    ledger.create_or_check({"experiment": "toy", "config": str(config), "config_sha256": "x",
                            "params": {"Width": list(range(1, points + 1))}, "size": points,
                            "points": list(range(points)), "flags": [], "metric": None})
    journals: dict[int, list[str]] = {}
    for i in range(points):
        kind = i % 200
        if kind == 199:
            continue  # never run
        state = "done" if kind < 196 else "failed"
        marker = {"point": i, "state": state, "reason": "exit 0" if state == "done" else "crashed 3 times",
                  "time": "2025-01-01T00:00:00+00:00", "epochs": 10, "run_dir": f"{out}/Toy_Width{i + 1}",
                  "host": "bench", "metric": 0.5, "exit_code": 0 if state == "done" else 1, "token": f"t{i}",
                  "last_error": None if state == "done" else "RuntimeError", "attempts": 1}
        if kind == 198:  # retried, then failed again: the old row stays in the journals, the marker is new
            journals.setdefault(i % 16, []).append(json.dumps({**marker, "token": f"old{i}"}))
            (ledger.path / "retries" / f"{i}.json").write_text(json.dumps({"time": 0, "was": marker}))
            marker = {**marker, "attempts": 2, "token": f"new{i}"}
        (ledger.path / ("done" if state == "done" else "failed") / f"{i}.json").write_text(json.dumps(marker))
        if i % 100 != 7:  # 1 % of the rows missing
            journals.setdefault(i % 16, []).append(json.dumps(marker))
    for k, lines in journals.items():
        (ledger.path / "index" / f"bench-{k}-0000000{k:x}.jsonl").write_text("\n".join(lines) + "\n")
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


def bench_claims(work: Path, repeats: int, sizes=(1000, 20000), claims: int = 60) -> dict:
    """The worker's own CPU per claimed point (``time.process_time`` of a Worker run in this process: its loop,
    the ledger reads and writes, starting and reaping the points; not the points' CPU) over the last ``claims``
    points of a scan of N zero-work toy points whose other N - claims points are already done (done markers
    written directly), for each N in ``sizes``."""
    from dlkit.scan.ledger import Ledger
    from dlkit.scan.worker import Worker, default_slots, point_command

    results = {}
    for n in sizes:
        per_claim = []
        for r in range(repeats):
            (work / f"claims{n}_{r}").mkdir()
            config = write_config(work / f"claims{n}_{r}", n)
            ledger = Ledger.at(work / f"claims{n}_{r}" / "out", "claims")
            ledger.create_or_check({"experiment": "toy", "config": str(config), "config_sha256": "x",
                                    "params": {"Width": list(range(1, n + 1))}, "size": n,
                                    "points": list(range(n)), "flags": ["--set", "Epochs=0"], "metric": None})
            for i in range(n - claims):
                (ledger.path / "done" / f"{i}.json").write_text(json.dumps({"point": i, "state": "done"}))
            worker = Worker(ledger, point_command(ledger), default_slots(1), wait_for_others=False)
            cpu = time.process_time()
            assert worker.run() == 0
            cpu = time.process_time() - cpu
            ran = sum(1 for i in range(n - claims, n) for name in os.listdir(ledger.path / "attempts" / str(i))
                      if name.endswith(".end.json"))
            assert ran == claims and len(ledger.done_indices()) == n, (ran, len(ledger.done_indices()))
            per_claim.append(cpu / claims)
        results[n] = {"worker_cpu_per_claim_ms": 1000 * statistics.median(per_claim),
                      "all_ms": [round(1000 * c, 2) for c in per_claim]}
    small, large = min(sizes), max(sizes)
    return {"claims": claims, "by_points": results, "target_ratio": 1.2,
            "ratio": results[large]["worker_cpu_per_claim_ms"] / results[small]["worker_cpu_per_claim_ms"]}


def bench_workers(work: Path, points: int = 1000, workers: int = 16) -> dict:
    """``workers`` concurrent ``dlkit-scan run --slots 1`` on one scan of ``points`` zero-work points; exactly once
    is counted from the runs' own files: one completed run directory (MetaData.json) per point, and one attempt
    ended with exit 0 per point (attempts/<i>/*.end.json)."""
    config = write_config(work, points)
    out = work / "workers"
    t0 = time.perf_counter()
    procs = [subprocess.Popen(scan(config, out, 1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(workers)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    completed: dict[int, int] = {}
    for md in out.glob("*/MetaData.json"):
        metadata = json.loads(md.read_text())
        if metadata.get("Status") == "completed":
            completed[metadata["HyperParamSet"]] = completed.get(metadata["HyperParamSet"], 0) + 1
    attempts = out / ".dlkit-scan" / "toy-bench_scan" / "attempts"
    ok, hosts = {}, set()
    for i in range(points):
        for name in os.listdir(attempts / str(i)) if (attempts / str(i)).is_dir() else []:
            if name.endswith(".end.json"):
                record = json.loads((attempts / str(i) / name).read_text())
                ok[i] = ok.get(i, 0) + (record.get("exit_code") == 0)
                hosts.add(record["token"].rsplit("-", 2)[1])
    return {"points": points, "workers": workers, "exit_codes": sorted(set(codes)), "wall_s": wall,
            "points_with_one_completed_run": sum(1 for i in range(points) if completed.get(i) == 1),
            "points_with_one_exit0_attempt": sum(1 for i in range(points) if ok.get(i) == 1),
            "extra_runs": sum(completed.values()) - len(completed), "worker_pids_that_ran_points": len(hosts)}


def bench_big_status(work: Path, repeats: int, points: int = 100000) -> dict:
    """``status`` of a synthetic ledger of ``points`` points (:func:`make_big_ledger`): ``status_rows`` in this
    process (index on, and the reference: every marker read), and the whole command with a state filter (the
    table of 100,000 rows itself is tabulate's time, shown once)."""
    from dlkit.scan.api import status_rows
    from dlkit.scan.ledger import Ledger

    out = work / "big" / "TrainedModels"
    out.parent.mkdir()
    t0 = time.perf_counter()
    ledger = Ledger(make_big_ledger(out, points))
    made = time.perf_counter() - t0
    rows_s, markers_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rows = status_rows(ledger)
        rows_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        reference = ledger.final_states_from_markers()
        markers_s.append(time.perf_counter() - t0)
    assert len(rows) == points and ledger.final_states() == reference
    cli = [sys.executable, "-m", "dlkit.scan", "status", str(out)]
    filtered = [timed(cli + ["--state", "running,stuck"]) for _ in range(repeats)]
    return {"points": points, "ledger_made_s": made, "status_rows_s": statistics.median(rows_s),
            "final_states_from_every_marker_s": statistics.median(markers_s),
            "status_cli_filtered_s": statistics.median(filtered), "status_cli_full_table_s": timed(cli),
            "target_s": 2.0}


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
    p.add_argument("--only", default="overhead,slots,status,dask",
                   help="also: claims (worker CPU per claim at 1,000 and 20,000 points), workers (1,000 points, "
                        "16 workers, exactly once), bigstatus (status at 100,000 points)")
    p.add_argument("--claims", type=int, default=60, help="points claimed per run of the claims benchmark")
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
        if "claims" in only:
            results["claims"] = bench_claims(work, args.repeats, claims=args.claims)
        if "workers" in only:
            results["workers"] = bench_workers(work)
        if "bigstatus" in only:
            results["bigstatus"] = bench_big_status(work, args.repeats)
        if "dask" in only:
            results["dask"] = bench_dask(work, args.repeats, args.points, args.dask_points)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
