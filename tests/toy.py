"""A toy experiment without Keras that obeys the scan contract: for trying ``dlkit.scan``, its tests and benchmarks.

    python -m dlkit.scan run --experiment toy --slots 2   # with tests/ on PYTHONPATH -- --set EpochTime=0.5

It has DLKit's flags (``-C``, ``-s``, ``-p``, ``--OutputBase``, ``--set``), "trains" ``Epochs`` epochs of
``EpochTime`` seconds, writes ``MetaData.json`` as a ``ModelWrapper`` run would (so ``ScanAnalysis`` reads it),
saves after every epoch, stops on SIGTERM/SIGINT/SIGUSR1 after saving with exit 75, resumes with ``-p`` to
the configured total of epochs, and reports its progress to the scan ledger and obeys its fence. Faults on
demand, by scan point: ``UserErrorPoints`` exit 2, ``CrashPoints`` crash (exit 1) after their first epoch,
``InterruptPoints`` exit 75 before finishing an epoch, ``KilledAfterPoints`` are killed after their run
completed (as a signal during a backend's teardown would); in a search, these lists name trial numbers.

For searches it has a known optimum: ``Objective`` = (log10 lr + 2)^2 + ((Width - 64) / 32)^2, smallest (0)
at lr = 0.01, Width = 64, written when the run completes; the History metric ``val_objective`` approaches it
as Objective + 1/epoch. A trial pruned by the search saves and exits 77.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from dlkit.config import at_least
from dlkit.experiment import RUN_DEFAULTS, FLAG_KEYS, UserError, make_parser, resolve_run, run_main
from dlkit.metadata import METADATA_FILE, atomic_write, claim_run_dir, read_metadata, run_dirs, to_jsonable
from dlkit import protocol as point

DEFAULT_CONFIG = Path(__file__).with_name("toy_config.py")

DEFAULTS = {
    "Width": 1,
    "lr": 0.01,
    "Depth": 1,
    "Epochs": 3,
    "EpochTime": 0.0,          # seconds per epoch
    "Busy": False,             # spend EpochTime computing on one core instead of sleeping (the benchmark)
    "UserErrorPoints": [],     # scan points that exit 2
    "CrashPoints": [],         # scan points that crash after their first epoch
    "InterruptPoints": [],     # scan points that exit 75 before completing an epoch
    "KilledAfterPoints": [],   # scan points killed (SIGKILL) on their way out, after their run completed
    **RUN_DEFAULTS,
}
TEST_OVERRIDES = {"Epochs": 2}
#: Allowed values of this experiment's own numeric entries (dlkit.config.RANGES has the shared ones).
RANGES = {"Epochs": at_least(0), "EpochTime": at_least(0)}  # Epochs=0: the no-op point of the benchmark
STATE_FILE = "model.json"      # the toy's "model": its epoch count


class _Stop:
    signal_name: str | None = None

    def __call__(self, signum, frame):
        self.signal_name = signal.Signals(signum).name


def _write(run_dir: Path, metadata: dict, state: dict | None = None) -> None:
    point.guard()  # a fenced point writes nothing
    if state is not None:
        atomic_write(run_dir / STATE_FILE, lambda tmp: Path(tmp).write_text(json.dumps(state)))
    text = json.dumps(to_jsonable(metadata), indent=1)
    atomic_write(run_dir / METADATA_FILE, lambda tmp: Path(tmp).write_text(text))


def run(argv=None) -> int:
    args = make_parser(__doc__.splitlines()[0], DEFAULT_CONFIG).parse_args(argv)
    setup = resolve_run(args, DEFAULTS, prefix="Toy", test_overrides=TEST_OVERRIDES, flag_keys=FLAG_KEYS,
                        ranges=RANGES, import_backend=False)
    config, index = setup.config, setup.index
    fault = setup.point.get("Trial", index)  # a search trial's faults are chosen by its trial number
    if fault in config["UserErrorPoints"]:
        raise UserError(f"scan point {index} is in UserErrorPoints")
    stop = _Stop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, stop)

    chain, done = [], 0
    if args.LoadPrevious or config["LoadPreviousModel"]:
        for _, directory in reversed(run_dirs(setup.output_base, setup.name)):
            if (directory / STATE_FILE).is_file():
                previous = read_metadata(directory)
                chain = list(previous.get("InputMetaData") or []) + [{**previous, "InputMetaData": []}]
                done = json.loads((directory / STATE_FILE).read_text())["epochs"]
                break
    point.guard()
    run_dir = claim_run_dir(setup.output_base, setup.name)
    history: dict[str, list] = {"loss": [], "val_loss": []}
    metadata = {"Name": setup.name, "Configuration": config, "ScanPoint": setup.point, "HyperParamSet": index,
                "HyperParamHash": setup.hash, **setup.point, "History": history, "EpochTime": [],
                "InputMetaData": chain, "OutDir": str(run_dir), "Status": "training",
                "Provenance": {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                               "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
                "StartTime": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write(run_dir, metadata)
    point.report(epochs=done, run_dir=run_dir)

    width = float(setup.point.get("Width", config["Width"]))
    objective = objective_of(config["lr"], config["Width"])
    first = done  # epochs done before this run (-p): the History of this run starts after them
    status = "completed"
    while done < config["Epochs"]:
        if fault in config["InterruptPoints"]:
            status = "interrupted"
            break
        t0 = time.monotonic()
        while time.monotonic() - t0 < config["EpochTime"] and stop.signal_name is None:
            if config["Busy"]:
                sum(i * i for i in range(20000))
            else:
                time.sleep(min(0.02, config["EpochTime"]))
        done += 1
        history["loss"].append(1.0 / (width * done))
        history["val_loss"].append(1.1 / (width * done))
        history.setdefault("val_objective", []).append(objective + 1.0 / done)
        metadata["EpochTime"].append(time.monotonic() - t0)
        _write(run_dir, metadata, {"epochs": done})
        point.report(epochs=done, history={k: {str(first + e + 1): v for e, v in enumerate(values)}
                                           for k, values in history.items()})
        if fault in config["CrashPoints"]:
            raise RuntimeError(f"scan point {index} is in CrashPoints (a simulated crash)")
        if stop.signal_name is not None:
            status = "interrupted"
            break
    total = done
    if status == "interrupted" and point.pruned():
        status = "pruned"
    metadata.update(Status=status, Epochs=len(metadata["EpochTime"]), TotalEpochs=total, val_loss=(
        history["val_loss"][-1] if history["val_loss"] else None), EndTime=time.strftime("%Y-%m-%dT%H:%M:%S"),
        StopReason=f"signal {stop.signal_name}" if stop.signal_name else f"{status} at {total} epochs",
        **({"Objective": objective} if status == "completed" else {}))
    _write(run_dir, metadata, {"epochs": done})
    if fault in config["KilledAfterPoints"] and status == "completed":
        os.kill(os.getpid(), signal.SIGKILL)
    return {"interrupted": point.EXIT_INTERRUPTED, "pruned": point.EXIT_PRUNED}.get(status, point.EXIT_OK)


def objective_of(lr: float, width: float) -> float:
    """The toy's known objective: 0 at lr = 0.01, Width = 64."""
    import math

    return (math.log10(lr) + 2.0) ** 2 + ((width - 64.0) / 32.0) ** 2


def main(argv=None):
    sys.exit(run_main(run, argv))


if __name__ == "__main__":
    main()
