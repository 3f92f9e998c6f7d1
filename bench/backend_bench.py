#!/usr/bin/env python
"""The Keras backends on the default calodnn model, by hand (never in CI): TF vs JAX vs torch.

    python bench/backend_bench.py                      # 3 repeats of each backend, interleaved, ~10 min on 2 cores
    python bench/backend_bench.py --repeats 5 --backends jax,torch --json backends.json

Each run is the main job with two epochs, ``python -m calodnn.ClassificationExperiment -s 12 --set Epochs=2``
(point 12 of the default scan on the default simulated dataset, its caches built beforehand by a warm-up run
per backend), in a fresh process with ``KERAS_BACKEND`` set. From the run's MetaData.json: the first epoch
(with the backend's tracing/compilation) and the second (steady state), as dlkit's ``EpochTime`` records them
(``on_epoch_begin`` to ``on_epoch_end``); and the wall time of the whole process (imports, data set-up,
training, analysis, plots). Medians over the repeats; the backends alternate run by run so that a change in
the machine's load hits all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["-m", "calodnn.ClassificationExperiment", "-s", "12", "--set", "Epochs=2"]


def one_run(backend: str, out: Path) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *COMMAND, "--OutputBase", str(out)], env=env, cwd=out.parent,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{backend}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    (metadata,) = out.glob("*/MetaData.json")
    md = json.loads(metadata.read_text())
    return {"epoch1": md["EpochTime"][0], "epoch2": md["EpochTime"][1], "wall": wall,
            "val_accuracy": md["History"]["val_accuracy"][-1]}


def versions(backend: str) -> str:
    code = f"import {backend}, keras; print({backend}.__version__, keras.__version__)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    backends = args.backends.split(",")
    runs = {b: [] for b in backends}
    with tempfile.TemporaryDirectory(prefix="dlkit-backend-bench-") as tmp:
        for b in backends:  # warm-up: the dataset, premix and caches exist before the timed runs
            one_run(b, Path(tmp) / f"warm-{b}")
        for r in range(args.repeats):
            for b in backends:
                runs[b].append(one_run(b, Path(tmp) / f"{b}-{r}"))
                print(f"{b} run {r}: {json.dumps({k: round(v, 2) for k, v in runs[b][-1].items()})}",
                      flush=True)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   f"Python {platform.python_version()}",
        "command": "python " + " ".join(COMMAND),
        "versions": {b: versions(b) for b in backends},
        "runs": runs,
        "median": {b: {k: statistics.median(run[k] for run in runs[b]) for k in runs[b][0]} for b in backends},
    }
    print("| backend | versions (backend, keras) | epoch 1 (s) | epoch 2 (s) | whole run (s) |")
    print("|---|---|---|---|---|")
    for b in backends:
        m = result["median"][b]
        print(f"| {b} | {result['versions'][b]} | {m['epoch1']:.1f} | {m['epoch2']:.1f} | {m['wall']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
