"""What the Slurm and PBS engines share: job-array scripts whose tasks join the scan through its ledger.

A cluster engine writes one job-array script per submission into ``<ledger>/scripts/``, one array task per
point that is not final yet, and records the job ids in ``<ledger>/engine.json``::

    {"engine": "slurm", "jobs": ["123", ...], "submissions": [{"job": "123", "script": ..., "points": [...]}]}

Each task runs ``python -m dlkit.scan work <ledger> --points <its index> --engine <name>`` in the background
with a trap that forwards SIGUSR1/SIGTERM/SIGINT to it and waits for it: the worker stops its point, which
saves and exits 75, and the worker exits 75 (see :class:`dlkit.scan.worker.Worker`, ``batch``). The ledger
decides what a task does: a done point is not run again, an interrupted one resumes with ``-p``, a point held
by a live worker is left to it. So resubmitting, requeueing or running a task twice is always safe.

Nothing here imports Keras or TensorFlow (``status`` asks the queue through :meth:`ArrayEngine.queue`).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from dlkit.protocol import EXIT_INTERRUPTED, EXIT_OK
from dlkit.scan.engines.base import Engine, Plan
from dlkit.scan.ledger import Ledger, ScanError, now_iso, read_json
from dlkit.scan.options import ScanOptions
from dlkit.scan.progress import ProgressBar

log = logging.getLogger(__name__)

__all__ = ["ArrayEngine", "compress_ranges", "script_body", "job_environment", "engine_record"]

ENGINE_FILE = "engine.json"


def compress_ranges(indices: Iterable[int]) -> str:
    """``[0, 1, 2, 3, 7, 9, 10]`` -> ``"0-3,7,9-10"`` (a job array's index list)."""
    values = sorted({int(i) for i in indices})
    parts = []
    start = prev = None
    for value in values:
        if start is None:
            start = prev = value
        elif value == prev + 1:
            prev = value
        else:
            parts.append(f"{start}-{prev}" if prev != start else str(start))
            start = prev = value
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(parts)


def job_environment() -> dict:
    """How the jobs start Python: this interpreter (the venv's), dlkit's import root on ``PYTHONPATH`` (unless
    it is a site-packages directory), and the directory to run in (the submitting one)."""
    import dlkit

    root = str(Path(dlkit.__file__).resolve().parent.parent)
    sites = {str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    return {"python": sys.executable, "pythonpath": None if root in sites else root, "workdir": os.getcwd()}


def script_body(ledger_path: str, engine: str, index_var: str, python: str, pythonpath: str | None,
                workdir: str, max_retries: int, lease_timeout: float, threads: str,
                single_point: int | None = None, selected: Sequence[int] | None = None,
                requeue: str | None = None, exports: Mapping[str, str] | None = None) -> str:
    """The shell part of an array task (after the scheduler's directive lines).

    ``index_var`` is the scheduler's array index variable; ``threads`` a shell expression for the CPU threads
    of the point; ``single_point`` the point of a job submitted without an array (its index variable unset);
    ``selected`` the points to run when the array's range holds others (PBS Pro's ``-J`` is one range): other
    indices exit at once; ``requeue`` the command that requeues this task, run when the worker stopped on
    SIGUSR1 (the scheduler's warning before the time limit) before its point was final; ``exports`` environment
    variables of the point (e.g. ``dlkit.distribute.ENV_TASKS`` for a point of several tasks).
    """
    q = shlex.quote
    default = f":-{single_point}" if single_point is not None else ":?not in a job array (submit this script)"
    lines = [
        "set -u",
        f"ledger={q(ledger_path)}",
        f"point=${{{index_var}{default}}}",
    ]
    if selected is not None:
        lines += [f"case \" {' '.join(str(i) for i in selected)} \" in",
                  '    *" $point "*) ;;',
                  '    *) echo "dlkit.scan: array index $point is not a point of this submission"; exit 0 ;;',
                  "esac"]
    lines += [f"cd {q(workdir)} || exit 1"]
    if pythonpath:
        lines += [f"export PYTHONPATH={q(pythonpath)}${{PYTHONPATH:+:$PYTHONPATH}}"]
    lines += [f"export {name}={q(str(value))}" for name, value in (exports or {}).items()]
    lines += [
        "final() { [ -e \"$ledger/done/$point.json\" ] || [ -e \"$ledger/failed/$point.json\" ]; }",
        "# forward the scheduler's signals to the worker: it stops the point, which saves and exits 75",
        "got= worker=",
        'forward() { got=$1; if [ -n "$worker" ]; then kill -s "$1" "$worker" 2>/dev/null; fi; }',
        "trap 'forward USR1' USR1",
        "trap 'forward TERM' TERM",
        "trap 'forward INT' INT",
        f"{q(python)} -m dlkit.scan work \"$ledger\" --points \"$point\" --engine {engine} \\",
        f"    --max-retries {int(max_retries)} --lease-timeout {lease_timeout:g} --threads-per-point {threads} &",
        "worker=$!",
        'while kill -0 "$worker" 2>/dev/null; do wait "$worker"; done',
        'wait "$worker"; code=$?',
    ]
    if requeue:
        lines += [
            f'if [ "$code" -eq {EXIT_INTERRUPTED} ] && [ "$got" = USR1 ] && ! final; then',
            '    echo "dlkit.scan: point $point saved before the time limit; requeueing this task to resume it"',
            f"    {requeue} && exit 0",
            "fi",
        ]
    else:
        lines += [
            f'if [ "$code" -eq {EXIT_INTERRUPTED} ] && ! final; then',
            '    echo "dlkit.scan: point $point stopped after saving; run the scan again (or with --wait) to resume it"',
            "fi",
        ]
    lines += ['exit "$code"']
    return "\n".join(lines) + "\n"


def engine_record(ledger: Ledger) -> dict:
    return read_json(ledger.path / ENGINE_FILE, {}) or {}


def _run(argv: Sequence[str], timeout: float = 30.0, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kwargs)


class ArrayEngine(Engine):
    """A batch scheduler with job arrays. Subclasses say how to write, submit, list and cancel them."""

    name = "?"
    submit_command = "?"   #: the program that submits (sbatch, qsub): missing -> a clear error
    cancel_command = "?"   #: the program that cancels jobs (scancel, qdel)
    script_prefix = "?"    #: scripts/<prefix>-<n>.sh
    OPTIONS: frozenset = frozenset()  #: the scheduler options ``run`` takes besides the shared ones

    # -- to implement ---------------------------------------------------------------------------------
    def write_script(self, ledger: Ledger, points: Sequence[int], slots: int | None = None, *, python: str,
                     pythonpath: str | None, workdir: str, max_retries: int = ScanOptions.max_retries,
                     lease_timeout: float = ScanOptions.lease_timeout,
                     **options) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def submit_argv(self, script: Path, **options) -> list[str]:  # pragma: no cover - interface
        raise NotImplementedError

    def parse_job_id(self, stdout: str) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def queue(self, ledger: Ledger) -> dict[int, str]:
        """``{point: "pending 123_4 (Reason)"}`` for the scan's array tasks the scheduler still holds (pending,
        running, requeued, ...); ``{}`` without the scheduler's tools or when it cannot be asked."""
        return {}

    def queue_known(self) -> bool:
        """Whether :meth:`queue` can ask the scheduler (its query program exists)."""
        return False

    # -- shared ---------------------------------------------------------------------------------------
    def cancel(self, ledger: Ledger) -> None:
        """``cancel_command`` (scancel, qdel) the scan's jobs; a missing program or a failure is logged."""
        jobs = self.job_ids(ledger)
        if not jobs:
            return
        argv = [self.cancel_command, *jobs]
        if shutil.which(self.cancel_command) is None:
            log.warning("scan %s: %s not found; its %s jobs %s are left to the scheduler", ledger.name,
                        self.cancel_command, self.name, jobs)
            return
        try:
            result = _run(argv, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("%s: %s", " ".join(argv), exc)
            return
        if result.returncode != 0 and (result.stderr or "").strip():
            log.info("%s: %s", " ".join(argv), result.stderr.strip())

    def job_ids(self, ledger: Ledger) -> list[str]:
        record = engine_record(ledger)
        return [str(j) for j in record.get("jobs", [])] if record.get("engine") == self.name else []

    def _record(self, ledger: Ledger, job: str, script: Path, points: Sequence[int]) -> None:
        record = engine_record(ledger)
        if record.get("engine") != self.name:
            record = {"engine": self.name, "jobs": [], "submissions": []}
        record["jobs"] = [*record.get("jobs", []), job]
        record["submissions"] = [*record.get("submissions", []),
                                 {"job": job, "script": os.path.relpath(script, ledger.path), "points": list(points),
                                  "time": now_iso()}]
        ledger.write(ledger.path / ENGINE_FILE, record)

    def _script_path(self, ledger: Ledger) -> Path:
        directory = ledger.path / "scripts"
        directory.mkdir(parents=True, exist_ok=True)
        n = 1 + sum(1 for p in directory.glob(f"{self.script_prefix}-*.sh"))
        while True:
            path = directory / f"{self.script_prefix}-{n}.sh"
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o755)
            except FileExistsError:
                n += 1
                continue
            os.close(fd)
            return path

    def submit(self, ledger: Ledger, points: Sequence[int], slots: int | None, options: ScanOptions,
               **sched) -> str:
        """Write the array script for ``points`` into the ledger, submit it, record the job; its id."""
        program = shutil.which(self.submit_command)
        if program is None:
            raise ScanError(f"--engine {self.name}: {self.submit_command} not found on PATH (is {self.name} "
                            "installed here? for this machine use --engine local)")
        text = self.write_script(ledger, points, slots, max_retries=options.max_retries,
                                 lease_timeout=options.lease_timeout, **{**job_environment(), **sched})
        path = self._script_path(ledger).resolve()
        path.write_text(text)
        argv = self.submit_argv(path, **sched)
        try:
            result = _run(argv, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            path.unlink(missing_ok=True)
            raise ScanError(f"{' '.join(argv)}: {exc}") from None
        if result.returncode != 0:
            path.unlink(missing_ok=True)  # not submitted: the next submission takes its number
            raise ScanError(f"{' '.join(argv)} failed (exit {result.returncode}): "
                            f"{(result.stderr or result.stdout).strip()}")
        job = self.parse_job_id(result.stdout)
        self._record(ledger, job, path, points)
        log.info("scan %s: submitted %s job %s for %d point(s) %s (%s)", ledger.name, self.name, job, len(points),
                 compress_ranges(points), path)  # the CLI prints the submissions from engine.json
        return job

    def run(self, ledger: Ledger, plan: Plan, options: ScanOptions, progress: bool | None = None,
            slots: int | None = None, wait: bool = False, poll: float = 1.0,
            queue_poll: tuple[float, float] = (2.0, 30.0), **sched) -> int:
        """Submit an array for the plan's points that are neither final nor already queued; with ``wait`` (a
        search always waits: its driver samples as trials end), follow the scan to its end. Returns 0, or 75 if
        the scan was cancelled while followed."""
        for key, hint in (("gpus", "ask for GPUs with --gres"), ("threads_per_point", "use --cpus-per-task")):
            if sched.get(key) not in (None, [], ()):
                raise ScanError(f"--engine {self.name}: --{key.replace('_', '-')} is for the local engine; {hint}")
        sched = {k: v for k, v in sched.items() if v is not None and k not in ("gpus", "threads_per_point")}
        check_options(self.name, sched, self.OPTIONS)
        follow = wait or type(plan) is not Plan
        if wait and not self.queue_known():
            raise ScanError(f"--engine {self.name} --wait: cannot ask the queue ({self.name}'s tools are missing)")
        if follow:
            return self.follow(ledger, plan, options, progress, slots, poll, queue_poll, **sched)
        todo = plan.runnable(ledger.final_indices())
        queued = self.queue(ledger)
        fresh = [i for i in todo if i not in queued]
        if fresh:
            self.submit(ledger, fresh, slots, options, **sched)
        elif todo:
            log.warning("scan %s: its %d unfinished point(s) are queued already (jobs %s)", ledger.name, len(todo),
                        ", ".join(self.job_ids(ledger)))
        else:
            log.info("scan %s: every point is final; nothing to submit", ledger.name)
        return EXIT_OK

    def follow(self, ledger: Ledger, plan: Plan, options: ScanOptions, progress: bool | None = None,
               slots: int | None = None, poll: float = 1.0, queue_poll: tuple[float, float] = (2.0, 30.0),
               **sched) -> int:
        """Drive the plan until it is finished: submit its runnable points that are neither submitted nor queued;
        read the ledger every ``poll`` s and the queue every ``queue_poll[0]`` s within a minute of a change in
        the ledger (a point ended, a lease came or went), else every ``queue_poll[1]`` s (squeue/qstat are
        shared by everyone on a cluster). A submitted point that is missing from the queue twice in a row,
        neither held nor final, is submitted again."""
        started = time.time()
        tracker = _QueueTracker(self, ledger, queue_poll)
        with ProgressBar(ledger, plan.points, progress) as bar:
            while True:
                final = ledger.final_indices()
                plan.step(final)
                bar.update()
                if plan.finished(final):
                    return EXIT_OK
                if ledger.cancelled_since(started):
                    log.warning("scan %s: cancelled", ledger.name)
                    return EXIT_INTERRUPTED
                todo = plan.runnable(final)
                tracker.poll(todo, final)
                new = [i for i in todo if i not in tracker.submitted and i not in tracker.queued]
                if new:
                    tracker.check_progress(new)
                    self.submit(ledger, new, slots, options, **sched)
                    tracker.submitted.update(new)
                time.sleep(poll)

    @staticmethod
    def directive_extra(extra: Iterable[str] | str | None) -> list[str]:
        """``--sbatch-extra`` values: one directive each (``--qos=high`` or ``qos=high``)."""
        if extra is None:
            return []
        if isinstance(extra, str):
            extra = [extra]
        return [str(e).strip() for e in extra if str(e).strip()]



class _QueueTracker:
    """What a following driver knows of the queue: the points it submitted, and which of them the queue lost.

    A submitted point counts as lost once the queue (when it can be asked) has not shown it twice in a row
    while it is neither held by a worker nor final (a cancelled or failed job); it is then forgotten, so the
    driver submits it again. Resubmitting twice without a new attempt of any of those points is an error:
    the jobs end without running them (a broken environment), and submitting again would loop for ever."""

    def __init__(self, engine: ArrayEngine, ledger: Ledger, queue_poll: tuple[float, float]):
        self.engine, self.ledger, self.queue_poll = engine, ledger, queue_poll
        self.known = engine.queue_known()
        self.queued = engine.queue(ledger) if self.known else {}
        self.submitted: set[int] = set(self.queued)
        self.missing: dict[int, int] = {}
        self._fingerprint, self._changed, self._asked = None, time.monotonic(), time.monotonic()
        self._lost: list[int] = []
        self._attempts_at_resubmit: int | None = None
        self._fruitless = 0

    def poll(self, todo: list[int], final: set[int]) -> None:
        if not self.known:
            return
        now = time.monotonic()
        leases = frozenset(self.ledger.leased_indices())
        if (len(todo), leases) != self._fingerprint:
            self._fingerprint, self._changed = (len(todo), leases), now
        if now - self._asked < (self.queue_poll[0] if now - self._changed < 60 else self.queue_poll[1]):
            return
        self._asked = now
        self.queued = self.engine.queue(self.ledger)
        lost = []
        for index in sorted(self.submitted):
            if index in self.queued or index in leases or index in final:
                self.missing.pop(index, None)
                continue
            self.missing[index] = self.missing.get(index, 0) + 1
            if self.missing[index] >= 2:
                lost.append(index)
        if lost:
            name = self.ledger.name
            if self.queued:
                log.warning("scan %s: %d point(s) %s left the queue unfinished; resubmitting", name, len(lost),
                            compress_ranges(lost))
            else:
                log.warning("scan %s: no job of the scan is queued and %d point(s) are pending; resubmitting",
                            name, len(lost))
            self.submitted.difference_update(lost)
            for index in lost:
                del self.missing[index]
            self._lost = lost

    def check_progress(self, new: list[int]) -> None:
        """Before a submission: refuse to resubmit points whose last resubmission ran none of them."""
        if not self._lost or not set(self._lost) & set(new):
            return
        attempts = sum(len(self.ledger.attempts(i)) for i in self._lost)
        self._fruitless = self._fruitless + 1 if attempts == self._attempts_at_resubmit else 0
        if self._fruitless >= 2:
            raise ScanError(f"scan {self.ledger.name}: {self.engine.name} jobs ended without running any of the "
                            f"points {compress_ranges(self._lost)}; see their output in {self.ledger.path / 'logs'}")
        self._attempts_at_resubmit, self._lost = attempts, []

def check_options(engine: str, options: Mapping, allowed: Iterable[str]) -> None:
    """Refuse engine options this engine does not know (a typo must not be silently ignored)."""
    unknown = sorted(k for k, v in options.items() if v not in (None, [], ()) and k not in set(allowed))
    if unknown:
        raise ScanError(f"--engine {engine}: unknown option(s) {', '.join(unknown)}")


_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def slurm_time_seconds(text: str) -> int:
    """A Slurm ``--time`` (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``) in seconds."""
    match = _SLURM_TIME.match(str(text).strip())
    if not match:
        raise ScanError(f"--time {text!r}: not a time (minutes, M:S, H:M:S, D-H, D-H:M or D-H:M:S)")
    days, a, b, c = match.groups()
    a, b, c = int(a), int(b) if b else None, int(c) if c else None
    if days is not None:  # D-H[:M[:S]]
        return int(days) * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:      # H:M:S
        return a * 3600 + b * 60 + c
    if b is not None:      # M:S
        return a * 60 + b
    return a * 60          # M


def hms(seconds: int) -> str:
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
