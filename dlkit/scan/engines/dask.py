"""The Dask engine: each scan point is one task on a ``dask.distributed`` cluster, run through the ledger.

    dlkit-scan run --engine dask --slots 4 --experiment calodnn.ClassificationExperiment -- --Test
    dlkit-scan run --engine dask --dask-cluster slurm.yaml --experiment ...

A task never trains in the Dask worker's own interpreter: it starts ``python -m dlkit.scan work <ledger>
--points <i> --parent-pid <the Dask worker>`` and waits for it, so a point gets a clean process (its own
CUDA context, signals, memory) and the ledger decides everything, exactly as for the other engines. Dask's
own retries are off (``allowed-failures: 0``): when a Dask worker is lost, the task fails at once, its
``work`` process notices its parent is gone and stops the point (which saves and exits 75, recorded as
interrupted), and the driver resubmits every point that is not final, which resumes with ``-p``. A point can
never run twice: a second task for it finds the lease held, or the point done.

The driver keeps at most a few tasks per worker in flight and releases each future as it finishes, so its
memory stays flat however many points the scan has.

The cluster is a ``LocalCluster`` with ``slots`` single-threaded worker processes by default, or comes from a
small spec (a YAML file or a dict)::

    cluster: SLURMCluster        # LocalCluster, SLURMCluster, PBSCluster, or any dask_jobqueue class
    jobs: 4                      # SLURMCluster.scale(jobs=4); LocalCluster: n_workers
    options:                     # the cluster class's own keyword arguments
      cores: 1
      memory: 4GB
      walltime: "02:00:00"
      queue: gpu

or a ``distributed`` cluster object passed to :func:`dlkit.scan.run` as ``dask_cluster``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dlkit.protocol import EXIT_INTERRUPTED, EXIT_OK
from dlkit.scan.engines.base import Engine, Plan, refuse_options
from dlkit.scan.ledger import Ledger, ScanError
from dlkit.scan.options import ScanOptions
from dlkit.scan.progress import ProgressBar

log = logging.getLogger(__name__)

__all__ = ["DaskEngine", "make_cluster", "run_point", "collect"]


def run_point(ledger_path: str, index: int, max_retries: int, lease_timeout: float, since: float,
              env: Mapping | None = None) -> dict:
    """The Dask task: run point ``index`` through the ledger in a ``dlkit.scan work`` subprocess (which obeys a
    ``cancel`` asked after ``since``, the driver's start)."""
    argv = [sys.executable, "-m", "dlkit.scan", "work", ledger_path, "--points", str(index), "--engine", "dask",
            "--slots", "1", "--max-retries", str(max_retries), "--lease-timeout", str(lease_timeout),
            "--parent-pid", str(os.getpid()), "--since", repr(since)]
    t0 = time.monotonic()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env={**os.environ, **(env or {})}, text=True)
    return {"point": index, "exit_code": proc.returncode, "seconds": time.monotonic() - t0,
            "stderr": proc.stderr[-2000:] if proc.returncode not in (EXIT_OK, EXIT_INTERRUPTED) else ""}


def collect(ledger: Ledger, future) -> None:
    """Log how a finished :func:`run_point` task ended and release it (flat memory: nothing of it is kept).
    Its point's outcome is the ledger's business: a failed task's point goes back through the ledger."""
    try:
        result = future.result()
    except Exception as exc:  # noqa: BLE001 - a lost worker (KilledWorker) or a task error
        log.warning("scan %s: a Dask task failed (%s: %s); its point goes back through the ledger",
                    ledger.name, type(exc).__name__, exc)
    else:
        if result["stderr"]:
            log.warning("scan %s: point %d: dlkit.scan work exited %d: %s", ledger.name,
                        result["point"], result["exit_code"], result["stderr"].strip().splitlines()[-1])
    future.release()


def _load_spec(spec: str | os.PathLike | Mapping) -> dict:
    if isinstance(spec, Mapping):
        return dict(spec)
    import yaml

    path = Path(spec)
    if not path.is_file():
        raise ScanError(f"--dask-cluster {spec}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ScanError(f"--dask-cluster {spec}: not valid YAML ({exc})") from None
    if not isinstance(data, Mapping):
        raise ScanError(f"--dask-cluster {spec}: expected a mapping with 'cluster', 'jobs' and 'options'")
    return dict(data)


def make_cluster(spec: str | os.PathLike | Mapping | None, slots: int | None = None):
    """A cluster from a spec (see the module docstring); a LocalCluster of ``slots`` workers without one."""
    from distributed import LocalCluster

    spec = _load_spec(spec) if spec is not None else {"cluster": "LocalCluster"}
    unknown = sorted(set(spec) - {"cluster", "jobs", "options"})
    if unknown:
        raise ScanError(f"dask cluster spec: unknown entries {unknown} (expected cluster, jobs, options)")
    name = spec.get("cluster", "LocalCluster")
    options = dict(spec.get("options") or {})
    jobs = spec.get("jobs", slots or 1)
    if not isinstance(jobs, int) or jobs < 1:
        raise ScanError(f"dask cluster spec: 'jobs' must be a positive integer, got {jobs!r}")
    if name == "LocalCluster":
        options.setdefault("n_workers", jobs)
        options.setdefault("threads_per_worker", 1)
        options.setdefault("processes", True)
        options.setdefault("dashboard_address", ":0")  # no fixed port: scans side by side do not collide
        return LocalCluster(**options)
    try:
        import dask_jobqueue
    except ImportError:
        raise ScanError(f"dask cluster spec: {name} needs dask-jobqueue (pip install 'dlkit[dask]')") from None
    cls = getattr(dask_jobqueue, name, None)
    if cls is None:
        raise ScanError(f"dask cluster spec: 'cluster: {name}' is not LocalCluster or a dask_jobqueue class "
                        f"({', '.join(n for n in dir(dask_jobqueue) if n.endswith('Cluster'))})")
    options.setdefault("python", sys.executable)
    cluster = cls(**options)
    cluster.scale(jobs=jobs)
    return cluster


class DaskEngine(Engine):
    """Points as tasks on a Dask cluster (``dask_cluster``: a spec file, a dict or a cluster object)."""

    name = "dask"

    def run(self, ledger: Ledger, plan: Plan, options: ScanOptions, progress: bool | None = None,
            slots: int | None = None, dask_cluster: Any = None, in_flight: int | None = None, poll: float = 0.5,
            **others) -> int:
        """One task per runnable point of the plan, at most ``in_flight`` at once (default: twice the workers,
        at least 4); a point whose task ended before it was final gets a new task (at once, or after
        :attr:`~dlkit.scan.options.ScanOptions.resubmit_delay` if it is still held: a lost Dask worker's point
        is stopped by its ``work`` process, or taken over after the lease timeout)."""
        with self.client(ledger, slots, dask_cluster, **others) as client, \
                ProgressBar(ledger, plan.points, progress) as bar:
            workers = max(1, len(client.scheduler_info().get("workers", {})))
            return _drive(ledger, plan, options, client, bar, in_flight or max(2 * workers, 4), poll)

    @contextlib.contextmanager
    def client(self, ledger: Ledger, slots: int | None = None, dask_cluster: Any = None, **others):
        """A ``distributed.Client`` on the scan's cluster (made from ``dask_cluster`` and closed at the end, or
        the cluster object given), with Dask's own retries off; records the engine in the ledger."""
        refuse_options(self.name, others, ("gpus", "threads_per_point"))
        try:
            import dask
            from distributed import Client
        except ImportError:
            raise ScanError("--engine dask needs dask.distributed (pip install 'dlkit[dask]')") from None

        if not log.isEnabledFor(logging.INFO):  # distributed logs every connection at INFO; keep `run` quiet
            logging.getLogger("distributed").setLevel(logging.WARNING)
        ledger.write(ledger.path / "engine.json", {"engine": self.name})
        # Retries go through the ledger only: a task whose worker died must not be rerun by Dask behind its back.
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            own = dask_cluster is None or isinstance(dask_cluster, (str, os.PathLike, Mapping))
            cluster = make_cluster(dask_cluster, slots) if own else dask_cluster
            try:
                with Client(cluster) as client:
                    yield client
            finally:
                if own:
                    cluster.close()

    def cancel(self, ledger: Ledger) -> None:
        """Nothing beyond the ledger's marker: the tasks' ``work`` processes see it and stop their points."""


def _drive(ledger: Ledger, plan: Plan, options: ScanOptions, client, bar, limit: int, poll: float) -> int:
    """The Dask engine's loop: turn the plan, collect ended tasks, submit runnable points in free places."""
    from distributed import wait

    started = time.time()
    path = str(ledger.path)
    tasks: dict[int, Any] = {}         # point -> its task's future
    not_before: dict[int, float] = {}  # point -> when its next task may start (a lost worker's lease)
    while True:
        for index, future in [(i, f) for i, f in tasks.items() if f.done()]:
            collect(ledger, future)
            del tasks[index]
            if index in ledger.leased_indices():
                not_before[index] = time.monotonic() + options.resubmit_delay
        final = ledger.final_indices()
        plan.step(final)
        bar.update()
        if ledger.cancelled_since(started):  # the tasks' workers see it too: their points save and stop
            wait(list(tasks.values()))
            for future in tasks.values():
                collect(ledger, future)
            return EXIT_INTERRUPTED
        if plan.finished(final):
            return EXIT_OK
        for index in plan.runnable(final):
            if len(tasks) >= limit:
                break
            if index not in tasks and time.monotonic() >= not_before.get(index, 0.0):
                tasks[index] = client.submit(run_point, path, index, options.max_retries, options.lease_timeout,
                                             started, pure=False)
        if tasks:
            try:  # back at once when a task ends
                wait(list(tasks.values()), timeout=poll, return_when="FIRST_COMPLETED")
            except TimeoutError:
                pass
        else:
            time.sleep(poll)
