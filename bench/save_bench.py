#!/usr/bin/env python
"""What a checkpoint costs: ``ModelWrapper.Save`` (model with optimizer state, metadata, the model file's
sha256, fsync, the pair's renames) of models of about 1 MB, 100 MB and 1 GB of weights, and its share of the
training time at the default scan interval (``CheckpointEvery`` = 900 s; target < 5 %).

    python bench/save_bench.py [--sizes-mb 1 100 1000] [--repeats 3] [--dir /tmp]

Prints a markdown table (median of ``--repeats`` saves each; the files' size includes Adam's two moments).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def model_of(megabytes: float):
    """A dense model with about ``megabytes`` MB of float32 weights (wide layers, trained one step so the
    optimizer state exists)."""
    import keras
    import numpy as np

    width = 1024
    params = int(megabytes * 1e6 / 4)
    depth = max(1, params // (width * width))
    width = int((params / depth) ** 0.5) if depth == 1 else width
    inputs = keras.Input((width,))
    x = inputs
    for _ in range(depth):
        x = keras.layers.Dense(width)(x)
    model = keras.Model(inputs, x)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.train_on_batch(np.zeros((2, width), "float32"), np.zeros((2, width), "float32"))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the saves go (default: a temporary directory)")
    parser.add_argument("--interval", type=float, default=900.0, help="seconds between checkpoints (900)")
    args = parser.parse_args()
    from dlkit.model_wrapper import ModelWrapper

    work = Path(tempfile.mkdtemp(prefix="save_bench.", dir=args.dir))
    rows = []
    try:
        for mb in args.sizes_mb:
            wrapper = ModelWrapper(f"Save{mb:g}MB", OutputBase=work)
            wrapper.Model = model_of(mb)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                wrapper.Save()
                times.append(time.perf_counter() - t0)
            size = (wrapper.OutDir / "model.keras").stat().st_size / 1e6
            median = statistics.median(times)
            rows.append((mb, size, median, 100 * median / args.interval))
            shutil.rmtree(wrapper.OutDir, ignore_errors=True)
            del wrapper
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {platform.node()} {os.cpu_count()} CPUs, {platform.platform()}; saves to {work.parent}; "
          f"median of {args.repeats}\n")
    print(f"| weights | model.keras | save (pair + sha256) | share of {args.interval:g} s |")
    print("|---|---|---|---|")
    for mb, size, median, share in rows:
        print(f"| {mb:g} MB | {size:.0f} MB | {median:.2f} s | {share:.3f} % |")


if __name__ == "__main__":
    main()
