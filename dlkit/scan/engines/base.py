"""What every scan engine is: where points run differs, the ledger and the plan of what to run do not.

An engine runs a :class:`Plan` on a ledger. The plan says which points may start now and when the work is over;
between two turns of the engine's loop it may do work of its own (:meth:`Plan.step`). A grid scan's plan is
this module's :class:`Plan` (every selected point, nothing between turns); a search's is
:class:`dlkit.scan.search.SearchDriver`, whose ``step`` tells finished trials to the sampler and samples new
ones. So each engine has one loop, and a grid and a search run through the same one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dlkit.scan.ledger import Ledger, ScanError
from dlkit.scan.options import ScanOptions

__all__ = ["Engine", "Plan"]


class Plan:
    """A grid scan's plan: the selected ``points`` run until each is final.

    ``objective``: the metric recorded with each finished point (a MetaData key or a History metric)."""

    def __init__(self, ledger: Ledger, points: Iterable[int], objective: str | None = None):
        self.ledger = ledger
        self.points = sorted(set(points))
        self.objective = objective

    def step(self, final: set[int]) -> None:
        """Called in every turn of the engine's loop with the final points (a search samples and tells here)."""

    def runnable(self, final: set[int]) -> list[int]:
        """The points that may start now (unless another worker holds them)."""
        return [i for i in self.points if i not in final]

    def ready(self, index: int) -> bool:
        """May point ``index`` start now?"""
        return True

    def finished(self, final: set[int]) -> bool:
        """Is the work over?"""
        return all(i in final for i in self.points)


class Engine:
    """Runs a scan's points. Engines differ in *where* points run; all go through the ledger.

    Subclasses set :attr:`name` (the ``--engine`` value) and implement :meth:`run`; a scheduler engine also
    :meth:`cancel` and :meth:`queue`.
    """

    name = "?"

    def run(self, ledger: Ledger, plan: Plan, options: ScanOptions, progress: bool | None = None,
            **engine_options) -> int:  # pragma: no cover - interface
        """Run ``plan`` (or submit it, for a batch scheduler without ``wait``); returns
        :data:`~dlkit.protocol.EXIT_OK` when the engine's work is finished (or submitted),
        :data:`~dlkit.protocol.EXIT_INTERRUPTED` when a signal or ``cancel`` stopped it."""
        raise NotImplementedError

    def cancel(self, ledger: Ledger) -> None:
        """Stop the engine's own jobs (a cluster engine's scancel/qdel); the ledger marker is set by cancel()."""

    def queue(self, ledger: Ledger) -> dict[int, str]:
        """What the engine's scheduler says of the scan's points (``{point: "pending 123_4"}``), for status;
        ``{}`` when it has nothing to say or cannot be asked. Never imports Keras or TensorFlow."""
        return {}


def refuse_options(engine: str, options: dict, allowed: Sequence[str] = ()) -> None:
    """Refuse engine options this engine does not take (a typo or a misplaced flag must not be ignored)."""
    unknown = sorted(k for k, v in options.items() if v not in (None, False, [], ()) and k not in set(allowed))
    if unknown:
        raise ScanError(f"--engine {engine} does not take "
                         f"{', '.join('--' + k.replace('_', '-') for k in unknown)}")
