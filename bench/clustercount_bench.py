"""clustercount simulation and reconstruction speed: waveforms per second (median of repeats, one machine).

    python bench/clustercount_bench.py                 # defaults: 3 repeats of 4000 waveforms
    python bench/clustercount_bench.py --repeats 5 --waveforms 8000 --markdown

Measures, in one process unless stated: the simulator in memory (``simulate_waveforms``) and its stages,
writing files (``write_dataset``, 1 and 2 worker processes), the derivative algorithm, the candidate
derivation of the peak-finding dataset, and the derived clusterization features. Ratios are taken within
one run (the machines are shared; absolute numbers drift).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_rate(fn, n, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return n / med, med, times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--waveforms", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = p.parse_args(argv)

    import clustercount.simulate as sim
    from clustercount.baselines import derivative_peaks
    from clustercount.data import DerivationOptions, cluster_features, find_candidates, label_candidates

    cfg = sim.DriftSimConfig()
    n = args.waveforms
    rows = []

    def add(name, rate, med, note=""):
        rows.append((name, rate, med, note))
        print(f"{name:55s} {rate:10.0f} waveforms/s  ({med:.2f} s median) {note}", flush=True)

    seed = iter(range(1000))
    add("simulate_waveforms (physics + pulses + noise + ADC)",
        *_median_rate(lambda: sim.simulate_waveforms(n, np.random.default_rng(next(seed)), cfg), n, args.repeats)[:2])
    add("simulate_waveforms, noise off",
        *_median_rate(lambda: sim.simulate_waveforms(n, np.random.default_rng(next(seed)), cfg, noise=False), n,
                      args.repeats)[:2])
    rng = np.random.default_rng(99)
    add("noise only (2 filtered normals per sample)",
        *_median_rate(lambda: sim._noise(n, rng, cfg), n, args.repeats)[:2])

    tmp = Path(tempfile.mkdtemp(prefix="ccbench-"))
    try:
        for workers in (1, 2):
            def write(workers=workers, k=iter(range(1000))):
                sim.write_dataset(tmp / f"w{workers}-{next(k)}", n, 1000, 0, cfg, progress=False, workers=workers)

            add(f"write_dataset, {workers} worker(s), 1000 per file", *_median_rate(write, n, args.repeats)[:2],
                "(spawn start-up included)" if workers > 1 else "")
        ev = sim.simulate_waveforms(n, np.random.default_rng(5), cfg)
        w = ev["waveform"].astype(np.float32)
        add("derivative_peaks", *_median_rate(lambda: derivative_peaks(w), n, args.repeats)[:2])
        opts = DerivationOptions()

        def candidates():
            c, _, _ = find_candidates(w, opts)
            label_candidates(c, ev["electron_offset"], ev["electron_time"], ev["electron_type"], cfg.dt_ns,
                             sim.pulse_peak_ns(cfg), opts.match_tolerance)

        add("candidates + labels (peak-finding dataset)", *_median_rate(candidates, n, args.repeats)[:2])
        add("cluster_features (derivative, encoding, time proximity)",
            *_median_rate(lambda: cluster_features(w, opts, cfg.dt_ns, cfg.window_ns), n, args.repeats)[:2])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if args.markdown:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover
            cores = os.cpu_count()
        print(f"\nMachine: {platform.machine()}, {cores} cores, Python {platform.python_version()}, numpy "
              f"{np.__version__}; {n} waveforms x {cfg.n_samples} samples, median of {args.repeats}.\n")
        print("| step | waveforms/s | median s |")
        print("|---|---:|---:|")
        for name, rate, med, note in rows:
            print(f"| {name} {note} | {rate:,.0f} | {med:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
