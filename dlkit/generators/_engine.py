"""Consumer side of the pipeline: reader processes, the ring of shared-memory batch slots, the caches.

No Keras here; :mod:`dlkit.generators.generator` wraps this in a ``keras.utils.PyDataset``.

Flow control: the engine hands a reader a task only when a slot is free, so memory is bounded by the
slots (``n_workers * queue_depth + 3``). A served batch's slot is reused only after the consumer has
asked for a later batch *and* nothing references the batch's arrays any more (a weak reference to the
memoryview under the arrays): TensorFlow wraps 64-byte-aligned numpy arrays without copying, so a batch
sitting in tf.data's prefetch buffer stays intact. If the consumer keeps batches, the ring grows to a
cap, then the engine raises rather than deadlock.

Failure handling: the engine waits with ``multiprocessing.connection.wait`` on the readers' pipes *and*
process sentinels, so a reader that dies is noticed at once; reader errors come back as messages and
are raised here as :class:`DataError` (naming file and key) or :class:`GeneratorError`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import types
import weakref
from collections import deque
from multiprocessing.connection import wait as mp_wait

import numpy as np

from dlkit.cachedir import CACHE_ENV, user_cache_dir
from dlkit.generators import _shm
from dlkit.generators._layout import BlockLayout
from dlkit.generators._plan import mask_runs
from dlkit.generators._worker import worker_main
from dlkit.generators.cache import CacheBuilder, find_cache, open_layout, try_lock
from dlkit.generators.errors import DataError, GeneratorError, GeneratorTimeoutError, WorkerDiedError

logger = logging.getLogger(__name__)

FREE, BUSY, READY, CURRENT, HELD = range(5)
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@contextlib.contextmanager
def _spawn_environment(hide_main: bool):
    """Start readers with one BLAS thread each and, if possible, without re-running the user's script.

    spawn/forkserver children normally re-import ``__main__`` (a training script importing Keras would
    import TensorFlow in every reader); when nothing the readers need lives in ``__main__``, it is hidden
    while the processes start.
    """
    saved_env = {k: os.environ.get(k) for k in _THREAD_ENV}
    for k in _THREAD_ENV:
        os.environ.setdefault(k, "1")
    main = sys.modules.get("__main__")
    if hide_main and main is not None:
        sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if hide_main and main is not None:
            sys.modules["__main__"] = main
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _Resources:
    """What must be released; owned by a weakref.finalize, so it must not reference the generator."""

    def __init__(self):
        self.procs = []
        self.conns = []
        self.segments = []
        self.builder = None
        # fds under shared flocks, kept while the generator lives: the cache it reads and its source files in a
        # cache directory (premixed files), so the size limit and `dlkit.cache clean` leave them alone
        self.locks = []
        self.lock = threading.Lock()
        self.closed = False
        self.owner = os.getpid()

    def hold(self, *paths) -> None:
        """Hold a shared flock on each of ``paths`` until cleanup (one that cannot be locked is skipped)."""
        for path in paths:
            fd = try_lock(path)
            if fd is not None:
                self.locks.append(fd)

    def cleanup(self):
        with self.lock:
            if self.closed:
                return
            self.closed = True
            if (
                os.getpid() != self.owner
            ):  # a forked copy of the consumer must not stop the real one's readers
                return
            for c in self.conns:
                try:
                    c.send(("stop",))
                except Exception:
                    pass
            for c in self.conns:
                try:
                    c.close()
                except Exception:
                    pass
            deadline = time.monotonic() + 3.0
            for p in self.procs:
                try:
                    p.join(max(0.0, deadline - time.monotonic()))
                except Exception:
                    pass
            for p in self.procs:
                try:
                    if p.is_alive():
                        p.terminate()
                        p.join(2.0)
                    if p.is_alive():
                        p.kill()
                        p.join(2.0)
                except Exception:
                    pass
            for s in self.segments:
                _shm.unlink(s)
                _shm.close(s)
            self.segments.clear()
            if self.builder is not None:
                self.builder.abort()
                self.builder = None
            for fd in self.locks:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.locks.clear()
            for p in self.procs:
                with contextlib.suppress(Exception):
                    p.close()
            self.procs.clear()
            self.conns.clear()


class _WorkerHandle:
    __slots__ = ("conn", "index", "outstanding", "pid", "proc")

    def __init__(self, index, proc, conn):
        self.index, self.proc, self.conn = index, proc, conn
        self.pid = proc.pid
        self.outstanding = 0


class _Slot:
    __slots__ = ("index", "ref", "shm", "state", "stream")

    def __init__(self, index, shm):
        self.index, self.shm = index, shm
        self.state = FREE
        self.ref = None
        self.stream = None


class _Task:
    __slots__ = ("desc", "group", "kind", "slot", "stream", "tid", "worker", "written")

    def __init__(self, kind, stream=None, slot=None, written=0, group=None, desc=""):
        self.tid = None
        self.kind, self.stream, self.slot, self.written, self.group, self.desc = (
            kind,
            stream,
            slot,
            written,
            group,
            desc,
        )
        self.worker = None


class Engine:
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
        # sources kept in a cache directory (calodnn's premixed files): held while the generator lives
        dirs = [str(d) for d in cache_location.read_dirs] if cache_location is not None else [
            str(user_cache_dir()), os.environ.get(CACHE_ENV, "")]
        dirs = [d.rstrip(os.sep) + os.sep for d in dirs if d]
        self.cached_sources = sorted({e.path for e in entries if any(e.path.startswith(d) for d in dirs)})
        self.cache_key = cache_key
        self.preload = bool(preload)
        self.seed = int(seed)
        self.meta = meta
        self.nice = int(nice or 0)
        self.slot_layout = BlockLayout.build(slot_arrays, planner.batch_size)
        self.n_canonical = planner.n_canonical
        self.res = _Resources()
        self.res.hold(*self.cached_sources)  # from construction on: a later start finds them there
        self.started = False
        self.failed: BaseException | None = None
        self.workers: list[_WorkerHandle] = []
        self.slots: list[_Slot] = []
        # readers' queues, the batch being served, and up to two held by tf.data's prefetch (zero-copy)
        self.base_slots = self.n_workers * self.queue_depth + 3
        self.max_slots = max(2 * self.base_slots, self.base_slots + 8)
        self.inflight: dict[int, _Task] = {}
        self.ready: dict[int, _Slot] = {}
        self.dispatched: set[int] = set()
        self.priority: deque = deque()  # (task, spec) with their own destination
        self.fills: deque = deque()
        self.fills_generated = False
        self.next_serve = 0
        self.current: _Slot | None = None
        self._tid = 0
        self._plans: dict[int, object] = {}
        self._acks: dict[str, int] = {}
        self._groups: dict[int, int] = {}
        self._grow_warned = False
        self.last_progress = time.monotonic()
        # caches
        self.disk_path = None  # complete disk cache
        self.disk_layout = None
        self.builder: CacheBuilder | None = None
        self.ram_seg = None
        self.ram_layout = None
        self.ram_complete = False
        self.ram_building = False
        self.planned = None  # bool per canonical event: assigned to a task that writes it
        self.written = 0
        self.stats = {"read": 0.0, "preprocess": 0.0, "write": 0.0, "tasks": 0}
        self.startup_seconds = None

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
            cfg_bytes = pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise TypeError(
                f"the pre-process function must be picklable to run in reader processes (define it "
                f"at module level, or use functools.partial / a callable class): {exc}"
            ) from None
        ctx = multiprocessing.get_context(self.start_method)
        hide = self.start_method != "fork" and b"__main__" not in cfg_bytes
        with _spawn_environment(hide):
            for i in range(self.n_workers):
                parent, child = ctx.Pipe(duplex=True)
                p = ctx.Process(
                    target=worker_main, args=(i, child, cfg_bytes), name=f"dlkit-reader-{i}", daemon=True
                )
                p.start()
                child.close()
                self.res.procs.append(p)
                self.res.conns.append(parent)
                self.workers.append(_WorkerHandle(i, p, parent))
        pending = {w.index for w in self.workers}
        deadline = time.monotonic() + max(120.0, self.timeout)
        while pending:
            self._poll(min(1.0, max(0.0, deadline - time.monotonic())), pending=pending)
            if time.monotonic() > deadline and pending:
                raise GeneratorTimeoutError(
                    f"reader processes {sorted(pending)} did not start within "
                    f"{max(120.0, self.timeout):.0f} s"
                )

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
        self.slots.append(_Slot(len(self.slots), shm))

    # ------------------------------------------------------------------ caches
    def _setup_stores(self):
        N = self.n_canonical
        if self.cache_location is not None:
            path = find_cache(self.cache_location, self.cache_key, N, self.outputs)
            if path is not None:
                self.disk_path = path
                self.res.hold(path)
                self.disk_layout = open_layout(path, self.outputs, N)
                for w in self.workers:
                    self._send(w, ("store", "disk", str(path), self.disk_layout, False, None))
                logger.info("reading cache %s", path)
            else:
                try:
                    self.builder = CacheBuilder(
                        self.cache_location.write, self.cache_key, self.outputs, N, self.meta
                    )
                except OSError as exc:
                    logger.warning(
                        "cannot create a cache in %s (%s); continuing without", self.cache_location.write, exc
                    )
                    self.builder = None
                if self.builder is not None:
                    self.res.builder = self.builder
                    # The final name goes along: a reader may see this message only after another reader
                    # completed the cache and it was renamed (a one-batch epoch does that).
                    tmp, final = str(self.builder.tmp), str(self.builder.final)
                    store = ("store", "disk", tmp, self.builder.layout, True, final)
                    for w in self.workers:
                        self._send(w, store)
        if self.preload:
            self.ram_layout = BlockLayout.build(self.outputs, N)
            self.ram_seg = self._new_segment(self.ram_layout)
            if self.disk_path is not None:
                for w in self.workers:
                    self._send(w, ("store", "ram", self.ram_seg.name, None, False, None))
                step = max(1, self.planner.batch_size)
                group = self._new_group()
                for a in self.outputs:
                    for g0 in range(0, N, step):
                        t = _Task("load", group=group, desc=f"preload {a.name}[{g0}:]")
                        self._groups[group] += 1
                        self.priority.append(
                            (t, {"kind": "load", "name": a.name, "g0": g0, "count": min(step, N - g0)})
                        )
                self._load_group = group
            else:
                self.ram_building = True
                for w in self.workers:
                    self._send(w, ("store", "ram", self.ram_seg.name, None, True, None))
        if self.builder is not None or self.ram_building:
            self.planned = np.zeros(N, dtype=bool)

    @property
    def building(self) -> bool:
        return self.planned is not None and self.written < self.n_canonical

    def _source(self) -> str:
        if self.ram_complete:
            return "ram"
        if self.disk_path is not None:
            return "disk"
        return "source"

    def _write_runs(self, runs):
        """``(runs, mask)``: the runs, split where the cache already has (or is getting) the events, and which
        of them this task writes; those are marked as taken. ``mask`` is None when nothing is written."""
        if not self.building or len(runs) == 0:
            return runs, None
        g = self.planner.canonical_start(runs)
        out, mask = [], []
        for (e, p, c, o), a in zip(runs.tolist(), g.tolist()):
            seg = self.planned[a : a + c]
            if not seg.any() or seg.all():
                out.append((e, p, c, o))
                mask.append(not seg.any())
                continue
            bounds = [0, *(np.flatnonzero(np.diff(seg.astype(np.int8))) + 1).tolist(), c]
            for x, y in zip(bounds[:-1], bounds[1:]):
                out.append((e, p + x, y - x, o + x))
                mask.append(not seg[x])
        runs = np.asarray(out, dtype=np.int64).reshape(-1, 4)
        mask = np.asarray(mask, dtype=bool)
        for a, c in zip(self.planner.canonical_start(runs[mask]).tolist(), runs[mask, 2].tolist()):
            self.planned[a : a + c] = True
        return runs, (mask if mask.any() else None)

    def _written(self, n: int):
        if n <= 0:
            return
        self.written += n
        if self.written >= self.n_canonical:
            if self.builder is not None:
                try:
                    self.disk_path = self.builder.finalize()
                    self.res.hold(self.disk_path)
                    self.disk_layout = self.builder.layout
                except OSError as exc:
                    logger.warning("could not finalize the cache (%s)", exc)
                    self.builder.abort()
                self.res.builder = None
                self.builder = None
            if self.ram_building:
                self.ram_building = False
                self.ram_complete = True
            self.planned = None
            logger.info(
                "first pass complete: later epochs read the %s", "RAM copy" if self.ram_complete else "cache"
            )

    def _generate_fills(self):
        self.fills_generated = True
        if not self.building:
            return
        starts, ends = mask_runs(~self.planned)
        B = self.planner.batch_size
        pieces, size = [], 0
        for a, z in zip(starts.tolist(), ends.tolist()):
            while a < z:
                take = min(z - a, B - size)
                pieces.append((a, a + take))
                size += take
                a += take
                if size == B:
                    self.fills.append(pieces)
                    pieces, size = [], 0
        if pieces:
            self.fills.append(pieces)
        if self.fills:
            logger.debug(
                "%d tasks to complete the cache with events unused in the first epoch", len(self.fills)
            )

    def _fill_spec(self, pieces):
        runs, off = [], 0
        for a, z in pieces:
            r = self.planner.canonical_runs(a, z)
            r[:, 3] += off
            off += z - a
            runs.append(r)
        runs = np.concatenate(runs)
        return runs, off

    # ------------------------------------------------------------------ dispatch
    def _new_group(self) -> int:
        self._tid += 1
        gid = -self._tid
        self._groups[gid] = 0
        return gid

    def _plan(self, epoch):
        plan = self._plans.get(epoch)
        if plan is None:
            plan = self.planner.epoch_plan(epoch)
            self._plans[epoch] = plan
            for old in [e for e in self._plans if e < epoch - 1]:
                del self._plans[old]
        return plan

    def _send(self, w: _WorkerHandle, msg):
        try:
            w.conn.send(msg)
        except (BrokenPipeError, OSError, EOFError):
            self._dead(w)

    def _submit(self, w: _WorkerHandle, task: _Task, spec):
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
            task = _Task("stream", stream=s, slot=slot, written=written, desc=f"epoch {epoch} batch {b}")
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
    def _dead(self, w: _WorkerHandle):
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
        doing = [t.desc for t in self.inflight.values() if t.worker is w]
        msg = f"reader process {w.index} (pid {w.pid}) {how}" + (
            f" while working on {', '.join(doing)}" if doing else ""
        )
        self._fail(WorkerDiedError(msg))

    def _handle(self, w: _WorkerHandle, msg, pending=None):
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
                logger.info(
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

    # ------------------------------------------------------------------ whole-dataset reads
    def complete_stores(self, progress=None):
        """Read whatever the cache (disk and/or RAM) still lacks, and wait until it is complete.

        ``progress``: optional callable(events stored, events in total), called as the cache fills."""
        self.check_usable()
        self.start()
        if self.building:
            self.fills_generated = False
            self._generate_fills()
        self.last_progress = time.monotonic()
        while self.building or (
            self.ram_seg is not None
            and not self.ram_complete
            and self._groups.get(getattr(self, "_load_group", 0))
        ):
            self._pump_fills()
            if self.fills and not self.inflight and self._free_slot() is None:
                # every slot holds a read-ahead batch nobody is asking for now: drop them (they are
                # deterministic and are read again when requested) to make room for the cache fill
                for k in [k for k in self.ready if k >= self.next_serve]:
                    slot = self.ready.pop(k)
                    slot.state = FREE
                    self.dispatched.discard(k)
                self._pump_fills()
            if self.fills or self.inflight or self.priority:
                self._pump_priority()
                self._wait_progress("the cache")
                if progress is not None:
                    progress(min(self.written, self.n_canonical) if self.planned is not None else self.n_canonical,
                             self.n_canonical)
            elif self.building:
                self._fail(
                    GeneratorError(
                        f"internal error: the cache lacks {self.n_canonical - self.written} "
                        "events but no task is left to write them"
                    )
                )

    def _pump_priority(self):
        while self.priority:
            idle = [w for w in self.workers if w.outstanding < self.queue_depth]
            if not idle:
                return
            task, spec = self.priority.popleft()
            self._submit(min(idle, key=lambda x: x.outstanding), task, spec)

    def _pump_fills(self):
        """Dispatch cache-fill tasks even when the stream is not past its first epoch."""
        self._reclaim()
        while self.fills:
            idle = [w for w in self.workers if w.outstanding < self.queue_depth]
            slot = self._free_slot()
            if not idle or slot is None:
                return
            self._submit_fill(min(idle, key=lambda x: x.outstanding), slot)

    def _submit_fill(self, w, slot) -> None:
        """Send the next cache-fill piece to reader ``w`` (into ``slot``): the events no epoch has read yet.
        Nothing is sent (the slot stays free) when other tasks already write all of them."""
        runs, n = self._fill_spec(self.fills.popleft())
        runs, write = self._write_runs(runs)
        if write is None:
            return
        task = _Task("fill", slot=slot, written=int(runs[write, 2].sum()), desc="cache fill")
        slot.state = BUSY
        spec = {"kind": "batch", "src": "source", "dest": (slot.shm.name, 0), "runs": runs, "n": n, "perm": None,
                "write": write, "pseed": (self.seed, -2, len(self.fills))}
        self._submit(w, task, spec)

    def read_canonical(self) -> dict[str, np.ndarray]:
        """Every selected event's output arrays, canonical order, in memory that outlives the engine."""
        self.check_usable()
        self.start()
        N = self.n_canonical
        # make sure the preload copy is loaded before deciding
        while (
            self.ram_seg is not None
            and not self.ram_complete
            and self._groups.get(getattr(self, "_load_group", 0))
        ):
            self._pump()
            self._wait_progress("the preload")
        if self.ram_complete:
            return self.ram_layout.views(self.ram_seg.buf)
        layout = BlockLayout.build(self.outputs, N)
        shm = self._new_segment(layout)
        group = self._new_group()
        src = self._source()
        B = self.planner.batch_size
        for i, (row0, runs) in enumerate(self.planner.canonical_tasks(B)):
            write = None
            if src == "source":
                runs, write = self._write_runs(runs)
            written = 0 if write is None else int(runs[write, 2].sum())
            t = _Task("dest", group=group, written=written, desc=f"read_all rows {row0}..")
            self._groups[group] += 1
            self.priority.append(
                (
                    t,
                    {
                        "kind": "batch",
                        "src": src,
                        "dest": (shm.name, row0),
                        "runs": runs,
                        "n": int(runs[:, 2].sum()),
                        "perm": None,
                        "write": write,
                        "pseed": (self.seed, -1, i),
                    },
                )
            )
        self.last_progress = time.monotonic()
        # wait for our tasks, and for tasks still writing the cache (so that it can be complete now)
        while self._groups[group] > 0 or any(t.written for t in self.inflight.values()):
            self._pump()
            self._wait_progress("read_all")
        del self._groups[group]
        for w in self.workers:
            self._send(w, ("detach", shm.name))
        self.res.segments.remove(shm)
        buf = _shm.detach_buffer(shm)
        return layout.views(buf)
