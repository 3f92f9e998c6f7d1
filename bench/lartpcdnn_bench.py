#!/usr/bin/env python
"""Benchmark of the lartpcdnn pipeline, by hand (never in CI): simulation, storage, pre-processing, cache.

    python bench/lartpcdnn_bench.py                         # everything, ~5 minutes on 2 cores
    python bench/lartpcdnn_bench.py --only cache --repeats 5
    python bench/lartpcdnn_bench.py --only sim,storage --json results.json

Parts (each a median of ``--repeats`` runs):
  sim      simulate_events in memory (transport + readout, no I/O), events/s per particle, one process
  storage  writing and reading ``features`` (one event per chunk) with no compression, gzip level 1 and 4
           (with shuffle) and lzf: MB/event, write and read ms/event (read = h5py ``read_direct`` of one event,
           files in the page cache), one process
  pre      ProcessWireData (down-sample 8, crop 256, tanh-log, split) on batches of 32 raw events, ms/event
  cache    MultiClassGenerator over a 7-class dataset (``--events`` per class, gzip files in the page cache),
           ProcessWireData in 2 reader processes, batches of 32: the first epoch (read + decompress +
           pre-process + write the cache) vs later epochs (read the cache); a fresh cache per repeat.
           Target: cached >= 3x first.
  train    the default siamese CNN (Depth 3, Filters 8, Width 64) on cached batches vs in-memory numpy, events/s
  pid      (not in the default set: tens of CPU minutes) the DUNE-requirement row: lartpcdnn.pid_study with
           ``--pid-events`` per class (simulated in memory and pre-processed once, chunks cached in
           $DLKIT_DATA), the two-view CNN with batch normalisation, per-class AUC and efficiency at 1 % fake
           rate on the test set (20 %), with the truth-level topology bound for mu / pi
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import h5py
import numpy as np

from lartpcdnn.preprocess import ProcessWireData
from lartpcdnn.simulate import DEFAULT_PARTICLES, VIEW_NAMES, simulate_events, write_dataset

RAW_MB = 2 * 240 * 4096 * 2 / 1e6


def median(xs):
    return statistics.median(xs)


def bench_sim(repeats, n=32):
    rows = []
    simulate_events("muon", 2, np.random.default_rng(0))  # warm-up (tables, imports)
    for p in DEFAULT_PARTICLES:
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            simulate_events(p, n, np.random.default_rng(r))
            times.append(time.perf_counter() - t0)
        rows.append({"particle": p, "events/s": n / median(times), "ms/event": 1e3 * median(times) / n})
    return rows


def bench_storage(repeats, workdir, n=24):
    x = np.concatenate([simulate_events(p, n // 3, np.random.default_rng(3))["features"]
                        for p in ("electron", "muon", "proton")])
    n = len(x)
    rows = []
    options = {"none": {}, "gzip1": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
               "gzip4": {"compression": "gzip", "compression_opts": 4, "shuffle": True},
               "lzf": {"compression": "lzf", "shuffle": True}}
    buf = np.empty((1, *x.shape[1:]), np.float16)
    for name, opts in options.items():
        writes, reads = [], []
        for _ in range(repeats):
            path = os.path.join(workdir, f"storage-{name}.h5")
            t0 = time.perf_counter()
            with h5py.File(path, "w") as f:
                f.create_dataset("features", data=x, chunks=(1, *x.shape[1:]), **opts)
            writes.append(time.perf_counter() - t0)
            size = os.path.getsize(path)
            t0 = time.perf_counter()
            with h5py.File(path) as f:
                ds = f["features"]
                for i in range(n):
                    ds.read_direct(buf, np.s_[i:i + 1], np.s_[0:1])
            reads.append(time.perf_counter() - t0)
            os.remove(path)
        rows.append({"compression": name, "MB/event": size / n / 1e6, "ratio": x.nbytes / size,
                     "write ms/event": 1e3 * median(writes) / n, "read ms/event": 1e3 * median(reads) / n})
    return rows


def bench_pre(repeats, batch=32):
    x = np.concatenate([simulate_events(p, batch // 4, np.random.default_rng(4))["features"]
                        for p in ("electron", "muon", "pion0", "proton")])
    pre = ProcessWireData()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pre({"features": x})
        times.append(time.perf_counter() - t0)
    return [{"step": "ProcessWireData (8, 256, tanh-log 50, float16)", "ms/event": 1e3 * median(times) / batch,
             "events/s (one core)": batch / median(times)}]


def dataset(root, events):
    marker = os.path.join(root, "BENCH.json")
    want = {"events": events, "particles": list(DEFAULT_PARTICLES)}
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == want:
                return root
    shutil.rmtree(root, ignore_errors=True)
    write_dataset(root, DEFAULT_PARTICLES, events_per_class=events, events_per_file=max(1, events // 2),
                  seed=11, truth3d=False, progress=False)
    with open(marker, "w") as f:
        json.dump(want, f)
    return root


def _samples(root):
    from dlkit.generators import make_samples_from_dirs

    samples = make_samples_from_dirs(root, ["features", "Energy"], classes=list(DEFAULT_PARTICLES),
                                     pattern="*.2d.h5")
    for s in samples:  # put the files in the page cache: the benchmark is about CPU, not the disk
        with open(s.file, "rb") as f:
            while f.read(1 << 24):
                pass
    return samples


def bench_cache(repeats, root, workdir, batch=32, workers=2, later=3):
    from dlkit.generators import MultiClassGenerator, Select

    samples = _samples(root)
    firsts, cached = [], []
    n = 0
    for r in range(repeats):
        cache_dir = os.path.join(workdir, f"cache-{r}")
        shutil.rmtree(cache_dir, ignore_errors=True)
        with MultiClassGenerator(samples, batch, preprocess=ProcessWireData(), cache=cache_dir, n_workers=workers,
                                 postprocess=Select(VIEW_NAMES, "onehot"), seed=r) as gen:
            gen.start()
            time.sleep(1.0)  # reader start-up is not part of an epoch
            n = gen.events_per_epoch
            t0 = time.perf_counter()
            for _ in gen:
                pass
            firsts.append(time.perf_counter() - t0)
            times = []
            for _ in range(later):
                t0 = time.perf_counter()
                for _ in gen:
                    pass
                times.append(time.perf_counter() - t0)
            cached.append(median(times))
        shutil.rmtree(cache_dir, ignore_errors=True)
    first, later_t = median(firsts), median(cached)
    return [{"epoch": "first (read gzip + pre-process + write cache)", "events/s": n / first, "s": first},
            {"epoch": "cached (read the cache)", "events/s": n / later_t, "s": later_t},
            {"epoch": "ratio cached / first", "events/s": first / later_t, "s": None,
             "all first": [round(n / t, 1) for t in firsts], "all cached": [round(n / t, 1) for t in cached]}]


def bench_train(repeats, root, workdir, batch=32):
    import keras

    from dlkit.generators import MultiClassGenerator, Select
    from lartpcdnn.models import build_classifier

    samples = _samples(root)
    cache_dir = os.path.join(workdir, "cache-train")
    rows = []
    with MultiClassGenerator(samples, batch, preprocess=ProcessWireData(), cache=cache_dir, n_workers=2,
                             postprocess=Select(VIEW_NAMES, "onehot"), seed=0) as gen:
        for _ in gen:  # build the cache first
            pass
        data = gen.read_all()
        x = [data[k] for k in VIEW_NAMES]
        y = data["onehot"]
        n = gen.events_per_epoch
        model = build_classifier({k: (240, 256) for k in VIEW_NAMES}, len(DEFAULT_PARTICLES))
        model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
        model.fit(gen, epochs=1, verbose=0)  # tracing
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
        for label, fit in (("dlkit generator (cached)", lambda: model.fit(gen, epochs=1, verbose=0)),
                           ("in-memory numpy", lambda: model.fit(x, y, batch_size=batch, epochs=1, verbose=0))):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fit()
                times.append(time.perf_counter() - t0)
            rows.append({"feed": label, "events/s": n / median(times)})
    shutil.rmtree(cache_dir, ignore_errors=True)
    return rows


def table(rows):
    if not rows:
        return ""
    keys = [k for k in rows[0] if not k.startswith("all ")]
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        out.append("| " + " | ".join(f"{r.get(k):.3g}" if isinstance(r.get(k), float) else str(r.get(k, ""))
                                     for k in keys) + " |")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="sim,storage,pre,cache,train", help="comma-separated parts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--events", type=int, default=60, help="events per class for cache/train (default 60)")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "lartpcdnn-bench-data"))
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--pid-events", type=int, default=2000, help="pid: events per class (default 2000)")
    parser.add_argument("--pid-epochs", type=int, default=20, help="pid: most epochs (early stopping, default 20)")
    parser.add_argument("--pid-seed", type=int, default=0, help="pid: split/initialisation seed (data seed 0)")
    parser.add_argument("--pid-flip", action="store_true", help="pid: augment by mirroring the drift direction")
    args = parser.parse_args(argv)
    parts = args.only.split(",")
    workdir = tempfile.mkdtemp(prefix="lartpcdnn-bench-")
    results = {"machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                           "cpus": len(os.sched_getaffinity(0)), "numpy": np.__version__, "h5py": h5py.__version__},
               "repeats": args.repeats}
    try:
        if "sim" in parts:
            results["sim"] = bench_sim(args.repeats)
            print("## simulation (in memory, one process)\n" + table(results["sim"]) + "\n", flush=True)
        if "storage" in parts:
            results["storage"] = bench_storage(args.repeats, workdir)
            print(f"## storage of features ({RAW_MB:.2f} MB/event raw)\n" + table(results["storage"]) + "\n",
                  flush=True)
        if "pre" in parts:
            results["pre"] = bench_pre(args.repeats)
            print("## pre-processing\n" + table(results["pre"]) + "\n", flush=True)
        if "cache" in parts or "train" in parts:
            root = dataset(args.data, args.events)
        if "cache" in parts:
            results["cache"] = bench_cache(args.repeats, root, workdir)
            print(f"## generator epochs ({args.events} x 7 events, 2 readers, batch 32)\n" + table(results["cache"])
                  + f"\n{results['cache'][2]}\n", flush=True)
        if "train" in parts:
            results["train"] = bench_train(args.repeats, root, workdir)
            print("## training the default CNN\n" + table(results["train"]) + "\n", flush=True)
        if "pid" in parts:
            from lartpcdnn.pid_study import markdown
            from lartpcdnn.pid_study import run as pid_run

            results["pid"] = pid_run(events_per_class=args.pid_events, epochs=args.pid_epochs, flip=args.pid_flip,
                                     train_seed=args.pid_seed, progress=True)
            r = results["pid"]
            print(f"## efficiency at 1 % fake rate ({args.pid_events} events per class, {r['events']})\n"
                  + markdown(r) + f"\ntest accuracy {r['test_accuracy']:.3f}; pair AUCs "
                  + ", ".join(f"{k} {v:.3f}" for k, v in r["pairs"].items())
                  + f"; epochs run {r['epochs_run']} (best {r['best_epoch']}); seconds "
                  + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()) + "\n", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
