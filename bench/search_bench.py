#!/usr/bin/env python
"""Benchmark of dlkit.scan search (by hand, never in CI; about 15 min on 2 cores).

    python bench/search_bench.py                      # 3 seeds, 12 trials each, 2 at a time
    python bench/search_bench.py --seeds 0 --trials 4 # a quick look

On the calodnn ``--Test`` problem (4 classes, 4000 events, 2 epochs of SGD), the best ``Gamma_AUC`` reached by

  tpe     12 trials sampled by Optuna's TPE (``dlkit-scan search --sampler tpe``),
  random  12 trials sampled at random (``--sampler random``),
  grid    the 12-point grid Width [64, 256] x Depth [1, 3] x lr [0.1, 0.01, 0.001] (decay 0.01), the values of
          the default scan's grid (calodnn/configs/Dense_4Class.py) along each axis,

in the same box: Width 32-512 (log), Depth 1-4, lr 1e-3-1e-1 (log), decay 1e-3-1e-1 (log) for the searches.
Each seed s is one repetition of all three: the samplers' seed and the training ``Seed`` are both s, so the
grid changes with s too (its weights and batches). Everything runs through ``dlkit.scan`` on the local engine,
two points at a time. The table is the median over seeds of each method's best, with every seed's best and the
wall time; it is printed and written to ``bench/results/search.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

EXPERIMENT = "calodnn.ClassificationExperiment"
OBJECTIVE = "Gamma_AUC"
SEARCH = """from dlkit.scan.space import int_range, loguniform
Config = {}
Search = {"Width": int_range(32, 512, log=True), "Depth": int_range(1, 4),
          "lr": loguniform(1e-3, 1e-1), "decay": loguniform(1e-3, 1e-1)}
"""
GRID = """Config = {"decay": 0.01}
Params = {"Width": [64, 256], "Depth": [1, 3], "lr": [0.1, 0.01, 0.001]}
"""


def run_seed(work: Path, seed: int, trials: int, parallel: int) -> dict[str, tuple[float, float]]:
    """{method: (best objective, wall seconds)} for one seed."""
    import dlkit.scan

    flags = ["--Test", "--set", f"Seed={seed}"]
    (work / "search.py").write_text(SEARCH)
    (work / "grid.py").write_text(GRID)
    results = {}
    for sampler in ("tpe", "random"):
        t0 = time.perf_counter()
        frame = dlkit.scan.search(EXPERIMENT, work / "search.py", trials=trials, sampler=sampler,
                                  objective=OBJECTIVE, direction="maximize", parallel=parallel, seed=seed,
                                  flags=flags, name=f"{sampler}{seed}", output_base=work / f"{sampler}{seed}",
                                  progress=False, plots=False)
        best = frame.attrs["best"]
        results[sampler] = (float(best[OBJECTIVE].iloc[0]), time.perf_counter() - t0)
    t0 = time.perf_counter()
    frame = dlkit.scan.run(EXPERIMENT, config=work / "grid.py", flags=flags, name=f"grid{seed}",
                           output_base=work / f"grid{seed}", metric=OBJECTIVE, slots=parallel, progress=False)
    results["grid"] = (float(frame["metric"].max()), time.perf_counter() - t0)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2", help="comma list (0,1,2)")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "search.md"))
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dlkit-search-bench-") as tmp:
        for seed in seeds:
            work = Path(tmp) / f"seed{seed}"
            work.mkdir()
            per_seed[seed] = run_seed(work, seed, args.trials, args.parallel)
            print(f"seed {seed}: " + ", ".join(f"{m} {v:.4f} ({t:.0f} s)" for m, (v, t) in per_seed[seed].items()),
                  flush=True)
    total = time.perf_counter() - t_all
    lines = [f"Machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
             f"{platform.platform()}",
             f"Command: `python bench/search_bench.py --seeds {args.seeds} --trials {args.trials} "
             f"--parallel {args.parallel}` ({total / 60:.1f} min in all)", "",
             f"| method | best {OBJECTIVE}, median of {len(seeds)} seeds | per seed ({', '.join(map(str, seeds))}) "
             "| wall time per seed (median) |",
             "|---|---|---|---|"]
    for method in ("tpe", "random", "grid"):
        values = [per_seed[s][method][0] for s in seeds]
        times = [per_seed[s][method][1] for s in seeds]
        lines.append(f"| {method} ({args.trials if method != 'grid' else 12} points) | "
                     f"{statistics.median(values):.4f} | {', '.join(f'{v:.4f}' for v in values)} | "
                     f"{statistics.median(times):.0f} s |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
