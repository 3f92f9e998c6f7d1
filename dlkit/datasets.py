"""Cached, derived and simulated datasets on disk: where they live and how they are made safely.

Every experiment package simulates its default dataset on first use and derives inputs from it; the rules
are the same everywhere, so they live here:

- a dataset directory counts as complete only with its ``COMPLETE.json`` marker, written last;
- it is built in a temporary sibling ``<name>.tmp-<pid>`` and renamed into place, so a killed run never
  leaves a partial dataset that a later call would reuse, and two concurrent builders end with one copy;
- single files are written the same way (:func:`atomic_file`); leftovers of killed builders are removed
  the next time, but only once their process is gone;
- each time :func:`cached_dataset` hands out a dataset it records the use beside it
  (:func:`dlkit.cachedir.record_use`), which ``python -m dlkit.cache list`` and ``clean --older-than`` go by.

Example::

    from dlkit.datasets import cached_dataset, data_root

    def build(tmp):                      # write into tmp, return the files written
        return write_my_files(tmp)

    path = cached_dataset(data_root("mypkg") / f"sim-{key}", key, build, meta={"seed": 0})
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from dlkit.cachedir import record_use

__all__ = ["COMPLETE_MARKER", "data_root", "tmp_name", "remove_stale_tmp", "atomic_file", "cached_dataset",
           "read_complete", "write_files", "available_cores", "fsync_file"]

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE.json"


def data_root(package: str) -> Path:
    """``$DLKIT_DATA/<package>``, else ``$XDG_CACHE_HOME/dlkit/<package>`` (default ``~/.cache``).

    The root is checked and created (:func:`dlkit.cachedir.data_dir`): one that another user owns (unless
    named with ``$DLKIT_DATA``) or that group/others may write to is refused, since a complete-looking dataset
    planted there would be reused."""
    from dlkit.cachedir import data_dir

    return data_dir() / package


def tmp_name(path: str | os.PathLike) -> Path:
    """The temporary sibling directory this process builds ``path`` under (:func:`cached_dataset`)."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


_STALE = re.compile(r"\.tmp-(\d+)(-|$)")


def remove_stale_tmp(path: str | os.PathLike) -> None:
    """Remove the leftovers of killed builders of ``path`` - directories ``<name>.tmp-<pid>`` and files
    ``.<name>.tmp-<pid>-<token>...`` (:func:`atomic_file`) - but only those whose process is gone."""
    path = Path(path)
    for tmp in [*path.parent.glob(f"{glob.escape(path.name)}.tmp-*"),
                *path.parent.glob(f".{glob.escape(path.name)}.tmp-*")]:
        match = _STALE.match(tmp.name.split(path.name, 1)[-1])
        if match and not _pid_alive(int(match.group(1))):
            logger.info("removing stale %s", tmp)
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "", mkdir: bool = True):
    """Yield a temporary name beside ``path``; if the block succeeds, flush the file to disk and rename it
    over ``path``, else remove it. Readers see the old file or the new one, never half of one.

    dlkit's one way to write a file that others read (metadata, datasets, caches, reports). The temporary
    name is hidden and unique, ``.<name>.tmp-<pid>-<token><suffix>`` (``suffix`` for writers that insist
    on one: ``.npz``, ``.keras``), so it is never mistaken for the file, two writers in one process never
    collide, and :func:`remove_stale_tmp` clears what a killed writer left. It is created empty with the
    mode a new file gets (``0666 & ~umask``), so a writer may open it or replace it.

    >>> with atomic_file("out.h5") as tmp:          # doctest: +SKIP
    ...     with h5py.File(tmp, "w") as f: ...
    """
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-", suffix=suffix)
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600: the file must be readable as any new file is
        os.close(fd)
        yield tmp
        fsync_file(tmp)  # the data must be on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file written by name (h5py, Keras, numpy) to disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _umask() -> int:
    """The process's umask, read without changing it (Linux /proc; elsewhere set and restored at once)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a Slurm allocation), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def write_files(task, jobs: list, total: int, desc: str, unit: str = "ev", workers: int | None = None,
                parallel_from: int = 3000, progress: bool = True) -> list:
    """Write a dataset file by file: ``task(job, progress) -> (path, n)`` for every job, in this process or
    in ``workers`` spawned processes, with one progress display over ``total`` ``unit``; returns the paths in
    job order. The simulators' ``write_dataset`` is this over their ``write_file``.

    ``task`` is a module-level function (it is pickled to the workers) that writes one whole file, seeded by
    its job alone, so the dataset does not depend on ``workers`` or on the order files are made in. Run here
    it calls ``progress(n_done)`` as it goes; in a worker it gets None and the display moves per file.
    ``workers=None``: the available cores once ``total >= parallel_from`` (a spawned worker costs ~1 s of
    imports), else 1. Spawned, not forked: the parent may hold threads (Keras). When ``task`` and the jobs come
    from library modules the workers start without importing the user's main module (a script without
    ``if __name__ == "__main__":``, or code piped to ``python -``, works); where they must import it and cannot,
    the run ends at once with a ``RuntimeError`` that says why (:func:`dlkit.spawn.start_failure`).

    ``progress``: a tqdm bar when stderr is a terminal, else an INFO line every 30 s (no redraws in a log file).
    """
    import time

    if workers is None:
        workers = 1 if total < parallel_from else available_cores()
    workers = max(1, min(int(workers), len(jobs)))
    logger.info("%s: %d %s into %d files with %d worker(s)", desc, total, unit, len(jobs), workers)
    start = time.perf_counter()
    paths = [None] * len(jobs)
    with _progress(total, unit, desc, progress) as bar:
        if workers == 1:
            for k, job in enumerate(jobs):
                paths[k], _ = task(job, bar.update)
        else:
            for k, path, n in _spawned(task, jobs, workers, desc):
                paths[k] = path
                bar.update(n)
    seconds = time.perf_counter() - start
    logger.info("%s: wrote %d %s in %.1f s (%.0f %s/s)", desc, total, unit, seconds, total / max(seconds, 1e-9),
                unit)
    return paths


def _spawned(task, jobs: list, workers: int, desc: str):
    """``(k, path, n)`` for each job as spawned workers finish it. A worker that dies ends the run with one line
    (Python's Pool would start new ones without end); none is left behind."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from dlkit.spawn import needs_main, spawn_environment, start_failure

    main_needed = needs_main((task, jobs))
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    done, processes = 0, []
    try:
        with spawn_environment(hide_main=not main_needed):  # the workers start as the jobs are submitted
            futures = [pool.submit(_run_indexed, (task, k, job)) for k, job in enumerate(jobs)]
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for future in as_completed(futures):
            yield future.result()
            done += 1
    except BrokenProcessPool:
        for process in processes:  # the dead workers' own tracebacks are written before our one line
            process.join(5)
        what = f"a worker process of {desc}"
        if main_needed and done == 0:
            raise RuntimeError(start_failure(what)) from None
        raise RuntimeError(f"{what} died after {done} of {len(jobs)} files (killed, or out of memory?)") from None
    except BaseException:
        for process in list((getattr(pool, "_processes", None) or {}).values()):  # no public terminate before 3.14
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_indexed(args):
    task, k, job = args
    path, n = task(job, None)
    return k, path, n


class _LogProgress:
    """Progress as plain INFO lines, at most one every ``every`` seconds: for logs that are not a terminal."""

    def __init__(self, total: int, unit: str, desc: str, every: float = 30.0):
        import time

        self.total, self.unit, self.desc, self.every = total, unit, desc, every
        self.n, self._clock = 0, time.monotonic
        self.last = self._clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        if now - self.last >= self.every and self.n < self.total:
            self.last = now
            logger.info("%s: %d of %d %s (%.0f %%)", self.desc, self.n, self.total, self.unit,
                        100 * self.n / max(self.total, 1))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _progress(total: int, unit: str, desc: str, enabled: bool):
    """A tqdm bar on a terminal, periodic log lines otherwise (``enabled``), else nothing."""
    import sys

    from tqdm.auto import tqdm

    if enabled and not sys.stderr.isatty():
        return _LogProgress(total, unit, desc)
    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled)


def read_complete(path: str | os.PathLike) -> dict | None:
    """The ``COMPLETE.json`` record of a dataset directory, or None if it is not complete."""
    marker = Path(path) / COMPLETE_MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{marker}: unreadable completion marker ({exc}); remove {Path(path)} to rebuild") from None


def cached_dataset(path: str | os.PathLike, key: str, build, meta: dict | None = None) -> Path:
    """Directory ``path`` made by ``build(tmp_dir) -> files written`` unless it is already complete.

    ``key`` identifies the content (a hash of everything that changes its bytes); a complete directory
    with another key is an error, never silently reused. ``meta`` goes into ``COMPLETE.json`` with the key
    and the list of files.
    """
    path = Path(path)
    info = read_complete(path)
    if info is not None:
        if info.get("key") != key:
            raise FileExistsError(f"{path} holds another dataset (key {info.get('key')}, wanted {key})")
        logger.info("reusing %s", path)
        record_use(path)
        return path
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists, is not empty and has no {COMPLETE_MARKER}: not overwriting it")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    tmp = tmp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        files = build(tmp)
        record = {"key": key, **(meta or {}), "files": [str(Path(f).relative_to(tmp)) for f in files]}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(record, indent=1, sort_keys=True))
        if path.exists():  # an empty directory, or a concurrent builder that finished first
            if (path / COMPLETE_MARKER).is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                record_use(path)
                return path
            path.rmdir()
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / COMPLETE_MARKER).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # lost a race to an identical dataset
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record_use(path)
    return path
