"""The worker: runs scan points in subprocesses under ledger leases, in K slots, until the scan is done.

Every engine runs points through a :class:`Worker`: the local engine with K slots over all points, a Slurm or
PBS array task with one slot for its own point, a Dask task likewise. The worker is single-threaded: one
loop reaps finished points, refreshes the heartbeats of its leases (and notices if one was stolen), takes
over stale leases of dead holders, and starts pending points in free slots.

Points run in sessions of their own, so a Ctrl-C at the terminal reaches only the worker, which forwards one
SIGTERM to each point (the point saves and exits 75); a second Ctrl-C kills them. A point whose worker dies
(``kill -9``) is killed by the kernel (``PR_SET_PDEATHSIG``): an orphan must not go on and complete a run that
the ledger will give to another worker. Its last epoch's save is intact (saves are atomic), and the worker
that takes the point over resumes from it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dlkit import protocol
from dlkit.protocol import EXIT_INTERRUPTED, EXIT_NOT_STARTED, EXIT_OK, EXIT_USER_ERROR
from dlkit.scan.ledger import (
    Ledger,
    classify_attempts,
    last_error_line,
    outcome_of,
    pid_alive,
    process_start_time,
)
from dlkit.scan.options import ScanOptions

log = logging.getLogger(__name__)

__all__ = ["Worker", "Slot", "point_metric", "point_command", "default_slots", "python_argv"]

#: The host name recorded in leases; ``DLKIT_SCAN_HOST`` overrides it where several machines share a hostname
#: (containers). A lease of this host whose holder process is gone is taken over at once, without the timeout.
_HOST = os.environ.get("DLKIT_SCAN_HOST") or socket.gethostname().split(".")[0]
_PR_SET_PDEATHSIG = 1


try:  # looked up here, not in the forked child: a dlopen() between fork and exec can deadlock
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _pdeathsig_preexec():
    """In the child before exec: die with the worker (Linux); harmless elsewhere."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


@dataclass
class Slot:
    """Where a point runs: a name and the environment it adds (CUDA_VISIBLE_DEVICES, thread counts)."""

    name: str
    env: dict = field(default_factory=dict)
    busy: bool = False


#: How many other workers read each lease per quarter lease timeout, together (see Worker._due_leases).
WATCHERS = 4


@dataclass
class _Sighting:
    """A foreign lease as this worker last saw it change: its token, heartbeat counter, and when (our clock);
    and its holder (host:pid), to count the other workers."""

    token: str | None
    seq: object
    since: float
    holder: str = ""


class _Todo:
    """The points a worker does not yet know to be final, in its order: iterate from the first one, drop one in
    O(1) (a "next" array with path compression), so a walk costs the points it passes that are still open,
    not those already final."""

    def __init__(self, points: Sequence[int]):
        self.order = list(dict.fromkeys(points))
        self.position = {point: k for k, point in enumerate(self.order)}
        self.next = list(range(len(self.order) + 1))
        self.count = len(self.order)

    def _find(self, k: int) -> int:
        root = k
        while self.next[root] != root:
            root = self.next[root]
        while self.next[k] != root:
            self.next[k], k = root, self.next[k]
        return root

    def discard(self, point: int) -> None:
        k = self.position.get(point)
        if k is not None and self.next[k] == k:
            self.next[k] = k + 1
            self.count -= 1

    def __contains__(self, point: int) -> bool:
        k = self.position.get(point)
        return k is not None and self.next[k] == k

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        k = self._find(0)
        while k < len(self.order):
            yield self.order[k]
            k = self._find(k + 1)


@dataclass
class _Running:
    index: int
    token: str
    proc: subprocess.Popen
    slot: Slot
    log_path: Path
    resume: bool
    signalled: int = 0


def point_metric(run_dir: str | os.PathLike | None, metric: str | None) -> float | None:
    """The main metric of a finished run: a top-level ``MetaData.json`` key, else the last value in its History
    (``val_loss`` when no metric is named)."""
    if not run_dir:
        return None
    try:
        with open(Path(run_dir) / "MetaData.json") as f:
            metadata = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    key = metric or "val_loss"
    value = metadata.get(key)
    if value is None:
        history = metadata.get("History") or {}
        values = [v for v in history.get(key) or [] if v is not None]
        if not values and metric is None:
            values = [v for v in history.get("loss") or [] if v is not None]
        value = values[-1] if values else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _run_completed(run_dir: str | None) -> bool:
    try:
        with open(Path(run_dir) / "MetaData.json") as f:
            return json.load(f).get("Status") == "completed"
    except (TypeError, OSError, json.JSONDecodeError):
        return False


class Worker:
    """Run the points of a ledger's scan.

    Parameters
    ----------
    ledger
        The scan's :class:`~dlkit.scan.ledger.Ledger` (its manifest must exist).
    command
        ``command(index, resume)`` -> argv of point ``index``; ``resume`` is True when the point ran before
        (the experiment is then passed ``-p`` to continue from its last save).
    slots
        The slots points run in, one point each.
    points
        The points this worker may run (default: all of the scan's).
    wait_for_others
        Keep going until every point of ``points`` is done/failed/stuck, also those other workers hold (so
        their points are taken over if those workers die). False: return once none of ``points`` is claimable.
    options
        The scan's policy (:class:`~dlkit.scan.options.ScanOptions`: lease timeout, retries, stuck limit);
        default: the ledger's.
    job_id
        The engine's job id (Slurm/PBS), recorded as the owner of each lease.
    on_update
        Called after every loop with the worker; the progress bar uses it.
    batch
        The worker runs inside a batch job (a Slurm/PBS array task). A scheduler that ends a job signals every
        process of it (the worker, the job script's trap that forwards to the worker, the points) at once, so
        a repeated signal does not force-kill the points (the scheduler kills after its own grace time), and
        the points are stopped with SIGUSR1: a point that got the scheduler's SIGTERM too does not take the
        worker's signal as a second SIGTERM ("force quit", :class:`dlkit.callbacks.GracefulExit`).
    parent_pid
        Stop (the points save and exit 75, recorded as interrupted) once this process is no longer the worker's
        parent: a Dask worker that started it was lost, and its point is to be rerun through the ledger.
    since
        A ``cancel`` asked after this time (``time.time()``; default: when the worker was made) stops it: a
        Dask task that starts after its driver was cancelled must not run its point.
    ready
        ``ready(index)``: may point ``index`` start now? (A search trial may not before it is sampled.)
    before_fill
        ``before_fill(worker, final)`` is called in every loop before free slots are filled (the search driver
        tells finished trials to its sampler and samples new ones there).

    A point whose lease the search pruned (``prune/<i>.<token>.json``) is stopped like on a signal; it saves and
    exits 77 (:data:`~dlkit.protocol.EXIT_PRUNED`) and is recorded as ``pruned``.
    """

    def __init__(self, ledger: Ledger, command: Callable[[int, bool], Sequence[str]], slots: Sequence[Slot],
                 points: Sequence[int] | None = None, wait_for_others: bool = True,
                 options: ScanOptions | None = None, job_id: str | None = None, metric: str | None = None,
                 on_update: Callable[["Worker"], None] | None = None, engine: str = "local", batch: bool = False,
                 parent_pid: int | None = None, since: float | None = None,
                 ready: Callable[[int], bool] | None = None,
                 before_fill: Callable[["Worker", set[int]], None] | None = None):
        if not slots:
            raise ValueError("Worker needs at least one slot")
        self.ledger = ledger
        self.command = command
        self.slots = list(slots)
        self.points = list(points) if points is not None else ledger.points()
        self.wait_for_others = wait_for_others
        self.options = options if options is not None else ledger.options()
        self.lease_timeout = self.options.lease_timeout
        self.heartbeat_interval = self.options.heartbeat_interval
        self.job_id = job_id
        self.metric = metric
        self.on_update = on_update
        self.engine = engine
        self.batch = batch
        self.parent_pid = parent_pid
        self.ready = ready
        self.before_fill = before_fill
        self.running: dict[int, _Running] = {}
        self.stopping: str | None = None
        # what this worker knows without listing done/ and failed/: a point seen final stays final (only
        # ``retry`` undoes that, and a new run follows it); the others are walked in order, each checked with
        # two stats when it is a candidate (and when a foreign lease of it ends)
        self.final: set[int] = set()
        self._todo = _Todo(self.points)
        self._point_set = set(self.points)
        self._foreign: set[int] = set()  # foreign leases of our points at the last loop
        self._seen: dict[int, _Sighting] = {}  # foreign leases
        self._looked: dict[int, float] = {}  # foreign lease -> when we last read it (monotonic)
        self._alive: set[int] = set()  # foreign leases seen heartbeating
        self._last_due = time.monotonic()
        self._seq = 0
        self._last_beat = 0.0
        self._started = time.time() if since is None else float(since)
        self._pid_start = process_start_time(os.getpid())
        self._wake_r = self._wake_w = None

    # -- the loop -------------------------------------------------------------------------------------
    def run(self) -> int:
        """Work until done (or stopped); returns 0, or 75 if a signal or ``cancel`` stopped it."""
        previous = self._install_signals()
        self.ledger.sweep_tmp()
        for index in self.ledger.final_indices():  # once: one listing is cheaper than a check of each
            self._mark_final(index)
        try:
            while True:
                self._reap()
                self._beat()
                self._stop_pruned()
                if not self.stopping and self.ledger.cancelled_since(self._started):
                    self.stop("cancel")
                if not self.stopping and self.parent_pid and os.getppid() != self.parent_pid:
                    self.stop(f"parent process {self.parent_pid} is gone")
                if self.stopping:
                    self._signal_points()
                    if not self.running:
                        break
                else:
                    leased = self.ledger.leased_indices()  # small: one name per running point
                    self._learn_final(leased)
                    self._take_over_stale(leased)
                    if self.before_fill is not None:
                        self.before_fill(self, self.final)
                    self._fill(leased)
                    if not self.running and self._nothing_left(leased):
                        break
                if self.on_update:
                    self.on_update(self)
                self._wait(self._timeout())
        finally:
            self._kill_all()
            self._restore_signals(previous)
            if self.on_update:
                self.on_update(self)
        return EXIT_INTERRUPTED if self.stopping else EXIT_OK

    def stop(self, why: str = "stop") -> None:
        """Stop gracefully: signal the running points (they save and exit 75), start no more."""
        if self.stopping and why in ("SIGINT", "SIGTERM", "SIGUSR1") and not self.batch:  # asked again: force
            for running in self.running.values():
                running.signalled = max(running.signalled, 1)
                self._kill(running, signal.SIGKILL)
        if not self.stopping:
            log.warning("scan %s: %s - stopping %d running point(s); they save and can be resumed",
                        self.ledger.name, why, len(self.running))
            self.stopping = why

    def _timeout(self) -> float:
        return min(self.heartbeat_interval, 1.0)

    # -- signals and waking ---------------------------------------------------------------------------
    def _install_signals(self):
        import threading

        if threading.current_thread() is not threading.main_thread():
            return None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        previous = {"wakeup": signal.set_wakeup_fd(self._wake_w)}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            previous[sig] = signal.signal(sig, lambda s, f: self.stop(signal.Signals(s).name))
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda s, f: None)  # wakes select()
        return previous

    def _restore_signals(self, previous):
        if previous is None:
            return
        signal.set_wakeup_fd(previous.pop("wakeup"))
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._wake_r = self._wake_w = None

    def _wait(self, timeout: float) -> None:
        if self._wake_r is None:
            time.sleep(min(timeout, 0.05))
            return
        ready, _, _ = select.select([self._wake_r], [], [], timeout)
        if ready:
            try:
                while os.read(self._wake_r, 512):
                    pass
            except BlockingIOError:
                pass

    # -- points ---------------------------------------------------------------------------------------
    def _mark_final(self, index: int) -> None:
        if index in self._point_set:
            self.final.add(index)
            self._todo.discard(index)

    def _check_final(self, index: int) -> bool:
        """Is point ``index`` final? Two stats, remembered once it is."""
        if index in self.final:
            return True
        if self.ledger.is_final(index):
            self._mark_final(index)
            return True
        return False

    def _learn_final(self, leased: set[int]) -> None:
        """The points whose foreign lease ended since the last loop may have become final: check those only."""
        foreign = {i for i in leased if i in self._todo and i not in self.running}
        for index in self._foreign - leased:
            self._check_final(index)
        self._foreign = foreign

    def _nothing_left(self, leased: set[int]) -> bool:
        if not self._todo:
            return True
        if self.wait_for_others:
            return False
        # the rest is held by workers seen alive (a stale lease is waited for and taken over)
        return all(i in leased and i in self._alive for i in self._todo)

    def _fill(self, leased: set[int]) -> None:
        """Start points in the free slots: walk the open points in order; a candidate is checked (final?) and
        acquired; the walk passes only points that are running or not ready, never the final ones."""
        free = [s for s in self.slots if not s.busy]
        if not free:
            return
        for index in self._todo:
            if not free:
                break
            if index in leased or index in self.running:
                continue
            if self.ready is not None and not self.ready(index):
                continue
            if self._check_final(index):
                continue
            if self._start(index, free[0]):
                free.pop(0)
            else:
                self._check_final(index)  # it became final as we looked, or another worker holds it now

    def _owner_record(self) -> dict:
        return {"host": _HOST, "pid": os.getpid(), "pid_start": self._pid_start, "job_id": self.job_id,
                "engine": self.engine}

    def _start(self, index: int, slot: Slot) -> bool:
        token = self.ledger.new_token()
        if not self.ledger.acquire(index, token, self._owner_record()):
            return False
        previous = self.ledger.attempts(index)
        resume = bool(previous)
        argv = list(self.command(index, resume))
        log_path = self.ledger.log_path(index, token)
        env = {**os.environ, **slot.env, protocol.ENV_DIR: str(self.ledger.path),
               protocol.ENV_POINT: str(index), protocol.ENV_TOKEN: token}
        self.ledger.record_start(index, token, {"attempt": len(previous) + 1, "host": _HOST, "slot": slot.name,
                                                "job_id": self.job_id, "argv": argv, "resume": resume,
                                                "log": str(log_path), "engine": self.engine})
        try:
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True, preexec_fn=_pdeathsig_preexec)
        except OSError as exc:
            log.error("scan point %d: cannot start %s: %s", index, argv[0], exc)
            with open(log_path, "a") as out:
                out.write(f"error: cannot start {argv!r}: {exc}\n")
            self._end(index, token, exit_code=EXIT_NOT_STARTED, log_path=log_path)
            return False
        slot.busy = True
        self.running[index] = _Running(index, token, proc, slot, log_path, resume)
        self._beat(force=True)
        log.info("scan point %d: started (slot %s, pid %d%s)", index, slot.name, proc.pid,
                 ", resuming" if resume else "")
        return True

    def _reap(self) -> None:
        for index, running in list(self.running.items()):
            code = running.proc.poll()
            if code is None:
                continue
            del self.running[index]
            running.slot.busy = False
            by_user = bool(self.stopping) and code not in (EXIT_OK, EXIT_USER_ERROR)
            self._end(index, running.token, code, running.log_path, stopped_by_user=by_user)

    def _end(self, index: int, token: str, exit_code: int | None, log_path: Path | None,
             stopped_by_user: bool = False, lost: str | None = None) -> None:
        """End lease ``token`` and record the attempt; nothing at all if someone else ended it first."""
        progress = self.ledger.progress(index)
        holder = (self.ledger.owner(index) or {}).get("host") if lost else _HOST
        if not self.ledger.end(index, token):
            log.warning("scan point %d: lease %s was taken over by another worker; not recording", index, token)
            return
        outcome = outcome_of(exit_code, lost=bool(lost), stopped_by_user=stopped_by_user,
                             pruned=self.ledger.pruned(index, token))
        run_dir = progress.get("run_dir")
        if outcome in ("interrupted", "crashed") and _run_completed(run_dir):
            # it finished its run, then died before its exit was recorded: its worker was lost, or a signal or a
            # crash hit the process on its way out (interpreter shutdown, a backend's teardown). Its run is whole.
            outcome, lost = "done", f"{lost or f'exit {exit_code}'} after its run {run_dir} had completed"
        record = {"exit_code": exit_code, "outcome": outcome, "epochs": progress.get("epochs"), "run_dir": run_dir,
                  "host": holder, "reason": lost,
                  "metric": point_metric(run_dir, self.metric) if outcome in ("done", "pruned") else None,
                  "last_error": None if outcome in ("done", "pruned") else (lost or last_error_line(log_path)),
                  "history": progress.get("history")}  # per-epoch metrics, for a search's pruner after a restart
        attempt = self.ledger.record_end(index, token, record)
        decision = classify_attempts(self.ledger.counted_attempts(index), self.options.max_retries,
                                     self.options.stuck_after)
        self.ledger.finish_point(index, attempt, decision)
        if decision.state != "pending":
            self._mark_final(index)
        self.ledger.remove_lease(index, token)
        level = logging.INFO if decision.state in ("done", "pending") else logging.WARNING
        log.log(level, "scan point %d: exit %s (%s) -> %s: %s", index, exit_code, outcome, decision.state,
                decision.reason)

    # -- heartbeats and fencing -----------------------------------------------------------------------
    def _beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_beat < self.heartbeat_interval:
            return
        self._last_beat = now
        self._seq += 1
        for index, running in list(self.running.items()):
            extra = {"child_pid": running.proc.pid, "child_start": process_start_time(running.proc.pid)}
            if not self.ledger.heartbeat(index, running.token, self._seq, extra):
                log.error("scan point %d: our lease %s was taken over (this worker was stopped past the lease "
                          "timeout); killing the point, writing nothing", index, running.token)
                self._kill(running, signal.SIGKILL)
                running.proc.wait()
                running.slot.busy = False
                del self.running[index]

    def _due_leases(self, leased: set[int]) -> list[int]:
        """The foreign leases to read in this loop: each every ``lease_timeout / 4`` of our clock (a new one at
        once), the longest unread first, at most what keeps that pace. With more than :data:`WATCHERS` other
        workers the pace slows in proportion: every lease is still read about :data:`WATCHERS` times per quarter
        timeout by the workers together, so W workers cost O(W) reads, not O(W^2) (a silent lease is then taken
        over a little later, by whoever reads it twice a lease timeout apart)."""
        for index in [i for i in self._looked if i not in leased]:
            del self._looked[index]
            self._seen.pop(index, None)
        now = time.monotonic()
        others = len({s.holder for s in self._seen.values()})
        every = self.lease_timeout / 4 * max(1.0, others / WATCHERS)
        elapsed, self._last_due = max(now - self._last_due, self._timeout()), now  # this loop's share of the pace
        foreign = [i for i in leased if i in self._point_set and i not in self.running]
        due = sorted((self._looked.get(i, -math.inf), i) for i in foreign
                     if now - self._looked.get(i, -math.inf) >= every)
        pace = math.ceil(len(foreign) * min(elapsed, every) / every) + 1
        new = sum(1 for looked, _ in due if looked == -math.inf)
        return [i for _, i in due[:max(pace, new)]]

    def _take_over_stale(self, leased: set[int]) -> None:
        """End the leases of dead holders: a heartbeat unchanged for ``lease_timeout`` of our clock, or a holder
        process on this host that no longer exists."""
        for index in self._due_leases(leased):
            self._looked[index] = now = time.monotonic()
            owner = self.ledger.owner(index)
            beat = self.ledger.read_heartbeat(index)
            if owner is None or beat is None:  # vanished while we looked, or a directory without an owner
                self._seen.pop(index, None)
                if owner is None and self.ledger.reclaim_ownerless(index):
                    log.warning("scan point %d: removed its lease directory, which had no owner", index)
                continue
            token = owner.get("token")
            seen = self._seen.get(index)
            if seen is not None and seen.token == token and seen.seq != beat.get("seq"):
                self._alive.add(index)  # its heartbeat advanced while we watched: a live holder
            if seen is None or seen.token != token or seen.seq != beat.get("seq"):
                seen = self._seen[index] = _Sighting(token, beat.get("seq"), now,
                                                     f"{owner.get('host')}:{owner.get('pid')}")
            dead_here = (owner.get("host") == _HOST and not pid_alive(owner.get("pid"), owner.get("pid_start"))
                         and not pid_alive(beat.get("child_pid"), beat.get("child_start")))
            silent = now - seen.since
            if self.ledger.fenced(index, token):  # ended, but its ender died before removing it
                if dead_here or silent >= self.lease_timeout:
                    self.ledger.remove_lease(index, token)
                continue
            if dead_here or silent >= self.lease_timeout:
                self._take_over(index, token, owner, beat, dead_here, silent)

    def _take_over(self, index: int, token: str, owner: dict, beat: dict, dead_here: bool, silent: float) -> None:
        why = (f"holder {owner.get('host')}:{owner.get('pid')} is gone" if dead_here else
               f"no heartbeat from {owner.get('host')}:{owner.get('pid')} for {silent:.0f} s")
        if dead_here and beat.get("child_pid"):  # what is left of the point's process group (data readers)
            try:
                os.killpg(int(beat["child_pid"]), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        log.warning("scan point %d: taking over its lease (%s)", index, why)
        self._end(index, token, exit_code=None, log_path=None, lost=f"lost: {why}")
        self._seen.pop(index, None)
        self._looked.pop(index, None)
        self._alive.discard(index)

    # -- stopping -------------------------------------------------------------------------------------
    def _stop_pruned(self) -> None:
        """Stop the points whose lease a search pruned, as on a signal (they save and exit 77)."""
        for index, running in self.running.items():
            if not running.signalled and self.ledger.pruned(index, running.token):
                log.info("scan point %d: pruned by the search; stopping it (it saves)", index)
                running.signalled = 1
                self._kill(running, signal.SIGUSR1 if self.batch else signal.SIGTERM)

    def _kill(self, running: _Running, sig: int) -> None:
        try:
            os.killpg(running.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _signal_points(self) -> None:
        for running in self.running.values():
            if not running.signalled:
                running.signalled = 1
                self._kill(running, signal.SIGUSR1 if self.batch else signal.SIGTERM)

    def _kill_all(self) -> None:
        """On the way out (also after an exception in the loop): no point outlives its worker."""
        for running in list(self.running.values()):
            if running.proc.poll() is None:
                self._kill(running, signal.SIGTERM if not running.signalled else signal.SIGKILL)
        deadline = time.monotonic() + 30
        for running in list(self.running.values()):
            try:
                running.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill(running, signal.SIGKILL)
                running.proc.wait()
        if self.running:  # the loop ended by an exception: what we killed was stopped by us, not crashed
            self.stopping = self.stopping or "worker exit"
            self._reap()


def default_slots(slots: int | None = None, gpus: Sequence[str] | None = None,
                  threads_per_point: int | None = None) -> list[Slot]:
    """K slots; with ``gpus`` each pinned to one GPU (CUDA_VISIBLE_DEVICES), else ``threads_per_point`` CPU
    threads each (default: the CPU count divided among the slots)."""
    gpus = [str(g) for g in gpus] if gpus else []
    if slots is None:
        slots = len(gpus) or 1
    if slots < 1:
        raise ValueError(f"--slots must be >= 1, got {slots}")
    if gpus:
        return [Slot(f"gpu{gpus[k % len(gpus)]}", {"CUDA_VISIBLE_DEVICES": gpus[k % len(gpus)]})
                for k in range(slots)]
    threads = threads_per_point or max(1, (os.cpu_count() or 1) // slots)
    env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                           "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")}
    return [Slot(f"cpu{k}", dict(env)) for k in range(slots)]


def python_argv(experiment: str) -> list[str]:
    """How to start an experiment: ``python -m module`` or ``python file.py``."""
    if experiment.endswith(".py") or os.sep in experiment:
        return [sys.executable, experiment]
    return [sys.executable, "-m", experiment]


def _env_job_id(environ: Mapping[str, str] | None = None) -> str | None:
    environ = os.environ if environ is None else environ
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID", "PBS_JOBID"):
        if environ.get(name):
            task = environ.get("SLURM_ARRAY_TASK_ID") if name == "SLURM_ARRAY_JOB_ID" else None
            return f"{environ[name]}_{task}" if task else environ[name]
    return None


def point_command(ledger: Ledger, manifest: Mapping | None = None):
    """``command(index, resume)`` -> the argv of one point: the experiment, its config, ``-s``, the flags; for a
    search trial also ``--trial`` (its sampled params) and ``-s`` of its grid point."""
    manifest = manifest or ledger.manifest()
    base = python_argv(manifest["experiment"])
    output_base = os.fspath(ledger.output_base.resolve())
    search = manifest.get("search")

    def command(index: int, resume: bool) -> list[str]:
        where = ["-s", str(index)]
        if search:
            grid = (index // search["trials"]) if manifest.get("params") else None
            where = (["-s", str(grid)] if grid is not None else []) + [
                "--trial", os.fspath(ledger.trial_path(index).resolve())]
        argv = [*base, "-C", manifest["config"], *where, "--OutputBase", output_base, *manifest["flags"]]
        return argv + ["-p"] if resume else argv

    return command
