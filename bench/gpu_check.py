#!/usr/bin/env python
"""Does dlkit keep a GPU fed? calodnn's 3D CNN and dense model, trained from dlkit's generator and from data
already on the GPU, in float32 and mixed bfloat16 (by hand, on a GPU machine; never in CI).

    KERAS_BACKEND=jax python bench/gpu_check.py                      # ~5 min on one H100 (simulation included)
    KERAS_BACKEND=jax python bench/gpu_check.py --events-per-class 10000 --batch 512 --json gpu_check.json

It needs JAX with CUDA (``pip install "jax[cuda12]"``), Keras and dlkit's own requirements - no TensorFlow (see
"On a machine without internet" below) - and ``nvidia-smi`` for the busy fraction. Without a GPU it stops at
once with one line on stderr (exit 2).

For each model (``CNN``: calodnn's 3D-CNN ECAL branch and dense HCAL branch; ``Dense``: the default dense
branches) and each precision (``float32``, ``mixed_bfloat16``):

- *fed*: trained on calodnn's training generator (dlkit's ``MultiClassGenerator``: reader processes, shared
  memory, the on-disk cache, the NonLinear normalisation in the readers) as a run trains - ``ModelWrapper.Train``
  with its callbacks and ``GracefulExit`` (no saves);
- *on device*: the same model, freshly built, trained the same way on the same batches placed on the GPU
  beforehand (``jax.device_put``; a ``PyDataset`` serving those arrays), so the input pipeline costs nothing;
- the training step time of each: the median over ``--epochs`` timed epochs (after one warm-up epoch that
  compiles and fills the cache) of the epoch's wall time divided by its steps;
- the GPU's busy fraction while fed: ``nvidia-smi``'s ``utilization.gpu`` (the fraction of the sample period in
  which a kernel ran) sampled every 100 ms during the timed epochs, averaged;
- ``fed / on device`` (target for the CNN: on-device step time / fed step time >= 0.95, i.e. the generator
  costs at most 5 %; busy >= 90 %) and the bf16 speed-up (float32 / mixed_bfloat16 step time, on device).

It prints a Markdown table (for BENCHMARKS.md) and writes everything to ``--json``.

On a machine without internet: copy this repository, and wheels downloaded elsewhere with
``pip download keras h5py numpy scipy psutil tqdm tabulate --only-binary=:all: -d wheels`` (plus
``"jax[cuda12]"`` unless the machine has it), then ``pip install --no-index --find-links wheels keras ...`` and
``pip install --no-deps -e .`` (or ``PYTHONPATH=.``). ``KERAS_BACKEND=jax`` must be set (the script sets it when
unset); TensorFlow is not needed and not imported.
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
import threading
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlkit.protocol import EXIT_OK, EXIT_USER_ERROR  # noqa: E402 - light: no Keras


def fail(message: str) -> int:
    print(f"gpu_check: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def find_gpu(allow_cpu: bool):
    """The first GPU JAX sees, or a one-line reason why there is none."""
    if os.environ["KERAS_BACKEND"] != "jax":
        return None, f"KERAS_BACKEND={os.environ['KERAS_BACKEND']}: this check runs on JAX (KERAS_BACKEND=jax)"
    try:
        import jax
    except ImportError:
        return None, "JAX is not installed (pip install 'jax[cuda12]')"
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if gpus:
        return gpus[0], None
    if allow_cpu:
        return jax.devices("cpu")[0], None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return None, (f"no GPU: JAX {jax.__version__} sees only {', '.join(sorted({d.platform for d in jax.devices()}))}"
                  f" devices (jax with CUDA installed? CUDA_VISIBLE_DEVICES={visible!r}); nothing was measured")


class BusySampler:
    """``nvidia-smi``'s ``utilization.gpu`` of one GPU every ``interval_ms``, while :meth:`recording`."""

    def __init__(self, index: int, interval_ms: int = 100):
        self.available = shutil.which("nvidia-smi") is not None
        self.samples: list[tuple[float, float]] = []
        self._proc = None
        if self.available:
            self._proc = subprocess.Popen(
                ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 f"-lms={interval_ms}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        self.windows: list[tuple[float, float]] = []

    def _read(self):
        for line in self._proc.stdout:
            try:
                self.samples.append((time.monotonic(), float(line.strip())))
            except ValueError:
                pass

    def busy(self, start: float, end: float) -> float | None:
        inside = [u for t, u in self.samples if start <= t <= end]
        return statistics.fmean(inside) / 100.0 if inside else None

    def close(self):
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)


def epoch_timer():
    import keras

    class EpochTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.spans: list[tuple[float, float]] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):  # Keras synchronises the JAX state before this
            self.spans.append((self._t0, time.monotonic()))

    return EpochTimes()


def build(config: dict, data, precision: str):
    import keras

    from calodnn.models import build_classifier
    from dlkit.distribute import float32_outputs

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        keras.utils.set_random_seed(0)
        model = build_classifier(data.input_shapes, len(data.class_names), Model=config["Model"],
                                 Width=config["Width"], Depth=config["Depth"], CNNFilters=config["CNNFilters"])
        float32_outputs(model)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="categorical_crossentropy")
    finally:
        keras.config.set_dtype_policy(previous)
    return model


def on_device(data, device):
    """The training generator's batches of one epoch, placed on ``device`` (JAX's default device: an explicit
    placement commits the arrays, and Keras then spends ~4 ms more per step on them), as a ``PyDataset``."""
    import jax
    import keras
    import numpy as np

    gen = data.train
    gen.seek(0)  # (a copy first: the generator's batches live in shared memory it reuses)
    batches = [jax.device_put(keras.tree.map_structure(np.array, gen[i])) for i in range(len(gen))]
    jax.block_until_ready(batches)
    placed = {d for b in batches for a in jax.tree.leaves(b) for d in a.devices()}
    if placed != {device}:
        raise RuntimeError(f"the batches went to {placed}, not {device} (JAX's default device)")
    gen.seek(0)

    class OnDevice(keras.utils.PyDataset):
        """Batch ``b`` of every epoch is the generator's batch ``b`` of its first epoch."""

        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.position = 0

        def __len__(self):
            return len(batches)

        def __getitem__(self, index):
            self.position += 1
            return batches[(self.position - 1) % len(batches)]

        def seek(self, position):
            self.position = position

    return OnDevice()


def measure(config: dict, data, feed, precision: str, epochs: int, sampler: BusySampler | None,
            scratch: str) -> dict:
    """Train as a dlkit run trains (``ModelWrapper.Train``: its bookkeeping and mid-epoch callbacks, GracefulExit;
    no saves) for one warm-up and ``epochs`` timed epochs."""
    from dlkit import ModelWrapper
    from dlkit.callbacks import GracefulExit

    wrapper = ModelWrapper(f"{config['Model']}_{precision}", OutputBase=scratch)
    wrapper.Model = build(config, data, precision)
    wrapper.Optimizer = wrapper.Model.optimizer
    timer = epoch_timer()
    feed.seek(0)
    wrapper.Train(feed, Epochs=1 + epochs, Callbacks=[GracefulExit(), timer], SaveEveryEpoch=False, verbose=0)
    steps = len(feed)
    timed = timer.spans[1:]  # the first epoch compiles (and, fed, fills the cache)
    step_ms = statistics.median((end - start) / steps * 1e3 for start, end in timed)
    busy = None
    if sampler is not None and sampler.available:
        values = [b for b in (sampler.busy(start, end) for start, end in timed) if b is not None]
        busy = statistics.fmean(values) if values else None
    return {"step_ms": step_ms, "steps_per_epoch": steps, "epoch_s": [end - start for start, end in timer.spans],
            "busy": busy}


def run_model(name: str, args, device, sampler, scratch: str) -> dict:
    from calodnn.ClassificationExperiment import DEFAULTS
    from calodnn.data import setup_data

    config = {**DEFAULTS, "Model": name, "BatchSize": args.batch, "SimEventsPerClass": args.events_per_class,
              "DataDir": args.data, "Workers": args.workers, "MaxEvents": 0}
    out = {"model": name, "batch": args.batch}
    with setup_data(config) as data:
        placed = on_device(data, device)
        for precision in ("float32", "mixed_bfloat16"):
            fed = measure(config, data, data.train, precision, args.epochs, sampler, scratch)
            resident = measure(config, data, placed, precision, args.epochs, None, scratch)
            out[precision] = {"fed": fed, "on_device": resident,
                              "on_device_over_fed": resident["step_ms"] / fed["step_ms"]}
            print(f"{name:5s} {precision:15s} fed {fed['step_ms']:.2f} ms/step, on device "
                  f"{resident['step_ms']:.2f} ms/step, busy while fed "
                  f"{'n/a' if fed['busy'] is None else format(fed['busy'], '.0%')}", flush=True)
    for how in ("on_device", "fed"):
        out[f"bf16_speedup_{how}"] = out["float32"][how]["step_ms"] / out["mixed_bfloat16"][how]["step_ms"]
    return out


def table(results: list[dict]) -> str:
    lines = ["| model | precision | fed ms/step | on-device ms/step | on-device / fed | GPU busy while fed |",
             "|---|---|---|---|---|---|"]
    for r in results:
        for precision in ("float32", "mixed_bfloat16"):
            m = r[precision]
            busy = "n/a" if m["fed"]["busy"] is None else f"{m['fed']['busy']:.0%}"
            lines.append(f"| {r['model']} | {precision} | {m['fed']['step_ms']:.2f} | {m['on_device']['step_ms']:.2f} "
                         f"| {m['on_device_over_fed']:.3f} | {busy} |")
    lines.append("")
    lines += [f"- {r['model']}: mixed bfloat16 speed-up {r['bf16_speedup_on_device']:.2f}x on device, "
              f"{r['bf16_speedup_fed']:.2f}x fed" for r in results]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="CNN,Dense", help="calodnn models to check (CNN,Dense)")
    parser.add_argument("--events-per-class", type=int, default=5000,
                        help="simulated events per particle (4 particles; 70 %% train), unless --data")
    parser.add_argument("--data", default=None, help="a calodnn dataset directory instead of the simulated one")
    parser.add_argument("--batch", type=int, default=256, help="BatchSize (256)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up epoch (3)")
    parser.add_argument("--workers", type=int, default=0, help="reader processes (0: dlkit's default)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)  # the script's own smoke test
    args = parser.parse_args(argv)
    device, why = find_gpu(args.allow_cpu)
    if device is None:
        return fail(why)
    import jax
    import keras

    with tempfile.TemporaryDirectory(prefix="dlkit-gpu-check-") as scratch:
        os.environ.setdefault("DLKIT_CACHE_DIR", os.path.join(scratch, "cache"))
        sampler = BusySampler(device.id) if device.platform == "gpu" else None
        if sampler is not None and not sampler.available:
            print("gpu_check: nvidia-smi not found: no busy fraction", file=sys.stderr)
        try:
            results = [run_model(name, args, device, sampler, scratch) for name in args.models.split(",")]
        finally:
            if sampler is not None:
                sampler.close()
    report = {"device": str(getattr(device, "device_kind", device)), "jax": jax.__version__,
              "keras": keras.__version__, "python": platform.python_version(), "host": platform.node(),
              "time": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:], "results": results}
    print(f"\n{report['device']}, JAX {jax.__version__}, Keras {keras.__version__}, batch {args.batch}\n")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
