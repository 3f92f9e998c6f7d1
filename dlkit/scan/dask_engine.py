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

from dlkit.scan.api import Engine, _ProgressBar
from dlkit.scan.ledger import EXIT_INTERRUPTED, EXIT_OK, Ledger, ScanError, write_json

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

    def run(self, ledger: Ledger, slots: int | None = None, dask_cluster: Any = None, max_retries: int = 2,
            lease_timeout: float = 120.0, progress: bool | None = None, in_flight: int | None = None,
            **options) -> int:
        manifest = ledger.manifest()
        with self.client(ledger, slots, dask_cluster, **options) as client, \
                _ProgressBar(ledger, manifest, progress) as bar:
            return self._drive(ledger, manifest, client, bar, max_retries, lease_timeout, in_flight)

    @contextlib.contextmanager
    def client(self, ledger: Ledger, slots: int | None = None, dask_cluster: Any = None, **options):
        """A ``distributed.Client`` on the scan's cluster (made from ``dask_cluster`` and closed at the end, or
        the cluster object given), with Dask's own retries off; records the engine in the ledger."""
        unused = sorted(k for k, v in options.items() if v not in (None, False, ()) and k not in ("gpus",
                                                                                                 "threads_per_point"))
        if unused:
            raise ScanError(f"--engine dask does not take {', '.join('--' + k.replace('_', '-') for k in unused)}")
        try:
            import dask
            from distributed import Client
        except ImportError:
            raise ScanError("--engine dask needs dask.distributed (pip install 'dlkit[dask]')") from None

        if not log.isEnabledFor(logging.INFO):  # distributed logs every connection at INFO; keep `run` quiet
            logging.getLogger("distributed").setLevel(logging.WARNING)
        write_json(ledger.path / "engine.json", {"engine": self.name})
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

    def _drive(self, ledger, manifest, client, bar, max_retries, lease_timeout, in_flight) -> int:
        from distributed import as_completed

        started = time.time()
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        limit = in_flight or max(2 * workers, 4)
        path = str(ledger.path)
        rounds = 0
        while True:
            if ledger.cancelled_since(started):
                return EXIT_INTERRUPTED
            final = ledger.final_indices()
            todo = [i for i in manifest["points"] if i not in final]
            if not todo:
                return EXIT_OK
            rounds += 1
            if rounds > 1:
                log.info("scan %s: round %d for %d point(s) not final yet", ledger.name, rounds, len(todo))
                if rounds > 2:
                    time.sleep(min(lease_timeout, 5.0))  # points held by a lost worker wait for their lease
            pending = iter(todo)
            futures = as_completed()
            for index in pending:
                futures.add(client.submit(run_point, path, index, max_retries, lease_timeout, started, pure=False))
                if futures.count() >= limit:
                    break
            for future in futures:
                collect(ledger, future)
                del future
                bar.update()
                if ledger.cancelled_since(started):
                    continue
                index = next(pending, None)
                if index is not None:
                    futures.add(client.submit(run_point, path, index, max_retries, lease_timeout, started, pure=False))

    def cancel(self, ledger: Ledger) -> None:
        """Nothing beyond the ledger's marker: the tasks' ``work`` processes see it and stop their points."""
