"""The point's side of the scan ledger: what a running scan point may write, and the fence it obeys.

A scan engine starts each point with three environment variables (:data:`ENV_DIR`, :data:`ENV_POINT`,
:data:`ENV_TOKEN`). dlkit's experiments use them through :mod:`dlkit.experiment` and ``ModelWrapper``; a
hand-written experiment needs only::

    from dlkit.scan import point

    point.report(epochs=epochs_done, run_dir=out_dir)   # progress shown by `dlkit-scan status`
    point.guard()                                       # before each save: quit if the lease was stolen
    code = EXIT_PRUNED if point.pruned() else 75        # stopped by a signal: was it a search's pruner?

Outside a scan both are no-ops. :func:`guard` exits the process at once with :data:`EXIT_FENCED` (writing
nothing) when the point's lease has ended while it ran - a holder that was stopped past the lease timeout
and woke after another worker took the point over.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from dlkit.scan.ledger import EXIT_FENCED, EXIT_PRUNED, Ledger

log = logging.getLogger(__name__)

__all__ = ["ENV_DIR", "ENV_POINT", "ENV_TOKEN", "EXIT_PRUNED", "PointLease", "current", "guard", "report", "pruned"]

ENV_DIR = "DLKIT_SCAN_DIR"
ENV_POINT = "DLKIT_SCAN_POINT"
ENV_TOKEN = "DLKIT_SCAN_TOKEN"



class PointLease:
    """The lease this process runs under (from the environment)."""

    def __init__(self, ledger: str | os.PathLike, index: int, token: str):
        self.ledger = Path(ledger)
        self.index = int(index)
        self.token = token
        self._progress: dict = {}

    @property
    def lease_dir(self) -> Path:
        return self.ledger / "leases" / str(self.index)

    def fenced(self) -> bool:
        return (self.ledger / "ends" / f"{self.index}.{self.token}").exists()

    def guard(self) -> None:
        """Exit now, writing nothing, if this point's lease has ended (another worker owns the point)."""
        if self.fenced():
            log.error("scan point %d: lease %s was taken over by another worker; stopping without writing",
                      self.index, self.token)
            os._exit(EXIT_FENCED)  # no atexit handlers, no flushing of half-written state

    def pruned(self) -> bool:
        """True if a search's pruner stopped this lease (its worker then signals the point to save and stop)."""
        return Ledger(self.ledger).pruned(self.index, self.token)

    def report(self, **progress) -> None:
        """Merge ``progress`` (``epochs``, ``run_dir``, ...) into the lease's ``progress.json``."""
        self.guard()
        self._progress.update({k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in progress.items()})
        target = self.lease_dir / "progress.json"
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


def pruned() -> bool:
    """:meth:`PointLease.pruned` of the current lease; False outside a scan."""
    lease = current()
    return lease is not None and lease.pruned()


def report(**progress) -> None:
    """:meth:`PointLease.report` to the current lease; nothing outside a scan."""
    lease = current()
    if lease is not None:
        lease.report(**progress)
