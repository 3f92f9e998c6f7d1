"""The progress bar of a running scan: points done of those selected, with running and failed counts."""

from __future__ import annotations

import time
from collections.abc import Iterable

from dlkit.scan.ledger import Ledger

__all__ = ["ProgressBar"]


class ProgressBar:
    """A tqdm bar of ``points`` done, with running and failed counts (shown when stderr is a terminal, or when
    ``enabled`` is True; never when it is False). A context manager; :meth:`update` in the engine's loop.

    >>> with ProgressBar(ledger, [0, 1, 2, 3], enabled=None) as bar:
    ...     while working():
    ...         bar.update()
    """

    #: seconds between two refreshes: the counts come from listing the ledger's directories
    interval = 0.5

    def __init__(self, ledger: Ledger, points: Iterable[int], enabled: bool | None):
        from tqdm.auto import tqdm

        self.ledger = ledger
        self.points = set(points)
        self.bar = tqdm(total=len(self.points), desc=f"scan {ledger.name}", unit="point",
                        disable=None if enabled is None else not enabled)
        self._last = 0.0

    def update(self) -> None:
        if self.bar.disable:
            return
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        # marker names only (no JSON read): this runs in the worker's loop; running = whoever holds the lease
        done = len(self.ledger.done_indices() & self.points)
        failed = len(self.ledger.failed_indices() & self.points)
        running = len(self.ledger.leased_indices() & self.points)
        self.bar.n = done
        self.bar.set_postfix(running=running, failed=failed, refresh=False)
        self.bar.refresh()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._last = 0.0
        self.update()  # the final counts
        self.bar.close()
