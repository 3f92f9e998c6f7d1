#!/usr/bin/env python
"""Benchmark of dlkit.generators against its peers, side by side in one run (by hand, never in CI).

    python bench/generator_bench.py                    # everything, ~10 minutes on 2 cores
    python bench/generator_bench.py --data /tmp/lcd --repeats 3 --json results.json
    python bench/generator_bench.py --only a,c         # subsets: a b c d e cache startup

The dataset is a simulated LCD V2 layout written here with plain h5py/numpy (reused if present): a
directory per class (Ele, Gamma, Pi0, ChPi), ``--files`` files of ``--events`` events each, datasets
``ECAL`` float32 (N,25,25,25), ``HCAL`` float32 (N,5,5,60), ``energy`` float32 (N,), ``pdgID`` int32 (N,),
68,508 bytes per event, stored *contiguous and uncompressed* (h5py's default layout, as the LCD files).
All files are read once first so that they sit in the page cache.

Measured, each as events/s and MB/s, median of ``--repeats`` epochs over all events, batches of 1024:
  a  reference: one process, h5py ``read_direct`` of contiguous slices (256 events per class per batch)
     into preallocated buffers; no labels, no shuffling
  b  keras.utils.PyDataset over h5py (256 per class, concatenate, one-hot, permutation), workers=2,
     threads and processes, iterated through Keras' own adapter
  c  dlkit MultiClassGenerator (mixed, shuffled, labelled), 1 and 2 readers: plain epochs, the first
     epoch writing the cache, the cached epochs
  d  dlkit with a ~50 ms/batch pre-process, 2 readers: first (cache-writing) epoch vs cached epoch
  e  training a dense 17125 -> 128 -> 128 -> 4 model: dlkit-fed vs in-memory numpy (after 1 warm-up epoch)
  cache: reading the cache format (raw preadv) vs the same layout as contiguous HDF5 datasets (h5py)
  limit: the machine's copy limit: 1 and 2 processes doing nothing but preadv into shared memory
  startup: reader start-up time, spawn vs forkserver
"""

from __future__ import annotations

import argparse
import json
import math
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

CLASSES = {"Ele": 11, "Gamma": 22, "Pi0": 111, "ChPi": 211}
SHAPES = {"ECAL": (25, 25, 25), "HCAL": (5, 5, 60)}
EVENT_BYTES = 4 * (25 * 25 * 25 + 5 * 5 * 60) + 4 + 4
KEYS = ["ECAL", "HCAL", "energy", "pdgID"]


# --------------------------------------------------------------------------- data
def make_dataset(root: str, files: int, events: int, seed: int = 0) -> None:
    """Write the simulated LCD-layout dataset (skipped if the manifest matches)."""
    manifest = os.path.join(root, "MANIFEST.json")
    want = {"files": files, "events": events, "classes": list(CLASSES), "layout": "contiguous"}
    if os.path.exists(manifest):
        with open(manifest) as f:
            if json.load(f) == want:
                return
    print(f"writing {len(CLASSES) * files} files of {events} events to {root} ...", flush=True)
    rng = np.random.default_rng(seed)
    for ci, (name, pdg) in enumerate(CLASSES.items()):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for j in range(files):
            with h5py.File(os.path.join(root, name, f"{name}Escan_{j}.h5"), "w") as f:
                e = rng.uniform(10, 510, events).astype(np.float32)
                ecal = rng.exponential(0.02, (events,) + SHAPES["ECAL"]).astype(np.float32)
                ecal[:, 12, 12, :] += (e[:, None] * (0.5 + 0.1 * ci) / 25).astype(np.float32)
                f.create_dataset("ECAL", data=ecal)
                f.create_dataset(
                    "HCAL", data=rng.exponential(0.05, (events,) + SHAPES["HCAL"]).astype(np.float32)
                )
                f.create_dataset("energy", data=e)
                f.create_dataset("pdgID", data=np.full(events, pdg, np.int32))
    with open(manifest, "w") as f:
        json.dump(want, f)


def warm_page_cache(root: str) -> float:
    total = 0
    buf = bytearray(64 * 2**20)
    for dirpath, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(dirpath, n), "rb", buffering=0) as f:
                while True:
                    k = f.readinto(buf)
                    if not k:
                        break
                    total += k
    return total


def class_files(root):
    return {
        c: sorted(
            (os.path.join(root, c, f) for f in os.listdir(os.path.join(root, c)) if f.endswith(".h5")),
            key=lambda p: int(p.rsplit("_", 1)[1].split(".")[0]),
        )
        for c in CLASSES
    }


def slice_plan(root, batch):
    """Per batch, per class, contiguous (file, start, stop, dest) slices: 256 events per class per batch."""
    files = class_files(root)
    per = batch // len(CLASSES)
    streams = {}
    for c, fl in files.items():
        segs = []
        for p in fl:
            with h5py.File(p, "r") as f:
                segs.append((p, f["ECAL"].shape[0]))
        streams[c] = segs
    n_per_class = min(sum(n for _, n in s) for s in streams.values())
    batches = []
    pos = {c: (0, 0) for c in CLASSES}
    for b0 in range(0, n_per_class, per):
        take_n = min(per, n_per_class - b0)
        slices, dest = [], 0
        for c in CLASSES:
            fi, off = pos[c]
            need = take_n
            while need:
                p, n = streams[c][fi]
                take = min(need, n - off)
                slices.append((p, off, off + take, dest))
                dest += take
                need -= take
                off += take
                if off == n:
                    fi, off = fi + 1, 0
            pos[c] = (fi, off)
        batches.append((slices, dest))
    return batches


# --------------------------------------------------------------------------- (a) reference
def bench_reference(root, batch):
    plan = slice_plan(root, batch)
    handles = {}
    bufs = {
        "ECAL": np.empty((batch,) + SHAPES["ECAL"], np.float32),
        "HCAL": np.empty((batch,) + SHAPES["HCAL"], np.float32),
        "energy": np.empty(batch, np.float32),
        "pdgID": np.empty(batch, np.int32),
    }
    t0 = time.perf_counter()
    events = 0
    for slices, n in plan:
        for p, a, b, d in slices:
            f = handles.get(p)
            if f is None:
                f = handles[p] = h5py.File(p, "r")
            for k in KEYS:
                f[k].read_direct(bufs[k], np.s_[a:b], np.s_[d : d + b - a])
        events += n
    dt = time.perf_counter() - t0
    for f in handles.values():
        f.close()
    return events, dt


# --------------------------------------------------------------------------- (b) PyDataset
def make_pydataset_class():
    import keras

    class H5PyDataset(keras.utils.PyDataset):
        """The common Keras way: read 256 per class with h5py slices, concatenate, one-hot, permute."""

        def __init__(self, root, batch, **kw):
            super().__init__(**kw)
            self.plan = slice_plan(root, batch)
            self.handles = {}

        def __len__(self):
            return len(self.plan)

        def _file(self, p):
            key = (os.getpid(), p)
            f = self.handles.get(key)
            if f is None:
                f = self.handles[key] = h5py.File(p, "r")
            return f

        def __getitem__(self, i):
            slices, n = self.plan[i]
            parts = {k: [] for k in KEYS}
            labels = []
            for ci, (p, a, b, _) in enumerate(slices):
                f = self._file(p)
                for k in KEYS:
                    parts[k].append(f[k][a:b])
                labels.append(np.full(b - a, list(CLASSES).index(os.path.basename(os.path.dirname(p)))))
            lab = np.concatenate(labels)
            perm = np.random.permutation(n)
            x = {k: np.concatenate(v)[perm] for k, v in parts.items()}
            y = np.eye(len(CLASSES), dtype=np.float32)[lab[perm]]
            return (x["ECAL"], x["HCAL"], x["energy"], x["pdgID"]), y

        def __getstate__(self):
            d = dict(self.__dict__)
            d["handles"] = {}
            return d

    return H5PyDataset


def bench_pydataset(root, batch, use_mp):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    cls = make_pydataset_class()
    ds = cls(root, batch, workers=2, use_multiprocessing=use_mp, max_queue_size=10)
    adapter = PyDatasetAdapter(ds, shuffle=False)
    adapter.on_epoch_begin()
    t0 = time.perf_counter()
    events = 0
    for bx in adapter.get_numpy_iterator():
        events += len(bx[1])
    dt = time.perf_counter() - t0
    adapter.on_epoch_end()
    return events, dt


# --------------------------------------------------------------------------- (c)/(d) dlkit
class SlowPreprocess:
    """A CPU-bound pre-process of ~50 ms per batch: normalises the ECAL, then ``passes`` rounds of
    transcendental math on a cache-resident block (so its cost does not depend on memory bandwidth)."""

    def __init__(self, passes: int):
        self.passes = passes

    def __call__(self, arrays):
        x = arrays["ECAL"]
        x *= np.float32(1.0 / 480.4)
        block = np.array(x[:4])
        for _ in range(self.passes):
            np.sin(block, out=block)
        return arrays


def calibrate_preprocess(batch, target_ms=50.0):
    """Passes for ~target_ms per batch on one core (least of several timings, refined twice)."""
    arrays = {"ECAL": np.random.rand(batch, *SHAPES["ECAL"]).astype(np.float32)}

    def cost(passes):
        f = SlowPreprocess(passes)
        f(arrays)
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            f(arrays)
            ts.append(time.perf_counter() - t)
        return min(ts)

    t0 = cost(0)
    passes = 100
    for _ in range(3):
        t = cost(passes)
        passes = max(1, round(passes * (target_ms / 1e3 - t0) / max(1e-6, t - t0)))
    return passes


def dlkit_epoch(gen):
    t0 = time.perf_counter()
    events = 0
    for i in range(len(gen)):
        b = gen[i]
        events += len(b["class_index"])
    return events, time.perf_counter() - t0


def open_dlkit(root, batch, workers, **kw):
    """A generator over the LCD dataset. Pure data-loading runs pass nice=0: the readers then compete on
    equal terms with the reference (nice 0) for the CPU other users of the machine leave."""
    from dlkit.generators import MultiClassGenerator, make_samples_from_dirs

    samples = make_samples_from_dirs(root, KEYS, classes=list(CLASSES))
    return MultiClassGenerator(samples, batch, n_workers=workers, seed=1, **kw)


def bench_dlkit_cache(root, batch, workers, cache_root, preprocess=None):
    """(events, s) of the first epoch (reading, pre-processing, writing the cache) and of a cached epoch.

    Cache files are deleted at the very end: deleting GBs on the ext4 test disk (mounted with
    ``discard``) slows down the writes that follow.
    """
    cdir = tempfile.mkdtemp(prefix="dlkit-bench-cache-", dir=cache_root)
    try:
        with open_dlkit(root, batch, workers, preprocess=preprocess, cache=cdir, nice=0) as gen:
            gen.start()
            first = dlkit_epoch(gen)
            st = gen.stats
            dlkit_epoch(gen)  # the epoch during which the cache is finished
            os.sync()  # the kernel's write-back of the new file must not run during the cached epoch
            cached = dlkit_epoch(gen)
            assert gen.cache_path.exists()
        # a later run finds the cache complete: its readers verify each 4 MiB block's checksum on first read
        with open_dlkit(root, batch, workers, preprocess=preprocess, cache=cdir, nice=0) as gen:
            gen.start()
            verified = dlkit_epoch(gen)
            later = dlkit_epoch(gen)
    finally:
        settle(cdir)
    return first, cached, st, verified, later


def settle(path=None):
    """Delete a cache directory and wait until the disk has caught up (writeback, discards), so that
    the next measurement does not pay for this one's I/O and the page cache keeps the dataset."""
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
    os.sync()
    time.sleep(1.0)


# --------------------------------------------------------------------------- (e) training
def build_model(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    e = keras.Input(SHAPES["ECAL"], name="ECAL")
    h = keras.Input(SHAPES["HCAL"], name="HCAL")
    x = keras.layers.Concatenate()([keras.layers.Flatten()(e), keras.layers.Flatten()(h)])  # 17125
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    out = keras.layers.Dense(4, activation="softmax")(x)
    m = keras.Model([e, h], out)
    m.compile(optimizer="adam", loss="categorical_crossentropy")
    return m


class EpochTimer:
    def __init__(self):
        import keras

        class _CB(keras.callbacks.Callback):
            def __init__(cb):
                super().__init__()
                cb.times = []

            def on_epoch_begin(cb, epoch, logs=None):
                cb.t = time.perf_counter()

            def on_epoch_end(cb, epoch, logs=None):
                cb.times.append(time.perf_counter() - cb.t)

        self.cb = _CB()


def bench_training(root, batch, epochs, cache_root, workers):
    """Epochs of two identical models, one fed by dlkit, one by in-memory arrays, alternated epoch by epoch
    (so drifting load on the shared machine hits both alike); the first (tracing) epoch of each is excluded."""
    from dlkit.generators import Select

    with open_dlkit(root, batch, workers, nice=0) as g:
        data = g.read_all()  # the same events, in memory (not timed)
    x = [np.ascontiguousarray(data["ECAL"]), np.ascontiguousarray(data["HCAL"])]
    y = np.ascontiguousarray(data["onehot"])
    del data
    cdir = tempfile.mkdtemp(prefix="dlkit-bench-train-", dir=cache_root)
    res = {"dlkit": [], "memory": []}
    with open_dlkit(root, batch, workers, cache=cdir, postprocess=Select(["ECAL", "HCAL"], "onehot")) as gen:
        m_dl, m_mem = build_model(), build_model()

        def fit_dl():
            t = EpochTimer()
            m_dl.fit(gen, epochs=1, verbose=0, callbacks=[t.cb])
            return gen.events_per_epoch, t.cb.times[0]

        def fit_mem():
            t = EpochTimer()
            m_mem.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=[t.cb], shuffle=True)
            return len(y), t.cb.times[0]

        res["dlkit_first"] = fit_dl()[1]  # tracing, and the cache is written
        res["memory_first"] = fit_mem()[1]
        for _ in range(epochs):
            res["memory"].append(fit_mem())
            res["dlkit"].append(fit_dl())
        res["slots"] = len(gen._engine.slots)
    settle(cdir)
    return res


# --------------------------------------------------------------------------- cache format
def bench_cache_format(root, batch, cache_root, repeats):
    """Read one shuffled epoch plan from the raw cache (preadv) and from an HDF5 copy (h5py)."""
    from dlkit.generators import MultiClassGenerator, make_samples_from_dirs, read_cache
    from dlkit.generators._worker import _preadv_full

    samples = make_samples_from_dirs(root, KEYS, classes=list(CLASSES))
    cdir = tempfile.mkdtemp(prefix="dlkit-bench-fmt-", dir=cache_root)
    out = {"raw": [], "hdf5": []}
    try:
        with MultiClassGenerator(samples, batch, n_workers=2, seed=1, cache=cdir) as gen:
            gen.read_all()  # builds the cache
            path = gen.cache_path
            planner = gen._planner
        arrays, header = read_cache(path)
        h5path = os.path.join(cdir, "cache.h5")
        with h5py.File(h5path, "w") as f:
            for k, a in arrays.items():
                f.create_dataset(k, data=np.asarray(a))
        del arrays
        warm_page_cache(cdir)
        base = planner.entry_base
        plan = planner.epoch_plan(1)
        offs = {
            a["name"]: (
                a["offset"],
                int(np.prod(a["shape"], dtype=np.int64)) * np.dtype(a["dtype"]).itemsize,
                np.dtype(a["dtype"]),
                tuple(a["shape"]),
            )
            for a in header["arrays"]
        }
        bufs = {k: np.empty((batch,) + shp, dt) for k, (_, _, dt, shp) in offs.items()}
        mvs = {k: memoryview(v.reshape(-1).view(np.uint8)) for k, v in bufs.items()}
        tmp = {k: np.empty((batch,) + shp, dt) for k, (_, _, dt, shp) in offs.items()}
        for _ in range(repeats):
            fd = os.open(path, os.O_RDONLY)
            t0 = time.perf_counter()
            ev = 0
            for b in range(planner.n_batches):
                runs = plan.batch_runs(b)
                n = int(runs[:, 2].sum())
                perm = np.random.default_rng([1, b]).permutation(n)
                for k, (off, rb, _, _) in offs.items():
                    mv = mvs[k]
                    for e, p, c, o in runs.tolist():
                        g = int(base[e]) + p
                        rows = perm[o : o + c].tolist()
                        if rb >= 512:
                            _preadv_full(
                                fd, [mv[r * rb : (r + 1) * rb] for r in rows], off + g * rb, c * rb, path, k
                            )
                        else:
                            t = np.empty(c * rb, np.uint8)
                            _preadv_full(fd, [memoryview(t)], off + g * rb, c * rb, path, k)
                            bufs[k].reshape(batch, -1).view(np.uint8)[rows] = t.reshape(c, rb)
                ev += n
            out["raw"].append((ev, time.perf_counter() - t0))
            os.close(fd)
            with h5py.File(h5path, "r") as f:
                dsets = {k: f[k] for k in offs}
                t0 = time.perf_counter()
                ev = 0
                for b in range(planner.n_batches):
                    runs = plan.batch_runs(b)
                    n = int(runs[:, 2].sum())
                    perm = np.random.default_rng([1, b]).permutation(n)
                    for k, ds in dsets.items():
                        for e, p, c, o in runs.tolist():
                            g = int(base[e]) + p
                            ds.read_direct(tmp[k], np.s_[g : g + c], np.s_[o : o + c])
                        bufs[k][perm] = tmp[k][:n]  # HDF5 cannot scatter: one more copy to shuffle
                    ev += n
                out["hdf5"].append((ev, time.perf_counter() - t0))
    finally:
        settle(cdir)
    return out


def _copy_worker(paths, q, reps, barrier):
    from multiprocessing import shared_memory

    fds = []
    for p in paths:
        with h5py.File(p, "r") as f:
            fds.append((os.open(p, os.O_RDONLY), f["ECAL"].id.get_offset(), f["ECAL"].shape[0] * 62500))
    n = min(size for _, _, size in fds)
    shms = [shared_memory.SharedMemory(create=True, size=n) for _ in range(4)]
    views = [s.buf[:n] for s in shms]
    for v in views:
        os.preadv(fds[0][0], [v], fds[0][1])
    barrier.wait()
    t = time.perf_counter()
    for i in range(reps):
        fd, off, _ = fds[i % len(fds)]
        os.preadv(fd, [views[i % len(views)]], off)
    q.put((n * reps, time.perf_counter() - t))
    for v in views:
        v.release()
    for s in shms:
        s.close()
        s.unlink()


def bench_copy_limit(root, nproc, reps=40):
    """The machine's limit: nproc processes doing nothing but preadv of page-cached ECAL into shm."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    files = [p for fl in class_files(root).values() for p in fl]
    q, barrier = ctx.Queue(), ctx.Barrier(nproc)
    procs = [ctx.Process(target=_copy_worker, args=(files[i::nproc], q, reps, barrier)) for i in range(nproc)]
    for p in procs:
        p.start()
    res = [q.get() for _ in procs]
    for p in procs:
        p.join()
    total = sum(b for b, _ in res)
    return total / max(s for _, s in res) / 1e9


def bench_disk_write(cache_root, nbytes):
    """GB/s of writing ``nbytes`` into a pre-allocated file where the cache goes (the first epoch's limit)."""
    path = os.path.join(tempfile.mkdtemp(prefix="dlkit-bench-disk-", dir=cache_root), "w.bin")
    buf = np.ones(64 * 2**20, np.uint8)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.posix_fallocate(fd, 0, nbytes)
        t = time.perf_counter()
        for off in range(0, nbytes, len(buf)):
            os.pwrite(fd, buf[: min(len(buf), nbytes - off)], off)
        return nbytes / (time.perf_counter() - t) / 1e9
    finally:
        os.close(fd)
        settle(os.path.dirname(path))


def bench_startup(root, batch, repeats):
    from dlkit.generators import MultiClassGenerator, make_samples_from_dirs

    samples = make_samples_from_dirs(root, KEYS, classes=list(CLASSES))
    out = {}
    for method in ("spawn", "forkserver"):
        ts = []
        for _ in range(repeats):
            with MultiClassGenerator(samples, batch, n_workers=2, start_method=method) as gen:
                gen.start()
                ts.append(gen.startup_seconds)
        out[method] = ts
    return out


# --------------------------------------------------------------------------- report
def rate(pairs):
    """Median events/s and MB/s of (events, seconds) pairs."""
    evs = [e / s for e, s in pairs]
    med = statistics.median(evs)
    return med, med * EVENT_BYTES / 1e6


def machine_info():
    import keras
    import tensorflow as tf

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(mem, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "loadavg_start": os.getloadavg(),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "dlkit-bench-lcd"))
    ap.add_argument("--files", type=int, default=10, help="files per class")
    ap.add_argument("--events", type=int, default=1000, help="events per file")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-epochs", type=int, default=3)
    ap.add_argument("--only", default="a,b,c,d,e,cache,limit,startup")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    parts = set(args.only.split(","))
    make_dataset(args.data, args.files, args.events)
    nbytes = warm_page_cache(args.data)
    cache_root = tempfile.gettempdir()
    info = machine_info()
    print(f"# machine: {info}", flush=True)
    print(f"# data: {args.data}, {nbytes / 1e9:.2f} GB in the page cache", flush=True)
    R = {"info": info, "args": vars(args)}
    rows = []

    def add(name, pairs, key):
        if not pairs:
            return
        ev, mb = rate(pairs)
        R[key] = {"pairs": pairs, "events_per_s": ev, "MB_per_s": mb}
        rows.append((name, ev, mb))
        print(f"{name:70s} {ev:10,.0f} ev/s {mb:8,.0f} MB/s", flush=True)

    refs = []
    if "a" in parts or "c" in parts:
        bench_reference(args.data, args.batch)
    if "c" in parts:
        # interleaved, so that drifting load on the shared machine hits all of them alike
        gens = {w: open_dlkit(args.data, args.batch, w, nice=0) for w in (1, 2)}
        plain = {1: [], 2: []}
        for w, g in gens.items():
            g.start()
            R[f"c{w}_startup_s"] = g.startup_seconds
            for _ in range(2):
                dlkit_epoch(g)  # warm-up: every reader maps every slot
        for _ in range(args.repeats):
            refs.append(bench_reference(args.data, args.batch))
            for w, g in gens.items():
                plain[w].append(dlkit_epoch(g))
        for g in gens.values():
            g.close()
        cache_runs = {1: [], 2: []}
        for _ in range(args.repeats):
            refs.append(bench_reference(args.data, args.batch))
            for w in (1, 2):
                cache_runs[w].append(bench_dlkit_cache(args.data, args.batch, w, cache_root))
    elif "a" in parts:
        refs = [bench_reference(args.data, args.batch) for _ in range(args.repeats)]
    if refs:
        add("(a) reference: h5py read_direct, contiguous slices, 1 process", refs, "a")
    if "b" in parts:
        add(
            "(b) keras PyDataset over h5py, workers=2, threads",
            [bench_pydataset(args.data, args.batch, False) for _ in range(args.repeats)],
            "b_threads",
        )
        add(
            "(b) keras PyDataset over h5py, workers=2, processes",
            [bench_pydataset(args.data, args.batch, True) for _ in range(args.repeats)],
            "b_processes",
        )
    if "c" in parts:
        for w in (1, 2):
            add(f"(c) dlkit {w} reader(s): mixed, shuffled, labelled epochs", plain[w], f"c{w}_plain")
            add(
                f"(c) dlkit {w} reader(s): first epoch, writing the cache",
                [r[0] for r in cache_runs[w]],
                f"c{w}_first",
            )
            add(f"(c) dlkit {w} reader(s): cached epoch", [r[1] for r in cache_runs[w]], f"c{w}_cached")
            add(f"(c) dlkit {w} reader(s): a later run's first epoch on the cache (checksums verified)",
                [r[3] for r in cache_runs[w]], f"c{w}_verified")
            add(f"(c) dlkit {w} reader(s): a later run's second epoch (blocks already verified)",
                [r[4] for r in cache_runs[w]], f"c{w}_later")
    if "d" in parts:
        passes = calibrate_preprocess(args.batch)
        runs = [
            bench_dlkit_cache(args.data, args.batch, 2, cache_root, preprocess=SlowPreprocess(passes))
            for _ in range(args.repeats)
        ]
        ms = statistics.median(1e3 * r[2]["preprocess"] / r[2]["tasks"] for r in runs)
        R["d_preprocess_ms_in_readers"] = ms
        print(
            f"# pre-process: {passes} passes; {ms:.0f} ms per batch measured inside the readers", flush=True
        )
        add(
            f"(d) dlkit 2 readers, {ms:.0f} ms/batch pre-process: first epoch",
            [r[0] for r in runs],
            "d_first",
        )
        add(
            f"(d) dlkit 2 readers, {ms:.0f} ms/batch pre-process: cached epoch",
            [r[1] for r in runs],
            "d_cached",
        )
    if "e" in parts:
        r = bench_training(args.data, args.batch, args.train_epochs, cache_root, 2)
        R["e_slots"] = r["slots"]
        add("(e) training dense 17125-128-128-4, fed by dlkit (2 readers, cached)", r["dlkit"], "e_dlkit")
        add("(e) training dense 17125-128-128-4, from in-memory numpy", r["memory"], "e_memory")
        R["e_first_epoch_s"] = {"dlkit": r["dlkit_first"], "memory": r["memory_first"]}
        paired = [(a / s1) / (b / s2) for (a, s1), (b, s2) in zip(r["dlkit"], r["memory"])]
        R["e_paired_ratios"] = paired
        print(
            f"# training, dlkit / memory epoch by epoch (alternated): {[round(x, 2) for x in paired]}, "
            f"median {statistics.median(paired):.2f}",
            flush=True,
        )
    if "cache" in parts:
        r = bench_cache_format(args.data, args.batch, cache_root, args.repeats)
        add("cache format: raw file, preadv scatter (1 process)", r["raw"], "fmt_raw")
        add(
            "cache format: same layout as HDF5, h5py read_direct + permute (1 process)", r["hdf5"], "fmt_hdf5"
        )
    if "limit" in parts:
        lim = {
            n: statistics.median(bench_copy_limit(args.data, n) for _ in range(args.repeats)) for n in (1, 2)
        }
        R["copy_limit_GBps"] = lim
        print(
            f"# machine limit, preadv page cache -> shm: 1 process {lim[1]:.1f} GB/s, 2 processes {lim[2]:.1f} GB/s "
            f"({lim[2] / lim[1]:.2f}x)",
            flush=True,
        )
        disk = statistics.median(bench_disk_write(cache_root, nbytes) for _ in range(args.repeats))
        R["disk_write_GBps"] = disk
        print(
            f"# writing {nbytes / 1e9:.1f} GB into a pre-allocated file in {cache_root}: {disk:.2f} GB/s",
            flush=True,
        )
    if "startup" in parts:
        r = bench_startup(args.data, args.batch, args.repeats)
        R["startup"] = r
        for k, v in r.items():
            print(f"# start-up of 2 readers + slots, {k}: median {statistics.median(v):.2f} s", flush=True)
    R["loadavg_end"] = os.getloadavg()

    def ratio(a, b):
        return R[a]["events_per_s"] / R[b]["events_per_s"] if a in R and b in R else float("nan")

    targets = [
        ("dlkit 2 readers / reference (a)", ratio("c2_plain", "a"), 0.8),
        ("dlkit 2 readers / PyDataset threads", ratio("c2_plain", "b_threads"), 4.0),
        ("dlkit 2 readers / PyDataset processes", ratio("c2_plain", "b_processes"), 10.0),
        ("dlkit 2 readers / 1 reader", ratio("c2_plain", "c1_plain"), 1.5),
        ("cached epoch (2 readers) / reference (a)", ratio("c2_cached", "a"), 1.0),
        ("a later run's checksum-verifying cached epoch (2 readers) / reference (a)", ratio("c2_verified", "a"), 2.0),
        ("cached / first epoch, 50 ms pre-process", ratio("d_cached", "d_first"), 3.0),
        ("training fed by dlkit / from memory", ratio("e_dlkit", "e_memory"), 0.95),
    ]
    R["targets"] = [{"name": n, "ratio": r, "target": t, "met": bool(r >= t)} for n, r, t in targets]
    print("\n| target | ratio | required | |\n|---|---|---|---|")
    for n, r, t in targets:
        print(
            f"| {n} | {r:.2f} | >= {t} | {'met' if r >= t else ('not run' if math.isnan(r) else 'MISSED')} |"
        )
    print("\n| reader | events/s | MB/s |\n|---|---|---|")
    for name, ev, mb in rows:
        print(f"| {name} | {ev:,.0f} | {mb:,.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(R, f, indent=1, default=str)
    return R


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
