"""Where dlkit keeps its caches, and whose files it may read: safe on shared login and GPU nodes.

Many users share one ``/tmp`` on a cluster node. A cache file's name is a hash of the configuration, not a
signature of its bytes, so whoever can write to a shared cache directory decides what everyone trains on.
Hence, for the generator cache and the calodnn premix files:

- the default directory is per user and private: ``dlkit-cache-<uid>`` under ``$SLURM_TMPDIR`` (node-local,
  per job) when set, else under :func:`tempfile.gettempdir` (``$TMPDIR``, else ``/tmp``), created mode 700;
- a directory that is owned by someone else, group/world-writable, or a symlink planted by someone else is
  refused with :class:`UnsafeDirectoryError` (one line: why, and which variable chooses another);
- a directory named on purpose (``$DLKIT_CACHE_DIR`` or ``cache=DIR``) may belong to another user: a team's
  shared, read-only cache. Its owner writes there; everyone else reads the owner's files from it and builds
  what is missing in their own private default directory (:class:`CacheLocation`);
- a file is read only if it is a regular file (opened with ``O_NOFOLLOW``), owned by the reader or by the
  owner of the directory it is in, and not writable by group or others (:func:`open_trusted`); anything else
  is ignored with a warning and rebuilt in the reader's own directory.

The dataset root (``$DLKIT_DATA``, default ``~/.cache/dlkit``, see :func:`dlkit.datasets.data_root`) gets the
same directory check (:func:`data_dir`).

When a run uses a cached entry (a generator opens a cache or a premixed file, :func:`dlkit.datasets.cached_dataset`
hands out a dataset) it records the time in a per-user index (:func:`record_use`, in
``$XDG_STATE_HOME/dlkit/last-use``): ``python -m dlkit.cache list`` and
``clean --older-than`` go by that record (:func:`last_use`), not by access times, which ``relatime`` mounts
rarely update and which listing a directory changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import secrets
import time
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["CACHE_ENV", "DATA_ENV", "UnsafeDirectoryError", "CacheLocation", "user_cache_dir", "cache_location",
           "data_dir", "dir_owners", "open_trusted", "seal", "record_use", "last_use", "forget_use"]

logger = logging.getLogger(__name__)

CACHE_ENV = "DLKIT_CACHE_DIR"
DATA_ENV = "DLKIT_DATA"
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
_told: set = set()  # shared directories already announced in the log


class UnsafeDirectoryError(PermissionError):
    """A cache or data directory that others control: refused, the message says why and what to set."""


def _who(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _dir_problem(path: Path, owners) -> tuple[str | None, os.stat_result | None]:
    """``(why it is unsafe or None, its stat)`` for an existing directory. A symlink is followed only when
    it is the user's (or root's) own; the directory itself must be owned by one of ``owners`` (None: anyone)
    and must not be writable by group or others."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        if st.st_uid not in (os.geteuid(), 0):
            return f"is a symlink planted by {_who(st.st_uid)}", st
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return "is a dangling symlink", st
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory", st
    if owners is not None and st.st_uid not in owners:
        return f"belongs to {_who(st.st_uid)}, not you", st
    if st.st_mode & _OTHERS_WRITE:
        return (f"is writable by {'group and others' if st.st_mode & stat.S_IWOTH else 'its group'} "
                f"(mode {stat.S_IMODE(st.st_mode):04o}), so others could plant files in it (chmod go-w it if it "
                "is yours)"), st
    return None, st


def _checked_dir(path: Path, *, private: bool, owners, env: str) -> os.stat_result:
    """Create ``path`` or check the existing one; refuse an unsafe one. A private directory is created
    exactly 0700; any other 0755 less the umask (never group-writable; a setgid parent's group is kept)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700 if private else 0o755)
        if private:
            os.chmod(path, 0o700)  # whatever the umask
        logger.info("created %s (mode %04o)", path, stat.S_IMODE(os.lstat(path).st_mode))
    except FileExistsError:
        pass
    problem, st = _dir_problem(path, owners)
    if problem is not None:
        raise UnsafeDirectoryError(f"{path} {problem}: refusing to use it; set {env} to a directory of your own")
    return st


def user_cache_dir() -> Path:
    """The per-user default: ``dlkit-cache-<uid>`` in node-local storage ($SLURM_TMPDIR, else <tmp>)."""
    base = os.environ.get("SLURM_TMPDIR") or tempfile.gettempdir()
    return Path(base) / f"dlkit-cache-{os.geteuid()}"


def _private_cache_dir() -> Path:
    path = user_cache_dir()
    _checked_dir(path, private=True, owners={os.geteuid()}, env=CACHE_ENV)
    return path


@dataclasses.dataclass(frozen=True)
class CacheLocation:
    """Where a cache is looked for and where this user builds one.

    ``write`` is the user's own directory (checked, created); ``shared``, when set, is another user's
    directory named on purpose, read-only for us, whose files are trusted when its owner ``shared_owner``
    wrote them.
    """

    write: Path
    shared: Path | None = None
    shared_owner: int | None = None

    @property
    def read_dirs(self) -> tuple[Path, ...]:
        return (self.write,) if self.shared is None else (self.write, self.shared)

    def owners(self, directory: Path) -> frozenset[int]:
        """Whose files may be read in ``directory``: ours, plus the shared directory owner's there."""
        me = os.geteuid()
        return frozenset({me, self.shared_owner}) if directory == self.shared else frozenset({me})

    def sub(self, name: str) -> CacheLocation:
        """The same location one level down (e.g. ``calodnn-premix``); our own subdirectory is created."""
        write = self.write / name
        _checked_dir(write, private=False, owners={os.geteuid()}, env=CACHE_ENV)
        shared = None if self.shared is None else self.shared / name
        return CacheLocation(write, shared, self.shared_owner)

    def find(self, name: str) -> Path | None:
        """The first trusted file ``name`` in :attr:`read_dirs`; untrusted ones are skipped with a warning."""
        for directory in self.read_dirs:
            path = directory / name
            if directory == self.shared:
                try:
                    problem, _ = _dir_problem(directory, self.owners(directory))
                except FileNotFoundError:
                    continue
                if problem is not None:
                    logger.warning("ignoring shared cache directory %s: it %s", directory, problem)
                    continue
            fd = open_trusted(path, self.owners(directory))
            if fd is not None:
                os.close(fd)
                return path
        return None


def cache_location(directory: str | os.PathLike | None = None) -> CacheLocation:
    """The location for ``directory`` (given on purpose), else ``$DLKIT_CACHE_DIR``, else :func:`user_cache_dir`.

    A directory given on purpose that belongs to another user is read-only (a team's shared cache): new
    files go to the user's own default directory. One writable by group or others is refused.
    """
    if directory is None:
        directory = os.environ.get(CACHE_ENV) or None
    if directory is None:
        return CacheLocation(_private_cache_dir())
    path = Path(directory).expanduser()
    st = _checked_dir(path, private=False, owners=None, env=CACHE_ENV)
    if st.st_uid == os.geteuid():
        return CacheLocation(path)
    own = _private_cache_dir()
    if (path, own) not in _told:  # once per process, not once per generator
        _told.add((path, own))
        logger.info("cache directory %s belongs to %s: reading its files, building missing ones in %s", path,
                    _who(st.st_uid), own)
    return CacheLocation(own, path, st.st_uid)


def data_dir() -> Path:
    """The checked dataset root: ``$DLKIT_DATA`` (may be another user's, read-only), else
    ``$XDG_CACHE_HOME/dlkit`` (default ``~/.cache/dlkit``, must be the user's own, created mode 700)."""
    if os.environ.get(DATA_ENV):
        path = Path(os.environ[DATA_ENV]).expanduser()
        _checked_dir(path, private=False, owners=None, env=DATA_ENV)
        return path
    path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dlkit"
    _checked_dir(path, private=True, owners={os.geteuid()}, env=DATA_ENV)
    return path


def dir_owners(directory: str | os.PathLike) -> frozenset[int]:
    """Whose files may be read in ``directory`` named by hand: ours, plus its owner's when no one else can
    write there (a shared, read-only cache)."""
    me = os.geteuid()
    try:
        problem, st = _dir_problem(Path(directory), None)
    except OSError:
        return frozenset({me})
    return frozenset({me}) if problem is not None else frozenset({me, st.st_uid})


def open_trusted(path: str | os.PathLike, owners=None) -> int | None:
    """A read-only descriptor of ``path`` if it may be read, else None (missing: silently; untrusted: with
    a warning). Trusted: a regular file, not a symlink, owned by one of ``owners`` (default: this user),
    not writable by group or others."""
    owners = {os.geteuid()} if owners is None else owners
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symlink; EACCES: not readable by us
        logger.warning("ignoring %s (%s); building your own", path, exc.strerror)
        return None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "not a regular file"
    elif st.st_uid not in owners:
        problem = f"owned by {_who(st.st_uid)}, not you"
    elif st.st_mode & _OTHERS_WRITE:
        problem = f"writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    if problem is not None:
        os.close(fd)
        logger.warning("ignoring %s: %s; building your own", path, problem)
        return None
    return fd


def seal(fd_or_path) -> None:
    """Clear the group/other write bits of a file just written (a umask of 002 leaves them), so that
    :func:`open_trusted` accepts it later."""
    st = os.fstat(fd_or_path) if isinstance(fd_or_path, int) else os.stat(fd_or_path)
    if st.st_mode & _OTHERS_WRITE:
        mode = stat.S_IMODE(st.st_mode) & ~_OTHERS_WRITE
        if isinstance(fd_or_path, int):
            os.fchmod(fd_or_path, mode)
        else:
            os.chmod(fd_or_path, mode)


def use_records_dir() -> Path:
    """The per-user index of last uses: ``$XDG_STATE_HOME/dlkit/last-use`` (default ``~/.local/state/...``)."""
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "dlkit" / "last-use"


def use_record(path: str | os.PathLike) -> Path:
    """Where the last use of the cached entry ``path`` (a file or a dataset directory) is recorded: one small
    JSON file per entry in :func:`use_records_dir`, named by a hash of its absolute path (never beside the
    entry: the cache and data directories hold nothing but their entries)."""
    key = hashlib.sha1(os.fsencode(os.path.abspath(path))).hexdigest()[:24]
    return use_records_dir() / f"{key}.json"


def record_use(path: str | os.PathLike) -> None:
    """Record that a run uses ``path`` now, with the entry's identity (inode, modification time) so that a record
    outlived by its entry (rebuilt, replaced, touched) is not taken for this one's. Written atomically (a unique
    temporary renamed over the record); where that fails, nothing is recorded (the entry then counts from when
    it was made)."""
    record = use_record(path)
    tmp = record.with_name(f"{record.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        st = os.stat(path)
        record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = json.dumps({"path": os.path.abspath(path), "time": time.time(), "ino": st.st_ino,
                           "mtime_ns": st.st_mtime_ns})
        tmp.write_text(text)
        os.replace(tmp, record)
    except OSError as exc:
        logger.debug("cannot record the use of %s (%s)", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def forget_use(path: str | os.PathLike) -> None:
    """Drop the record of ``path`` (removed from the cache), and the records of entries that are gone."""
    with contextlib.suppress(OSError):
        use_record(path).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        for record in use_records_dir().glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                if not os.path.lexists(json.loads(record.read_text())["path"]):
                    record.unlink(missing_ok=True)


def last_use(path: str | os.PathLike, default: float | None = None) -> float:
    """When a run last used ``path`` (epoch seconds) by its :func:`record_use` record; without a valid record,
    ``default`` if given, else the entry's modification time (when it was made)."""
    path = Path(path)
    st = path.stat()
    try:
        record = json.loads(use_record(path).read_text())
        if record["ino"] == st.st_ino and record["mtime_ns"] == st.st_mtime_ns:
            return float(record["time"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return st.st_mtime if default is None else default

