"""What the reader pool owns and must release, and the records it keeps: the readers' handles, the ring's
batch slots (and their states), the tasks in flight.

:class:`Resources` is owned by a ``weakref.finalize`` of the generator, so it must not reference the pool or the
generator: it stops the readers, unlinks shared memory, aborts an unfinished cache and drops the file locks,
once, from whichever of ``close()``, garbage collection or interpreter exit comes first.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time

from dlkit.generators import _shm
from dlkit.generators.cache import try_lock

# a slot's states: free; a reader writes it; holds a batch not yet served; the batch being served; served but
# possibly still referenced (tf.data prefetch, zero-copy tensors)
FREE, BUSY, READY, CURRENT, HELD = range(5)


class Resources:
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
                    # a reader that is itself blocked sending (its consumer stopped reading, e.g. on Ctrl-C)
                    # reads nothing: a send into its full pipe would block this cleanup for ever; it is killed below
                    if select.select([], [c], [], 0.5)[1]:
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


class WorkerHandle:
    __slots__ = ("conn", "index", "outstanding", "pid", "proc")

    def __init__(self, index, proc, conn):
        self.index, self.proc, self.conn = index, proc, conn
        self.pid = proc.pid
        self.outstanding = 0


class Slot:
    __slots__ = ("index", "ref", "shm", "state", "stream")

    def __init__(self, index, shm):
        self.index, self.shm = index, shm
        self.state = FREE
        self.ref = None
        self.stream = None


class Task:
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
