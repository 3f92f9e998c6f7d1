"""Consumer side of the pipeline: the reader pool - reader processes and the ring of shared-memory batch slots.

No Keras here; :mod:`dlkit.generators.generator` wraps this in a ``keras.utils.PyDataset``.

Flow control: the pool hands a reader a task only when a slot is free, so memory is bounded by the
slots (``n_workers * queue_depth + 3``). A served batch's slot is reused only after the consumer has
asked for a later batch *and* nothing references the batch's arrays any more (a weak reference to the
memoryview under the arrays): TensorFlow wraps 64-byte-aligned numpy arrays without copying, so a batch
sitting in tf.data's prefetch buffer stays intact. If the consumer keeps batches, the ring grows to a
cap, then the pool raises rather than deadlock.

Failure handling: the pool waits with ``multiprocessing.connection.wait`` on the readers' pipes *and*
process sentinels, so a reader that dies is noticed at once; reader errors come back as messages and
are raised here as :class:`DataError` (naming file and key) or :class:`GeneratorError`.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import pickle
import signal
import time
import weakref
from collections import deque
from multiprocessing.connection import wait as mp_wait

import numpy as np

from dlkit.cachedir import CACHE_ENV, record_use, user_cache_dir
from dlkit.generators import _shm
from dlkit.generators._layout import BlockLayout
from dlkit.generators._resources import BUSY, CURRENT, FREE, HELD, READY, Resources, Slot, Task, WorkerHandle
from dlkit.generators._stores import CacheStores
from dlkit.generators._worker import worker_main
from dlkit.generators.cache import CacheBuilder
from dlkit.generators.errors import DataError, GeneratorError, GeneratorTimeoutError, WorkerDiedError
from dlkit.spawn import needs_main, spawn_environment, start_failure

logger = logging.getLogger(__name__)


class ReaderPool(CacheStores):
    """Runs the readers and serves batches by stream index (epoch * n_batches + batch)."""

    def __init__(
        self,
        *,
        entries,
        inputs,
        outputs,
        slot_arrays,
        planner,
        preprocess,
        n_workers,
        queue_depth,
        start_method,
        timeout,
        cache_location,
        cache_key,
        preload,
        seed,
        meta,
        nice=0,
    ):
        self.entries = entries
        self.inputs = inputs
        self.outputs = outputs
        self.planner = planner
        self.preprocess = preprocess
        self.n_workers = max(1, int(n_workers))
        self.queue_depth = max(1, int(queue_depth))
        self.start_method = start_method
        self.timeout = float(timeout)
        self.cache_location = cache_location  # dlkit.cachedir.CacheLocation or None
        self.cached_sources = _cached_sources(entries, cache_location)
        self.cache_key = cache_key
        self.preload = bool(preload)
        self.seed = int(seed)
        self.meta = meta
        self.nice = int(nice or 0)
        self.slot_layout = BlockLayout.build(slot_arrays, planner.batch_size)
        self.n_canonical = planner.n_canonical
        self.res = Resources()
        self.res.hold(*self.cached_sources)  # from construction on: a later start finds them there
        for path in self.cached_sources:
            record_use(path)
        self.started = False
        self.failed: BaseException | None = None
        self.workers: list[WorkerHandle] = []
        self._starting: set[int] = set()  # readers that have not said "ready" yet
        self._main_needed = False  # whether the readers had to import the main module to start
        self._init_ring()
        self._init_stores()
        self.stats = {"read": 0.0, "preprocess": 0.0, "write": 0.0, "tasks": 0}
        self.startup_seconds = None

    def _init_ring(self):
        """The ring of batch slots and the tasks in flight, empty until ``start``."""
        self.slots: list[Slot] = []
        # readers' queues, the batch being served, and up to two held by tf.data's prefetch (zero-copy)
        self.base_slots = self.n_workers * self.queue_depth + 3
        self.max_slots = max(2 * self.base_slots, self.base_slots + 8)
        self.inflight: dict[int, Task] = {}
        self.ready: dict[int, Slot] = {}
        self.dispatched: set[int] = set()
        self.priority: deque = deque()  # (task, spec) with their own destination
        self.fills: deque = deque()
        self.fills_generated = False
        self.next_serve = 0
        self.current: Slot | None = None
        self._tid = 0
        self._plans: dict[int, object] = {}
        self._acks: dict[str, int] = {}
        self._groups: dict[int, int] = {}
        self._grow_warned = False
        self.last_progress = time.monotonic()

    def _init_stores(self):
        """No cache and no RAM copy until ``start`` finds or begins them (:class:`CacheStores`)."""
        self.disk_path = None  # complete disk cache
        self.disk_layout = None
        self.builder: CacheBuilder | None = None
        self.ram_seg = None
        self.ram_layout = None
        self.ram_complete = False
        self.ram_building = False
        self.planned = None  # bool per canonical event: assigned to a task that writes it
        self.written = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self):
        if self.started:
            return
        if self.res.closed:
            raise GeneratorError("generator is closed")
        t0 = time.perf_counter()
        self.started = True
        try:
            self._start_workers()
            for _ in range(self.base_slots):
                self._add_slot()
            self._setup_stores()
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.perf_counter() - t0
        logger.info(
            "started %d reader(s) (%s) and %d slots of %.1f MiB in %.2f s",
            self.n_workers,
            self.start_method,
            len(self.slots),
            self.slot_layout.size / 2**20,
            self.startup_seconds,
        )

    def _start_workers(self):
        cfg_bytes = self._worker_config()
        ctx = multiprocessing.get_context(self.start_method)
        self._main_needed = self.start_method != "fork" and needs_main(cfg_bytes)
        with spawn_environment(hide_main=self.start_method != "fork" and not self._main_needed, one_thread=True):
            for i in range(self.n_workers):
                parent, child = ctx.Pipe(duplex=True)
                p = ctx.Process(
                    target=worker_main, args=(i, child, cfg_bytes), name=f"dlkit-reader-{i}", daemon=True
                )
                p.start()
                child.close()
                self.res.procs.append(p)
                self.res.conns.append(parent)
                self.workers.append(WorkerHandle(i, p, parent))
        self._starting = pending = {w.index for w in self.workers}
        deadline = time.monotonic() + max(120.0, self.timeout)
        while pending:
            self._poll(min(1.0, max(0.0, deadline - time.monotonic())), pending=pending)
            if time.monotonic() > deadline and pending:
                raise GeneratorTimeoutError(
                    f"reader processes {sorted(pending)} did not start within "
                    f"{max(120.0, self.timeout):.0f} s"
                )

    def _worker_config(self) -> bytes:
        """What every reader gets once, pickled: the entries, the arrays, the pre-process."""
        inplace = [
            a.name
            for a in self.inputs
            if any(
                o.name == a.name and o.dtype == a.dtype and tuple(o.shape) == tuple(a.shape)
                for o in self.outputs
            )
        ]
        cfg = {
            "entries": self.entries,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "inplace": inplace,
            "preprocess": self.preprocess,
            "n_classes": self.planner.n_classes,
            "nice": self.nice,
        }
        try:
            return pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise TypeError(
                f"the pre-process function must be picklable to run in reader processes (define it "
                f"at module level, or use functools.partial / a callable class): {exc}"
            ) from None

    def close(self):
        self.res.cleanup()
        self.current = None
        self.ready.clear()
        self.inflight.clear()
        for s in self.slots:
            s.shm = None
        self.ram_seg = None

    def _fail(self, exc: BaseException):
        if self.failed is None:
            self.failed = exc
        self.close()
        raise exc

    def check_usable(self):
        if self.failed is not None:
            raise GeneratorError(f"the generator stopped after an error: {self.failed}") from self.failed
        if self.res.closed:
            raise GeneratorError("the generator is closed")

    # ------------------------------------------------------------------ shared memory
    def _new_segment(self, layout: BlockLayout):
        """Create a segment, let every reader attach it, then unlink its name at once."""
        shm = _shm.create(layout.size)
        self.res.segments.append(shm)
        self._acks[shm.name] = 0
        for w in self.workers:
            self._send(w, ("attach", shm.name, layout))
        deadline = time.monotonic() + max(60.0, self.timeout)
        while self._acks[shm.name] < len(self.workers):
            if time.monotonic() > deadline:
                raise GeneratorTimeoutError("readers did not attach shared memory in time")
            self._poll(1.0)
        del self._acks[shm.name]
        _shm.unlink(shm)
        return shm

    def _add_slot(self):
        shm = self._new_segment(self.slot_layout)
        self.slots.append(Slot(len(self.slots), shm))

    # ------------------------------------------------------------------ dispatch
    def _plan(self, epoch):
        plan = self._plans.get(epoch)
        if plan is None:
            plan = self.planner.epoch_plan(epoch)
            self._plans[epoch] = plan
            for old in [e for e in self._plans if e < epoch - 1]:
                del self._plans[old]
        return plan

    def _send(self, w: WorkerHandle, msg):
        try:
            w.conn.send(msg)
        except (BrokenPipeError, OSError, EOFError):
            self._dead(w)

    def _submit(self, w: WorkerHandle, task: Task, spec):
        self._tid += 1
        task.tid, task.worker = self._tid, w
        self.inflight[task.tid] = task
        w.outstanding += 1
        self._send(w, ("task", task.tid, spec))

    def _free_slot(self):
        for s in self.slots:
            if s.state == FREE:
                return s
        return None

    def _reclaim(self):
        for s in self.slots:
            if s.state == HELD and (s.ref is None or s.ref() is None):
                s.state, s.ref = FREE, None

    def _next_stream(self):
        s = self.next_serve
        limit = self.next_serve + len(self.slots)
        while s < limit:
            if s not in self.dispatched:
                return s
            s += 1
        return None

    def _pump(self):
        self._reclaim()
        nb = self.planner.n_batches
        while True:
            idle = [w for w in self.workers if w.outstanding < self.queue_depth]
            if not idle:
                return
            w = min(idle, key=lambda x: x.outstanding)
            if self.priority:
                task, spec = self.priority.popleft()
                self._submit(w, task, spec)
                continue
            slot = self._free_slot()
            if slot is None:
                return
            s = self._next_stream()
            if s is not None and s >= nb and not self.fills_generated:
                self._generate_fills()
            if self.fills and (s is None or s >= nb):
                self._submit_fill(w, slot)
                continue
            if s is None:
                return
            epoch, b = divmod(s, nb)
            runs = self._plan(epoch).batch_runs(b)
            src = self._source()
            write = None
            if src == "source" and epoch == 0:
                runs, write = self._write_runs(runs)
            written = 0 if write is None else int(runs[write, 2].sum())
            task = Task("stream", stream=s, slot=slot, written=written, desc=f"epoch {epoch} batch {b}")
            slot.state, slot.stream = BUSY, s
            self.dispatched.add(s)
            spec = {
                "kind": "batch",
                "src": src,
                "dest": (slot.shm.name, 0),
                "runs": runs,
                "n": int(self.planner.batch_sizes[b]),
                "perm": self.planner.perm_key(epoch, b),
                "write": write,
                "pseed": (self.seed, epoch, b),
            }
            self._submit(w, task, spec)

    # ------------------------------------------------------------------ receiving
    def _dead(self, w: WorkerHandle):
        w.proc.join(0.5)
        code = w.proc.exitcode
        how = "is gone"
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        elif code is not None:
            how = f"exited with code {code}"
        if w.index in self._starting and code is not None and code > 0:
            # died before it could say "ready": while Python bootstrapped it (re-importing the main module)
            self._fail(WorkerDiedError(start_failure(f"reader process {w.index} ({how})", self._main_needed)))
        doing = [t.desc for t in self.inflight.values() if t.worker is w]
        msg = f"reader process {w.index} (pid {w.pid}) {how}" + (
            f" while working on {', '.join(doing)}" if doing else ""
        )
        self._fail(WorkerDiedError(msg))

    def _handle(self, w: WorkerHandle, msg, pending=None):
        kind = msg[0]
        if kind == "done":
            self.last_progress = time.monotonic()
            task = self.inflight.pop(msg[1], None)
            w.outstanding -= 1
            if task is None:
                return
            for k, v in msg[2].items():
                if k in self.stats:
                    self.stats[k] += v
            self.stats["tasks"] += 1
            if task.kind == "stream":
                task.slot.state = READY
                self.ready[task.stream] = task.slot
            elif task.kind == "fill":
                task.slot.state = FREE
            if task.group is not None:
                self._groups[task.group] -= 1
                if task.kind == "load" and self._groups[task.group] == 0:
                    self.ram_complete = True
                    logger.info("cache loaded into RAM")
            self._written(task.written)
        elif kind == "error":
            task = self.inflight.pop(msg[1], None)
            info = msg[2]
            where = f" (while working on {task.desc})" if task is not None else ""
            if info["kind"] == "data":
                exc = DataError(info["message"], file=info["file"], key=info["key"])
            elif info["kind"] == "preprocess":
                exc = GeneratorError(f"preprocess failed{where}: {info['message']}")
            elif info["kind"] == "cache":
                exc = GeneratorError(f"{info['message']}{where}")
            else:
                exc = GeneratorError(f"reader {w.index} failed{where}: {info['message']}")
            exc.worker_traceback = info.get("traceback")
            logger.debug("reader %d traceback:\n%s", w.index, info.get("traceback"))
            self._fail(exc)
        elif kind == "attached":
            self._acks[msg[1]] = self._acks.get(msg[1], 0) + 1
        elif kind == "ready":
            w.pid = msg[1]
            if pending is not None:
                pending.discard(w.index)
        elif kind == "fatal":
            exc = GeneratorError(msg[1]["message"])
            exc.worker_traceback = msg[1].get("traceback")
            self._fail(exc)

    def _poll(self, timeout, pending=None):
        by_conn = {w.conn: w for w in self.workers}
        by_sentinel = {w.proc.sentinel: w for w in self.workers}
        try:
            ready = mp_wait(list(by_conn) + list(by_sentinel), timeout)
        except OSError:
            self.check_usable()
            raise
        for obj in ready:
            w = by_conn.get(obj)
            if w is not None:
                while True:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        msg = None  # reported below, outside the except: no chained traceback
                    if msg is None:
                        self._dead(w)
                    self._handle(w, msg, pending)
                    try:
                        if not w.conn.poll():
                            break
                    except (EOFError, OSError):
                        break
        for obj in ready:
            w = by_sentinel.get(obj)
            if w is not None:
                # drain what it said before dying (e.g. an error report), then report the death
                try:
                    while w.conn.poll():
                        self._handle(w, w.conn.recv(), pending)
                except (EOFError, OSError):
                    pass
                self._dead(w)

    def _wait_progress(self, what: str):
        now = time.monotonic()
        if not self.inflight and now - self.last_progress > self.timeout:
            self._fail(GeneratorError(f"internal error: waiting for {what} with no task in flight"))
        if self.inflight and now - self.last_progress > self.timeout:
            doing = ", ".join(sorted({t.desc for t in self.inflight.values()})[:4])
            self._fail(
                GeneratorTimeoutError(
                    f"no reader finished a task for {self.timeout:.0f} s while waiting for "
                    f"{what} (working on: {doing})"
                )
            )
        self._poll(0.05 if not self.inflight else min(1.0, self.timeout))

    def _out_of_slots(self):
        """Every slot is referenced by earlier batches: grow the ring a little, or fail clearly."""
        gc.collect()
        self._reclaim()
        if self._free_slot() is not None:
            return
        if len(self.slots) < self.max_slots:
            if not self._grow_warned:
                logger.debug(
                    "all %d batch slots are still referenced by earlier batches (tf.data prefetch, or "
                    "batches kept by the caller); adding slots, at most %d",
                    len(self.slots),
                    self.max_slots,
                )
                self._grow_warned = True
            self._add_slot()
            return
        deadline = time.monotonic() + 2.0  # TensorFlow releases aliased arrays with a short delay
        while time.monotonic() < deadline:
            time.sleep(0.01)
            self._reclaim()
            if self._free_slot() is not None:
                return
        self._fail(
            GeneratorError(
                f"all {len(self.slots)} shared-memory batch slots are still referenced by earlier "
                "batches; a batch is only guaranteed until the next one is requested - copy the "
                "batches you keep (np.array) or use read_all()/preload"
            )
        )

    # ------------------------------------------------------------------ serving
    def fetch(self, s: int) -> dict[str, np.ndarray]:
        """The arrays of stream batch ``s`` (views on shared memory)."""
        self.check_usable()
        self.start()
        if self.current is not None:
            self.current.state = HELD
            self.current = None
        self.next_serve = s
        for old in [k for k in self.ready if k < s]:
            slot = self.ready.pop(old)
            slot.state = FREE
            self.dispatched.discard(old)
        self.last_progress = time.monotonic()
        while s not in self.ready:
            self._pump()
            if s in self.ready:
                break
            if not self.inflight:
                self._out_of_slots()
                continue
            self._wait_progress(f"batch {s % self.planner.n_batches} of epoch {s // self.planner.n_batches}")
        slot = self.ready.pop(s)
        self.dispatched.discard(s)
        self.next_serve = s + 1
        self._pump()  # keep the readers busy while the consumer works on this batch
        n = int(self.planner.batch_sizes[s % self.planner.n_batches])
        # One fresh uint8 array over the slot; its base (a memoryview numpy made for it) is referenced by
        # every array handed out and everything derived from them, TF's zero-copy tensors included.
        u8 = np.frombuffer(slot.shm.buf, dtype=np.uint8, count=self.slot_layout.size)
        slot.ref = weakref.ref(u8.base)
        arrays = self.slot_layout.views(u8, n)
        del u8
        slot.state = CURRENT
        self.current = slot
        return arrays

    def rewind(self, s0: int):
        """Serve from stream index ``s0`` again (batches are deterministic, so this only re-reads)."""
        if self.current is not None:
            self.current.state = HELD
            self.current = None
        self.next_serve = s0


def _cached_sources(entries, cache_location) -> list[str]:
    """The entries' files kept in a cache directory (calodnn's premixed files): held while the generator lives."""
    dirs = [str(d) for d in cache_location.read_dirs] if cache_location is not None else [
        str(user_cache_dir()), os.environ.get(CACHE_ENV, "")]
    dirs = [d.rstrip(os.sep) + os.sep for d in dirs if d]
    return sorted({e.path for e in entries if any(e.path.startswith(d) for d in dirs)})
