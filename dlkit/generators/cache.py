"""The on-disk cache: every selected event, pre-processed, in canonical order, written once.

Layout (one raw file, little overhead, readable with numpy alone)::

    bytes 0..      b"DLKITCACHE\\n" + 8-byte little-endian header length + JSON header
    aligned 4096   array 0: n_rows x row_bytes, contiguous, then array 1 (4096-aligned), ...
    then           the checksum table: one little-endian xxh3-64 per 4 MiB block of the arrays' bytes

Events are stored in *canonical* order (entries in specification order, selected events in file
order), not as the first epoch's batches, so later epochs are shuffled afresh, exactly as the first one
(new batch compositions every epoch, exact class counts), and the cache does not depend on batch size,
seed or rates: every point of a scan over those shares it. Readers fill a batch with one ``preadv``
per contiguous run, scattering rows straight into shared memory; during the first epoch they write
their pre-processed rows with ``pwritev`` at the rows' canonical offsets, concurrently, which a single
HDF5 file could not take without MPI (see BENCHMARKS.md for the measured read speed against HDF5).

The file is built under ``<name>.tmp-<pid>-<token>`` (held with ``flock``) and renamed only once every
event is in it, so an interrupted first epoch never leaves a cache that is used; stale temporaries of
dead builders are removed. The key hashes the files (path, size, mtime), entries, event ranges and
selections (so filters are covered by their result), dataset layouts, the pre-process identity and an
optional ``cache_tag``.

A finished cache is checked block by block: the builder hashes every 4 MiB block of the arrays (xxh3, several
GB/s) before the rename, and each reader process verifies a block the first time it reads from it; a block
that fails (a flipped bit, a disk error, a file changed by hand) is a :class:`DataError` naming the file and the
block, and the file is removed so the next run rebuilds it (its owner's runs only).

Where caches live and whose may be read is :mod:`dlkit.cachedir`'s: the key is no signature of the bytes,
so a cache is read only from a directory no one else can write to, and only if its owner is the reader (or
the owner of a shared directory named on purpose); the default directory is private to the user.

The cache directory's entries (generator caches and the premixed files beside them, :func:`cache_entries`) and
its size limit are here too: with ``DLKIT_CACHE_MAX_GB`` set, :func:`evict_to_limit` removes the least recently
used entries (by :func:`dlkit.cachedir.last_use`), never one a running job holds, before a new cache is built.
``python -m dlkit.cache`` lists and cleans them.

>>> arrays, header = read_cache("/tmp/dlkit-cache-1000/dlkit-3f2a....cache")     # doctest: +SKIP
>>> arrays["ECAL"].shape                                                         # doctest: +SKIP
(40000, 25, 25, 25)
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import functools
import glob
import hashlib
import json
import logging
import os
import secrets
import shutil
import struct
import time
from pathlib import Path

import numpy as np

from dlkit.cachedir import CacheLocation, cache_location, dir_owners, forget_use, last_use, open_trusted
from dlkit.generators._layout import ArraySpec, BlockLayout
from dlkit.generators.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["CACHE_VERSION", "MAX_GB_ENV", "Entry", "cache_entries", "callable_identity", "clean_stale",
           "default_cache_dir", "evict_to_limit", "read_cache", "remove_entry"]

CACHE_VERSION = 2  # 2: the checksum table
CHECK_BLOCK = 4 << 20  # bytes per checksummed block
MAGIC = b"DLKITCACHE\n"
PAGE = 4096
SUFFIX = ".cache"
MAX_GB_ENV = "DLKIT_CACHE_MAX_GB"


def default_cache_dir() -> Path:
    """The directory this user builds caches in (checked, created): ``$DLKIT_CACHE_DIR`` when it is theirs,
    else the private ``dlkit-cache-<uid>`` (see :func:`dlkit.cachedir.cache_location`)."""
    return cache_location().write


def _stable(obj, depth: int = 0):
    """A text form of ``obj`` that is the same across processes (arrays by content hash)."""
    if depth > 6:
        return "..."
    if isinstance(obj, np.ndarray):
        return f"ndarray({obj.dtype},{obj.shape},{hashlib.sha1(np.ascontiguousarray(obj).tobytes()).hexdigest()})"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(_stable(o, depth + 1) for o in obj) + "]"
    if isinstance(obj, dict):
        return (
            "{"
            + ",".join(
                f"{_stable(k, depth + 1)}:{_stable(v, depth + 1)}"
                for k, v in sorted(obj.items(), key=lambda kv: repr(kv[0]))
            )
            + "}"
        )
    if callable(obj) and not isinstance(obj, type):
        return callable_identity(obj, depth + 1)
    text = repr(obj)
    return text if " at 0x" not in text else type(obj).__qualname__


def _code_identity(code, depth: int) -> str:
    consts = [
        (_code_identity(c, depth + 1) if hasattr(c, "co_code") else _stable(c, depth + 1))
        for c in code.co_consts
    ]
    h = hashlib.sha1(code.co_code)
    h.update(repr((consts, code.co_names, code.co_varnames)).encode())
    return h.hexdigest()


def callable_identity(fn, depth: int = 0) -> str | None:
    """Identity of a pre-process function for the cache key.

    Covers module and qualified name, byte code and constants, defaults, closure values,
    ``functools.partial`` arguments and a callable instance's attributes. A ``cache_key`` attribute on the
    function (or the generator's ``cache_tag``) overrides/extends it when behaviour depends on
    something else (a file it reads, a global it uses).
    """
    if fn is None:
        return None
    explicit = getattr(fn, "cache_key", None)
    if explicit is not None and not callable(explicit):
        return f"key:{explicit}"
    if isinstance(fn, functools.partial):
        return (
            f"partial({callable_identity(fn.func, depth + 1)},{_stable(fn.args, depth + 1)},"
            f"{_stable(fn.keywords, depth + 1)})"
        )
    parts = [getattr(fn, "__module__", "?"), getattr(fn, "__qualname__", type(fn).__qualname__)]
    code = getattr(fn, "__code__", None)
    if code is None:  # a callable instance
        call = getattr(type(fn), "__call__", None)  # noqa: B004 - its code, not callability
        code = getattr(call, "__code__", None)
        parts.append(type(fn).__module__ + "." + type(fn).__qualname__)
        parts.append(_stable(getattr(fn, "__dict__", {}), depth + 1))
    if code is not None:
        parts.append(_code_identity(code, depth))
    parts.append(_stable(getattr(fn, "__defaults__", None), depth + 1))
    parts.append(_stable(getattr(fn, "__kwdefaults__", None), depth + 1))
    closure = getattr(fn, "__closure__", None) or ()
    cells = []
    for c in closure:
        try:
            cells.append(_stable(c.cell_contents, depth + 1))
        except ValueError:
            cells.append("<empty>")
    parts.append("[" + ",".join(cells) + "]")
    return "|".join(parts)


def cache_key(entries, inputs, outputs, preprocess, tag=None) -> str:
    """Hash of everything that determines the cached bytes (not batch size, seed, rates or labels)."""
    desc = {
        "version": CACHE_VERSION,
        "entries": [
            [e.path, e.size, e.mtime_ns, list(map(list, e.keys)), e.start, e.stop, e.digest] for e in entries
        ],
        "inputs": [a.describe() for a in inputs],
        "outputs": [a.describe() for a in outputs],
        "preprocess": callable_identity(preprocess),
        "tag": None if tag is None else str(tag),
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()


def _header_bytes(header: dict) -> bytes:
    text = json.dumps(header, sort_keys=True).encode()
    return MAGIC + struct.pack("<Q", len(text)) + text


def checksum_spec(start: int, end: int) -> dict:
    """Where the checksums of bytes [start, end) go: the table right after them, one uint64 per block."""
    return {"algo": "xxh3_64", "block": CHECK_BLOCK, "start": int(start), "end": int(end), "offset": int(end),
            "count": -(-(int(end) - int(start)) // CHECK_BLOCK)}


def _block_sum(fd: int, spec: dict, k: int, buffer: memoryview) -> int:
    """xxh3 of block ``k``, read into ``buffer`` (reused: a fresh 4 MiB bytes per block costs 4x the hash)."""
    import xxhash

    lo = spec["start"] + k * spec["block"]
    n = min(spec["block"], spec["end"] - lo)
    if os.preadv(fd, [buffer[:n]], lo) != n:
        raise OSError(f"short read of checksummed block {k}")
    return xxhash.xxh3_64_intdigest(buffer[:n])


def write_checksums(fd: int, spec: dict) -> None:
    """Hash every block of a complete cache file and write the table (before the file is renamed into place)."""
    buffer = memoryview(bytearray(spec["block"]))
    table = np.array([_block_sum(fd, spec, k, buffer) for k in range(spec["count"])], dtype="<u8")
    os.pwrite(fd, table.tobytes(), spec["offset"])


class BlockChecker:
    """A reader's view of a finished cache's checksums: :meth:`check` verifies each block the first time a
    read touches it (in this process), and raises :class:`DataError` naming the file and the block."""

    def __init__(self, fd: int, path: str):
        self.fd, self.path = fd, path
        raw = os.pread(fd, 64 * 1024, 0)
        (n,) = struct.unpack("<Q", raw[len(MAGIC):len(MAGIC) + 8])
        start = len(MAGIC) + 8
        text = raw[start:start + n] if start + n <= len(raw) else os.pread(fd, n, start)
        self.spec = json.loads(text)["checksum"]
        table = os.pread(fd, 8 * self.spec["count"], self.spec["offset"])
        self.table = np.frombuffer(table, dtype="<u8")
        self.verified = np.zeros(self.spec["count"], dtype=bool)
        self.buffer = memoryview(bytearray(self.spec["block"]))
        self.remaining = int(self.spec["count"])

    def check(self, offset: int, nbytes: int) -> None:
        if self.remaining == 0:  # every block verified: nothing more to do in this process
            return
        spec = self.spec
        first = max(0, (offset - spec["start"]) // spec["block"])
        last = min(spec["count"] - 1, (offset + nbytes - 1 - spec["start"]) // spec["block"])
        for k in range(first, last + 1):
            if self.verified[k]:
                continue
            if _block_sum(self.fd, spec, k, self.buffer) != int(self.table[k]):
                lo = spec["start"] + k * spec["block"]
                raise DataError(f"cache block {k} (bytes {lo}-{min(lo + spec['block'], spec['end'])}) fails its "
                                "checksum: the file is corrupt; it is removed and the next run rebuilds it",
                                file=self.path)
            self.verified[k] = True
            self.remaining -= 1


def file_layout(arrays, n_rows: int, header: dict) -> tuple[bytes, BlockLayout]:
    """Header bytes and the array layout that follows it (then the checksum table: ``header["checksum"]``,
    the file's whole ``size``)."""
    # The header stores the layout, whose offsets depend on the header size: iterate to a fixed point.
    base = PAGE
    while True:
        layout = BlockLayout.build(arrays, n_rows, align=PAGE, base=base)
        sums = checksum_spec(layout.offsets[0] if layout.offsets else base, layout.size)
        header = dict(
            header,
            n_rows=int(n_rows),
            arrays=[dict(a.describe(), offset=o) for a, o in zip(arrays, layout.offsets)],
            checksum=sums,
            size=int(layout.size + 8 * sums["count"]),
        )
        raw = _header_bytes(header)
        if len(raw) <= base:
            return raw, layout
        base = (len(raw) + PAGE - 1) // PAGE * PAGE


def _parse_header(f) -> dict | None:
    try:
        magic = f.read(len(MAGIC))
        if magic != MAGIC:
            return None
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 64 * 2**20:
            return None
        return json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return None


def _open_nofollow(path, flags=os.O_RDONLY) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def try_lock(path, exclusive: bool = False) -> int | None:
    """``path`` opened read-only (no symlink) under a non-blocking ``flock``, shared or exclusive; None when it
    cannot be opened or another process holds a conflicting lock. Readers hold shared locks on the caches and
    premixed files they use; builders an exclusive one on their temporary; whoever removes files tries an
    exclusive one first."""
    try:
        fd = _open_nofollow(path)
    except OSError:
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def read_header(path) -> dict | None:
    try:
        fd = _open_nofollow(path)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return _parse_header(f)


def cache_path(cache_dir, key: str) -> Path:
    return Path(cache_dir) / f"dlkit-{key[:32]}{SUFFIX}"


def find_cache(location: CacheLocation, key: str, n_rows: int, outputs) -> Path | None:
    """The complete cache for ``key`` that this user may read (:meth:`CacheLocation.find`), validated
    (magic, key, layout, size), or None."""
    path = location.find(cache_path(".", key).name)
    if path is None:
        return None
    header = read_header(path)
    want = [a.describe() for a in outputs]
    ok = (
        header is not None
        and header.get("version") == CACHE_VERSION
        and header.get("key") == key
        and header.get("n_rows") == n_rows
        and [{k: a[k] for k in ("name", "dtype", "shape")} for a in header.get("arrays", [])] == want
    )
    if ok:
        try:
            ok = path.lstat().st_size == header["size"]
        except OSError:
            ok = False
    if not ok:
        logger.warning("ignoring invalid or mismatching cache file %s; it will be rebuilt", path)
        return None
    return path


def clean_stale(cache_dir) -> int:
    """Remove temporaries whose builder is gone (their flock can be taken). Returns how many."""
    removed = 0
    for tmp in glob.glob(os.path.join(os.fspath(cache_dir), f"dlkit-*{SUFFIX}.tmp-*")):
        fd = try_lock(tmp, exclusive=True)
        if fd is None:
            continue  # a live builder holds it (or it is gone)
        try:
            os.unlink(tmp)
            removed += 1
            logger.info("removed stale partial cache %s", tmp)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


class CacheBuilder:
    """Consumer side of a cache being written: temp file, lock, finalize (rename) or abort (unlink)."""

    def __init__(self, cache_dir, key: str, outputs, n_rows: int, meta: dict):
        self.final = cache_path(cache_dir, key)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(self.final.parent)
        self.tmp = Path(f"{self.final}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        header = dict(meta, version=CACHE_VERSION, key=key, created=time.time())
        raw, self.layout = file_layout(list(outputs), n_rows, header)
        self.checksum = json.loads(raw[len(MAGIC) + 8:])["checksum"]
        size = self.checksum["offset"] + 8 * self.checksum["count"]
        evict_to_limit(self.final.parent, incoming=size)  # DLKIT_CACHE_MAX_GB: make room, oldest first
        self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Allocate the whole file now: it fails early if the disk is too small, and writes into
            # allocated blocks run ~20x faster on ext4 than into a sparse file (see BENCHMARKS.md).
            try:
                os.posix_fallocate(self.fd, 0, size)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise
                os.ftruncate(self.fd, size)
            os.pwrite(self.fd, raw, 0)
        except BaseException:
            self.abort()
            raise
        self.done = False
        logger.info("building cache %s (%.1f MiB)", self.final, self.layout.size / 2**20)

    def finalize(self) -> Path:
        write_checksums(self.fd, self.checksum)
        os.replace(self.tmp, self.final)
        self._close()
        self.done = True
        logger.info("cache complete: %s", self.final)
        return self.final

    def abort(self) -> None:
        if getattr(self, "done", False):
            return
        try:
            os.unlink(self.tmp)
        except OSError:
            pass
        self._close()
        self.done = True

    def _close(self):
        if getattr(self, "fd", -1) >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


def open_layout(path, outputs, n_rows: int) -> BlockLayout:
    header = read_header(path)
    arrays = [ArraySpec(a["name"], a["dtype"], tuple(a["shape"])) for a in header["arrays"]]
    offsets = tuple(a["offset"] for a in header["arrays"])
    return BlockLayout(tuple(arrays), int(header["n_rows"]), offsets, int(header["checksum"]["offset"]))


def read_cache(path, mode: str = "r") -> tuple[dict[str, np.memmap], dict]:
    """Memory-mapped arrays of a cache file and its header (entries, classes, key).

    The file must be one this user may read (theirs, or its directory owner's in a directory no one else
    can write to; see :func:`dlkit.cachedir.open_trusted`)."""
    fd = open_trusted(path, dir_owners(Path(path).parent))
    if fd is None:
        raise ValueError(f"{path}: no cache file you may read (missing, a symlink, or owned or writable by "
                         "someone else)")
    if mode == "r+":
        os.close(fd)
        fd = _open_nofollow(path, os.O_RDWR)
    with os.fdopen(fd, "r+b" if mode == "r+" else "rb") as f:
        header = _parse_header(f)
        if header is None:
            raise ValueError(f"{path} is not a dlkit cache file")
        out = {}
        for a in header["arrays"]:
            out[a["name"]] = np.memmap(
                f,
                dtype=np.dtype(a["dtype"]),
                mode=mode,
                offset=a["offset"],
                shape=(header["n_rows"],) + tuple(a["shape"]),
            )
    return out, header


@dataclasses.dataclass
class Entry:
    """One cached thing: ``kind``, ``path``, ``size`` (bytes), ``last_use`` (epoch seconds: when a run last used
    it, :func:`dlkit.cachedir.last_use`), ``made_by`` (what it was made from) and ``in_use`` (a running job
    holds it)."""

    kind: str
    path: Path
    size: int
    last_use: float
    made_by: str
    in_use: bool


def in_use(path) -> bool:
    """Whether a process holds a lock on ``path`` (a reader's shared flock): an exclusive try-lock fails."""
    fd = try_lock(path, exclusive=True)
    if fd is None:
        return Path(path).exists()
    os.close(fd)
    return False


def _generator_cache(path: Path) -> Entry:
    header = read_header(path) or {}
    files = [e.get("file", "") for e in header.get("entries", [])]
    where = sorted({str(Path(f).parent) for f in files})
    made_by = (f"key {str(header.get('key', '?'))[:12]}, classes {', '.join(header.get('classes', []))}, "
               f"{len(files)} source file(s) in {', '.join(where[:2])}{' ...' if len(where) > 2 else ''}")
    return Entry("generator cache", path, path.stat().st_size, last_use(path), made_by, in_use(path))


def cache_entries(cache_dir) -> list[Entry]:
    """The generator caches and premixed files of ``cache_dir``, most recently used first."""
    cache_dir = Path(cache_dir)
    found = [_generator_cache(p) for p in sorted(cache_dir.glob(f"dlkit-*{SUFFIX}"))]
    for premix in sorted(cache_dir.glob("*/premix-*.h5")):
        found.append(Entry("premix", premix, premix.stat().st_size, last_use(premix),
                           f"{premix.parent.name}, hash {premix.stem.split('-')[1]}", in_use(premix)))
    return sorted(found, key=lambda e: e.last_use, reverse=True)


def remove_entry(entry: Entry) -> None:
    """Remove a cached entry (a file or a dataset directory) and the record of its last use."""
    if entry.path.is_dir():
        shutil.rmtree(entry.path)
    else:
        entry.path.unlink()
    forget_use(entry.path)


def evict_to_limit(cache_dir, incoming: int = 0) -> list[Entry]:
    """With ``DLKIT_CACHE_MAX_GB`` set, remove the least recently used generator caches and premixed files of
    ``cache_dir`` (never one in use) until ``incoming`` more bytes fit under the limit; returns what it removed."""
    limit = os.environ.get(MAX_GB_ENV)
    if not limit:
        return []
    try:
        budget = float(limit) * 2**30
    except ValueError:
        raise ValueError(f"{MAX_GB_ENV}={limit!r}: expected a number of GB, e.g. 50") from None
    cached = cache_entries(cache_dir)
    total = sum(e.size for e in cached) + incoming
    removed = []
    for entry in sorted(cached, key=lambda e: e.last_use):  # least recently used first
        if total <= budget:
            break
        if entry.in_use:
            continue
        remove_entry(entry)
        total -= entry.size
        removed.append(entry)
        logger.info("%s=%s: removed the least recently used %s %s (%.1f MiB)", MAX_GB_ENV, limit, entry.kind,
                    entry.path, entry.size / 2**20)
    if total > budget:
        logger.warning("%s=%s: the cache directory %s holds %.2f GB (in use, or the new cache alone is larger)",
                       MAX_GB_ENV, limit, cache_dir, total / 2**30)
    return removed
