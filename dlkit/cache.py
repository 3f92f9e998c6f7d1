"""dlkit's caches in plain sight: list them, clean them, keep them under a size limit.

    python -m dlkit.cache list                      # kind, size, last use, what made it, path
    python -m dlkit.cache clean --dry-run           # what --older-than 1d/7d/30d or --all would remove
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
new one fits. "Last use" is the time a run last used the entry, recorded beside it when a generator opens a
cache or premixed file or :func:`dlkit.datasets.cached_dataset` hands out a dataset
(:func:`dlkit.cachedir.record_use`); an entry without a record counts from when it was made. The listing and the
size policy are the cache layer's (:mod:`dlkit.generators.cache`); this module is the command line over them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from dlkit.cachedir import last_use
from dlkit.cli import prog
from dlkit.generators.cache import MAX_GB_ENV, Entry, cache_entries, evict_to_limit, in_use, remove_entry
from dlkit.protocol import EXIT_OK, EXIT_USER_ERROR

__all__ = ["Entry", "entries", "clean", "evict_to_limit", "MAX_GB_ENV", "main"]


def _dataset(path: Path, record: dict) -> Entry:
    files = [p for p in path.rglob("*") if p.is_file()]
    meta = {k: v for k, v in record.items() if k not in ("files", "key")}
    made_by = f"key {str(record.get('key', '?'))[:12]}" + (f", {json.dumps(meta, sort_keys=True)[:80]}" if meta else "")
    made = max((p.stat().st_mtime for p in files), default=0.0)
    return Entry("dataset", path, sum(p.stat().st_size for p in files), last_use(path, default=made),
                 made_by, any(in_use(p) for p in files if p.suffix in (".h5", ".hdf5", ".cache")))


def entries(cache_dir: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
            datasets: bool = True) -> list[Entry]:
    """Everything cached in the user's cache directory (default: :func:`dlkit.cachedir.cache_location`'s
    ``write``) and, with ``datasets``, dataset root (default: :func:`dlkit.cachedir.data_dir`), most recently
    used first."""
    from dlkit.cachedir import cache_location, data_dir
    from dlkit.datasets import COMPLETE_MARKER

    cache_dir = Path(cache_dir) if cache_dir is not None else cache_location().write
    found = cache_entries(cache_dir)
    if not datasets:
        return found
    data_root = Path(data_root) if data_root is not None else data_dir()
    for marker in sorted(data_root.glob(f"*/*/{COMPLETE_MARKER}")):
        try:
            record = json.loads(marker.read_text())
        except (OSError, ValueError):
            record = {}
        found.append(_dataset(marker.parent, record if isinstance(record, dict) else {}))
    return sorted(found, key=lambda e: e.last_use, reverse=True)


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
            remove_entry(entry)
        removed.append(entry)
    return removed, busy


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


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _age_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{max(seconds, 0):.0f} s"


def _list(found: list[Entry]) -> None:
    from tabulate import tabulate

    now = time.time()
    rows = [[e.kind, _size(e.size), _when(e.last_use), _age_text(now - e.last_use), "yes" if e.in_use else "",
             e.made_by, str(e.path)] for e in found]
    print(tabulate(rows, headers=["kind", "size", "last use", "unused for", "in use", "made by", "path"]) if rows
          else "no cached entries")
    print(f"{len(found)} entries, {_size(sum(e.size for e in found))}")


def _dry_run_without_age(found: list[Entry]) -> None:
    """``clean --dry-run`` without ``--older-than`` or ``--all``: what each age would remove, and how to choose."""
    now = time.time()
    print("clean --dry-run: give --older-than AGE (or --all) to choose what goes; by last use it would remove")
    for label, age in (("1d", 86400), ("7d", 7 * 86400), ("30d", 30 * 86400)):
        old = [e for e in found if now - e.last_use >= age and not e.in_use]
        print(f"  --older-than {label:>3}: {len(old)} entries, {_size(sum(e.size for e in old))}")
    print(f"  --all:            {sum(not e.in_use for e in found)} entries, "
          f"{_size(sum(e.size for e in found if not e.in_use))} ({sum(e.in_use for e in found)} in use kept)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=prog("dlkit.cache"), description="List and clean dlkit's caches.")
    p.add_argument("--cache-dir", default=None, help="the cache directory (default: $DLKIT_CACHE_DIR, else yours)")
    p.add_argument("--data-root", default=None, help="the dataset root (default: $DLKIT_DATA, else ~/.cache/dlkit)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every cached entry: kind, size, last use (by a run), what made it, path")
    c = sub.add_parser("clean", help="remove cached entries (never one a running job reads)")
    c.add_argument("--older-than", type=_age, default=None, metavar="AGE", help="not used for AGE (7d, 12h, 30m)")
    c.add_argument("--all", action="store_true", help="every entry")
    c.add_argument("--dry-run", action="store_true", help="say what would be removed (alone: for a few ages)")
    args = p.parse_args(argv)
    from dlkit.cachedir import UnsafeDirectoryError

    try:
        if args.command == "list" or (args.older_than is None and not args.all and args.dry_run):
            found = entries(args.cache_dir, args.data_root)
            if args.command == "list":
                _list(found)
            else:
                _dry_run_without_age(found)
            return EXIT_OK
        if args.older_than is None and not args.all:
            p.error("clean: give --older-than AGE or --all (--dry-run alone shows what a few ages would remove)")
        removed, busy = clean(args.older_than, args.all, args.cache_dir, args.data_root, args.dry_run)
    except (UnsafeDirectoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    verb = "would remove" if args.dry_run else "removed"
    for e in removed:
        print(f"{verb} {e.kind} {e.path} ({_size(e.size)})")
    for e in busy:
        print(f"kept {e.kind} {e.path}: in use by a running job", file=sys.stderr)
    print(f"{verb} {len(removed)} entries, {_size(sum(e.size for e in removed))}; {len(busy)} in use kept")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
