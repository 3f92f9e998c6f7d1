"""The local engine: K slots on this machine (one GPU or a share of the CPUs each); blocks until the plan is done.

::

    dlkit-scan run --experiment calodnn.ClassificationExperiment --points 0-3 --slots 2 [--gpus 0,1] -- --Test
"""

from __future__ import annotations

from collections.abc import Sequence

from dlkit.scan.engines.base import Engine, Plan, refuse_options
from dlkit.scan.ledger import Ledger
from dlkit.scan.options import ScanOptions
from dlkit.scan.progress import ProgressBar

__all__ = ["LocalEngine"]


class LocalEngine(Engine):
    """K slots on this machine (``slots``, ``gpus``, ``threads_per_point``) run by one
    :class:`~dlkit.scan.worker.Worker`, whose loop turns the plan (``before_fill``) before it fills free slots."""

    name = "local"

    def run(self, ledger: Ledger, plan: Plan, options: ScanOptions, progress: bool | None = None,
            slots: int | None = None, gpus: Sequence[str] | None = None, threads_per_point: int | None = None,
            **others) -> int:
        from dlkit.scan.worker import Worker, _env_job_id, default_slots, point_command

        refuse_options(self.name, others)
        worker = Worker(ledger, point_command(ledger), default_slots(slots, gpus, threads_per_point),
                        points=plan.points, options=options, job_id=_env_job_id(), metric=plan.objective,
                        engine=self.name, ready=plan.ready, before_fill=lambda _, final: plan.step(final))
        with ProgressBar(ledger, plan.points, progress) as bar:
            worker.on_update = lambda _: bar.update()
            code = worker.run()
        plan.step(ledger.final_indices())  # the last points to end (a search tells its last trials)
        return code
