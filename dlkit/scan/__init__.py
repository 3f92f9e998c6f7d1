"""dlkit.scan: run every point of a scan exactly once, through crashes, ``kill -9``, preemption and restarts.

A scan is one experiment's ``Params`` grid. Its ledger, ``<OutputBase>/.dlkit-scan/<scan name>/``, is plain files
beside the models (:mod:`dlkit.scan.ledger` says what it assumes of the filesystem); its policy is one
:class:`~dlkit.scan.options.ScanOptions`, recorded when it is created; engines (:mod:`dlkit.scan.engines`) run
the points through it (:mod:`dlkit.scan.worker`), and the points obey the run protocol's exit codes
(:mod:`dlkit.protocol`):

====  ===================================================================
0     done
2     configuration or data error: failed, not retried
75    stopped by a signal after saving: requeued, resumed with ``-p``
77    a search trial stopped early by the pruner after saving: ``pruned``, final (:mod:`dlkit.scan.search`)
else  a crash or a kill: retried up to ``max_retries`` (default 2)
====  ===================================================================

A point interrupted 3 times in a row without a new completed epoch is ``stuck``. Engines: ``local`` (K slots on
this machine), ``slurm`` and ``pbs`` (job arrays) and ``dask``. The CLI::

    python -m dlkit.scan run --experiment calodnn.ClassificationExperiment --points 0-3 --slots 2 -- --Test
    python -m dlkit.scan run --engine slurm --slots 8 --gres gpu:1 --wait --experiment calodnn.ClassificationExperiment
    python -m dlkit.scan search my_search.py --experiment calodnn.ClassificationExperiment --sampler tpe \
        --trials 20 --parallel 2 --objective Gamma_AUC --direction maximize -- --Test
    python -m dlkit.scan status TrainedModels.Test [--watch]
    python -m dlkit.scan retry TrainedModels.Test
    python -m dlkit.scan cancel TrainedModels.Test
"""

from dlkit.protocol import EXIT_FENCED, EXIT_INTERRUPTED, EXIT_OK, EXIT_PRUNED, EXIT_USER_ERROR
from dlkit.scan.api import cancel, make_manifest, open_scan, retry, run, status
from dlkit.scan.engines import ENGINES, Engine, LocalEngine, Plan
from dlkit.scan.ledger import LEDGER_DIR, Ledger, ScanError
from dlkit.scan.options import ScanOptions
from dlkit.scan.search import best, search, search_plots

__all__ = ["run", "search", "best", "search_plots",
           "status", "retry", "cancel", "open_scan", "make_manifest", "Ledger", "ScanError", "ScanOptions", "Engine",
           "LocalEngine", "Plan", "ENGINES", "LEDGER_DIR", "EXIT_OK", "EXIT_USER_ERROR", "EXIT_INTERRUPTED",
           "EXIT_FENCED", "EXIT_PRUNED"]
