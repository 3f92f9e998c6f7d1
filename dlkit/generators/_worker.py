"""Reader process: reads, labels, pre-processes and caches whole batches straight into shared memory.

Imports only numpy (h5py, uproot or pyarrow lazily, for what cannot be read raw), never Keras or TensorFlow,
so a spawned reader starts in a fraction of a second. Each reader opens its own file descriptors and file
handles. The protocol with the consumer is a duplex pipe of small messages:

    consumer -> reader: ("attach", name, layout) | ("detach", name) | ("task", id, spec)
                        | ("store", which, path, layout, writable, final_path)
                        | ("stop",)
    reader -> consumer: ("ready", pid) | ("attached", name) | ("done", id, stats) | ("error", id, info)
                        | ("fatal", info)

A task's rows are read with ``os.preadv`` directly into their (permuted) destination rows: the batch is
shuffled without a second copy. SIGINT is ignored (the consumer decides); end-of-file on the pipe, i.e.
a dead consumer, ends the reader.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import time
import traceback
from collections import OrderedDict

import numpy as np

from dlkit.generators import sources
from dlkit.generators.errors import DataError
from dlkit.generators.samples import Collection
from dlkit.generators.sources import hdf5

IOV_MAX = 1024
SMALL_ROW = 512  # rows smaller than this are read contiguously then scattered with numpy


class TaskError(Exception):
    def __init__(self, message, file=None, key=None, kind="data"):
        super().__init__(message)
        self.message, self.file, self.key, self.kind = message, file, key, kind


def _seed32(key) -> int:
    # SeedSequence takes non-negative entries only; the special passes use negative epoch tags (-1, -2).
    return int(np.random.SeedSequence([int(k) % 2**32 for k in key]).generate_state(1)[0])


def _preadv_full(fd, iov, offset, total, path, key):
    """preadv that insists on ``total`` bytes; a short read means the file is truncated."""
    got = os.preadv(fd, iov, offset)
    while got < total:
        if got <= 0:
            raise TaskError(f"unexpected end of file at byte {offset} (file truncated?)", path, key)
        offset += got
        total -= got
        rest, skip = [], got
        for b in iov:
            n = len(b)
            if skip >= n:
                skip -= n
                continue
            rest.append(b[skip:] if skip else b)
            skip = 0
        iov = rest
        got = os.preadv(fd, iov, offset)


def _pwritev_full(fd, iov, offset, total):
    done = os.pwritev(fd, iov, offset)
    while done < total:
        if done <= 0:
            raise OSError("short write to the cache file")
        offset += done
        total -= done
        rest, skip = [], done
        for b in iov:
            n = len(b)
            if skip >= n:
                skip -= n
                continue
            rest.append(b[skip:] if skip else b)
            skip = 0
        iov = rest
        done = os.pwritev(fd, iov, offset)


class _Target:
    """Where an array's rows go: a numpy array plus a flat byte view of the same memory."""

    __slots__ = ("arr", "base", "mv", "rb")

    def __init__(self, arr, rb, base):
        self.arr = arr  # rows x ... (whole capacity)
        self.mv = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")
        self.rb = rb
        self.base = base  # row offset of row 0 of this task


class _Segment:
    def __init__(self, shm, layout):
        self.shm, self.layout = shm, layout
        self.views = layout.views(shm.buf)

    def close(self):
        self.views = None
        try:
            self.shm.close()
        except Exception:
            pass


class Worker:
    def __init__(self, worker_id, cfg):
        self.id = worker_id
        self.entries = cfg["entries"]
        self.inputs = cfg["inputs"]
        self.outputs = cfg["outputs"]
        self.inplace = set(cfg["inplace"])
        self.preprocess = cfg["preprocess"]
        self.n_classes = cfg["n_classes"]
        self.max_open = cfg.get("max_open", 256)
        self.entry_class = np.array([e.class_index for e in self.entries], np.int64)
        self.entry_weight = np.array([e.weight for e in self.entries], np.float32)
        self.entry_base = np.concatenate([[0], np.cumsum([e.n for e in self.entries])]).astype(np.int64)
        self.spec_of = {a.name: a for a in self.inputs}
        self.segments: dict[str, _Segment] = {}
        self.fds: OrderedDict[str, int] = OrderedDict()
        self.handles: OrderedDict[tuple, object] = OrderedDict()  # (format, path, tree) -> open file
        self.scratch: dict[str, np.ndarray] = {}
        self.disk = None  # (fd, layout, writable)
        self.checker = None  # a finished cache's BlockChecker (read-only stores)
        self.ram = None  # (segment name, writable)

    # -- resources -------------------------------------------------------------------------------
    def _fd(self, path):
        fd = self.fds.get(path)
        if fd is not None:
            self.fds.move_to_end(path)
            return fd
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise TaskError(f"cannot open: {exc.strerror}", path) from None
        self.fds[path] = fd
        while len(self.fds) > self.max_open:
            _, old = self.fds.popitem(last=False)
            os.close(old)
        return fd

    def _handle(self, entry):
        """The entry's file opened by its format's module (HDF5 through h5py, ROOT, parquet), kept open."""
        key = (entry.format, entry.path, entry.tree)
        f = self.handles.get(key)
        if f is not None:
            self.handles.move_to_end(key)
            return f
        try:
            f = sources.module(entry.format).open_file(entry.path, entry.tree)
        except Exception as exc:
            raise TaskError(f"cannot open as {entry.format} (truncated or corrupt?): {type(exc).__name__}: {exc}",
                            entry.path) from None
        self.handles[key] = f
        while len(self.handles) > self.max_open:  # reopening costs ~10 ms (ROOT): keep as many as fds
            _, old = self.handles.popitem(last=False)
            old.close()
        return f

    def _scratch(self, spec, n):
        buf = self.scratch.get(spec.name)
        if buf is None or len(buf) < n:
            buf = np.empty((max(n, 1),) + tuple(spec.shape), spec.np_dtype)
            self.scratch[spec.name] = buf
        return buf

    def close(self):
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
        for f in self.handles.values():
            try:
                f.close()
            except Exception:
                pass
        self.handles.clear()
        if self.disk is not None:
            try:
                os.close(self.disk[0])
            except OSError:
                pass
            self.disk = None
        for seg in self.segments.values():
            seg.close()
        self.segments.clear()

    # -- messages --------------------------------------------------------------------------------
    def handle(self, msg):
        kind = msg[0]
        if kind == "attach":
            from dlkit.generators import _shm

            _, name, layout = msg
            self.segments[name] = _Segment(_shm.attach(name), layout)
            return ("attached", name)
        if kind == "detach":
            seg = self.segments.pop(msg[1], None)
            if seg is not None:
                seg.close()
            if self.ram is not None and self.ram[0] == msg[1]:
                self.ram = None
            return None
        if kind == "store":
            self._store(*msg[1:])
            return None
        if kind == "task":
            return self._task(msg[1], msg[2])
        raise ValueError(f"unknown message {kind!r}")

    def _store(self, which, arg, layout, writable, final):
        """Where the pre-processed events go (and, once complete, are read from): the disk cache or the RAM copy."""
        if which != "disk":
            self.ram = (arg, writable)
            return
        found_complete = not writable  # a finished cache found at start: verified as it is read
        if self.disk is not None:
            os.close(self.disk[0])
        try:
            # O_NOFOLLOW: the consumer checked the file (dlkit.cachedir); never a symlink put there since
            fd = os.open(arg, (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW)
        except FileNotFoundError:
            if final is None:
                raise
            # Completed and renamed before this message was read: nothing is left to write.
            fd, writable = os.open(final, os.O_RDONLY | os.O_NOFOLLOW), False
        self.disk = (fd, layout, writable)
        self.checker = None
        if found_complete:
            from dlkit.generators.cache import BlockChecker

            self.checker = BlockChecker(fd, arg)

    def _task(self, tid, spec):
        """Run one task: ``("done", tid, stats)`` or ``("error", tid, what went wrong)``."""
        t0 = time.perf_counter()
        try:
            stats = self.run_task(spec)
        except TaskError as exc:
            info = {"kind": exc.kind, "message": exc.message, "file": exc.file, "key": exc.key}
            return ("error", tid, dict(info, traceback=traceback.format_exc()))
        except Exception as exc:
            info = {"kind": "internal", "message": f"{type(exc).__name__}: {exc}", "file": None, "key": None}
            return ("error", tid, dict(info, traceback=traceback.format_exc()))
        stats["total"] = time.perf_counter() - t0
        return ("done", tid, stats)

    # -- reading ---------------------------------------------------------------------------------
    def _check(self, offset, nbytes):
        """Verify the finished cache's blocks under [offset, offset + nbytes) the first time they are read; a
        corrupt file is removed (when it is this user's) so the next run rebuilds it."""
        if self.checker is None:
            return
        from dlkit.generators.errors import DataError

        try:
            self.checker.check(offset, nbytes)
        except DataError as exc:
            try:
                if os.stat(self.checker.path).st_uid == os.getuid():
                    os.unlink(self.checker.path)
            except OSError:
                pass
            raise TaskError(exc.reason, self.checker.path, None) from None

    def _scatter_read(self, fd, file_off, cnt, tgt, rows, start, path, key):
        """Read ``cnt`` consecutive rows at ``file_off`` into target rows ``rows`` (or start..)."""
        rb = tgt.rb
        if rb == 0 or cnt == 0:
            return
        if rows is None:
            a = (tgt.base + start) * rb
            _preadv_full(fd, [tgt.mv[a : a + cnt * rb]], file_off, cnt * rb, path, key)
            return
        if rb < SMALL_ROW:
            tmp = np.empty(cnt * rb, np.uint8)
            _preadv_full(fd, [memoryview(tmp)], file_off, cnt * rb, path, key)
            flat = tgt.arr.reshape(len(tgt.arr), -1).view(np.uint8)
            flat[tgt.base + rows] = tmp.reshape(cnt, rb)
            return
        mv, base = tgt.mv, tgt.base
        for i in range(0, cnt, IOV_MAX):
            part = rows[i : i + IOV_MAX]
            iov = [mv[(base + r) * rb : (base + r + 1) * rb] for r in part.tolist()]
            _preadv_full(fd, iov, file_off + i * rb, len(part) * rb, path, key)

    def _read_entry(self, entry, spec, path, pos, cnt, tgt, rows, start):
        """Selected events [pos, pos+cnt) of ``entry``'s dataset into the target rows."""
        mode, ext = entry.modes[spec.name]
        if entry.selection is None:
            groups = [(entry.start + pos, cnt, 0)]
        else:
            sel = entry.selection[pos : pos + cnt]
            brk = np.flatnonzero(np.diff(sel) != 1) + 1
            starts = np.concatenate([[0], brk])
            ends = np.concatenate([brk, [len(sel)]])
            groups = [(int(sel[a]), int(b - a), int(a)) for a, b in zip(starts, ends)]
        if mode == "raw":
            fd = self._fd(entry.path)
            for r_abs, length, j0 in groups:
                while length > 0:
                    x = int(np.searchsorted(ext[:, 0], r_abs, side="right")) - 1
                    first, n_ext, off = (int(v) for v in ext[x])
                    take = min(length, first + n_ext - r_abs)
                    sub = None if rows is None else rows[j0 : j0 + take]
                    self._scatter_read(
                        fd, off + (r_abs - first) * tgt.rb, take, tgt, sub, start + j0, entry.path, path
                    )
                    r_abs += take
                    length -= take
                    j0 += take
            return
        f = self._handle(entry)
        try:
            hdf5.read_rows(f, path, groups, spec, tgt, rows, start)
        except TaskError:
            raise
        except Exception as exc:
            raise TaskError(
                f"read of events {groups[0][0]}.. failed: {type(exc).__name__}: {exc}", entry.path, path
            ) from None

    def _read_format(self, entry, name, path, pos, cnt, targets, rows, off):
        """Selected events [pos, pos+cnt) of one key read by the entry's format (ROOT, parquet, a collection),
        into the rows of each array the key gives."""
        mod = sources.module(entry.format)
        names = path.array_names(name) if isinstance(path, Collection) else (name,)
        outs = {}
        for k in names:
            tgt = targets[k]
            outs[k] = (tgt.arr, slice(tgt.base + off, tgt.base + off + cnt) if rows is None else tgt.base + rows)
        try:
            sources.read_key(mod, self._handle(entry), entry, name, path, entry.rows(pos, cnt), outs)
        except TaskError:
            raise
        except DataError as exc:
            raise TaskError(exc.reason, exc.file, exc.key) from None
        except Exception as exc:
            text = " ".join(str(exc).split())  # uproot's messages run over several lines
            raise TaskError(f"read of events {entry.rows(pos, 1)[0]}.. failed: {type(exc).__name__}: {text}",
                            entry.path, name) from None

    def run_task(self, spec):
        kind = spec["kind"]
        if kind == "load":
            return self._load(spec)
        views = self.segments[spec["dest"][0]].views
        row0 = int(spec["dest"][1])
        runs = spec["runs"]
        n = int(spec["n"])
        perm = None
        if spec["perm"] is not None:
            perm = np.random.default_rng(list(spec["perm"])).permutation(n).astype(np.int64)
        if spec["src"] == "source":
            stats = self._from_source(spec, views, row0, perm)
        else:
            stats = self._from_store(spec["src"], views, runs, row0, perm)
        self._labels(views, runs, perm, row0, n)
        if spec.get("write") is not None:
            t2 = time.perf_counter()
            self._write(views, runs, perm, row0, spec["write"])
            stats["write"] = time.perf_counter() - t2
        return stats

    def _from_source(self, spec, views, row0, perm) -> dict:
        """Read a task's events from the sample files (into the destination, or scratch for the pre-process),
        then pre-process them into the destination."""
        t0 = time.perf_counter()
        n = int(spec["n"])
        targets = {}
        for a in self.inputs:
            if a.name in self.inplace:
                targets[a.name] = _Target(views[a.name], a.row_bytes, row0)
            else:
                targets[a.name] = _Target(self._scratch(a, n), a.row_bytes, 0)
        for e_idx, pos, cnt, off in spec["runs"].tolist():
            entry = self.entries[e_idx]
            rows = None if perm is None else perm[off : off + cnt]
            for name, path in entry.keys:
                if entry.modes[name][0] in ("raw", "h5"):
                    self._read_entry(entry, self.spec_of[name], path, pos, cnt, targets[name], rows, off)
                else:
                    self._read_format(entry, name, path, pos, cnt, targets, rows, off)
        stats = {"read": time.perf_counter() - t0}
        if self.preprocess is not None:
            t1 = time.perf_counter()
            arrays = {a.name: targets[a.name].arr[targets[a.name].base : targets[a.name].base + n]
                      for a in self.inputs}
            self._preprocess(spec, arrays, views, row0, n)
            stats["preprocess"] = time.perf_counter() - t1
        return stats

    def _from_store(self, src, views, runs, row0, perm) -> dict:
        """Read a task's pre-processed events from the disk cache (``src == "disk"``) or the RAM copy."""
        t0 = time.perf_counter()
        if src == "disk" and self.checker is not None and self.checker.remaining and len(runs):
            # one check per array and task over the span it reads: far fewer calls than one per run
            g = self.entry_base[runs[:, 0]] + runs[:, 1]
            lo, hi = int(g.min()), int((g + runs[:, 2]).max())
            layout = self.disk[1]
            for a in self.outputs:
                base = layout.offsets[layout.index(a.name)]
                self._check(base + lo * a.row_bytes, (hi - lo) * a.row_bytes)
        for a in self.outputs:
            tgt = _Target(views[a.name], a.row_bytes, row0)
            for e_idx, pos, cnt, off in runs.tolist():
                g = int(self.entry_base[e_idx]) + pos
                rows = None if perm is None else perm[off : off + cnt]
                if src == "disk":
                    fd, layout, _ = self.disk
                    offset = layout.offsets[layout.index(a.name)] + g * a.row_bytes
                    self._scatter_read(fd, offset, cnt, tgt, rows, off, "<cache>", a.name)
                else:
                    store = self.segments[self.ram[0]].views[a.name]
                    if rows is None:
                        tgt.arr[row0 + off : row0 + off + cnt] = store[g : g + cnt]
                    else:
                        tgt.arr[row0 + rows] = store[g : g + cnt]
        return {"read": time.perf_counter() - t0}

    def _preprocess(self, spec, arrays, views, row0, n):
        key = spec["pseed"]
        np.random.seed(_seed32(key))
        random.seed(_seed32(key))
        try:
            out = self.preprocess(arrays)
        except Exception as exc:
            raise TaskError(f"{type(exc).__name__}: {exc}", kind="preprocess") from None
        if out is None:
            out = arrays
        if not isinstance(out, dict):
            raise TaskError(
                f"preprocess must return a dict of arrays (or None), got {type(out).__name__}",
                kind="preprocess",
            )
        dests = {a.name: views[a.name][row0 : row0 + n] for a in self.outputs}
        vals = {}
        for a in self.outputs:
            if a.name not in out:
                raise TaskError(
                    f"preprocess did not return array {a.name!r} (returned {sorted(out)})",
                    key=a.name,
                    kind="preprocess",
                )
            x = np.asarray(out[a.name])
            if x.shape != (n,) + tuple(a.shape):
                raise TaskError(
                    f"preprocess returned {a.name!r} with shape {x.shape}, expected "
                    f"{(n,) + tuple(a.shape)} (per-event shape fixed by the first batch)",
                    key=a.name,
                    kind="preprocess",
                )
            vals[a.name] = x
        # values that alias another destination must be copied before anything is overwritten
        for name, x in vals.items():
            d = dests[name]
            same = (
                x.__array_interface__["data"][0] == d.__array_interface__["data"][0]
                and x.strides == d.strides
            )
            if not same and any(np.may_share_memory(x, dests[o]) for o in dests if o != name):
                vals[name] = x.copy()
        for name, x in vals.items():
            d = dests[name]
            if (
                x.__array_interface__["data"][0] == d.__array_interface__["data"][0]
                and x.strides == d.strides
                and x.dtype == d.dtype
            ):
                continue
            np.copyto(d, x, casting="same_kind")

    def _labels(self, views, runs, perm, row0, n):
        need = [k for k in ("class_index", "onehot", "weight", "_entry", "_event") if k in views]
        if not need:
            return
        ent = np.repeat(runs[:, 0], runs[:, 2])
        dst = np.arange(n) if perm is None else perm
        cls = self.entry_class[ent]
        if "class_index" in views:
            views["class_index"][row0 + dst] = cls
        if "onehot" in views:
            oh = views["onehot"][row0 : row0 + n]
            oh[...] = 0
            oh[dst, cls] = 1
        if "weight" in views:
            views["weight"][row0 + dst] = self.entry_weight[ent]
        if "_entry" in views:
            views["_entry"][row0 + dst] = ent
        if "_event" in views:
            ev = (
                np.concatenate([self.entries[e].rows(p, c) for e, p, c, _ in runs.tolist()])
                if len(runs)
                else []
            )
            views["_event"][row0 + dst] = ev

    def _write(self, views, runs, perm, row0, write):
        for a in self.outputs:
            arr = views[a.name]
            rb = a.row_bytes
            src = _Target(arr, rb, row0)
            for (e_idx, pos, cnt, off), w in zip(runs.tolist(), write.tolist()):
                if not w:
                    continue
                g = int(self.entry_base[e_idx]) + pos
                rows = None if perm is None else perm[off : off + cnt]
                if self.disk is not None and self.disk[2]:
                    fd, layout, _ = self.disk
                    file_off = layout.offsets[layout.index(a.name)] + g * rb
                    try:
                        if rows is None:
                            s = (row0 + off) * rb
                            _pwritev_full(fd, [src.mv[s : s + cnt * rb]], file_off, cnt * rb)
                        else:
                            for i in range(0, cnt, IOV_MAX):
                                part = rows[i : i + IOV_MAX].tolist()
                                iov = [src.mv[(row0 + r) * rb : (row0 + r + 1) * rb] for r in part]
                                _pwritev_full(fd, iov, file_off + i * rb, len(part) * rb)
                    except OSError as exc:
                        raise TaskError(f"writing the cache failed: {exc}", kind="cache") from None
                if self.ram is not None and self.ram[1]:
                    store = self.segments[self.ram[0]].views[a.name]
                    if rows is None:
                        store[g : g + cnt] = arr[row0 + off : row0 + off + cnt]
                    else:
                        store[g : g + cnt] = arr[row0 + rows]

    def _load(self, spec):
        """Copy rows [g0, g0+cnt) of one array from the disk cache into the RAM store."""
        t0 = time.perf_counter()
        fd, layout, _ = self.disk
        a = self.outputs[[o.name for o in self.outputs].index(spec["name"])]
        store = self.segments[self.ram[0]].views[a.name]
        tgt = _Target(store, a.row_bytes, 0)
        g0, cnt = int(spec["g0"]), int(spec["count"])
        self._check(layout.offsets[layout.index(a.name)] + g0 * a.row_bytes, cnt * a.row_bytes)
        self._scatter_read(
            fd, layout.offsets[layout.index(a.name)] + g0 * a.row_bytes, cnt, tgt, None, g0, "<cache>", a.name
        )
        return {"read": time.perf_counter() - t0}


def worker_main(worker_id, conn, cfg_bytes):
    """Entry point of a reader process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # batch systems signal the whole group: the consumer decides
    worker = None
    try:
        try:
            cfg = pickle.loads(cfg_bytes)
            if cfg.get("nice"):
                os.nice(int(cfg["nice"]))
            worker = Worker(worker_id, cfg)
        except BaseException as exc:  # e.g. the pre-process function cannot be unpickled here
            conn.send(
                (
                    "fatal",
                    {
                        "message": f"reader {worker_id} could not start: {type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc(),
                    },
                )
            )
            return
        conn.send(("ready", os.getpid()))
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "stop":
                break
            reply = worker.handle(msg)
            if reply is not None:
                conn.send(reply)
    except (BrokenPipeError, EOFError, ConnectionResetError):
        pass
    finally:
        if worker is not None:
            worker.close()
        try:
            conn.close()
        except Exception:
            pass
