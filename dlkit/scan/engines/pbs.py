"""The PBS engine: a scan as one PBS Pro (OpenPBS) or Torque job array, through the scan's ledger.

::

    dlkit-scan run --engine pbs [--pbs-flavor pro|torque] --experiment calodnn.ClassificationExperiment \\
        --slots 8 --partition gpuq --gres gpu:1 --time 4:00:00 --cpus-per-task 4 --mem 16G [--wait]

writes ``<ledger>/scripts/pbs-<n>.sh`` and submits it with ``qsub``; the job ids go to ``<ledger>/engine.json``.

- PBS Pro: ``#PBS -J <first>-<last>`` (one range: indices between the points that are not in this submission
  exit at once), ``PBS_ARRAY_INDEX``, ``--slots`` as ``-W max_run_subjobs=K`` (PBS Pro 2020.1 and later),
  resources as ``-l select=1:ncpus=C:mem=M:ngpus=G``.
- Torque: ``#PBS -t <points>%K``, ``PBS_ARRAYID``, ``-l nodes=1:ppn=C:gpus=G`` and ``-l mem=M``.

Options keep Slurm's spelling: ``--partition`` is the queue (``-q``), ``--time`` the walltime (Slurm's time
formats), ``--mem`` in Slurm units (``16G``, ``4000M``, ``4000`` = MB), ``--gres gpu:N``, ``--account``
(``-A``), and each ``--sbatch-extra`` one more ``#PBS`` line (``-l place=scatter``). PBS has no signal before
the walltime (there is no ``--signal-seconds``): at the walltime, on ``qdel`` or preemption it sends SIGTERM,
the point saves and exits 75, and the job ends; plain users cannot requeue their own jobs (``qrerun`` needs
operator rights), so the interrupted points are run by the next ``dlkit-scan run`` - or by ``--wait``, which
resubmits the pending points when no job of the scan is left (seen with ``qstat``).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from dlkit.scan.engines.array import ArrayEngine, _run, compress_ranges, hms, script_body, slurm_time_seconds
from dlkit.scan.ledger import Ledger, ScanError
from dlkit.scan.options import ScanOptions

log = logging.getLogger(__name__)

__all__ = ["PBSEngine", "pbs_memory", "detect_flavor"]

FLAVORS = ("pro", "torque")
_ENDED = {"X", "F", "C"}  # finished subjob (Pro), finished (Pro -x), completed (Torque)
_SUBJOB = re.compile(r"^(\d+)\[(\d+)\]")


def pbs_memory(text: str) -> str:
    """A Slurm ``--mem`` (``16G``, ``4000M``, ``4000`` = MB, ``16GB``) as PBS writes it (``16gb``)."""
    match = re.fullmatch(r"(\d+)\s*([kmgt]?)b?", str(text).strip(), re.IGNORECASE)
    if not match:
        raise ScanError(f"--mem {text!r}: not a memory size (e.g. 16G, 4000M, 4000)")
    return f"{match.group(1)}{(match.group(2) or 'm').lower()}b"


def _gpus(gres: str | None) -> int | None:
    if not gres:
        return None
    match = re.fullmatch(r"gpu(?::[\w.-]+)?(?::(\d+))?", str(gres).strip())
    if not match:
        raise ScanError(f"--gres {gres!r}: PBS takes GPUs only (gpu, gpu:N or gpu:TYPE:N)")
    return int(match.group(1) or 1)


def _resource_directives(flavor: str, partition: str | None, account: str | None, time: str | None,
                         gres: str | None, mem: str | None, cpus_per_task: int | None) -> list[str]:
    """The queue, account, walltime and resource lines of a PBS Pro or Torque script."""
    lines = []
    if partition:
        lines.append(f"#PBS -q {partition}")
    if account:
        lines.append(f"#PBS -A {account}")
    if time:
        lines.append(f"#PBS -l walltime={hms(slurm_time_seconds(time))}")
    gpus = _gpus(gres)
    if flavor == "pro":
        select = f"select=1:ncpus={int(cpus_per_task or 1)}"
        if mem:
            select += f":mem={pbs_memory(mem)}"
        if gpus:
            select += f":ngpus={gpus}"
        lines.append(f"#PBS -l {select}")
    else:
        lines.append(f"#PBS -l nodes=1:ppn={int(cpus_per_task or 1)}" + (f":gpus={gpus}" if gpus else ""))
        if mem:
            lines.append(f"#PBS -l mem={pbs_memory(mem)}")
    return lines


def detect_flavor() -> str:
    """``pro`` or ``torque`` from ``qstat --version`` (PBS Pro/OpenPBS print ``pbs_version``); ``pro`` if unsure."""
    if shutil.which("qstat") is None:
        return "pro"
    try:
        result = _run(["qstat", "--version"], timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "pro"
    text = (result.stdout + result.stderr).lower()
    return "pro" if "pbs_version" in text or "openpbs" in text else ("torque" if "version" in text else "pro")


class PBSEngine(ArrayEngine):
    """PBS Pro / OpenPBS and Torque job arrays (``qsub``, ``qstat -t``, ``qdel``)."""

    name = "pbs"
    cancel_command = "qdel"
    submit_command = "qsub"
    script_prefix = "pbs"
    OPTIONS = frozenset({"partition", "time", "gres", "mem", "cpus_per_task", "account", "sbatch_extra",
                         "pbs_flavor", "job_name"})

    def __init__(self, flavor: str | None = None):
        if flavor is not None and flavor not in FLAVORS:
            raise ScanError(f"--pbs-flavor {flavor!r}: choose pro or torque")
        self.flavor = flavor

    def _flavor(self, pbs_flavor: str | None) -> str:
        flavor = pbs_flavor or self.flavor or detect_flavor()
        if flavor not in FLAVORS:
            raise ScanError(f"--pbs-flavor {flavor!r}: choose pro or torque")
        return flavor

    def run(self, ledger: Ledger, plan, options, progress=None, **sched) -> int:
        if sched.get("signal_seconds") is not None:
            raise ScanError("--engine pbs: PBS sends no signal before the walltime; --signal-seconds is Slurm's")
        sched.pop("signal_seconds", None)
        sched["pbs_flavor"] = self._flavor(sched.get("pbs_flavor"))
        return super().run(ledger, plan, options, progress, **sched)

    def write_script(self, ledger: Ledger, points: Sequence[int], slots: int | None = None, *, python: str,
                     pythonpath: str | None, workdir: str, max_retries: int = ScanOptions.max_retries,
                     lease_timeout: float = ScanOptions.lease_timeout,
                     partition: str | None = None, time: str | None = None, gres: str | None = None,
                     mem: str | None = None, cpus_per_task: int | None = None, account: str | None = None,
                     sbatch_extra: Sequence[str] | str | None = None, pbs_flavor: str | None = None,
                     job_name: str | None = None) -> str:
        """The array script for ``points``: deterministic (no time stamps); paths are the arguments'."""
        flavor = self._flavor(pbs_flavor)
        points = sorted({int(i) for i in points})
        if not points:
            raise ScanError("no points to submit")
        if slots is not None and slots < 1:
            raise ScanError(f"--slots must be >= 1, got {slots}")
        ledger_path = str(ledger.path.resolve())
        name = job_name or f"dlkit-{ledger.name}"
        if flavor == "torque":
            name = name[:15]  # Torque's limit
        lines = [
            "#!/bin/bash",
            (f"# dlkit.scan: {'PBS Pro' if flavor == 'pro' else 'Torque'} job array of scan {ledger.name}, "
             f"points {compress_ranges(points)}."),
            "# Written by `dlkit-scan run --engine pbs`; the scan's ledger decides what each task runs,",
            "# so running a task again (rerun, resubmission) is safe: done points do not run twice.",
            f"#PBS -N {name}",
        ]
        single = points[0] if len(points) == 1 else None
        selected = None
        if flavor == "pro":
            index_var, threads = "PBS_ARRAY_INDEX", '"${NCPUS:-1}"'
            if single is None:
                lines.append(f"#PBS -J {points[0]}-{points[-1]}")
                if points != list(range(points[0], points[-1] + 1)):
                    selected = points
                if slots:
                    lines.append(f"#PBS -W max_run_subjobs={slots}")
        else:
            index_var, threads = "PBS_ARRAYID", '"${PBS_NUM_PPN:-1}"'
            single = None
            lines.append(f"#PBS -t {compress_ranges(points)}" + (f"%{slots}" if slots else ""))
        lines += ["#PBS -r y", "#PBS -j oe", f"#PBS -o {ledger_path}/logs/", "#PBS -V"]
        lines += _resource_directives(flavor, partition, account, time, gres, mem, cpus_per_task)
        for extra in self.directive_extra(sbatch_extra):
            lines.append(f"#PBS {extra}")
        body = script_body(ledger_path, self.name, index_var, python, pythonpath, workdir, max_retries,
                           lease_timeout, threads=threads, single_point=single, selected=selected)
        return "\n".join(lines) + "\n\n" + body

    def submit_argv(self, script: Path, **options) -> list[str]:
        return ["qsub", str(script)]

    def parse_job_id(self, stdout: str) -> str:
        job = stdout.strip().splitlines()[-1].strip() if stdout.strip() else ""
        if not re.match(r"^\d+", job):
            raise ScanError(f"qsub printed {stdout.strip()!r}, not a job id")
        return job

    def queue_known(self) -> bool:
        return shutil.which("qstat") is not None

    def queue(self, ledger: Ledger) -> dict[int, str]:
        jobs = self.job_ids(ledger)
        if not jobs or not self.queue_known():
            return {}
        numbers = {re.match(r"^\d+", j).group(0) for j in jobs}
        try:
            result = _run(["qstat", "-t", *jobs], timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("qstat: %s", exc)
            return {}
        out: dict[int, str] = {}
        for line in result.stdout.splitlines():  # also on a non-zero exit: finished jobs are 'unknown'
            parts = line.split()
            match = _SUBJOB.match(parts[0]) if parts else None
            if not match or match.group(1) not in numbers or len(parts) < 6:
                continue
            state = parts[-2]
            if state not in _ENDED:
                out[int(match.group(2))] = f"{state} {parts[0].split('.')[0]}"
        if not out:  # a job submitted without an array (one point): its id has no [index]
            for line in result.stdout.splitlines():
                parts = line.split()
                if len(parts) >= 6 and re.match(r"^\d+", parts[0]) and "[" not in parts[0]:
                    number = re.match(r"^\d+", parts[0]).group(0)
                    state = parts[-2]
                    if number in numbers and state not in _ENDED:
                        for sub in engine_submissions(ledger, number):
                            out.update({i: f"{state} {number}" for i in sub})
        return out


def engine_submissions(ledger: Ledger, number: str) -> list[list[int]]:
    """The points of the submissions whose job id starts with ``number``."""
    from dlkit.scan.engines.array import engine_record

    return [list(s.get("points", [])) for s in engine_record(ledger).get("submissions", [])
            if re.match(r"^\d+", str(s.get("job", ""))) and re.match(r"^\d+", str(s["job"])).group(0) == number]
