"""The Slurm engine: a scan as one job array, one task per point, through the scan's ledger.

::

    dlkit-scan run --engine slurm --experiment calodnn.ClassificationExperiment --slots 8 \\
        --partition gpu --gres gpu:1 --time 4:00:00 --cpus-per-task 4 [--wait] -- --set Epochs=50

A point may train on several GPUs and nodes (``DataParallel``, :mod:`dlkit.distribute`): ``ntasks_per_point``
(``#SBATCH --ntasks``, one process per task; ``DLKIT_POINT_TASKS`` tells the point, which runs itself under
``srun``) and ``gpus_per_point`` (``#SBATCH --gpus-per-task``: that many GPUs over the point's tasks)::

    dlkit.scan.api.run("calodnn.ClassificationExperiment", engine="slurm", ntasks_per_point=2, gpus_per_point=8,
                       flags=["--set", "DataParallel=true"])

writes ``<ledger>/scripts/slurm-<n>.sh`` - ``#SBATCH --array=<points not yet final>%<slots>``,
``--signal=B:USR1@<signal seconds>``, ``--requeue``, ``--open-mode=append``, output in ``<ledger>/logs/`` - and
submits it with ``sbatch --parsable``; the job ids go to ``<ledger>/engine.json``. Each task runs its point
under a lease (:mod:`dlkit.scan.engines.array`). How the scan lives through Slurm:

- *Time limit*: Slurm sends SIGUSR1 to the job script ``--signal-seconds`` (300) before the limit; the script
  forwards it, the point saves and exits 75, and the task requeues itself (``scontrol requeue``). Slurm starts
  it again after its requeue delay (``AuthInfo=cred_expire``, 120 s by default) and the point resumes with
  ``-p``: epochs continue and ``TotalEpochs`` counts over the run chain.
- *Preemption, ``scontrol requeue``*: Slurm sends SIGTERM to every process of the job; the point saves and exits
  75 and Slurm requeues the task itself.
- *``scancel``*: the point saves; the task is not requeued. ``dlkit-scan run`` (the same command) submits the
  points that are neither final nor queued; ``--wait`` does so by itself when no job of the scan is left.
- ``dlkit-scan cancel`` stops the points and ``scancel``\\ s the scan's jobs.

``dlkit-scan status`` adds a ``queue`` column (what ``squeue`` says of each unfinished point) where squeue
exists; without Slurm it shows the ledger alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from dlkit.distribute import ENV_TASKS  # (light: no Keras)
from dlkit.scan.engines.array import ArrayEngine, _run, compress_ranges, script_body
from dlkit.scan.ledger import Ledger, ScanError
from dlkit.scan.options import ScanOptions

log = logging.getLogger(__name__)

__all__ = ["SlurmEngine"]

#: squeue states after which a task no longer runs (anything else - pending, running, requeued, held - counts).
_ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
          "OUT_OF_MEMORY", "REVOKED"}


class SlurmEngine(ArrayEngine):
    """Slurm job arrays (``sbatch``, ``squeue``, ``scontrol requeue``, ``scancel``)."""

    name = "slurm"
    cancel_command = "scancel"
    submit_command = "sbatch"
    script_prefix = "slurm"
    OPTIONS = frozenset({"partition", "time", "gres", "mem", "cpus_per_task", "account", "sbatch_extra",
                         "signal_seconds", "job_name", "ntasks_per_point", "gpus_per_point"})
    DEFAULT_SIGNAL_SECONDS = 300

    def write_script(self, ledger: Ledger, points: Sequence[int], slots: int | None = None, *, python: str,
                     pythonpath: str | None, workdir: str, max_retries: int = ScanOptions.max_retries,
                     lease_timeout: float = ScanOptions.lease_timeout,
                     partition: str | None = None, time: str | None = None, gres: str | None = None,
                     mem: str | None = None, cpus_per_task: int | None = None, account: str | None = None,
                     sbatch_extra: Sequence[str] | str | None = None, signal_seconds: int | None = None,
                     job_name: str | None = None, ntasks_per_point: int | None = None,
                     gpus_per_point: int | None = None) -> str:
        """The array script for ``points``: deterministic (no time stamps); paths are the arguments'."""
        if not points:
            raise ScanError("no points to submit")
        per_point, exports = self._point_resources(ntasks_per_point, gpus_per_point, gres)
        if slots is not None and slots < 1:
            raise ScanError(f"--slots must be >= 1, got {slots}")
        ledger_path = str(ledger.path.resolve())
        signal_seconds = self.DEFAULT_SIGNAL_SECONDS if signal_seconds is None else int(signal_seconds)
        array = compress_ranges(points) + (f"%{slots}" if slots else "")
        lines = [
            "#!/bin/bash",
            f"# dlkit.scan: Slurm job array of scan {ledger.name}, points {compress_ranges(points)}.",
            "# Written by `dlkit-scan run --engine slurm`; the scan's ledger decides what each task runs,",
            "# so running a task again (requeue, resubmission) is safe: done points do not run twice.",
            f"#SBATCH --job-name={job_name or 'dlkit-' + ledger.name}",
            f"#SBATCH --array={array}",
            f"#SBATCH --output={ledger_path}/logs/slurm-%A_%a.out",
            "#SBATCH --open-mode=append",
            "#SBATCH --requeue",
            f"#SBATCH --signal=B:USR1@{signal_seconds}",
        ]
        for flag, value in (("partition", partition), ("time", time), ("gres", gres), ("mem", mem),
                            ("cpus-per-task", cpus_per_task), ("account", account)):
            if value not in (None, ""):
                lines.append(f"#SBATCH --{flag}={value}")
        lines += [f"#SBATCH {directive}" for directive in per_point]
        for extra in self.directive_extra(sbatch_extra):
            lines.append(f"#SBATCH {extra if extra.startswith('-') else '--' + extra}")
        body = script_body(ledger_path, self.name, "SLURM_ARRAY_TASK_ID", python, pythonpath, workdir,
                           max_retries, lease_timeout, threads='"${SLURM_CPUS_PER_TASK:-1}"',
                           requeue='scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"', exports=exports)
        return "\n".join(lines) + "\n\n" + body

    @staticmethod
    def _point_resources(ntasks: int | None, gpus: int | None, gres: str | None) -> tuple[list[str], dict]:
        """The directives and the point's environment for ``ntasks_per_point`` and ``gpus_per_point``."""
        for option, value in (("ntasks-per-point", ntasks), ("gpus-per-point", gpus)):
            if value is not None and (isinstance(value, bool) or int(value) != value or int(value) < 1):
                raise ScanError(f"--{option} must be an integer >= 1, got {value!r}")
        directives, exports = [], {}
        tasks = int(ntasks or 1)
        if ntasks is not None:
            directives.append(f"--ntasks={tasks}")
            exports[ENV_TASKS] = str(tasks)
        if gpus is not None:
            if gres:
                raise ScanError("--gpus-per-point and --gres both ask for GPUs: use one of them")
            if int(gpus) % tasks:
                raise ScanError(f"--gpus-per-point {gpus} does not split over --ntasks-per-point {tasks}: give each "
                                "task the same number of GPUs")
            directives.append(f"--gpus-per-task={int(gpus) // tasks}")
        return directives, exports

    def submit_argv(self, script: Path, **options) -> list[str]:
        return ["sbatch", "--parsable", str(script)]

    def parse_job_id(self, stdout: str) -> str:
        job = stdout.strip().splitlines()[-1].split(";")[0].strip() if stdout.strip() else ""
        if not job.isdigit():
            raise ScanError(f"sbatch --parsable printed {stdout.strip()!r}, not a job id")
        return job

    def queue_known(self) -> bool:
        return shutil.which("squeue") is not None

    def queue(self, ledger: Ledger) -> dict[int, str]:
        jobs = set(self.job_ids(ledger))
        if not jobs or not self.queue_known():
            return {}
        try:
            result = _run(["squeue", "-h", "-r", "-u", str(os.getuid()), "-o", "%F|%K|%i|%T|%r"], timeout=20)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("squeue: %s", exc)
            return {}
        if result.returncode != 0:
            log.warning("squeue failed: %s", result.stderr.strip())
            return {}
        out: dict[int, str] = {}
        for line in result.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 5:
                continue
            array_job, task, job, state, reason = parts
            if array_job not in jobs or not task.isdigit() or state in _ENDED:
                continue
            text = f"{state.lower()} {job}"
            if state == "PENDING" and reason and reason != "None":
                text += f" ({reason})"
            out[int(task)] = text
        return out
