"""The reader pool's stores: the disk cache and the RAM copy (``preload``) that the first pass fills.

:class:`CacheStores` is the part of :class:`~dlkit.generators._pool.ReaderPool` that decides which store a task
reads from (the sample files, the disk cache, the RAM copy), which of its events it writes into the cache
being built (each event exactly once, whichever task reads it first), the fill tasks that complete the cache
with the events no epoch read, and the whole-dataset reads (``read_all``, ``build_cache``).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from dlkit.cachedir import record_use
from dlkit.generators import _shm
from dlkit.generators._layout import BlockLayout
from dlkit.generators._plan import mask_runs
from dlkit.generators._resources import BUSY, FREE, Task
from dlkit.generators.cache import CacheBuilder, find_cache, open_layout
from dlkit.generators.errors import GeneratorError

logger = logging.getLogger(__name__)


class CacheStores:
    """Mixin of :class:`~dlkit.generators._pool.ReaderPool`: the cache and the RAM copy (see the module)."""

    def _setup_stores(self):
        N = self.n_canonical
        if self.cache_location is not None:
            path = find_cache(self.cache_location, self.cache_key, N, self.outputs)
            if path is not None:
                self.disk_path = path
                self.res.hold(path)
                record_use(path)
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
                        t = Task("load", group=group, desc=f"preload {a.name}[{g0}:]")
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
                    record_use(self.disk_path)
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

    def _new_group(self) -> int:
        self._tid += 1
        gid = -self._tid
        self._groups[gid] = 0
        return gid

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
        task = Task("fill", slot=slot, written=int(runs[write, 2].sum()), desc="cache fill")
        slot.state = BUSY
        spec = {"kind": "batch", "src": "source", "dest": (slot.shm.name, 0), "runs": runs, "n": n, "perm": None,
                "write": write, "pseed": (self.seed, -2, len(self.fills))}
        self._submit(w, task, spec)

    def read_canonical(self) -> dict[str, np.ndarray]:
        """Every selected event's output arrays, canonical order, in memory that outlives the pool."""
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
            t = Task("dest", group=group, written=written, desc=f"read_all rows {row0}..")
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
