"""Random and Bayesian (Optuna TPE) search on the scan ledger: every trial a ledger point, run exactly once.

::

    python -m dlkit.scan search my_search.py --experiment calodnn.ClassificationExperiment \\
        --sampler tpe --trials 20 --parallel 2 --objective Gamma_AUC --direction maximize [--pruner median] -- --Test

    import dlkit.scan
    table = dlkit.scan.search("calodnn.ClassificationExperiment", "my_search.py", trials=20, parallel=2,
                              objective="Gamma_AUC", direction="maximize")
    dlkit.scan.best("TrainedModels")            # the best trials, with their params and objective

The config file's ``Search`` block (:mod:`dlkit.scan.space`) is the space; a ``Params`` grid in the same file is
the outer loop: each selected grid point gets a search of ``trials`` trials of its own (point ``g * trials + t``
of the ledger is trial ``t`` of grid point ``g``).

**The ledger is the source of truth.** Optuna's samplers run only in this driver, through ``ask``/``tell`` on an
in-memory study; Optuna's storages are never used (they misbehave on NFS). Before a trial's point first starts,
its sampled params are written once to ``trials/<i>.json`` (a ``link()`` of a complete file, so the first writer
wins and a trial is never resampled). The point then runs like any scan point - leases, retries, requeues,
fencing - with ``--trial trials/<i>.json``. A restarted driver rebuilds the study from the ledger: finished
trials are told with their objective (failed and stuck ones as failed, pruned ones as pruned, with their
per-epoch values), sampled unfinished ones are asked again with their recorded params and run to the end.
So a search killed at any moment and started again ends with exactly ``trials`` trials, none run twice.

**The objective** is a MetaData entry of the finished run (``Gamma_AUC``) or the last value of a History metric
(``val_loss``). A trial that fails permanently, or whose run lacks the objective, is told as failed.

**Engines:** local (``parallel`` slots), dask (each trial a task on a LocalCluster or a dask-jobqueue cluster),
slurm and pbs (each batch of newly sampled trials a small job array); the driver samples and tells on the machine
it runs on, the trials run wherever the engine puts them.

**Pruning** (``prune="median"`` or ``"halving"``): a running point reports its epochs' metrics to its lease
(:class:`dlkit.callbacks.ScanProgress`); the driver reports ``prune_metric`` to the trial after every epoch and
asks Optuna's pruner. A pruned trial's lease gets a ``prune/`` marker; its worker stops the point as on a signal,
the point saves and exits 77 (:data:`~dlkit.protocol.EXIT_PRUNED`) and the ledger records it ``pruned``.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dlkit.config import ConfigError
from dlkit.scan.api import format_params, make_manifest, parse_points, status
from dlkit.scan.engines import Plan
from dlkit.scan.engines import engine as make_engine
from dlkit.scan.ledger import Ledger, ScanError
from dlkit.scan.space import check_search, from_json, load_search

log = logging.getLogger(__name__)

__all__ = ["SAMPLERS", "PRUNERS", "make_search_manifest", "open_search", "SearchDriver", "search", "best",
           "search_plots"]

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "halving")
#: The cluster engines a search can drive (one small job array per batch of newly sampled trials).
_ARRAY_ENGINES = ("slurm", "pbs")
#: Every engine a search runs on.
SEARCH_ENGINES = ("local", "dask", *_ARRAY_ENGINES)


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise ScanError("dlkit.scan search needs Optuna: pip install 'dlkit[search]' (grid scans do not)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def default_direction(metric: str) -> str:
    """``minimize`` for losses (a name containing "loss"), else ``maximize`` (AUCs, accuracies)."""
    return "minimize" if "loss" in metric.lower() else "maximize"


def _experiment_defaults(experiment: str) -> tuple[Mapping | None, Mapping | None, Mapping | None]:
    """The experiment module's DEFAULTS, TYPES and RANGES, to validate the Search keys (None for a .py file)."""
    if experiment.endswith(".py"):
        return None, None, None
    module = importlib.import_module(experiment)
    return tuple(getattr(module, name, None) for name in ("DEFAULTS", "TYPES", "RANGES"))


def make_search_manifest(experiment: str, config: str | os.PathLike | None = None, flags: Sequence[str] = (),
                         trials: int = 10, sampler: str = "tpe", objective: str = "val_loss",
                         direction: str | None = None, seed: int | None = None, prune: str | None = None,
                         prune_metric: str = "val_loss", prune_direction: str | None = None, points=None,
                         name: str | None = None) -> dict:
    """The manifest of a search: the scan's (:func:`~dlkit.scan.api.make_manifest`) plus its ``search`` entry;
    its points are ``trials`` per selected grid point."""
    if sampler not in SAMPLERS:
        raise ScanError(f"--sampler {sampler!r}: choose from {', '.join(SAMPLERS)}")
    if prune not in (None, *PRUNERS):
        raise ScanError(f"--pruner {prune!r}: choose from {', '.join(PRUNERS)}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ScanError(f"--trials {trials!r}: expected a positive integer")
    direction = direction or default_direction(objective)
    if direction not in ("minimize", "maximize"):
        raise ScanError(f"--direction {direction!r}: expected minimize or maximize")
    manifest = make_manifest(experiment, config, flags, None, name, objective)
    try:
        space = load_search(manifest["config"])
        if space is None:
            raise ScanError(f"config file {manifest['config']}: defines no Search block (a dict of spaces from "
                            "dlkit.scan.space, e.g. Search = {'lr': loguniform(1e-4, 1e-1)}); see dlkit.scan.space")
        defaults, types, ranges = _experiment_defaults(experiment)
        check_search(space, f"config file {manifest['config']!r}", defaults, manifest["params"], types, ranges)
    except ConfigError as exc:
        raise ScanError(str(exc)) from None
    grid_points = parse_points(points, manifest["size"])
    manifest["search"] = {"space": {k: s.to_json() for k, s in space.items()}, "sampler": sampler,
                          "trials": trials, "seed": seed, "objective": objective, "direction": direction,
                          "pruner": prune, "prune_metric": prune_metric,
                          "prune_direction": prune_direction or default_direction(prune_metric),
                          "grid_points": grid_points}
    manifest["points"] = [g * trials + t for g in grid_points for t in range(trials)]
    manifest["size"] = manifest["size"] * trials
    return manifest


def open_search(experiment: str, config=None, flags: Sequence[str] = (), name: str | None = None,
                output_base: str | os.PathLike | None = None, lease_timeout: float | None = None,
                max_retries: int | None = None, **search) -> Ledger:
    """The ledger of this search, created on first use; refused if the name holds a different scan or search
    (another space, sampler, trial count, seed, objective, pruner or flags) or another policy."""
    manifest = make_search_manifest(experiment, config, flags, name=name, **search)
    if output_base is None:
        output_base = "TrainedModels.Test" if "--Test" in manifest["flags"] else "TrainedModels"
    ledger = Ledger.at(output_base, manifest.pop("name"))
    ledger.create_or_check(manifest, lease_timeout=lease_timeout, max_retries=max_retries)
    return ledger


def _merged_history(ledger: Ledger, index: int, metric: str) -> dict[int, float]:
    """``{epoch: value}`` of ``metric`` over every ended attempt of point ``index`` (later attempts win)."""
    values: dict[int, float] = {}
    for attempt in ledger.attempts(index):
        for epoch, value in ((attempt.get("history") or {}).get(metric) or {}).items():
            values[int(epoch)] = float(value)
    return values


class SearchDriver(Plan):
    """A search's plan: tells finished trials to the samplers, prunes running ones, samples new ones.

    One Optuna study per grid point, in memory, rebuilt from the ledger when the driver starts. The engine's
    loop calls :meth:`step`; :meth:`ready` and :meth:`runnable` say which points may start (those with a sampled
    trial not told yet); the search is :meth:`finished` when every trial is sampled and told.
    """

    def __init__(self, ledger: Ledger, parallel: int):
        self.optuna = optuna = _import_optuna()
        self.ledger = ledger
        self.manifest = ledger.manifest()
        spec = self.manifest.get("search")
        if not spec:
            raise ScanError(f"{ledger.path}: not a search (its manifest has no 'search' entry); use `run`")
        self.spec = spec
        super().__init__(ledger, self.manifest["points"], objective=spec["objective"])
        self.trials = int(spec["trials"])
        self.parallel = max(1, int(parallel))
        self.has_grid = bool(self.manifest.get("params"))
        self.distributions = {k: from_json(v).distribution() for k, v in spec["space"].items()}
        self.objective = spec["objective"]
        self.prune_metric = spec.get("prune_metric") or "val_loss"
        # the pruner compares intermediate values in the study's direction: flip a metric that runs the other way
        self.prune_sign = 1.0 if spec["prune_direction"] == spec["direction"] else -1.0
        self.studies = {g: optuna.create_study(direction=spec["direction"], sampler=self._sampler(g),
                                               pruner=self._pruner()) for g in spec["grid_points"]}
        self.live: dict[int, Any] = {}        # sampled, not told: point -> optuna Trial
        self.reported: dict[int, set[int]] = {}
        self.pruning: set[int] = set()
        self._rebuild()

    # -- optuna -----------------------------------------------------------------------------------------
    def _sampler(self, grid: int, trial: int = 0):
        """The sampler of trial ``trial`` of grid point ``grid``: seeded (with ``--seed``) by the seed, the grid
        point and the trial number, so a restarted driver samples what an uninterrupted one would have,
        never the first trials' params again. TPE's model is the study's finished trials, not the sampler."""
        seed = None
        if self.spec.get("seed") is not None:
            seed = int.from_bytes(hashlib.sha256(f"{self.spec['seed']}/{grid}/{trial}".encode()).digest()[:4], "big")
        samplers = self.optuna.samplers
        if self.spec["sampler"] == "random":
            return samplers.RandomSampler(seed=seed)
        # few trials: start modelling after a handful of random ones (Optuna's default of 10 suits long searches)
        startup = min(10, max(2, self.trials // 3))
        return samplers.TPESampler(seed=seed, n_startup_trials=startup)

    def _pruner(self):
        pruners = self.optuna.pruners
        if self.spec.get("pruner") == "median":
            return pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
        if self.spec.get("pruner") == "halving":
            return pruners.SuccessiveHalvingPruner()
        return pruners.NopPruner()

    def _study(self, index: int):
        return self.studies[index // self.trials]

    # -- rebuilding from the ledger ---------------------------------------------------------------------
    def _rebuild(self) -> None:
        state = self.optuna.trial.TrialState
        points = set(self.manifest["points"])
        told = 0
        for index in sorted(self.ledger.trial_indices() & points):
            record = self.ledger.trial(index)
            marker = self.ledger.final_state(index)
            study = self._study(index)
            if marker is None:  # sampled, not finished: asked again with its recorded params, run to its end
                study.enqueue_trial(record["params"])
                trial = study.ask(self.distributions)
                self.live[index] = trial
                for step, value in sorted(_merged_history(self.ledger, index, self.prune_metric).items()):
                    self._report(index, trial, step, value)
                continue
            value, kind = self._outcome(index, marker)
            intermediate = {step: self.prune_sign * v
                            for step, v in _merged_history(self.ledger, index, self.prune_metric).items()}
            study.add_trial(self.optuna.trial.create_trial(
                state=getattr(state, kind), value=value, params=record["params"], distributions=self.distributions,
                intermediate_values=intermediate, user_attrs={"point": index}))
            told += 1
        if told or self.live:
            log.info("search %s: rebuilt from the ledger: %d finished trial(s), %d to finish", self.ledger.name,
                     told, len(self.live))

    def _outcome(self, index: int, marker: Mapping) -> tuple[float | None, str]:
        """(objective, Optuna state name) of a final point."""
        if marker.get("state") == "pruned":
            return None, "PRUNED"
        if marker.get("state") != "done":
            return None, "FAIL"
        value = marker.get("metric")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            log.warning("search %s: point %d finished without a numeric objective %r (got %r) in %s; told as failed",
                        self.ledger.name, index, self.objective, value, marker.get("run_dir"))
            return None, "FAIL"
        return float(value), "COMPLETE"

    # -- the loop ---------------------------------------------------------------------------------------
    def ready(self, index: int) -> bool:
        return index in self.live

    def runnable(self, final: set[int]) -> list[int]:
        return sorted(i for i in self.live if i not in final)

    def finished(self, final: set[int] | None = None) -> bool:
        return not self.live and not self._unsampled()

    def _unsampled(self) -> list[int]:
        sampled = self.ledger.trial_indices()
        return [i for i in self.manifest["points"] if i not in sampled]

    def step(self, final: set[int] | None = None) -> None:
        """Tell the trials that became final, prune running ones, sample new ones into free parallel slots."""
        final = self.ledger.final_indices() if final is None else final
        for index in [i for i in self.live if i in final]:
            self._tell(index)
        if self.spec.get("pruner"):
            for index in [i for i in self.live if i not in self.pruning]:
                self._check_prune(index)
        if len(self.live) < self.parallel:
            for index in self._unsampled():
                if len(self.live) >= self.parallel:
                    break
                self._sample(index)

    def _tell(self, index: int) -> None:
        trial = self.live.pop(index)
        marker = self.ledger.final_state(index) or {}
        value, kind = self._outcome(index, marker)
        state = getattr(self.optuna.trial.TrialState, kind)
        self._study(index).tell(trial, value if kind == "COMPLETE" else None, state=state)
        self.pruning.discard(index)
        log.info("search %s: trial %d of grid point %d: %s%s", self.ledger.name, index % self.trials,
                 index // self.trials, kind.lower(), f" {self.objective}={value:.6g}" if value is not None else "")

    def _report(self, index: int, trial, step: int, value: float) -> bool:
        done = self.reported.setdefault(index, set())
        if step in done:
            return False
        done.add(step)
        trial.report(self.prune_sign * value, step)
        return True

    def _check_prune(self, index: int) -> None:
        progress = self.ledger.progress(index)
        history = (progress.get("history") or {}).get(self.prune_metric) or {}
        trial = self.live[index]
        new = [self._report(index, trial, int(step), float(v)) for step, v in sorted(history.items(),
                                                                                  key=lambda kv: int(kv[0]))]
        if not any(new) or not trial.should_prune():
            return
        owner = self.ledger.owner(index)
        if owner is None:
            return
        self.ledger.prune(index, owner["token"], {"metric": self.prune_metric, "values": history})
        self.pruning.add(index)
        log.info("search %s: pruning trial %d of grid point %d at epoch %s (%s %s)", self.ledger.name,
                 index % self.trials, index // self.trials, max(map(int, history)), self.prune_metric,
                 history[max(history, key=int)])

    def _sample(self, index: int) -> None:
        study = self._study(index)
        study.sampler = self._sampler(index // self.trials, index % self.trials)
        trial = study.ask(self.distributions)
        record = {"trial": index % self.trials, "grid_index": index // self.trials if self.has_grid else None,
                  "params": trial.params, "sampler": self.spec["sampler"]}
        stands = self.ledger.record_trial(index, record)
        if stands["params"] != trial.params:  # another driver sampled this trial first: take its params
            study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
            study.enqueue_trial(stands["params"])
            trial = study.ask(self.distributions)
        self.live[index] = trial
        log.info("search %s: trial %d of grid point %d: %s", self.ledger.name, index % self.trials,
                 index // self.trials, format_params(trial.params))


def search(experiment: str, config=None, trials: int = 10, sampler: str = "tpe", objective: str = "val_loss",
           direction: str | None = None, parallel: int = 1, seed: int | None = None, prune: str | None = None,
           prune_metric: str = "val_loss", prune_direction: str | None = None, flags: Sequence[str] = (),
           points=None, name: str | None = None,
           output_base: str | os.PathLike | None = None, engine: str = "local", plots: bool = True,
           lease_timeout: float | None = None, max_retries: int | None = None, progress: bool | None = None,
           **options):
    """Run (or resume) a search; returns its :func:`~dlkit.scan.api.status` DataFrame, with the best trials in
    ``frame.attrs["best"]`` and the plots' paths in ``frame.attrs["plots"]``.

    ``trials`` per selected grid point (``points``), ``parallel`` at once, sampled by ``sampler`` (``tpe`` or
    ``random``, seeded by ``seed``) to optimise ``objective`` in ``direction`` (default: minimize a loss, else
    maximize); ``prune`` (``median``/``halving``) stops poor trials early on ``prune_metric`` (in
    ``prune_direction``, by default from its name like ``direction``). Engines: local
    (``slots``/``gpus``/``threads_per_point``, default ``parallel`` slots), slurm and pbs (their ``run``
    options), dask (``dask_cluster``, default a LocalCluster of ``parallel`` workers). Running the same call
    again after a crash, ``kill -9`` or Ctrl-C finishes the same search.
    """
    if engine not in SEARCH_ENGINES:
        raise ScanError(f"--engine {engine!r}: a search runs on {', '.join(SEARCH_ENGINES)}")
    runner = make_engine(engine)
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ScanError(f"--parallel {parallel!r}: expected a positive integer")
    ledger = open_search(experiment, config, flags, name, output_base, trials=trials, sampler=sampler,
                         objective=objective, direction=direction, seed=seed, prune=prune, prune_metric=prune_metric,
                         prune_direction=prune_direction, points=points, lease_timeout=lease_timeout,
                         max_retries=max_retries)
    driver = SearchDriver(ledger, parallel)
    if engine in ("local", "dask") and options.get("slots") is None:
        options["slots"] = parallel  # (a cluster engine's arrays hold only sampled trials: no limit needed)
    code = runner.run(ledger, driver, ledger.options(), progress=progress, **options)
    frame = status(ledger.path)
    frame.attrs.update(exit_code=code, ledger=str(ledger.path), best=best(ledger.path),
                       plots=[str(p) for p in save_search_plots(ledger)] if plots else [])
    return frame


def best(path: str | os.PathLike, name: str | None = None, n: int | None = None):
    """The finished trials of the searches under ``path``, best first: point, trial, grid point, each param,
    the objective, epochs, run dir (``n``: only the first n per search)."""
    import pandas as pd

    frames = []
    for ledger in Ledger.find(path, name):
        manifest = ledger.manifest()
        spec = manifest.get("search")
        if not spec:
            continue
        params_of = ledger.params_lookup(manifest)
        rows = []
        for index, marker in sorted(ledger.final_states().items()):
            if marker.get("state") != "done" or not isinstance(marker.get("metric"), (int, float)):
                continue
            record = ledger.trial(index) or {}
            rows.append({"scan": ledger.name, "point": index, "trial": index % spec["trials"],
                         "grid_point": record.get("grid_index"), **(params_of(index) or {}),
                         spec["objective"]: marker["metric"], "epochs": marker.get("epochs"),
                         "run_dir": marker.get("run_dir")})
        frame = pd.DataFrame(rows)
        if len(frame):
            frame = frame.sort_values(spec["objective"], ascending=spec["direction"] == "minimize", kind="stable")
            frames.append(frame.head(n) if n else frame)
    if not frames:
        return pd.DataFrame(columns=["scan", "point", "trial", "grid_point"])
    return pd.concat(frames, ignore_index=True)


def _completed_study(ledger: Ledger):
    """A study of the ledger's finished trials (all grid points), for the importance evaluator."""
    optuna = _import_optuna()
    spec = ledger.manifest()["search"]
    distributions = {k: from_json(v).distribution() for k, v in spec["space"].items()}
    study = optuna.create_study(direction=spec["direction"])
    for index, marker in sorted(ledger.final_states().items()):
        value = marker.get("metric")
        record = ledger.trial(index)
        if marker.get("state") == "done" and record and isinstance(value, (int, float)) and math.isfinite(value):
            study.add_trial(optuna.trial.create_trial(value=float(value), params=record["params"],
                                                      distributions=distributions))
    return study


def search_plots(path: str | os.PathLike, name: str | None = None) -> dict[str, Any]:
    """Figures of one search: ``objective`` (the objective of every finished trial in order, with the best so
    far) and ``importance`` (Optuna's fANOVA parameter importances; absent with fewer than 3 finished trials)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    (ledger,) = Ledger.find(path, name)
    spec = ledger.manifest().get("search")
    if not spec:
        raise ScanError(f"{ledger.path}: not a search")
    objective, trials = spec["objective"], spec["trials"]
    figures: dict[str, Any] = {}
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    finals = ledger.final_states()
    for grid in spec["grid_points"]:
        xs, ys = [], []
        for t in range(trials):
            marker = finals.get(grid * trials + t) or {}
            if marker.get("state") == "done" and isinstance(marker.get("metric"), (int, float)):
                xs.append(t)
                ys.append(marker["metric"])
        if not xs:
            continue
        label = f"grid point {grid}" if len(spec["grid_points"]) > 1 else "trial"
        line = ax.plot(xs, ys, "o", label=label)[0]
        running = (min if spec["direction"] == "minimize" else max)
        bests = [running(ys[:k + 1]) for k in range(len(ys))]
        ax.step(xs, bests, where="post", color=line.get_color(), alpha=0.6, label=f"best so far ({label})")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"search {ledger.name}: {spec['sampler']}, {objective} ({spec['direction']})")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    figures["objective"] = fig
    study = _completed_study(ledger)
    if len(study.trials) >= 3:
        try:
            importance = _import_optuna().importance.get_param_importances(study)
        except (RuntimeError, ValueError) as exc:  # e.g. every trial has the same params
            log.warning("search %s: no parameter importances (%s)", ledger.name, exc)
        else:
            fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.5 * len(importance)))
            names = list(importance)[::-1]
            ax.barh(names, [importance[k] for k in names])
            ax.set_xlabel(f"importance for {objective} (fANOVA, fraction of variance)")
            ax.set_xlim(0, 1)
            fig.tight_layout()
            figures["importance"] = fig
    return figures


def save_search_plots(ledger: Ledger) -> list[Path]:
    """Write :func:`search_plots` as PNG into the ledger directory (``search_<name>.png``)."""
    import matplotlib.pyplot as plt

    paths = []
    for key, fig in search_plots(ledger.path).items():
        path = ledger.path / f"search_{key}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
