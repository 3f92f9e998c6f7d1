#!/usr/bin/env python
"""Point clouds from ROOT files: dlkit's generator against a single-process uproot read and weaver-core's
data loader, on the same ROOT files of calodnn hits, side by side in one run (by hand, never in CI).

    pip install torch==2.13.0 weaver-core            # the CPU torch build first (see the README)
    python bench/pointcloud_bench.py                 # 40k events, 4 classes, 256 points: ~10 minutes on 2 cores
    python bench/pointcloud_bench.py --events-per-class 2500 --repeats 1 --only a,c,d     # a quick look

The files are calodnn's simulated showers written as hit lists (``calodnn.simulate --hits root``: one ROOT
file of 1,000 events per class and file, TTree ``events`` with vector branches ``hit_x, hit_y, hit_z, hit_e,
hit_det`` and ``energy``, ``pdgID``), made once into ``--data`` and read once before timing so they sit in the
page cache. Every loader delivers the same thing per event: the five hit features padded or clipped to
``--max-points`` in the file's order (no sort: weaver-core's ``pad_mode: constant``), a mask, standardized
with the same constants ``(x - mean) / std`` (fitted once here with numpy), and the class label.

Measured, as events/s, median of ``--repeats`` epochs over all events, batches of 1024:
  a  reference: one process, uproot ``tree.arrays`` of each whole file, awkward ``pad_none``/``fill_none``
     padding, numpy standardization; files in order, no shuffling
  b  weaver-core's ``SimpleIterDataset`` with a torch ``DataLoader`` of 2 workers, for training
     (shuffled): its default ``fetch_step`` 0.01, ``fetch_step`` 0.1, and ``in_memory=True`` with
     ``fetch_step`` 1 (its loading epoch, then the later epochs served from memory; its iterator never ends
     in that mode, so an epoch is counted as 40,000 events)
  c  dlkit ``MultiClassGenerator``, 2 readers, shuffled and class-mixed, first pass (no cache)
  d  dlkit's cached epoch (the cache written by a first pass; reads of padded batches)
Targets (issue 30): c >= 1.5 a; c >= 3 b(default); c >= 2 b(best); d >= 10 b(best). "Best" for a first pass
(c) is weaver-core's fastest pass that reads the files (in_memory's first epoch included); for the cached
epoch (d) its fastest epoch of any kind (in_memory's later ones, which read nothing).
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

import numpy as np

FIELDS = ["hit_x", "hit_y", "hit_z", "hit_e", "hit_det"]
CLASSES = ["Ele", "Gamma", "Pi0", "ChPi"]
PDG = {"Ele": 11, "Gamma": 22, "Pi0": 111, "ChPi": 211}
BATCH = 1024


# ----------------------------------------------------------------------------------------------- data
def make_data(root: str, events_per_class: int) -> dict[str, list[str]]:
    """calodnn hit files in ``root`` (written once), class -> files."""
    from calodnn.simulate import write_dataset

    marker = os.path.join(root, f"DONE-{events_per_class}")
    if not os.path.exists(marker):
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        write_dataset(root, events_per_class=events_per_class, events_per_file=1000, hits="root")
        print(f"wrote {4 * events_per_class} events of hits in {time.perf_counter() - t0:.0f} s", flush=True)
        open(marker, "w").close()
    files = {c: sorted(os.path.join(root, c, f) for f in os.listdir(os.path.join(root, c)) if f.endswith(".root"))
             for c in CLASSES}
    for paths in files.values():  # into the page cache
        for p in paths:
            with open(p, "rb") as fh:
                while fh.read(1 << 24):
                    pass
    return files


def fit_constants(files, n_files: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each hit feature over the hits of the first files of every class."""
    import awkward as ak
    import uproot

    cols = {f: [] for f in FIELDS}
    for paths in files.values():
        for p in paths[:n_files // len(files) + 1]:
            a = uproot.open(p)["events"].arrays(FIELDS, library="ak")
            for f in FIELDS:
                cols[f].append(ak.to_numpy(ak.flatten(a[f])))
    x = np.stack([np.concatenate(cols[f]) for f in FIELDS], 1).astype(np.float64)
    std = x.std(0)
    return x.mean(0).astype(np.float32), np.where(std > 0, std, 1).astype(np.float32)


# ----------------------------------------------------------------------------------------------- loaders
def run_reference(files, m, mean, std) -> int:
    """(a): one process, whole files, awkward padding, numpy standardization."""
    import awkward as ak
    import uproot

    n = 0
    for ci, cls in enumerate(CLASSES):
        for p in files[cls]:
            a = uproot.open(p)["events"].arrays(FIELDS, library="ak")
            pts = np.stack([ak.to_numpy(ak.fill_none(ak.pad_none(a[f], m, clip=True), 0.0)) for f in FIELDS], -1)
            mask = ak.to_numpy(ak.fill_none(ak.pad_none(ak.ones_like(a["hit_e"], dtype=bool), m, clip=True), False))
            pts = np.where(mask[..., None], (pts - mean) / std, 0.0).astype(np.float32)
            labels = np.full(len(pts), ci, np.int32)
            for b in range(0, len(pts), BATCH):  # hand out batches, as the others do
                batch = (pts[b:b + BATCH], mask[b:b + BATCH], labels[b:b + BATCH])
                n += len(batch[0])
    return n


def weaver_config(path, m, mean, std) -> str:
    import yaml

    cfg = {
        "treename": "events",
        "selection": None,
        "new_variables": {"hit_mask": "ak.ones_like(hit_e)",
                          **{f"is_{c}": f"np.abs(pdgID) == {PDG[c]}" for c in CLASSES}},
        "preprocess": {"method": "manual", "data_fraction": None},
        "inputs": {
            "hits": {"length": m, "pad_mode": "constant",
                     "vars": [[f, float(c), float(1 / s), -1e9, 1e9, 0.0] for f, c, s in zip(FIELDS, mean, std)]},
            "hits_mask": {"length": m, "pad_mode": "constant", "vars": [["hit_mask", None]]},
        },
        "labels": {"type": "simple", "value": [f"is_{c}" for c in CLASSES]},
        "observers": [],
        "weights": None,
    }
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def weaver_loader(files, config, **options):
    import logging

    import torch
    from weaver.utils.dataset import SimpleIterDataset

    logging.getLogger("weaver").setLevel(logging.WARNING)
    file_dict = {c: files[c] for c in CLASSES}
    data = SimpleIterDataset(file_dict, config, for_training=True, **options)
    return torch.utils.data.DataLoader(data, batch_size=BATCH, num_workers=2, drop_last=False, pin_memory=False,
                                       persistent_workers=options.get("in_memory", False))


def run_weaver(loader, events=None) -> int:
    """One epoch; with ``in_memory`` weaver's iterator never ends (its training loop counts steps): stop after
    ``events``."""
    n = 0
    for x, y, _ in loader:
        n += len(y["_label_"])
        if events is not None and n >= events:
            break
    return n


def dlkit_generator(files, m, mean, std, cache=None):
    from dlkit.generators import Collection, MultiClassGenerator, SampleSpec
    from dlkit.generators.standardize import Standardize

    hits = Collection(FIELDS, max_points=m)
    samples = [SampleSpec(p, {"hits": hits}, c) for c in CLASSES for p in files[c]]
    norm = Standardize({"hits": {"method": "standard", "center": mean.tolist(), "scale": std.tolist()}})
    return MultiClassGenerator(samples, BATCH, n_workers=2, preprocess=norm, cache=cache or False, seed=1)


def run_dlkit(gen) -> int:
    n = 0
    for b in gen:
        n += len(b["class_index"])
    return n


# ----------------------------------------------------------------------------------------------- main
def timed(fn, *args) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn(*args)
    return time.perf_counter() - t0, n


def measure(name, repeats, fn, *args, results) -> float:
    rates = []
    for _ in range(repeats):
        dt, n = timed(fn, *args)
        rates.append(n / dt)
    rate = statistics.median(rates)
    results[name] = {"events_per_s": rate, "runs": rates, "events": n}
    print(f"{name:<34} {rate:>10.0f} events/s   ({', '.join(f'{r:.0f}' for r in rates)})", flush=True)
    return rate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "dlkit-pointcloud-bench"))
    p.add_argument("--events-per-class", type=int, default=10_000)
    p.add_argument("--max-points", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", default="a,b,c,d")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    files = make_data(args.data, args.events_per_class)
    mean, std = fit_constants(files)
    m, r, results = args.max_points, args.repeats, {}
    print(f"{sum(map(len, files.values()))} files, {4 * args.events_per_class} events, {m} points, "
          f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}", flush=True)
    if "a" in only:
        measure("a  uproot + numpy, 1 process", r, run_reference, files, m, mean, std, results=results)
    if "b" in only:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = weaver_config(os.path.join(tmp, "data.yaml"), m, mean, std)
            for label, opts in (("b  weaver fetch_step 0.01 (default)", {}),
                                ("b  weaver fetch_step 0.1", {"fetch_step": 0.1})):
                measure(label, r, run_weaver, weaver_loader(files, cfg, **opts), results=results)
            batches = iter(weaver_loader(files, cfg, in_memory=True, fetch_step=1.0))
            total = 4 * args.events_per_class
            measure("b  weaver in_memory, loading epoch", 1, run_weaver, batches, total, results=results)
            measure("b  weaver in_memory (epoch 2+)", r, run_weaver, batches, total, results=results)
    if "c" in only:
        with dlkit_generator(files, m, mean, std) as gen:
            measure("c  dlkit, 2 readers, first pass", r, run_dlkit, gen, results=results)
    if "d" in only:
        with tempfile.TemporaryDirectory() as tmp, dlkit_generator(files, m, mean, std, cache=tmp) as gen:
            run_dlkit(gen)  # the first pass writes the cache
            measure("d  dlkit, cached epoch", r, run_dlkit, gen, results=results)
    _ratios(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def _ratios(results) -> None:
    """The issue's ratios. A first pass (c) reads the files: against (a) and weaver-core's passes that read
    them (default, fetch_step 0.1, in_memory's loading epoch); a cached epoch (d) against weaver-core's
    fastest epoch of any kind (in_memory's later epochs, served from memory)."""
    rate = {k: v["events_per_s"] for k, v in results.items()}
    reading = {k: v for k, v in rate.items() if k.startswith("b") and "epoch 2+" not in k}
    ref = rate.get("a  uproot + numpy, 1 process")
    default = rate.get("b  weaver fetch_step 0.01 (default)")
    for key, best in (("c  dlkit, 2 readers, first pass", max(reading.values(), default=None)),
                      ("d  dlkit, cached epoch", max((v for k, v in rate.items() if k.startswith("b")), default=None))):
        if key not in rate:
            continue
        parts = [f"{rate[key] / ref:.2f}x the uproot reference"] if ref else []
        if default:
            parts += [f"{rate[key] / default:.1f}x weaver default", f"{rate[key] / best:.1f}x weaver best"]
        print(f"{key.split()[0]}: " + ", ".join(parts))
        results[key]["ratios"] = parts


if __name__ == "__main__":
    sys.exit(main())
