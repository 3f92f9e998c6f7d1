"""The scan ledger: files beside the models that make every point of a scan run to completion exactly once.

``<OutputBase>/.dlkit-scan/<scan name>/`` holds::

    manifest.json                  what the scan is: experiment, config (and its sha256), Params, flags, the
                                   first run's points, the policy (:class:`~dlkit.scan.options.ScanOptions`)
    selections/<sha>.json          points a later ``run --points`` added to the scan (written once each)
    leases/<i>/                    point i is held: owner.json (host, pid, job id, token), heartbeat.json,
                                   progress.json (epochs done, run dir; written by the point itself)
    ends/<i>.<token>/              the lease <token> of point i has ended (released by its holder, or stolen)
    attempts/<i>/<token>.start.json, <token>.end.json
                                   the log of attempts: start, end, exit code, wall time, epochs, run dir, host
    done/<i>.json, failed/<i>.json the point's final state (failed/<i>.json also for ``stuck``; done/<i>.json
                                   also for a search trial that was ``pruned``)
    trials/<i>.json                a search trial's sampled params, written once before the point first starts
    prune/<i>.<token>.json         the search driver pruned lease <token> of point i: its worker stops it
    retries/<i>.json               attempts before a ``retry`` no longer count against --max-retries
    logs/<i>/<token>.log           the point's stdout and stderr, one file per attempt
    cancel.json                    drivers started before its time stop their points and exit
    index/<host>-<pid>-<id>.jsonl  a cache of the final markers: each process that writes a marker appends a copy
                                   of it to a journal of its own (one writer per file); ``status`` reads the
                                   journals and the names in done/ and failed/, and a marker itself only where
                                   the journals cannot vouch for it (no row, a retried point, two rows)
    tmp/                           files and lease directories being prepared; every ledger write goes through
                                   it (write, fsync, rename into place), and a worker sweeps what dead writers
                                   of its host left there when it starts

No server and no ``flock``. What the ledger assumes of the filesystem, which local filesystems and NFS (v3 and
later, with close-to-open consistency, as mounted by default) provide:

- ``mkdir`` of an existing name fails, for exactly one of many concurrent callers;
- ``rename`` of a directory onto a name that exists as a non-empty directory fails, and a rename is atomic;
- a file written, closed and renamed on one client is read whole by a client that opens it afterwards.

The lease protocol:

- *Acquire*: a lease directory is prepared under ``tmp/`` with its ``owner.json`` and renamed to
  ``leases/<i>``: at most one rename wins, and a lease is never seen without its owner.
- *Heartbeat*: the holder rewrites ``heartbeat.json`` (a counter) every ``lease_timeout / 5``.
- *End*: whoever ends lease ``T`` of point ``i`` - its holder when the point exits, or a stealer - first
  creates ``ends/<i>.<T>``. Only one ``mkdir`` succeeds, so a lease ends exactly once, and only the ender
  writes the attempt's end record and the point's final state; then the lease is renamed away.
- *Steal*: a lease whose heartbeat counter has not changed for ``lease_timeout`` seconds of the
  observer's own clock (so clock skew between hosts does not matter), or whose holder is a dead process on
  this host, is ended by the observer as above (the attempt is recorded as ``lost``).
- *Fencing*: a holder (and its point) that wakes after being stopped checks for ``ends/<i>.<T>`` before
  every write; once it exists the holder stops and writes nothing. Each attempt also trains into a model
  directory of its own (``ModelWrapper`` claims a fresh ``Name.<n>``), so even a write racing the check
  cannot touch the new holder's run.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlkit.metadata import to_jsonable
from dlkit.protocol import EXIT_INTERRUPTED, EXIT_OK, EXIT_PRUNED, EXIT_USER_ERROR, end_marker, lease_dir, prune_marker
from dlkit.scan.options import ScanOptions

log = logging.getLogger(__name__)

__all__ = ["Ledger", "ScanError", "LEDGER_DIR", "STATES", "FINAL_STATES", "classify_attempts", "Decision"]

#: The hidden directory under OutputBase that holds the ledgers (hidden: ScanAnalysis skips it).
LEDGER_DIR = ".dlkit-scan"

#: The states of a point, as ``status`` shows them.
STATES = ("pending", "running", "done", "pruned", "failed", "stuck")
#: The states in which a point never runs again (without ``retry``).
FINAL_STATES = ("done", "pruned", "failed", "stuck")

#: Interruptions in a row without a new completed epoch that make a point ``stuck`` (the default policy).
STUCK_AFTER = ScanOptions.stuck_after


class ScanError(RuntimeError):
    """A scan cannot be run or read as asked (a changed config, a missing ledger, ...); the message says why."""


#: This host as the ledger's temporary names and journals spell it.
_HOST = socket.gethostname().split(".")[0]
#: This process's journal id, per pid (a forked child gets its own).
_JOURNAL_IDS: dict[int, str] = {}
#: A temporary name of the ledger's (tmp/): ``...<host>-<pid>-<hex>``.
_TMP_NAME = re.compile(r"(?:^|[.-])" + re.escape(_HOST) + r"-(\d+)-[0-9a-f]{8,32}$")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def _final_dir(state: str | None) -> str:
    """The directory a final marker of ``state`` lives in."""
    return "done" if state in ("done", "pruned") else "failed"


def _journal_rows(text: str) -> list:
    """The rows of an index journal: parsed as one JSON array (fast), or line by line where a line is torn."""
    lines = text.splitlines()
    try:
        return json.loads("[" + ",".join(lines) + "]")
    except json.JSONDecodeError:
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows


def read_json(path: Path, default: Any = None) -> Any:
    """Read a ledger JSON file; ``default`` if it is absent (or vanished while being read)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return default
    except json.JSONDecodeError as exc:  # ledger files are written by rename: this is real corruption
        raise ScanError(f"{path}: corrupt ledger file ({exc}); remove it to let the scan go on") from exc


def process_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux /proc), to tell a live holder from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int | None, start_time: str | None = None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if start_time is not None:
        current = process_start_time(int(pid))
        return current is None or current == start_time
    return True


@dataclass
class Decision:
    """What an ended attempt means for its point: ``state`` (pending, done, failed, stuck) and why."""

    state: str
    reason: str


def classify_attempts(attempts: list[dict], max_retries: int, stuck_after: int = STUCK_AFTER) -> Decision:
    """The state of a point from its ended attempts (oldest first, those after the last ``retry``).

    0 is done; 2 failed (not retried); 75, a lost holder or a user's stop are interruptions, which make the
    point ``stuck`` after ``stuck_after`` in a row without a new completed epoch; anything else is a crash,
    retried while crashes <= ``max_retries``.
    """
    if not attempts:
        return Decision("pending", "not run yet")
    last = attempts[-1]
    code = last.get("exit_code")
    if code == EXIT_OK or last.get("outcome") == "done":
        return Decision("done", "exit 0" if code == EXIT_OK else str(last.get("reason")))
    if last.get("outcome") == "pruned":
        return Decision("pruned", f"stopped early by the search's pruner after {last.get('epochs')} epoch(s)")
    if code == EXIT_USER_ERROR:
        return Decision("failed", f"exit {EXIT_USER_ERROR} (configuration or data error): not retried")
    if last.get("outcome") == "interrupted":
        run = []
        for attempt in reversed(attempts):
            if attempt.get("outcome") != "interrupted":
                break
            run.append(attempt)
        before = [a.get("epochs") or 0 for a in attempts[:len(attempts) - len(run)]]
        best_before = max(before, default=0)
        if len(run) >= stuck_after:
            recent = run[:stuck_after]  # the newest stuck_after interruptions
            base = max([best_before] + [a.get("epochs") or 0 for a in run[stuck_after:]])
            if all((a.get("epochs") or 0) <= base for a in recent):
                return Decision("stuck", f"interrupted {stuck_after} times without a new completed epoch "
                                         f"(epochs done: {base})")
        return Decision("pending", "interrupted: resumes from its last save")
    crashes = sum(1 for a in attempts if a.get("outcome") == "crashed")
    if crashes > max_retries:
        return Decision("failed", f"crashed {crashes} times (--max-retries {max_retries}); last: exit {code}")
    return Decision("pending", f"crashed (exit {code}): retry {crashes} of {max_retries}")


def outcome_of(exit_code: int | None, lost: bool = False, stopped_by_user: bool = False,
               pruned: bool = False) -> str:
    """What an attempt's end means; ``pruned``: the search pruned this lease (it saved and stopped, 77 or 75)."""
    if exit_code == EXIT_PRUNED or (pruned and exit_code == EXIT_INTERRUPTED):
        return "pruned"
    if lost or stopped_by_user:
        return "interrupted"
    if exit_code == EXIT_OK:
        return "done"
    if exit_code == EXIT_USER_ERROR:
        return "failed"
    if exit_code == EXIT_INTERRUPTED:
        return "interrupted"
    return "crashed"


class Ledger:
    """One scan's ledger directory. Cheap to construct; every method reads the filesystem afresh."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # -- locating -------------------------------------------------------------------------------------
    @classmethod
    def at(cls, output_base: str | os.PathLike, name: str) -> "Ledger":
        return cls(Path(output_base) / LEDGER_DIR / name)

    @classmethod
    def find(cls, path: str | os.PathLike, name: str | None = None) -> list["Ledger"]:
        """The ledgers named by ``path``: a ledger directory, ``.dlkit-scan/``, or an OutputBase."""
        path = Path(path)
        if (path / "manifest.json").is_file():
            return [cls(path)]
        root = path if path.name == LEDGER_DIR else path / LEDGER_DIR
        if name is not None:
            ledger = cls(root / name)
            if not (ledger.path / "manifest.json").is_file():
                raise ScanError(f"{root}: no scan named {name!r} (scans: {', '.join(cls._names(root)) or 'none'})")
            return [ledger]
        if not path.exists():
            raise ScanError(f"{path}: no such scan or OutputBase directory")
        ledgers = [cls(root / n) for n in cls._names(root)]
        if not ledgers:
            raise ScanError(f"{path}: holds no scan ledger (expected {root}/<scan name>/manifest.json)")
        return ledgers

    @staticmethod
    def _names(root: Path) -> list[str]:
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file())

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def output_base(self) -> Path:
        return self.path.parent.parent

    def _dir(self, *parts) -> Path:
        return self.path.joinpath(*parts)

    # -- writing --------------------------------------------------------------------------------------
    def _tmp_name(self, name: str) -> Path:
        """A unique temporary name under tmp/ that says which process made it (:meth:`sweep_tmp`)."""
        return self._dir("tmp", f".{name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}")

    def write(self, path: Path, data: Any, mkdir: bool = True) -> None:
        """Write JSON atomically: prepared under tmp/, fsync'd, renamed into place. No directory is listed, so
        the cost does not grow with the ledger. ``mkdir=False``: into a directory that must exist
        (FileNotFoundError if it is gone; a lease's files must never bring back its directory)."""
        text = json.dumps(to_jsonable(data), indent=1)
        tmp = self._tmp_name(path.name)
        try:
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        except FileNotFoundError:  # a ledger from before tmp/ was made at creation
            tmp.parent.mkdir(parents=True, exist_ok=True)
            return self.write(path, data, mkdir)
        try:
            try:
                os.replace(tmp, path)
            except FileNotFoundError:
                if not mkdir or not tmp.exists():
                    raise
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def sweep_tmp(self) -> int:
        """Remove what writers of this host that no longer run left under tmp/ (killed between write and
        rename); a worker does it when it starts. Returns how many entries went."""
        try:
            names = os.listdir(self._dir("tmp"))
        except FileNotFoundError:
            return 0
        removed = 0
        for name in names:
            match = _TMP_NAME.search(name)
            if match is None or pid_alive(int(match.group(1))):
                continue
            entry = self._dir("tmp", name)
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        return removed

    # -- manifest -------------------------------------------------------------------------------------
    def manifest(self) -> dict:
        manifest = read_json(self._dir("manifest.json"))
        if manifest is None:
            raise ScanError(f"{self.path}: no manifest.json; not a scan ledger")
        return manifest

    def create_or_check(self, manifest: Mapping, **asked_options) -> dict:
        """Write the manifest of a new scan, or check that an existing one describes the same scan.

        The points are a selection, not part of the identity: a grid scan's new points are added to it
        (:meth:`add_points`). ``asked_options`` (``lease_timeout=``, ``max_retries=``; None: not asked) make
        the policy of a new scan and must agree with an existing scan's. Raises :class:`ScanError` naming every
        entry that differs (a changed config file, grid, experiment or flags under the same scan name).
        """
        for sub in ("leases", "ends", "attempts", "done", "failed", "retries", "logs", "tmp", "graves", "trials",
                    "prune", "selections", "index"):
            self._dir(sub).mkdir(parents=True, exist_ok=True)
        new = to_jsonable(dict(manifest))
        options = ScanOptions().merged(**asked_options)
        if self._write_once(self._dir("manifest.json"), {**new, "options": options.to_json(), "created": now_iso()}):
            return self.manifest()
        old = self.manifest()
        identity = ("experiment", "config", "config_sha256", "params", "flags", "search")
        differences = [key for key in identity if old.get(key) != new.get(key)]
        if old.get("search") and old.get("points") != new.get("points"):  # a search's trials are numbered by them
            differences.append("points")
        if differences:
            lines = [f"  {key}: ledger has {old.get(key)!r}, this run has {new.get(key)!r}"
                     for key in differences if key != "config_sha256"]
            if "config_sha256" in differences:
                was, now = str(old.get("config_sha256"))[:12], str(new.get("config_sha256"))[:12]
                lines.append(f"  config file {new.get('config')} changed since the scan started "
                             f"(sha256 {was}... -> {now}...)")
            raise ScanError(f"scan {self.name!r} in {self.path} was started with a different "
                            f"{', '.join(differences)}:\n" + "\n".join(lines)
                            + "\nrun it under another --name, or restore what it was started with")
        self.options(**asked_options)
        self.add_points(new.get("points") or [])
        return old

    def options(self, **asked) -> ScanOptions:
        """The scan's policy, recorded when it was created; an ``asked`` value (``lease_timeout=``, ...; None:
        not asked) that differs from it is refused (a scan from before the policy was recorded takes it)."""
        manifest = self.manifest()
        if "options" not in manifest:
            return ScanOptions().merged(**asked)
        options = ScanOptions.from_json(manifest["options"])
        options.check(self.name, **asked)
        return options

    def add_points(self, points: Iterable[int]) -> None:
        """Add ``points`` to the scan (a later ``run --points``): a write-once file per new selection, so
        concurrent runs never rewrite each other's; :meth:`points` is the union."""
        new = sorted(set(int(i) for i in points) - set(self.points()))
        if new:
            name = hashlib.sha256(json.dumps(new).encode()).hexdigest()[:16]
            self._write_once(self._dir("selections", f"{name}.json"), {"points": new, "time": now_iso()})

    def _write_once(self, path: Path, data: Any) -> bool:
        """Create ``path`` with ``data`` unless it exists; True for exactly one of many concurrent callers.
        link() of a complete file prepared under tmp/: never seen half-written, never replaced."""
        prepared = self._tmp_name(f"{path.name}.once")
        self.write(prepared, data)
        try:
            os.link(prepared, path)
        except FileExistsError:
            return False
        finally:
            prepared.unlink(missing_ok=True)
        return True

    def points(self) -> list[int]:
        """Every point of the scan: the first run's and those later runs added, sorted."""
        points = set(self.manifest()["points"])
        try:
            names = os.listdir(self._dir("selections"))
        except FileNotFoundError:
            names = []
        for name in names:
            if name.endswith(".json") and not name.startswith("."):
                points.update((read_json(self._dir("selections", name), {}) or {}).get("points") or [])
        return sorted(points)

    # -- lease primitives -----------------------------------------------------------------------------
    def lease_dir(self, index: int) -> Path:
        return lease_dir(self.path, index)

    def end_marker(self, index: int, token: str) -> Path:
        return end_marker(self.path, index, token)

    def new_token(self) -> str:
        return f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def acquire(self, index: int, token: str, owner: Mapping) -> bool:
        """Try to take point ``index``'s lease; True if this caller holds it now."""
        if self.is_final(index):
            return False
        prepared = self._dir("tmp", token)
        prepared.mkdir(parents=True, exist_ok=True)
        self.write(prepared / "owner.json", {**owner, "token": token, "point": index, "acquired": now_iso(),
                                             "acquired_ts": time.time()})
        self.write(prepared / "heartbeat.json", {"seq": 0, "time": time.time()})
        try:
            os.rename(prepared, self.lease_dir(index))
        except OSError:  # someone holds it (EEXIST/ENOTEMPTY)
            shutil.rmtree(prepared, ignore_errors=True)
            return False
        if self.is_final(index):  # it became done/failed between our check and the rename: give it back
            self.end(index, token)
            self.remove_lease(index, token)
            return False
        return True

    def owner(self, index: int) -> dict | None:
        return read_json(self.lease_dir(index) / "owner.json")

    def heartbeat(self, index: int, token: str, seq: int, extra: Mapping | None = None) -> bool:
        """Refresh the heartbeat of our lease; False if the lease is no longer ours (fenced)."""
        if self.fenced(index, token):
            return False
        try:  # the lease may be taken over and removed right after the check: never create it again
            self.write(self.lease_dir(index) / "heartbeat.json", {"seq": seq, "time": time.time(), **(extra or {})},
                        mkdir=False)
        except FileNotFoundError:
            return False
        return not self.fenced(index, token)

    def read_heartbeat(self, index: int) -> dict | None:
        return read_json(self.lease_dir(index) / "heartbeat.json")

    def progress(self, index: int) -> dict:
        return read_json(self.lease_dir(index) / "progress.json", {}) or {}

    def fenced(self, index: int, token: str) -> bool:
        """True once lease ``token`` of point ``index`` has ended (stolen, or released)."""
        return self.end_marker(index, token).exists()

    def end(self, index: int, token: str) -> bool:
        """End lease ``token``: True for exactly one caller, who then records the attempt's end."""
        try:
            self.end_marker(index, token).mkdir()
        except FileExistsError:
            return False
        return True

    def reclaim_ownerless(self, index: int) -> bool:
        """Remove ``leases/<i>`` if it has no owner: no lease is ever made that way (they are renamed into place
        with their owner), but an older dlkit's late heartbeat could create one, and it would block the point
        for ever (nothing can be renamed onto it). Nothing adds an owner to an existing directory, so one seen
        without an owner is garbage. True if it was removed here."""
        lease = self.lease_dir(index)
        if not lease.is_dir() or (lease / "owner.json").exists():
            return False
        grave = self._dir("graves", f"{index}.ownerless-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(lease, grave)
        except OSError:
            return False
        if (grave / "owner.json").exists():  # another worker removed it and a new lease took its place first
            try:
                os.rename(grave, lease)
            except OSError:  # (its holder finds its lease gone at the next heartbeat and stops, writing nothing)
                pass
            return False
        shutil.rmtree(grave, ignore_errors=True)
        return True

    def remove_lease(self, index: int, token: str) -> None:
        """Rename the ended lease out of the way (only after :meth:`end` succeeded), then delete it."""
        owner = self.owner(index)
        if owner is None or owner.get("token") != token:
            return
        grave = self._dir("graves", f"{index}.{token}")
        try:
            os.rename(self.lease_dir(index), grave)
        except OSError:
            return
        shutil.rmtree(grave, ignore_errors=True)

    # -- attempts -------------------------------------------------------------------------------------
    def record_start(self, index: int, token: str, record: Mapping) -> None:
        directory = self._dir("attempts", str(index))
        directory.mkdir(parents=True, exist_ok=True)
        self.write(directory / f"{token}.start.json", {**record, "token": token, "point": index,
                                                         "start": now_iso(), "start_ts": time.time()})

    def record_end(self, index: int, token: str, record: Mapping) -> dict:
        directory = self._dir("attempts", str(index))
        directory.mkdir(parents=True, exist_ok=True)
        start = read_json(directory / f"{token}.start.json", {}) or {}
        if not start:  # its holder died between taking the lease and recording the start: the lease's time
            owner = self.owner(index) or {}
            if owner.get("token") == token and owner.get("acquired_ts"):
                start = {"start_ts": owner["acquired_ts"], "start": owner.get("acquired")}
        end = {**start, **record, "token": token, "point": index, "end": now_iso(), "end_ts": time.time()}
        if start.get("start_ts"):
            end.setdefault("wall_time", round(end["end_ts"] - start["start_ts"], 3))
        self.write(directory / f"{token}.end.json", end)
        return {**start, **end}

    def attempts(self, index: int) -> list[dict]:
        """Every attempt of point ``index``, oldest first (start merged with end; running ones have no end)."""
        directory = self._dir("attempts", str(index))
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        records: dict[str, dict] = {}
        for name in names:
            if name.startswith("."):
                continue
            token = name.removesuffix(".json").rpartition(".")[0]
            records.setdefault(token, {}).update(read_json(directory / name, {}) or {})
        return sorted(records.values(), key=lambda r: r.get("start_ts") or r.get("end_ts") or 0)

    def counted_attempts(self, index: int) -> list[dict]:
        """Ended attempts since the last ``retry`` of the point (what the retry limits count)."""
        since = (read_json(self._dir("retries", f"{index}.json"), {}) or {}).get("time", 0)
        return [a for a in self.attempts(index) if "end_ts" in a and (a.get("start_ts") or 0) >= since]

    # -- final states ---------------------------------------------------------------------------------
    def _indices(self, sub: str, suffix: str = "") -> set[int]:
        """The point indices named in ``sub/`` (``<i><suffix>``), from the names alone: no file is read."""
        try:
            names = os.listdir(self._dir(sub))
        except FileNotFoundError:
            return set()
        cut = len(suffix)
        return {int(n[:len(n) - cut]) for n in names
                if n.endswith(suffix) and n[:len(n) - cut].isdigit()}

    def done_indices(self) -> set[int]:
        return self._indices("done", ".json")

    def failed_indices(self) -> set[int]:
        """Failed and stuck points."""
        return self._indices("failed", ".json")

    def final_indices(self) -> set[int]:
        return self.done_indices() | self.failed_indices()

    def leased_indices(self) -> set[int]:
        return self._indices("leases")

    def is_final(self, index: int) -> bool:
        return self._dir("done", f"{index}.json").exists() or self._dir("failed", f"{index}.json").exists()

    def final_state(self, index: int) -> dict | None:
        """The final marker of point ``index`` (done, pruned, failed, stuck), or None."""
        return read_json(self._dir("done", f"{index}.json")) or read_json(self._dir("failed", f"{index}.json"))

    def final_states(self) -> dict[int, dict]:
        """``{index: marker}`` of done, failed and stuck points: the names in done/ and failed/, each marker's copy
        from the index journals, and the marker file itself only where the journals cannot vouch for it (no
        row: an older dlkit's marker or a writer killed before its append; a retried point, whose older rows
        may name the same directory; two rows). Equal to :meth:`final_states_from_markers`."""
        rows = self.index_rows()
        retried = self._indices("retries", ".json")
        out = {}
        for sub in ("failed", "done"):  # a point in both (never made so) counts as done, as it always did
            for index in self._indices(sub, ".json"):
                mine = [r for r in rows.get(index, ()) if _final_dir(r.get("state")) == sub]
                if len(mine) == 1 and index not in retried:
                    out[index] = mine[0]
                    continue
                marker = read_json(self._dir(sub, f"{index}.json"))
                if marker is not None:
                    out[index] = marker
        return out

    def final_states_from_markers(self) -> dict[int, dict]:
        """``{index: marker}`` read from every marker file (what :meth:`final_states` saves reading)."""
        out = {}
        for sub in ("failed", "done"):
            for index in self._indices(sub, ".json"):
                marker = read_json(self._dir(sub, f"{index}.json"))
                if marker is not None:
                    out[index] = marker
        return out

    def finish_point(self, index: int, attempt: Mapping, decision: Decision) -> None:
        """Write the final marker of a done/failed/stuck point (by the ender of its last lease only), then its
        copy in this process's index journal."""
        if decision.state == "pending":
            return
        marker = {"point": index, "state": decision.state, "reason": decision.reason, "time": now_iso(),
                  **{k: attempt.get(k) for k in ("epochs", "run_dir", "host", "metric", "exit_code", "token",
                                                 "last_error")},
                  "attempts": len(self.attempts(index))}
        self.write(self._dir(_final_dir(decision.state), f"{index}.json"), marker)
        self.append_index([marker])

    # -- the index of final markers -------------------------------------------------------------------
    def journal_path(self) -> Path:
        """This process's index journal (one writer per file: no two processes ever append to the same)."""
        pid = os.getpid()
        ident = _JOURNAL_IDS.setdefault(pid, f"{_HOST}-{pid}-{uuid.uuid4().hex[:8]}")
        return self._dir("index", f"{ident}.jsonl")

    def append_index(self, markers: Iterable[Mapping]) -> None:
        """Append copies of final markers (already written) to this process's journal: open, append, close (the
        close makes them visible to NFS clients that open the journal afterwards). Best effort: a row that is
        lost only makes ``status`` read that marker."""
        text = "".join(json.dumps(to_jsonable(dict(m))) + "\n" for m in markers)
        path = self.journal_path()
        try:
            try:
                f = open(path, "a")
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
                f = open(path, "a")
            with f:
                f.write(text)
        except OSError as exc:
            log.warning("scan %s: cannot append to the index journal %s: %s", self.name, path, exc)

    def index_rows(self) -> dict[int, list[dict]]:
        """``{index: [rows]}`` from every journal (a torn last line of a killed writer is skipped)."""
        try:
            names = os.listdir(self._dir("index"))
        except FileNotFoundError:
            return {}
        rows: dict[int, list[dict]] = {}
        for name in names:
            if not name.endswith(".jsonl") or name.startswith("."):
                continue
            try:
                with open(self._dir("index", name)) as f:
                    text = f.read()
            except FileNotFoundError:
                continue
            for row in _journal_rows(text):
                if isinstance(row, dict) and isinstance(row.get("point"), int):
                    rows.setdefault(row["point"], []).append(row)
        return rows

    def retry(self, states: Iterable[str] = ("failed", "stuck")) -> list[int]:
        """Requeue the failed (and stuck) points: their earlier attempts no longer count against the limits."""
        states = set(states)
        requeued = []
        for index, marker in sorted(self.final_states().items()):
            if marker.get("state") in states:
                self.write(self._dir("retries", f"{index}.json"), {"time": time.time(), "was": marker})
                self._dir("failed", f"{index}.json").unlink(missing_ok=True)
                requeued.append(index)
        return requeued

    # -- search trials --------------------------------------------------------------------------------
    def trial_path(self, index: int) -> Path:
        return self._dir("trials", f"{index}.json")

    def trial(self, index: int) -> dict | None:
        """The sampled trial of point ``index`` of a search (None before it is sampled)."""
        return read_json(self.trial_path(index))

    def trial_indices(self) -> set[int]:
        return self._indices("trials", ".json")

    def record_trial(self, index: int, record: Mapping) -> dict:
        """Write the trial of point ``index`` once: the first writer wins and every caller gets the record that
        stands."""
        self._write_once(self.trial_path(index), {**record, "point": index, "created": now_iso()})
        return self.trial(index)

    def params_lookup(self, manifest: Mapping | None = None):
        """``lookup(index)`` -> the hyperparameters of point ``index``: its grid point, and for a search its sampled
        params (None if not sampled yet). The manifest (``manifest``: already read) and grid are read once."""
        from dlkit.permutator import Permutator

        manifest = manifest or self.manifest()
        grid = Permutator(manifest["params"]) if manifest.get("params") else None

        def lookup(index: int) -> dict | None:
            if not manifest.get("search"):
                return dict(grid[index]) if grid else {}
            trial = self.trial(index)
            if trial is None:
                return None
            return {**(dict(grid[trial["grid_index"]]) if grid else {}), **trial["params"]}

        return lookup

    def prune_marker(self, index: int, token: str) -> Path:
        return prune_marker(self.path, index, token)

    def prune(self, index: int, token: str, record: Mapping) -> None:
        """Mark lease ``token`` of point ``index`` as pruned: its worker stops it gracefully."""
        self._dir("prune").mkdir(exist_ok=True)
        self.write(self.prune_marker(index, token), {**record, "time": now_iso()})

    def pruned(self, index: int, token: str) -> bool:
        return self.prune_marker(index, token).exists()

    # -- cancel ---------------------------------------------------------------------------------------
    def cancel(self) -> None:
        self.write(self._dir("cancel.json"), {"time": time.time(), "by": f"{socket.gethostname()}:{os.getpid()}"})

    def cancelled_since(self, started: float) -> bool:
        """True if ``cancel`` was asked after a driver that started at ``started`` (time.time())."""
        marker = read_json(self._dir("cancel.json"))
        return bool(marker) and marker.get("time", 0) >= started

    # -- logs -----------------------------------------------------------------------------------------
    def log_path(self, index: int, token: str) -> Path:
        directory = self._dir("logs", str(index))
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"{token}.log"


def last_error_line(log_path: str | os.PathLike | None, max_bytes: int = 16384) -> str | None:
    """The last meaningful line of a point's log (the error of a crashed point), or None."""
    if not log_path:
        return None
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for line in reversed(lines):  # prefer the error over progress bars and log noise after it
        if "Error" in line or "error" in line or "Exception" in line or "Killed" in line:
            return line[:300]
    return lines[-1][:300] if lines else None
