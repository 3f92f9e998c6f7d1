"""Where a scan's points run: one module per engine, one interface (:class:`~dlkit.scan.engines.base.Engine`).

========  ==========================================================  ==========================
name      where                                                       module
========  ==========================================================  ==========================
local     K slots on this machine                                     :mod:`.local`
slurm     a Slurm job array, one task per point                       :mod:`.slurm` (:mod:`.array`)
pbs       a PBS Pro or Torque job array                               :mod:`.pbs` (:mod:`.array`)
dask      one task per point on a Dask cluster (local or jobqueue)    :mod:`.dask`
========  ==========================================================  ==========================

A new engine subclasses :class:`~dlkit.scan.engines.base.Engine` (a batch scheduler with job arrays:
:class:`~dlkit.scan.engines.array.ArrayEngine`), runs a :class:`~dlkit.scan.engines.base.Plan` in its loop, and is
registered here by its ``--engine`` name. Importing an engine imports none of its scheduler's libraries.
"""

from dlkit.scan.engines.base import Engine, Plan
from dlkit.scan.engines.dask import DaskEngine
from dlkit.scan.engines.local import LocalEngine
from dlkit.scan.engines.pbs import PBSEngine
from dlkit.scan.engines.slurm import SlurmEngine

#: The engines by ``--engine`` name.
ENGINES: dict[str, type[Engine]] = {"local": LocalEngine, "slurm": SlurmEngine, "pbs": PBSEngine,
                                    "dask": DaskEngine}

__all__ = ["ENGINES", "Engine", "Plan", "LocalEngine", "SlurmEngine", "PBSEngine", "DaskEngine", "engine"]


def engine(name: str) -> Engine:
    """A new engine of ``--engine`` ``name``; an unknown name is a one-line error listing the known ones."""
    from dlkit.scan.ledger import ScanError

    if name not in ENGINES:
        raise ScanError(f"--engine {name!r}: unknown (choose from {', '.join(ENGINES)})")
    return ENGINES[name]()
