#!/usr/bin/env python
"""onnxruntime against Keras ``predict`` on the CPU for every model kind dlkit's experiments train, with 1 and
2 threads; and dlkit-predict's memory on a dataset and on one 10x larger (by hand, never in CI).

    python bench/export_bench.py                          # ~10 minutes on 2 cores
    python bench/export_bench.py --only calo_dense,peak_lstm --repeats 3
    python bench/export_bench.py --skip-memory --json results.json

Each kind is trained for one epoch on a tiny simulated dataset (``--Test`` sizes; the throughput does not
depend on the weights) with its experiment's *default* network - the default config's scan point (calodnn
``-s 0``: dense branches of 32 on ECAL and HCAL, its CNN variant with ``Model=CNN``, the ``LayerMLP``
calibration; lartpcdnn ``-s 0``: the siamese CNN, 4 blocks of 8 filters; clustercount: the ``-s 18`` LSTM(32)
peak finder, the ``-s 0`` 1D CNN counter) - and exported with ``dlkit.export.export_onnx``. Its held-out
events, pre-processed, are repeated to a fixed count per kind and timed in a fresh process per (engine,
threads): Keras ``model.predict(x, batch_size=256)`` on TensorFlow (``tf.config.threading`` intra- and
inter-op threads and ``OMP_NUM_THREADS`` set before TensorFlow starts) against an onnxruntime session
(``intra_op_num_threads``, sequential execution) over the same batches of 256. One warm-up pass, then the
median of ``--repeats`` passes, events/s.

Memory: ``dlkit-predict`` of the calodnn dense run over a simulated dataset of N events and of 10 N events
(the same model, HDF5 output, 2 reader processes, batches of 256), each in its own process: the peak RSS of
the predicting process (``ru_maxrss``, and sampled every 20 ms), of its largest reader, and of the unique
memory (USS) of all of them together, sampled; and the rate.
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

from dlkit.protocol import EXIT_OK

KINDS = ["calo_dense", "calo_cnn", "calo_calibration", "lartpc_cnn", "peak_lstm", "cluster_cnn"]
#: events timed per pass (the held-out events repeated)
EVENTS = {"calo_dense": 4096, "calo_cnn": 512, "calo_calibration": 4096, "lartpc_cnn": 256, "peak_lstm": 32768,
          "cluster_cnn": 8192}
BATCH = 256


# ----------------------------------------------------------------------------------------------- training
def _run(module, work, data, point, **entries):
    import importlib

    result = importlib.import_module(module).run(point=point, Test=True, data=str(data), OutputBase=work / "runs",
                                                 NoAnalysis=True, Epochs=1, Workers=1, **entries)
    assert result.ok, result.summary
    return result.run_dir


def train(kind: str, work: Path):
    """(run directory, data directory) of ``kind``, trained once into ``work``."""
    done = work / f"{kind}.json"
    if done.exists():
        info = json.loads(done.read_text())
        return Path(info["run"]), Path(info["data"])
    if kind.startswith("calo"):
        from calodnn.configs import REGRESSION_SIM_CONFIG
        from calodnn.simulate import CaloSimConfig, write_dataset

        raw = kind == "calo_calibration"
        data = work / ("lcd-raw" if raw else "lcd")
        if not data.exists():
            write_dataset(data, events_per_class=150, events_per_file=150, seed=5, progress=False, workers=1,
                          config=CaloSimConfig(**REGRESSION_SIM_CONFIG) if raw else None)
        if raw:
            run = _run("calodnn.RegressionExperiment", work, data, 0, Model="LayerMLP")
        else:
            extra = {"Model": "CNN"} if kind == "calo_cnn" else {}
            run = _run("calodnn.ClassificationExperiment", work, data, 0, **extra)
    elif kind == "lartpc_cnn":
        from lartpcdnn.simulate import write_dataset

        data = work / "lariat"
        particles = ["electron", "muon", "proton"]
        write_dataset(data, particles, events_per_class=10, events_per_file=10, seed=3, truth3d=False,
                      progress=False, workers=1)
        run = _run("lartpcdnn.ClassificationExperiment", work, data, 0, Particles=particles, BatchSize=8)
    else:
        from clustercount.simulate import write_dataset

        waves = work / "waves"
        if not waves.exists():
            write_dataset(waves, n_waveforms=400, waveforms_per_file=200, seed=3, progress=False, workers=1)
        if kind == "peak_lstm":
            run = _run("clustercount.PeakFindingExperiment", work, waves, 18, MaxEvents=3000, lr=0.001)
        else:
            run = _run("clustercount.ClusterizationExperiment", work, waves, 0, PeakModel="derivative", PID=False,
                       lr=0.001)
        kind_dir = "peaks" if kind == "peak_lstm" else "clusters"
        data = next((work / "data" / "clustercount").glob(f"{kind_dir}-*"))
    done.write_text(json.dumps({"run": str(run), "data": str(data)}))
    return run, data


def prepare(kind: str, work: Path) -> dict:
    """Train, export, and store the inputs of ``kind`` (``<work>/<kind>-inputs.npz``)."""
    from dlkit.export import export_onnx, load_run, read_events_of

    run_dir, data = train(kind, work)
    onnx = export_onnx(run_dir)
    run = load_run(run_dir)
    events = read_events_of(run_dir, data, split="test", n_workers=1)
    n = EVENTS[kind]
    x = {}
    for name in run.recipe.inputs:
        a = np.asarray(events[name], np.float32)
        x[name] = np.resize(a, (n, *a.shape[1:]))  # the held-out events, repeated
    np.savez(work / f"{kind}-inputs.npz", **x)
    return {"run": str(run_dir), "onnx": str(onnx), "inputs": list(run.recipe.inputs), "held_out": len(a),
            "parameters": _parameters(run_dir)}


def _parameters(run_dir) -> int:
    from dlkit.saving import load_model

    return int(load_model(Path(run_dir) / "model.keras", compile=False).count_params())


# ----------------------------------------------------------------------------------------------- timing (child)
def child(kind: str, engine: str, threads: int, work: Path, repeats: int) -> dict:
    """One (kind, engine, threads) in this fresh process: warm-up, then ``repeats`` timed passes."""
    info = json.loads((work / f"{kind}.json").read_text())
    inputs = np.load(work / f"{kind}-inputs.npz")
    names = list(json.loads((work / "prepared.json").read_text())[kind]["inputs"])
    x = [inputs[n] for n in names]
    n = len(x[0])
    if engine == "keras":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        from dlkit.saving import load_model

        model = load_model(Path(info["run"]) / "model.keras", compile=False)
        feed = x if len(x) > 1 else x[0]

        def once():
            model.predict(feed, batch_size=BATCH, verbose=0)
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(str(Path(info["run"]) / "model.onnx"), options,
                                       providers=["CPUExecutionProvider"])
        feeds = [i.name for i in session.get_inputs()]

        def once():
            for start in range(0, n, BATCH):
                session.run(None, {f: a[start:start + BATCH] for f, a in zip(feeds, x)})
    once()  # warm-up (graph tracing, session allocation)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        rates.append(n / (time.perf_counter() - t0))
    return {"kind": kind, "engine": engine, "threads": threads, "events": n, "rates": rates,
            "median": statistics.median(rates)}


def time_all(kinds, work: Path, repeats: int, threads_list) -> list[dict]:
    results = []
    for kind in kinds:
        for threads in threads_list:
            for engine in ("keras", "onnxruntime"):
                env = dict(os.environ, OMP_NUM_THREADS=str(threads), TF_NUM_INTRAOP_THREADS=str(threads),
                           TF_NUM_INTEROP_THREADS=str(threads))
                cmd = [sys.executable, __file__, "--child", kind, engine, str(threads), "--work", str(work),
                       "--repeats", str(repeats)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if proc.returncode:
                    raise RuntimeError(f"{kind} {engine} {threads}: {proc.stderr[-2000:]}")
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"{kind:17s} {engine:11s} {threads} thread(s): {result['median']:10.0f} events/s", flush=True)
                results.append(result)
    return results


# ----------------------------------------------------------------------------------------------- memory
def memory_child(run: str, data: str, out: str) -> dict:
    """dlkit-predict in this process, its memory sampled every 20 ms (psutil): the peak RSS of this process,
    of its largest reader process, and of their unique memory (USS) summed, i.e. what the prediction holds."""
    import resource
    import threading

    import psutil

    from dlkit.export import predict

    me, peak, done = psutil.Process(), {"rss": 0, "reader_rss": 0, "uss_total": 0}, threading.Event()

    def sample():
        while not done.wait(0.02):
            try:
                readers = [c for c in me.children(recursive=True) if "resource_tracker" not in " ".join(c.cmdline())]
                peak["rss"] = max(peak["rss"], me.memory_info().rss)
                peak["reader_rss"] = max([peak["reader_rss"], *(c.memory_info().rss for c in readers)])
                total = me.memory_full_info().uss + sum(c.memory_full_info().uss for c in readers)
                peak["uss_total"] = max(peak["uss_total"], total)
            except (psutil.Error, OSError):
                pass

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    result = predict(run, data, out, n_workers=2, batch_size=256)
    done.set()
    thread.join()
    mib = 2**20
    return {"events": result.events, "seconds": result.seconds, "rate": result.events / result.seconds,
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_mib": peak["rss"] / mib,
            "reader_rss_mib": peak["reader_rss"] / mib, "uss_total_mib": peak["uss_total"] / mib}


def memory(work: Path, base_per_class: int) -> list[dict]:
    """dlkit-predict over N and 10 N calodnn events (the dense run of :func:`train`), each in a fresh process."""
    from calodnn.simulate import write_dataset

    run, _ = train("calo_dense", work)
    results = []
    for factor in (1, 10):
        per_class = base_per_class * factor
        data = work / f"lcd-{per_class}"
        if not data.exists():
            write_dataset(data, events_per_class=per_class, events_per_file=min(per_class, 1000), seed=9,
                          progress=False, workers=1)
        out = work / f"scores-{per_class}.h5"
        cmd = [sys.executable, __file__, "--memory-child", str(run), str(data), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
        result = {"events_per_class": per_class, **json.loads(proc.stdout.strip().splitlines()[-1])}
        print(f"predict {result['events']:6d} events: peak RSS {result['maxrss_mib']:.0f} MiB (ru_maxrss; sampled "
              f"{result['rss_mib']:.0f}), largest reader {result['reader_rss_mib']:.0f} MiB, unique memory of all "
              f"{result['uss_total_mib']:.0f} MiB; {result['rate']:.0f} events/s", flush=True)
        results.append(result)
    return results


# ----------------------------------------------------------------------------------------------- report
def machine() -> str:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import keras
    import onnxruntime
    import tensorflow as tf

    return (f"{os.cpu_count()}-core {cpu}, Python {platform.python_version()}, numpy {np.__version__}, keras "
            f"{keras.__version__}, TensorFlow {tf.__version__} (CPU), onnxruntime {onnxruntime.__version__}")


def table(results, prepared) -> str:
    rows = ["| model (parameters, events timed) | Keras 1 thread | onnxruntime 1 thread | ratio | Keras 2 threads "
            "| onnxruntime 2 threads | ratio |", "|---|---|---|---|---|---|---|"]
    by = {(r["kind"], r["engine"], r["threads"]): r["median"] for r in results}
    for kind in dict.fromkeys(r["kind"] for r in results):
        cells = []
        for threads in (1, 2):
            k, o = by.get((kind, "keras", threads)), by.get((kind, "onnxruntime", threads))
            cells += [f"{k:,.0f}" if k else "-", f"{o:,.0f}" if o else "-", f"{o / k:.2f}" if k and o else "-"]
        p = prepared[kind]
        rows.append(f"| {kind} ({p['parameters']:,}, {EVENTS[kind]:,}) | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=None, help="work directory (default: a temporary one)")
    p.add_argument("--only", default=",".join(KINDS), help="kinds, comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--memory-events-per-class", type=int, default=300, help="N / 4 (4 classes)")
    p.add_argument("--json", default=None)
    p.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    p.add_argument("--memory-child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="dlkit-export-bench-"))
    if args.child:
        kind, engine, threads = args.child
        print(json.dumps(child(kind, engine, int(threads), work, args.repeats)))
        return EXIT_OK
    if args.memory_child:
        print(json.dumps(memory_child(*args.memory_child)))
        return EXIT_OK
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DLKIT_DATA", str(work / "data"))
    os.environ.setdefault("DLKIT_CACHE_DIR", str(work / "cache"))
    kinds = [k for k in args.only.split(",") if k]
    prepared_path = work / "prepared.json"
    prepared = json.loads(prepared_path.read_text()) if prepared_path.exists() else {}
    for kind in kinds:
        prepared[kind] = prepare(kind, work)
        prepared_path.write_text(json.dumps(prepared, indent=1))
    started, load = time.strftime("%Y-%m-%d %H:%M"), os.getloadavg()
    results = time_all(kinds, work, args.repeats, [int(t) for t in args.threads.split(",")])
    mem = [] if args.skip_memory else memory(work, args.memory_events_per_class)
    print(f"\nMachine: {machine()}; started {started} at load average {load[0]:.1f}, ended at "
          f"{os.getloadavg()[0]:.1f}\n")
    print(table(results, prepared))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "timing": results, "memory": mem,
                                               "prepared": prepared}, indent=1))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
