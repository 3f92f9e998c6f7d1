"""dlkit's caches in plain sight: list them, clean them, keep them under a size limit.

    python -m dlkit.cache list                      # kind, size, last use, what made it, path
    python -m dlkit.cache clean --older-than 7d     # remove what no run used for a week
    python -m dlkit.cache clean --all               # remove everything (but what a running job reads)

Three kinds of entries, all in the user's own directories (:mod:`dlkit.cachedir`):

- **generator caches** (``dlkit-<key>.cache`` in ``$DLKIT_CACHE_DIR`` or ``dlkit-cache-<uid>``): the
  pre-processed events of a :class:`~dlkit.generators.MultiClassGenerator`; made by the key (a hash of the
  files, event ranges, layouts and pre-process) over the source files named in its header;
- **premixed files** (``calodnn-premix/premix-<hash>.h5`` there): calodnn's shuffled mix of the classes;
- **datasets** (``$DLKIT_DATA/<package>/<name>/``, default ``~/.cache/dlkit``): simulated or derived data sets,
  complete with their ``COMPLETE.json`` (key and what made them).

A running generator's readers hold a shared ``flock`` on the cache they read (HDF5 readers on their files), so
``clean`` never removes what a job is using: it says so and keeps it. ``DLKIT_CACHE_MAX_GB`` bounds the cache
directory: before a new generator cache is built, the least recently used entries there are removed until the
new one fits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["Entry", "entries", "clean", "evict_to_limit", "MAX_GB_ENV", "main"]

MAX_GB_ENV = "DLKIT_CACHE_MAX_GB"


@dataclasses.dataclass
class Entry:
    """One cached thing: ``kind``, ``path``, ``size`` (bytes), ``last_use`` (epoch seconds: the later of its
    access and modification times), ``made_by`` (what it was made from) and ``in_use`` (a running job holds it)."""

    kind: str
    path: Path
    size: int
    last_use: float
    made_by: str
    in_use: bool


def _in_use(path: Path) -> bool:
    """Whether a process holds a lock on ``path`` (a reader's shared flock): an exclusive try-lock fails."""
    from dlkit.generators.cache import try_lock

    fd = try_lock(path, exclusive=True)
    if fd is None:
        return path.exists()
    os.close(fd)
    return False


def _last_use(path: Path) -> float:
    st = path.stat()
    return max(st.st_atime, st.st_mtime)


def _generator_cache(path: Path) -> Entry:
    from dlkit.generators.cache import read_header

    last_use = _last_use(path)  # before reading its header, which updates the access time
    header = read_header(path) or {}
    files = [e.get("file", "") for e in header.get("entries", [])]
    where = sorted({str(Path(f).parent) for f in files})
    made_by = (f"key {str(header.get('key', '?'))[:12]}, classes {', '.join(header.get('classes', []))}, "
               f"{len(files)} source file(s) in {', '.join(where[:2])}{' ...' if len(where) > 2 else ''}")
    return Entry("generator cache", path, path.stat().st_size, last_use, made_by, _in_use(path))


def _dataset(path: Path, record: dict) -> Entry:
    files = [p for p in path.rglob("*") if p.is_file()]
    meta = {k: v for k, v in record.items() if k not in ("files", "key")}
    made_by = f"key {str(record.get('key', '?'))[:12]}" + (f", {json.dumps(meta, sort_keys=True)[:80]}" if meta else "")
    return Entry("dataset", path, sum(p.stat().st_size for p in files), max(map(_last_use, files), default=0.0),
                 made_by, any(_in_use(p) for p in files if p.suffix in (".h5", ".hdf5", ".cache")))


def entries(cache_dir: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
            datasets: bool = True) -> list[Entry]:
    """Everything cached in the user's cache directory (default: :func:`dlkit.cachedir.cache_location`'s
    ``write``) and, with ``datasets``, dataset root (default: :func:`dlkit.cachedir.data_dir`), most recently
    used first."""
    from dlkit.cachedir import cache_location, data_dir
    from dlkit.datasets import COMPLETE_MARKER

    cache_dir = Path(cache_dir) if cache_dir is not None else cache_location().write
    found = [_generator_cache(p) for p in sorted(cache_dir.glob("dlkit-*.cache"))]
    for premix in sorted(cache_dir.glob("*/premix-*.h5")):
        found.append(Entry("premix", premix, premix.stat().st_size, _last_use(premix),
                           f"{premix.parent.name}, hash {premix.stem.split('-')[1]}", _in_use(premix)))
    if not datasets:
        return sorted(found, key=lambda e: e.last_use, reverse=True)
    data_root = Path(data_root) if data_root is not None else data_dir()
    for marker in sorted(data_root.glob(f"*/*/{COMPLETE_MARKER}")):
        try:
            record = json.loads(marker.read_text())
        except (OSError, ValueError):
            record = {}
        found.append(_dataset(marker.parent, record if isinstance(record, dict) else {}))
    return sorted(found, key=lambda e: e.last_use, reverse=True)


def _remove(entry: Entry) -> None:
    if entry.path.is_dir():
        shutil.rmtree(entry.path)
    else:
        entry.path.unlink()


def clean(older_than: float | None = None, everything: bool = False, cache_dir=None, data_root=None,
          dry_run: bool = False) -> tuple[list[Entry], list[Entry]]:
    """Remove the entries not used for ``older_than`` seconds (or all, ``everything``), never one a running
    job holds; returns ``(removed, kept because in use)``."""
    if older_than is None and not everything:
        raise ValueError("clean: give older_than (seconds) or everything=True")
    now = time.time()
    removed, busy = [], []
    for entry in entries(cache_dir, data_root):
        if not everything and now - entry.last_use < older_than:
            continue
        if entry.in_use:
            busy.append(entry)
            continue
        if not dry_run:
            _remove(entry)
        removed.append(entry)
    return removed, busy


def evict_to_limit(cache_dir: str | os.PathLike, incoming: int = 0) -> list[Entry]:
    """With ``DLKIT_CACHE_MAX_GB`` set, remove the least recently used generator caches and premixed files of
    ``cache_dir`` (never one in use) until ``incoming`` more bytes fit under the limit; returns what it removed."""
    limit = os.environ.get(MAX_GB_ENV)
    if not limit:
        return []
    try:
        budget = float(limit) * 2**30
    except ValueError:
        raise ValueError(f"{MAX_GB_ENV}={limit!r}: expected a number of GB, e.g. 50") from None
    cached = entries(cache_dir, datasets=False)
    total = sum(e.size for e in cached) + incoming
    removed = []
    for entry in sorted(cached, key=lambda e: e.last_use):  # least recently used first
        if total <= budget:
            break
        if entry.in_use:
            continue
        _remove(entry)
        total -= entry.size
        removed.append(entry)
        log.info("%s=%s: removed the least recently used %s %s (%.1f MiB)", MAX_GB_ENV, limit, entry.kind,
                 entry.path, entry.size / 2**20)
    if total > budget:
        log.warning("%s=%s: the cache directory %s holds %.2f GB (in use, or the new cache alone is larger)",
                    MAX_GB_ENV, limit, cache_dir, total / 2**30)
    return removed


def _age(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``90s`` or a number of days -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms]?)\s*", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an age like 7d, 12h, 30m or 90s")
    return float(m.group(1)) * {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 86400}[m.group(2)]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dlkit.cache", description="List and clean dlkit's caches.")
    p.add_argument("--cache-dir", default=None, help="the cache directory (default: $DLKIT_CACHE_DIR, else yours)")
    p.add_argument("--data-root", default=None, help="the dataset root (default: $DLKIT_DATA, else ~/.cache/dlkit)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every cached entry: kind, size, last use, what made it, path")
    c = sub.add_parser("clean", help="remove cached entries (never one a running job reads)")
    c.add_argument("--older-than", type=_age, default=None, metavar="AGE", help="not used for AGE (7d, 12h, 30m)")
    c.add_argument("--all", action="store_true", help="every entry")
    c.add_argument("--dry-run", action="store_true", help="say what would be removed")
    args = p.parse_args(argv)
    from tabulate import tabulate

    from dlkit.cachedir import UnsafeDirectoryError

    try:
        if args.command == "list":
            found = entries(args.cache_dir, args.data_root)
            rows = [[e.kind, _size(e.size), time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_use)),
                     "in use" if e.in_use else "", e.made_by, str(e.path)] for e in found]
            print(tabulate(rows, headers=["kind", "size", "last use", "", "made by", "path"]) if rows
                  else "no cached entries")
            print(f"{len(found)} entries, {_size(sum(e.size for e in found))}")
            return 0
        if args.older_than is None and not args.all:
            p.error("clean: give --older-than AGE or --all")
        removed, busy = clean(args.older_than, args.all, args.cache_dir, args.data_root, args.dry_run)
    except (UnsafeDirectoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verb = "would remove" if args.dry_run else "removed"
    for e in removed:
        print(f"{verb} {e.kind} {e.path} ({_size(e.size)})")
    for e in busy:
        print(f"kept {e.kind} {e.path}: in use by a running job", file=sys.stderr)
    print(f"{verb} {len(removed)} entries, {_size(sum(e.size for e in removed))}; {len(busy)} in use kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
