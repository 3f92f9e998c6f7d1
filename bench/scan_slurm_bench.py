#!/usr/bin/env python
"""Benchmark of dlkit.scan's Slurm engine against a hand-written job array (by hand, never in CI).

    sudo .ci/start-slurm                 # a one-node Slurm, if none runs
    python bench/scan_slurm_bench.py     # 12 no-op points, 2 at once, 5 repeats

Both run the same no-op points (``toy`` with Epochs=0: parse, resolve the config, claim a run
directory, write MetaData.json, exit), ``--slots`` at a time:

  engine  ``dlkit-scan run --engine slurm --slots K --wait``: writes and submits the array script, each task
          runs ``python -m dlkit.scan work`` which runs its point under a lease; the command follows the scan
          (ledger and squeue, every 2 s) and returns when every point is done
  plain   ``sbatch --wait`` of a hand-written ``#SBATCH --array=0-(N-1)%K`` script whose tasks run
          ``python -m toy -s $SLURM_ARRAY_TASK_ID`` directly (no ledger, no resume, no requeue)

The array task's own cost, without Slurm: ``python -m dlkit.scan work <ledger> --points i --engine slurm``
(what a task runs: the worker, a lease, the point as a subprocess, the attempt records) for each point in
turn, against running the toy itself for each point in turn.

Two times from the command's start: to its return (wall), and to the last point's end (makespan: the newest
MetaData.json), which leaves out how often each command polls for the end (the engine every 1 s, sbatch
--wait every few s). Each figure is the median of ``--repeats`` runs, each in an empty OutputBase. The
scheduling overhead of the engine per point is (engine - plain) / N.
"""

from __future__ import annotations

import argparse
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


def timed(cmd, out: Path, **kwargs) -> tuple[float, float]:
    """(wall time of ``cmd``, time from its start until the last run's MetaData.json under ``out`` was written)."""
    start = time.time()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
    wall = time.perf_counter() - t0
    return wall, max(p.stat().st_mtime for p in out.glob("*/MetaData.json")) - start


def slurm_version() -> str:
    try:
        return subprocess.run(["sinfo", "-V"], capture_output=True, text=True, timeout=20).stdout.strip()
    except OSError:
        return "?"


def node() -> str:
    try:
        line = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %c CPUs %m MB %T"], capture_output=True, text=True,
                              timeout=20).stdout.strip()
    except OSError:
        line = ""
    return line or "?"


def in_task(n: int, repeats: int, env: dict) -> tuple[float, float]:
    """Medians of: every point through ``dlkit.scan work`` one after the other; the toy alone likewise."""
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    from dlkit.scan.api import open_scan

    task_times, toy_times = [], []
    for r in range(repeats):
        work = Path(tempfile.mkdtemp(prefix="scan_slurm_bench_task."))
        try:
            config = work / "bench_scan.py"
            config.write_text(f"Config = {{'Epochs': 0}}\nParams = {{'Width': {list(range(1, n + 1))}}}\n")
            ledger = open_scan("toy", config, output_base=work / "engine")
            t0 = time.perf_counter()
            for i in range(n):
                subprocess.run([sys.executable, "-m", "dlkit.scan", "work", str(ledger.path), "--points", str(i),
                                "--engine", "slurm"], check=True, capture_output=True, env=env, cwd=work)
            task_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for i in range(n):
                subprocess.run([sys.executable, "-m", "toy", "-C", str(config), "-s", str(i),
                                "--OutputBase", str(work / "toy")], check=True, capture_output=True, env=env, cwd=work)
            toy_times.append(time.perf_counter() - t0)
            assert len(list((ledger.path / "done").glob("*.json"))) == n
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return statistics.median(task_times), statistics.median(toy_times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=12)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if shutil.which("sbatch") is None or subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        print("no Slurm here: run `sudo .ci/start-slurm` first", file=sys.stderr)
        return 1
    n, k = args.points, args.slots
    work = Path(tempfile.mkdtemp(prefix="scan_slurm_bench."))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), str(REPO / "tests"),
                                                                  os.environ.get("PYTHONPATH")) if p))
    try:
        config = work / "bench_scan.py"
        config.write_text(f"Config = {{'Epochs': 0}}\nParams = {{'Width': {list(range(1, n + 1))}}}\n")
        plain = work / "plain.sh"
        plain.write_text("#!/bin/bash\n"
                         f"#SBATCH --array=0-{n - 1}%{k}\n"
                         f"#SBATCH --output={work}/plain-%A_%a.out\n"
                         f'"{sys.executable}" -m toy -C "{config}" -s "$SLURM_ARRAY_TASK_ID" '
                         '--OutputBase "$OUT"\n')
        engine_times, plain_times, engine_spans, plain_spans = [], [], [], []
        for r in range(args.repeats):
            out = work / f"engine{r}"
            wall, span = timed([sys.executable, "-m", "dlkit.scan", "run", "--experiment", "toy",
                                "-C", str(config), "--OutputBase", str(out), "--engine", "slurm", "--slots", str(k),
                                "--wait", "--no-progress"], out, cwd=work, env=env)
            engine_times.append(wall)
            engine_spans.append(span)
            done = len(list((out / ".dlkit-scan").glob("*/done/*.json")))
            assert done == n, f"engine run {r}: {done} of {n} points done"
            out = work / f"plain{r}"
            wall, span = timed(["sbatch", "--wait", "--parsable", str(plain)], out, cwd=work,
                               env=dict(env, OUT=str(out)))
            plain_times.append(wall)
            plain_spans.append(span)
            runs = len(list(out.glob("*/MetaData.json")))
            assert runs == n, f"plain run {r}: {runs} of {n} runs"
            print(f"run {r + 1}/{args.repeats}: engine {engine_times[-1]:.2f} s (last point ended at "
                  f"{engine_spans[-1]:.2f} s), plain {plain_times[-1]:.2f} s ({plain_spans[-1]:.2f} s)", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    task_s, toy_s = in_task(n, args.repeats, env)
    engine_s, plain_s = statistics.median(engine_times), statistics.median(plain_times)
    engine_span, plain_span = statistics.median(engine_spans), statistics.median(plain_spans)
    from tabulate import tabulate

    print(f"machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}); "
          f"{slurm_version()}; node {node()}")
    print(f"{n} no-op points (toy, Epochs=0), {k} at once, median of {args.repeats} runs\n")
    rows = [
        ["dlkit-scan run --engine slurm --slots K --wait", engine_s, engine_s / n, engine_s / plain_s, engine_span,
         engine_span / n, engine_span / plain_span],
        ["sbatch --wait (hand-written --array=0-N%K, toy directly)", plain_s, plain_s / n, 1.0, plain_span,
         plain_span / n, 1.0],
    ]
    print(tabulate(rows, headers=["command", "wall s", "per point", "ratio", "makespan s", "per point", "ratio"],
                   floatfmt=".3f"))
    print()
    print(tabulate([["python -m dlkit.scan work L --points i (each point in turn, no Slurm)", task_s, task_s / n,
                     task_s / toy_s],
                    ["python -m toy -s i (each point in turn)", toy_s, toy_s / n, 1.0]],
                   headers=["array task's command", "wall s", "per point", "ratio"], floatfmt=".3f"))
    print(f"\nengine overhead per point: in the task {(task_s - toy_s) / n:+.3f} s; end to end: wall {(engine_s - plain_s) / n:+.3f} s, "
          f"makespan {(engine_span - plain_span) / n:+.3f} s "
          f"(wall of the runs: engine {', '.join(f'{t:.2f}' for t in engine_times)}; "
          f"plain {', '.join(f'{t:.2f}' for t in plain_times)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
