"""The Python API of ``dlkit.scan``: define a scan, run it on an engine, look at it, retry, cancel.

::

    import dlkit.scan

    table = dlkit.scan.run("calodnn.ClassificationExperiment", points="0-3", slots=2, flags=["--Test"])
    dlkit.scan.status("TrainedModels")          # one row per point: state, attempts, epochs, metric, ...
    dlkit.scan.retry("TrainedModels")           # requeue the failed and stuck points
    dlkit.scan.cancel("TrainedModels")          # running points save and stop; `run` again resumes

``status`` reads only the ledger (no Keras, no TensorFlow, no model files).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dlkit.config import ConfigError, load_config
from dlkit.metadata import file_sha256
from dlkit.permutator import Permutator
from dlkit.scan.engines import ENGINES, Plan
from dlkit.scan.engines import engine as make_engine
from dlkit.scan.ledger import FINAL_STATES, Ledger, ScanError, read_json

log = logging.getLogger(__name__)

__all__ = ["make_manifest", "parse_points", "open_scan", "run", "work", "status", "status_rows", "retry", "cancel",
           "STATUS_COLUMNS"]

#: Flags the scan sets itself for each point; passing them after ``--`` is an error.
_RESERVED = {"-s": "the scan sets -s per point", "--hyperparamset": "the scan sets -s per point",
             "-C": "use the scan's --config", "--config": "use the scan's --config",
             "--OutputBase": "use the scan's --OutputBase", "-p": "the scan resumes points itself",
             "--LoadPrevious": "the scan resumes points itself", "-L": "not meaningful in a scan",
             "--LoadModel": "not meaningful in a scan", "--gpu": "use the scan's --gpus"}

STATUS_COLUMNS = ["point", "params", "state", "attempts", "epochs", "metric", "run_dir", "host", "last_error"]


def parse_points(spec: str | Iterable[int] | None, size: int) -> list[int]:
    """``"0-3,7"`` (or a list of ints) -> sorted point indices, each checked against the scan's ``size``."""
    if spec is None:
        return list(range(size))
    if isinstance(spec, str):
        out: set[int] = set()
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            low, sep, high = part.partition("-")
            try:
                values = range(int(low), int(high) + 1) if sep else [int(low)]
            except ValueError:
                raise ScanError(f"--points {spec!r}: {part!r} is not N or N-M") from None
            out.update(values)
        indices = sorted(out)
    else:
        indices = sorted({int(i) for i in spec})
    bad = [i for i in indices if not 0 <= i < size]
    if bad or not indices:
        raise ScanError(f"--points {spec!r}: the scan has {size} points (0..{size - 1}); "
                        + (f"out of range: {bad}" if bad else "no points selected"))
    return indices


def _default_config(experiment: str) -> str | None:
    """The experiment module's ``DEFAULT_CONFIG`` (importing it does not import Keras)."""
    if experiment.endswith(".py"):
        return None
    try:
        spec = importlib.util.find_spec(experiment)
    except (ImportError, ValueError) as exc:
        raise ScanError(f"--experiment {experiment!r}: cannot be imported ({exc})") from None
    if spec is None:
        raise ScanError(f"--experiment {experiment!r}: no such module (expected e.g. "
                        "calodnn.ClassificationExperiment)")
    module = importlib.import_module(experiment)
    default = getattr(module, "DEFAULT_CONFIG", None)
    return os.fspath(default) if default else None


def make_manifest(experiment: str, config: str | os.PathLike | None = None, flags: Sequence[str] = (),
                  points: str | Iterable[int] | None = None, name: str | None = None,
                  metric: str | None = None) -> dict:
    """What identifies a scan: experiment, config file and its sha256, Params, the points, the flags."""
    if experiment.endswith(".py") and not os.path.isfile(experiment):
        raise ScanError(f"--experiment {experiment!r}: no such file")
    config = os.fspath(config) if config else _default_config(experiment)
    if not config:
        raise ScanError(f"--experiment {experiment}: it has no DEFAULT_CONFIG; give the scan's --config")
    flags = [str(f) for f in flags]
    for flag in flags:
        key = flag.split("=", 1)[0]
        if key in _RESERVED:
            raise ScanError(f"flag {flag!r} after '--': {_RESERVED[key]}")
    try:
        _, params = load_config(config)
    except ConfigError as exc:
        raise ScanError(str(exc)) from None
    size = len(Permutator(params)) if params else 1
    config_path = Path(config).resolve()
    default_name = f"{experiment.rsplit('.', 1)[-1].removesuffix('.py')}-{config_path.stem}"
    return {"name": name or default_name, "experiment": experiment, "config": str(config_path),
            "config_sha256": file_sha256(config_path), "params": params or {}, "size": size,
            "points": parse_points(points, size), "flags": flags, "metric": metric}


def open_scan(experiment: str, config=None, flags: Sequence[str] = (), points=None, name: str | None = None,
              output_base: str | os.PathLike | None = None, metric: str | None = None,
              lease_timeout: float | None = None, max_retries: int | None = None) -> Ledger:
    """The ledger of this scan, created on first use; refused if the name holds a different scan. A later
    call with other ``points`` adds them to the scan; ``lease_timeout`` and ``max_retries`` (None: the
    scan's, or the defaults of :class:`~dlkit.scan.options.ScanOptions` for a new scan) must agree with it.

    ``output_base`` defaults to ``TrainedModels``, or ``TrainedModels.Test`` with ``--Test`` among the flags
    (where the experiments put their ``--Test`` runs)."""
    manifest = make_manifest(experiment, config, flags, points, name, metric)
    if output_base is None:
        output_base = "TrainedModels.Test" if "--Test" in manifest["flags"] else "TrainedModels"
    ledger = Ledger.at(output_base, manifest.pop("name"))
    ledger.create_or_check(manifest, lease_timeout=lease_timeout, max_retries=max_retries)
    return ledger


def work(ledger: str | os.PathLike | Ledger, points=None, slots: int | None = 1, gpus: Sequence[str] | None = None,
         threads_per_point: int | None = None, max_retries: int | None = None, lease_timeout: float | None = None,
         wait_for_others: bool = False, engine: str = "local", batch: bool | None = None,
         parent_pid: int | None = None, since: float | None = None) -> int:
    """Join an existing scan as one worker (a Slurm/PBS array task, a Dask task): run ``points`` (default all)
    until each is final or held by a live worker; returns 0, or 75 if a signal stopped it. ``batch`` (default:
    for the slurm and pbs engines) is :class:`~dlkit.scan.worker.Worker`'s: inside a job that its scheduler
    signals as a whole. ``max_retries`` and ``lease_timeout`` are the scan's (a different value is refused)."""
    from dlkit.scan.worker import Worker, _env_job_id, default_slots, point_command

    ledger = ledger if isinstance(ledger, Ledger) else Ledger(ledger)
    manifest = ledger.manifest()
    options = ledger.options(lease_timeout=lease_timeout, max_retries=max_retries)
    selected = parse_points(points, manifest["size"]) if points is not None else ledger.points()
    worker = Worker(ledger, point_command(ledger, manifest), default_slots(slots, gpus, threads_per_point),
                    points=selected, wait_for_others=wait_for_others, options=options, job_id=_env_job_id(),
                    metric=manifest.get("metric"), engine=engine,
                    batch=engine in ("slurm", "pbs") if batch is None else batch, parent_pid=parent_pid,
                    since=since, ready=(lambda i: ledger.trial_path(i).is_file()) if manifest.get("search") else None)
    return worker.run()


def run(experiment: str, config=None, flags: Sequence[str] = (), points=None, name: str | None = None,
        output_base: str | os.PathLike | None = None, engine: str = "local", metric: str | None = None,
        lease_timeout: float | None = None, max_retries: int | None = None, progress: bool | None = None,
        **options) -> "Any":
    """Run (or resume, or grow) a scan; returns its :func:`status` DataFrame.

    ``experiment`` is a dlkit experiment module (``"calodnn.ClassificationExperiment"``) or a ``.py`` file;
    ``config`` its config file (default: the module's ``DEFAULT_CONFIG``); ``flags`` are passed to every point;
    ``points`` a subset (``"0-3,7"``): a later call with other points adds them to the same scan. The scan's
    policy, set when it is created: ``lease_timeout`` (120 s), ``max_retries`` (2). Engine options: ``slots``,
    ``gpus``, ``threads_per_point``, a cluster engine's scheduler options, ``progress``. Running the same call
    again - after a crash, ``kill -9``, Ctrl-C or ``cancel`` - finishes the points still missing; done points
    never run again.
    """
    runner = make_engine(engine)
    ledger = open_scan(experiment, config, flags, points, name, output_base, metric, lease_timeout, max_retries)
    selected = parse_points(points, ledger.manifest()["size"]) if points is not None else ledger.points()
    before = len(_submissions(ledger))
    plan = Plan(ledger, selected, objective=ledger.manifest().get("metric"))
    code = runner.run(ledger, plan, ledger.options(), progress=progress, **options)
    frame = status(ledger.path)
    frame.attrs["exit_code"] = code
    frame.attrs["ledger"] = str(ledger.path)
    frame.attrs["submitted"] = _submissions(ledger)[before:]  # a cluster engine's new jobs: job, script, points
    return frame


def _submissions(ledger: Ledger) -> list[dict]:
    return list((read_json(ledger.path / "engine.json", {}) or {}).get("submissions") or [])


def format_params(params: Mapping) -> str:
    """``lr=0.003162 Width=64``: floats to 4 significant digits, as ``best`` shows them."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def status_rows(ledger: Ledger) -> list[dict]:
    """One dict per point of the scan (see :data:`STATUS_COLUMNS`), read from the ledger alone."""
    manifest = ledger.manifest()
    final = ledger.final_states()
    search = manifest.get("search")
    params_of = ledger.params_lookup(manifest)
    now = time.time()
    rows = []
    for index in ledger.points():
        params = params_of(index)
        row = {"point": index, "params": format_params(params) if params else "", "state": "pending",
               "attempts": 0, "epochs": None, "metric": None, "run_dir": None, "host": None, "last_error": None}
        if search:
            row["trial"] = index % search["trials"]
        marker = final.get(index)
        if marker is not None:
            row.update({k: marker.get(k) for k in ("state", "attempts", "epochs", "metric", "run_dir", "host")})
            if marker.get("state") != "done":
                row["last_error"] = marker.get("last_error") or marker.get("reason")
            rows.append(row)
            continue
        attempts = ledger.attempts(index)
        row["attempts"] = len(attempts)
        ended = [a for a in attempts if "end_ts" in a]
        if ended:
            last = ended[-1]
            row.update(epochs=last.get("epochs"), run_dir=last.get("run_dir"), host=last.get("host"),
                       last_error=last.get("last_error"))
        owner = ledger.owner(index)
        if owner is not None and not ledger.fenced(index, owner.get("token", "")):
            progress = ledger.progress(index)
            beat = ledger.read_heartbeat(index) or {}
            age = now - beat.get("time", now)
            row.update(state="running", host=owner.get("host"), epochs=progress.get("epochs", row["epochs"]),
                       run_dir=progress.get("run_dir", row["run_dir"]), heartbeat_age=age)
            if age > 60:  # the holder's clock against ours: a hint, the ledger itself never compares clocks
                row["last_error"] = (f"no heartbeat for {age:.0f} s: its worker may be gone (another worker takes "
                                     f"the point over after the lease timeout)")
        rows.append(row)
    _add_queue(ledger, rows)
    return rows


def _add_queue(ledger: Ledger, rows: list[dict]) -> None:
    """A ``queue`` entry for the unfinished points: what the scan's scheduler (engine.json) says of them."""
    engine = (read_json(ledger.path / "engine.json", {}) or {}).get("engine")
    if engine in (None, "local") or engine not in ENGINES:
        return
    try:
        queue = ENGINES[engine]().queue(ledger)
    except Exception as exc:  # status shows the ledger whatever the scheduler does
        log.warning("scan %s: cannot ask the %s queue: %s", ledger.name, engine, exc)
        return
    if not queue:
        return
    for row in rows:
        if row["state"] not in FINAL_STATES:
            row["queue"] = queue.get(row["point"])


def status(path: str | os.PathLike, name: str | None = None):
    """The scan's points as a DataFrame (one row per point; with several scans under ``path``, a ``scan``
    column tells them apart)."""
    import pandas as pd

    frames = []
    for ledger in Ledger.find(path, name):
        frame = pd.DataFrame(status_rows(ledger))
        frame.insert(0, "scan", ledger.name)
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    return frame[["scan", *STATUS_COLUMNS, *[c for c in frame.columns if c not in ("scan", *STATUS_COLUMNS)]]]


def retry(path: str | os.PathLike, name: str | None = None, states: Iterable[str] = ("failed", "stuck")
          ) -> dict[str, list[int]]:
    """Requeue the failed and stuck points (``run`` the scan again to run them); returns them per scan."""
    return {ledger.name: ledger.retry(states) for ledger in Ledger.find(path, name)}


def cancel(path: str | os.PathLike, name: str | None = None) -> list[str]:
    """Stop a scan cleanly: every worker's running points save and exit 75, and the workers exit."""
    names = []
    for ledger in Ledger.find(path, name):
        ledger.cancel()
        engine = (read_json(ledger.path / "engine.json", {}) or {}).get("engine", "local")
        if engine in ENGINES:
            ENGINES[engine]().cancel(ledger)
        names.append(ledger.name)
    return names

