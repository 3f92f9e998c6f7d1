"""The run protocol: how a run tells whoever started it what happened, and what a scan point may write.

Every dlkit run - a plain experiment, a scan point, a search trial, a Slurm array task - ends with one of
these exit codes; the scan's engines, the job scripts and the CLIs all read them from here:

====================  ====  ==============================================================================
:data:`EXIT_OK`          0  done
:data:`EXIT_SOME_FAILED` 1  ``dlkit-scan run``: the scan ended with failed or stuck points
:data:`EXIT_USER_ERROR`  2  a configuration or data error: one line on stderr; failed, never retried
:data:`EXIT_INTERRUPTED` 75 stopped by a signal after saving: requeued, resumed with ``-p``
:data:`EXIT_FENCED`      76 a scan point whose lease was taken over while it was stopped: it wrote nothing
:data:`EXIT_PRUNED`      77 a search trial stopped early by the pruner, after saving: final, not retried
:data:`EXIT_NOT_STARTED` 127 the point's program could not be started at all
:data:`EXIT_CTRL_C`      130 a CLI stopped by Ctrl-C before it could save anything (128 + SIGINT)
====================  ====  ==============================================================================

Any other code is a crash or a kill, retried by a scan up to its ``max_retries``.

The point's side of a scan lease: a scan engine starts each point with three environment variables
(:data:`ENV_DIR`, :data:`ENV_POINT`, :data:`ENV_TOKEN`). dlkit's experiments use them through
:mod:`dlkit.experiment`, ``ModelWrapper`` and the ``ScanProgress`` callback; a hand-written experiment needs
only::

    from dlkit import protocol

    protocol.report(epochs=epochs_done, run_dir=out_dir)   # progress shown by `dlkit-scan status`
    protocol.guard()                                       # before each save: quit if the lease was stolen
    code = protocol.EXIT_PRUNED if protocol.pruned() else protocol.EXIT_INTERRUPTED   # stopped by a signal

Outside a scan they are no-ops. :func:`guard` exits the process at once with :data:`EXIT_FENCED` (writing
nothing) when the point's lease has ended while it ran - a holder that was stopped past the lease timeout
and woke after another worker took the point over. The ledger's own files are :mod:`dlkit.scan.ledger`'s; the
few a point touches are named here (:func:`lease_dir`, :func:`end_marker`, :func:`prune_marker`), so that the
ledger and the point agree on them and nothing below the scan imports the scan.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USER_ERROR", "EXIT_CTRL_C", "EXIT_INTERRUPTED", "EXIT_FENCED", "EXIT_PRUNED", "EXIT_NOT_STARTED",
           "ENV_DIR", "ENV_POINT", "ENV_TOKEN", "PointLease", "current", "guard", "report", "pruned", "fenced",
           "lease_dir", "end_marker", "prune_marker"]

EXIT_OK = 0              #: done
EXIT_SOME_FAILED = 1     #: a scan ended, but some of its points failed or are stuck
EXIT_USER_ERROR = 2      #: a configuration/data error: failed, never retried
EXIT_INTERRUPTED = 75    #: stopped by a signal after saving: requeued, resumed with -p (sysexits' EX_TEMPFAIL)
EXIT_FENCED = 76         #: the point's lease was stolen while it was stopped: it wrote nothing and quit
EXIT_PRUNED = 77         #: a search trial stopped early by the pruner, after saving: final, not retried
EXIT_NOT_STARTED = 127   #: the point's program could not be started (the shell's "command not found")
EXIT_CTRL_C = 130        #: stopped by Ctrl-C with nothing to save (the shell's 128 + SIGINT)

ENV_DIR = "DLKIT_SCAN_DIR"
ENV_POINT = "DLKIT_SCAN_POINT"
ENV_TOKEN = "DLKIT_SCAN_TOKEN"


def lease_dir(ledger: str | os.PathLike, index: int) -> Path:
    """``leases/<i>``: point ``index`` is held (owner, heartbeat, the point's progress)."""
    return Path(ledger, "leases", str(index))


def end_marker(ledger: str | os.PathLike, index: int, token: str) -> Path:
    """``ends/<i>.<token>``: lease ``token`` of point ``index`` has ended; its holder must write nothing more."""
    return Path(ledger, "ends", f"{index}.{token}")


def prune_marker(ledger: str | os.PathLike, index: int, token: str) -> Path:
    """``prune/<i>.<token>.json``: a search's pruner stopped lease ``token`` of point ``index``."""
    return Path(ledger, "prune", f"{index}.{token}.json")


class PointLease:
    """The lease this process runs under (from the environment)."""

    def __init__(self, ledger: str | os.PathLike, index: int, token: str):
        self.ledger = Path(ledger)
        self.index = int(index)
        self.token = token
        self._progress: dict = {}

    @property
    def lease_dir(self) -> Path:
        return lease_dir(self.ledger, self.index)

    def fenced(self) -> bool:
        return end_marker(self.ledger, self.index, self.token).exists()

    def guard(self) -> None:
        """Exit now, writing nothing, if this point's lease has ended (another worker owns the point)."""
        if self.fenced():
            log.error("scan point %d: lease %s was taken over by another worker; stopping without writing",
                      self.index, self.token)
            os._exit(EXIT_FENCED)  # no atexit handlers, no flushing of half-written state

    def pruned(self) -> bool:
        """True if a search's pruner stopped this lease (its worker then signals the point to save and stop)."""
        return prune_marker(self.ledger, self.index, self.token).exists()

    def report(self, **progress) -> None:
        """Merge ``progress`` (``epochs``, ``run_dir``, ...) into the lease's ``progress.json``."""
        self.guard()
        self._progress.update({k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in progress.items()})
        target = self.lease_dir / "progress.json"
        # not an atomic_file: the lease directory may be renamed away under us, and that would create it again
        tmp = self.lease_dir / f".progress.{os.getpid()}.tmp"
        try:
            tmp.write_text(json.dumps(self._progress))
            os.replace(tmp, target)
        except FileNotFoundError:  # the lease was renamed away: it ended
            self.guard()


_current: PointLease | None = None


def current() -> PointLease | None:
    """The lease of this process if it runs as a scan point, else None."""
    global _current
    directory, index, token = (os.environ.get(v) for v in (ENV_DIR, ENV_POINT, ENV_TOKEN))
    if not (directory and index and token):
        return None
    if _current is None or (_current.ledger, _current.index, _current.token) != (Path(directory), int(index), token):
        _current = PointLease(directory, int(index), token)
    return _current


def guard() -> None:
    """:meth:`PointLease.guard` of the current lease; nothing outside a scan."""
    lease = current()
    if lease is not None:
        lease.guard()


def fenced() -> bool:
    """:meth:`PointLease.fenced` of the current lease; False outside a scan."""
    lease = current()
    return lease is not None and lease.fenced()


def pruned() -> bool:
    """:meth:`PointLease.pruned` of the current lease; False outside a scan."""
    lease = current()
    return lease is not None and lease.pruned()


def report(**progress) -> None:
    """:meth:`PointLease.report` to the current lease; nothing outside a scan."""
    lease = current()
    if lease is not None:
        lease.report(**progress)
