"""Experiments as specs on one shared run: DLKit's flags, config resolution, scan selection, train, analyse.

An experiment module (e.g. ``calodnn.ClassificationExperiment``) is an :class:`Experiment`: its defaults
(the one place they live), its ``--Test`` overrides and the three steps only it knows - set up the data,
build the model, analyse - and the shared :meth:`Experiment.run` does the rest::

    EXPERIMENT = Experiment("calodnn.ClassificationExperiment", __doc__, prefix="CaloDNN",
                            default_config=CONFIG_DIR / "Dense_4Class.py", defaults=DEFAULTS,
                            setup_data=setup_data, make_wrapper=make_wrapper, analysis=analysis,
                            summary=summary)
    run, main = EXPERIMENT.run, EXPERIMENT.main

From a notebook, ``run`` returns an :class:`ExperimentResult` (no printing, no ``sys.exit``)::

    result = ClassificationExperiment.run(point=12, Test=True, Epochs=3)
    result.metrics["Ele_AUC"], result.run_dir, result.figures["ROC"]

On the command line ``python -m calodnn.ClassificationExperiment -s 12`` is :meth:`Experiment.main`, a shell
over the same run that prints the summary and exits with its code: 0 success; 2 a configuration, data or
usage error (one line on stderr, no traceback); 75 (:data:`dlkit.protocol.EXIT_INTERRUPTED`) stopped
by a signal after saving - resume with ``-p``.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlkit.cli import prog
from dlkit.config import ConfigError, load_config, resolve_config
from dlkit.distribute import DISTRIBUTE_DEFAULTS
from dlkit.permutator import Permutator
from dlkit.protocol import EXIT_OK, EXIT_USER_ERROR
from dlkit.schedules import SCHEDULE_DEFAULTS, SCHEDULE_RANGES

log = logging.getLogger(__name__)

__all__ = ["Experiment", "ExperimentResult", "make_parser", "configure_device", "RunSetup", "resolve_run",
           "load_or_build", "compile_model", "training_callbacks", "train", "finish", "summary_footer", "run_main",
           "UserError", "EXIT_USER_ERROR", "FLAG_KEYS", "RUN_DEFAULTS", "RunData"]

class UserError(RuntimeError):
    """An error in what the user asked for (files, flags, data): reported in one line, exit code 2."""


def make_parser(description: str, default_config: str | os.PathLike | None = None) -> argparse.ArgumentParser:
    """An argument parser with DLKit's experiment flags (same names, same meaning)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("-C", "--config", default=None,
                   help=f"config file: plain Python defining Config (dict) and optionally Params (the scan grid); "
                        f"default: {default_config}")
    p.add_argument("-s", "--hyperparamset", type=int, default=None, metavar="N",
                   help="scan point to run (DLKit order: keys sorted, last varies fastest); default: "
                        "$SLURM_ARRAY_TASK_ID, $PBS_ARRAYID (Torque) or $PBS_ARRAY_INDEX (PBS Pro), else 0")
    p.add_argument("-L", "--LoadModel", default=None, metavar="DIR",
                   help="load the model saved in DIR and train Epochs more epochs from it (new directory, "
                        "history chained)")
    p.add_argument("-p", "--LoadPrevious", action="store_true",
                   help="resume from the newest complete save of this scan point's model name, if any: train "
                        "only the epochs left until Epochs in all (none if the earlier runs reached it; new "
                        "directory, history chained, epoch numbers continue)")
    p.add_argument("--gpu", type=int, default=None, metavar="ID",
                   help="use GPU ID only (sets CUDA_VISIBLE_DEVICES before Keras is imported)")
    p.add_argument("--cpu", action="store_true", help="hide all GPUs; run on the CPU")
    p.add_argument("--NoTrain", action="store_true", help="skip training (e.g. analyse a loaded model)")
    p.add_argument("--NoAnalysis", action="store_true", help="skip the analysis after training")
    p.add_argument("--Test", action="store_true",
                   help="quick test: few events, 2 epochs, output under <OutputBase>.Test/ (TrainedModels.Test/; "
                        "an --OutputBase given on the command line is used as it is)")
    p.add_argument("--nopremix", action="store_true", help="mix the per-class files on the fly instead of premixing")
    p.add_argument("--preload", action="store_true", help="keep the whole dataset in memory")
    p.add_argument("--nocache", action="store_true", help="do not write or use the generator's on-disk cache")
    p.add_argument("-r", "--runningtime", type=float, default=None, metavar="SECONDS",
                   help="stop training cleanly (and save) once SECONDS of wall time are spent")
    p.add_argument("--tensorboard", action="store_true",
                   help="write Keras' TensorBoard logs into the run directory (tensorboard/); watch them with "
                        "tensorboard --logdir <OutputBase> (needs pip install 'dlkit[tensorboard]')")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="dataset directory (one sub-directory per class); default: simulate one into the cache")
    p.add_argument("--OutputBase", default=None, metavar="DIR", help="where model directories go (TrainedModels)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config entry; VALUE is JSON (3, 0.1, true, \"SGD\", [1,2]) or a bare string")
    p.add_argument("--trial", default=None, metavar="FILE",
                   help="run a dlkit.scan search trial: its sampled params (trials/<i>.json in the search's ledger) "
                        "over the config, on the grid point -s")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.set_defaults(default_config=default_config)
    return p


def configure_device(args: argparse.Namespace, configure_logging: bool = True) -> None:
    """Apply ``--cpu``/``--gpu`` and (for a CLI) logging; must run before Keras is imported."""
    if configure_logging:
        logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose + 1, 2),
                            format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "keras" in sys.modules and (args.cpu or args.gpu is not None):
        log.warning("Keras was imported before --gpu/--cpu were applied; the device choice may not take effect")


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw  # a bare string, e.g. --set optimizer=Adam
    return out


@dataclass
class RunSetup:
    """Everything resolved before any data or model is touched."""

    config: dict
    index: int | None
    point: dict
    hash: str | None
    name: str
    output_base: Path
    scan_size: int
    flags: dict = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)  # when the run started (its configuration resolved)


def resolve_run(args: argparse.Namespace, defaults: Mapping[str, Any], prefix: str,
                test_overrides: Mapping[str, Any] | None = None, types: Mapping[str, Any] | None = None,
                flag_keys: Mapping[str, str] | None = None, ranges: Mapping[str, Any] | None = None,
                import_backend: bool = True) -> RunSetup:
    """Resolve defaults < config file < ``--Test`` < flags < scan point, and name the run.

    ``ranges`` are the experiment's own :class:`~dlkit.config.Range` of each numeric entry (over
    :data:`dlkit.config.RANGES`). ``flag_keys`` maps argparse destinations to config keys (e.g.
    ``{"runningtime": "RunningTime"}``);
    only flags given on the command line override. The model name is ``prefix`` followed by the scan
    point's ``_<key><value>`` in scan-key order, so it is stable across processes and Python versions.
    Once the configuration is valid, Keras is imported (``import_backend``) without TensorFlow's start-up
    noise (:mod:`dlkit.quiet`); an experiment without Keras passes False.
    """
    started = time.monotonic()
    config_path = args.config or args.default_config
    file_config, params = load_config(config_path) if config_path else ({}, None)
    flag_keys = dict(flag_keys or {})
    flags = {}
    for dest, key in flag_keys.items():
        value = getattr(args, dest, None)
        if value not in (None, False):
            flags[key] = value
    flags.update(_parse_set(args.set))
    for flag, key, value in (("nopremix", "Premix", False), ("preload", "Preload", True), ("nocache", "Cache", False)):
        if getattr(args, flag, False):
            if key in defaults:
                flags[key] = value
            else:
                log.warning("--%s does not apply to this experiment (it has no %r config entry); ignored", flag, key)
    scan = Permutator(params) if params else None
    index, point = scan.select(args.hyperparamset) if scan else (None, {})
    trial = _read_trial(args.trial, index) if getattr(args, "trial", None) else None
    if trial is not None:
        point = {**point, **trial["params"]}
    for key in sorted(set(flags) & set(point)):
        if flags[key] != point[key]:
            log.warning("command line %s=%r is overridden by scan point %d's %s=%r (the scan point wins, as in "
                        "DLKit); use a config without %r in Params to set it", key, flags[key], index, key,
                        point[key], key)
    if scan is None and args.hyperparamset not in (None, 0):
        raise ConfigError(f"-s {args.hyperparamset}: config {config_path} defines no Params scan grid")
    layers = [(f"config file {config_path}", file_config)]
    if args.Test:
        layers.append(("--Test", test_overrides or {}))
    layers.append(("command line", flags))
    if getattr(args, "overrides", None):  # Experiment.run's keyword arguments: real Python values
        layers.append(("run() keyword arguments", dict(args.overrides)))
    if scan:
        layers.append((f"scan point {index} of {config_path}", point))
    if trial is not None:
        layers.append((f"search trial {args.trial}", trial["params"]))
    config = resolve_config(defaults, *layers, types=types, ranges={**RUN_RANGES, **(ranges or {})})
    if getattr(args, "LoadModel", None):  # before any data is set up: a typo in -L must not cost a data setup
        check_model_dir(args.LoadModel)
    if config.get("TensorBoard") and importlib.util.find_spec("tensorboard") is None:
        raise UserError("--tensorboard (config entry TensorBoard): TensorBoard is not installed; "
                        "pip install 'dlkit[tensorboard]'")
    if args.Test and "OutputBase" in config and "OutputBase" not in flags:
        config["OutputBase"] = str(config["OutputBase"]) + ".Test"
    name = prefix + "".join(f"_{k}{point[k]}" for k in (scan.keys if scan else []))
    hash_ = scan.hash(index) if scan else None
    if trial is not None:  # a trial's name is its number: sampled floats make poor directory names
        from dlkit.permutator import point_hash

        name += f"_Trial{trial['trial']}"
        hash_ = point_hash(point)
        point = {**point, "Trial": trial["trial"]}
    output_base = Path(config.get("OutputBase", "TrainedModels"))
    if import_backend:
        from dlkit.quiet import import_keras

        import_keras()
    log.info("%s: setting up the data", name)
    return RunSetup(config=config, index=index, point=point, hash=hash_, name=name,
                    output_base=output_base, scan_size=len(scan) if scan else 1, flags=flags, started=started)


def check_model_dir(path: str | os.PathLike) -> Path:
    """``-L DIR``: a saved model directory (its MetaData.json readable, its model file there), else a
    :class:`UserError` naming it."""
    from dlkit.metadata import MODEL_FILE, read_metadata

    directory = Path(path)
    if not directory.is_dir():
        raise UserError(f"-L {path}: no such model directory")
    read_metadata(directory)  # MetaDataError: missing or not valid JSON, naming the file
    if not (directory / MODEL_FILE).is_file():
        raise UserError(f"-L {path}: no {MODEL_FILE} in it (the run never saved a model)")
    return directory


def _read_trial(path: str, index: int | None) -> dict:
    """A search trial's file (``dlkit.scan`` writes it): ``trial``, ``grid_index`` and the sampled ``params``."""
    try:
        with open(path) as f:
            trial = json.load(f)
    except OSError as exc:
        raise ConfigError(f"--trial {path}: cannot read it ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--trial {path}: not JSON ({exc})") from None
    if not isinstance(trial, dict) or not isinstance(trial.get("params"), dict) or "trial" not in trial:
        raise ConfigError(f"--trial {path}: expected a search trial (trial, grid_index, params)")
    if trial.get("grid_index") is not None and trial["grid_index"] != index:
        raise ConfigError(f"--trial {path}: it belongs to grid point {trial['grid_index']}, not -s {index}")
    return trial


class RunData:
    """Base of an experiment's data holder (a dataclass with ``train`` and ``validation`` generators):
    :meth:`close` stops their reader processes; ``with setup_data(config) as data:`` does it on any exit.

    Transforms fitted on the training set (config entries ``Standardize``, ``Reweight``,
    :mod:`dlkit.generators.fitting`): a data holder that supports them names them in ``fitted_entries`` and
    implements :meth:`fit_transforms`, which the run calls once after the model is built or loaded and before
    training (a run setting an entry its experiment does not support is refused before any data is set up).
    """

    #: The fitted config entries this experiment's data supports (``"Standardize"``, ``"Reweight"``).
    fitted_entries: tuple[str, ...] = ()

    def fit_transforms(self, metadata: dict, config: dict) -> None:
        """Fit what ``config`` asks on the training split - or take it from ``metadata``, the loaded run's
        (:func:`dlkit.generators.fitting.resolve_fitted`) - record it in ``metadata`` and put it to use
        (typically: build the generators with it). The base fits nothing."""

    def read_test_arrays(self, class_names, preprocess=None, batch_size: int = 1024, **options) -> dict:
        """Every event of ``self.test_samples`` in memory, in file order, read with the run's generator options
        (``self.options``) and its ``preprocess``: the arrays of :meth:`MultiClassGenerator.read_all`."""
        from dlkit.generators import MultiClassGenerator

        class_map = {name: i for i, name in enumerate(class_names)}
        with MultiClassGenerator(self.test_samples, batch_size, class_index_map=class_map, shuffle=False,
                                 preprocess=preprocess, **{**self.options, **options}) as gen:
            return gen.read_all()

    def close(self):
        for gen in (self.train, self.validation):
            if gen is not None:
                gen.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#: The run-control entries every experiment has (DLKit's names; ``**RUN_DEFAULTS`` in its ``DEFAULTS``), read
#: by :func:`train` (``RunningTime``), :func:`load_or_build` (``LoadPreviousModel``, ``-p``),
#: :func:`training_callbacks` and the model directory (``OutputBase``).
RUN_DEFAULTS = {
    "RunningTime": None,        # seconds of training, then stop cleanly and save (-r)
    "LoadPreviousModel": False,  # resume the newest save of this scan point up to Epochs in all (-p)
    "EarlyStopping": False,
    "EarlyStopping_patience": 3,
    "EarlyStopping_min_delta": 0.0,
    "monitor": "val_loss",
    "ModelCheckpoint": False,   # also keep the best epoch (by monitor) as Checkpoint.keras
    "OutputBase": "TrainedModels",
    "AllowEmptyClasses": False,  # a class with no events is an error naming it and its files, unless True
    "TensorBoard": False,       # Keras' TensorBoard logs in <run dir>/tensorboard (--tensorboard; dlkit[tensorboard])
    "Deterministic": False,     # fixed seeds and deterministic ops: a resumed run reproduces an uninterrupted one
    "CheckpointEvery": None,    # seconds between mid-epoch saves (None: off, or 900 in a scan; 0: off)
    # fitted once on the training split, stored in MetaData.json ("Fitted"), reused by -p/-L/analysis (never
    # refitted); only experiments whose data supports them (RunData.fitted_entries); see dlkit.generators.fitting
    "Standardize": None,        # {"arrays": [...], "method": "standard"|"robust", "events": 100000, "seed": None}
    "Reweight": None,           # {"variable": "energy", "bins": [edges] or {"n", "low", "high"}, "method": "flat"}
    # the learning-rate schedule (LRSchedule: InverseTime - DLKit's decay, the default -, Step, Cosine,
    # WarmupCosine, OneCycle, ReduceOnPlateau) and its parameters; see dlkit.schedules
    **SCHEDULE_DEFAULTS,
    # DataParallel (the visible devices, BatchSize global) and Precision (float32, mixed_bfloat16,
    # mixed_float16); see dlkit.distribute
    **DISTRIBUTE_DEFAULTS,
}

#: The ranges of RUN_DEFAULTS' numeric entries that :data:`dlkit.config.RANGES` does not hold (checked by
#: :func:`resolve_run` under the experiment's own).
RUN_RANGES = dict(SCHEDULE_RANGES)

#: ``CheckpointEvery`` of a scan point that sets none: a preempted or killed point loses at most this much.
SCAN_CHECKPOINT_SECONDS = 900.0

#: Where a run's TensorBoard logs go, inside its run directory.
TENSORBOARD_DIR = "tensorboard"

#: Flags that set config entries of every experiment (argparse destination -> config key).
FLAG_KEYS = {"runningtime": "RunningTime", "data": "DataDir", "OutputBase": "OutputBase",
             "LoadPrevious": "LoadPreviousModel", "tensorboard": "TensorBoard"}


def compile_model(wrapper, metrics=("accuracy",), loss=None, **compile_kwargs) -> None:
    """Optimizer and loss from the wrapper's Config (``optimizer``, ``lr``, DLKit's ``decay`` or another
    ``LRSchedule`` (:mod:`dlkit.schedules`), ``momentum`` for SGD/RMSprop, ``loss``), then compile with
    ``metrics``. A network of several outputs passes ``loss`` and ``metrics`` per output name (dicts) and
    e.g. ``loss_weights`` (``compile_kwargs`` go to Keras' ``compile``)."""
    from dlkit.schedules import learning_rate

    c = wrapper.Config
    extra = {"momentum": c["momentum"]} if c.get("momentum") and c["optimizer"] in ("SGD", "RMSprop") else {}
    wrapper.BuildOptimizer(c["optimizer"], lr=learning_rate(c), decay=c.get("decay", 0.0), **extra)
    wrapper.Compile(Loss=c["loss"] if loss is None else loss,
                    Metrics=dict(metrics) if isinstance(metrics, Mapping) else list(metrics), **compile_kwargs)


def training_callbacks(wrapper, config) -> list:
    """The optional callbacks DLKit configs switch on.

    ``EarlyStopping`` (``monitor``, ``EarlyStopping_patience``, ``EarlyStopping_min_delta``; the best
    weights are restored, so the saved model is the best epoch's), ``ModelCheckpoint`` (the best epoch
    also kept as ``Checkpoint.keras`` in the model directory) and ``TensorBoard`` (Keras' logs, per epoch, in
    ``<run dir>/tensorboard``: ``tensorboard --logdir <OutputBase>`` shows every run of the scan) and, with
    ``LRSchedule="ReduceOnPlateau"``, Keras' ``ReduceLROnPlateau`` (:func:`dlkit.schedules.plateau_callback`).
    """
    import keras

    from dlkit.callbacks import AtomicModelCheckpoint
    from dlkit.schedules import plateau_callback

    callbacks = []
    if config.get("EarlyStopping"):
        callbacks.append(keras.callbacks.EarlyStopping(monitor=config["monitor"],
                                                       patience=config["EarlyStopping_patience"],
                                                       min_delta=config["EarlyStopping_min_delta"],
                                                       restore_best_weights=True))
    if config.get("ModelCheckpoint"):
        callbacks.append(AtomicModelCheckpoint(str(Path(wrapper.OutDir) / "Checkpoint.keras"),
                                               monitor=config["monitor"], save_best_only=True))
    if config.get("TensorBoard"):
        callbacks.append(keras.callbacks.TensorBoard(str(Path(wrapper.OutDir) / TENSORBOARD_DIR), write_graph=False))
    plateau = plateau_callback(config)
    if plateau is not None:
        callbacks.append(plateau)
    return callbacks


def make_deterministic(config: Mapping) -> None:
    """``Deterministic``: the same results from the same run, interrupted or not - Python's, numpy's and the
    backend's random seeds from ``Seed`` and, on TensorFlow, deterministic ops (slower on a GPU; a few ops
    then refuse to run). JAX on the CPU is deterministic already; torch uses its deterministic algorithms."""
    if not config.get("Deterministic"):
        return
    import keras

    keras.utils.set_random_seed(int(config.get("Seed") or 0))
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf  # the one place dlkit needs TensorFlow itself: Keras has no switch for this

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)


def load_or_build(args: argparse.Namespace, setup: RunSetup, make_wrapper: Callable[..., Any],
                  compile_model: Callable[[Any], None]):
    """Give the run its ModelWrapper: ``-L DIR`` loads DIR, ``-p`` (or ``LoadPreviousModel``) the newest save,
    else build fresh.

    A wrapper continuing the newest save (``-p``) has ``ContinuesPrevious`` set, so :func:`train` trains only
    the epochs left until ``Epochs`` over all resumes; one loaded with ``-L DIR`` trains ``Epochs`` more (DLKit).

    ``make_wrapper(name, **wrapper_kwargs)`` constructs the experiment's ModelWrapper subclass;
    ``compile_model(wrapper)`` builds the optimizer and compiles a freshly built model (a loaded
    model keeps its compiled optimizer and state).
    """
    log.info("%s: %s the model", setup.name, "loading" if args.LoadModel else "building")
    common = dict(OutputBase=setup.output_base, Config=setup.config, ScanPoint=setup.point or None,
                  HyperParamSet=setup.index, HyperParamHash=setup.hash)
    if args.LoadModel:
        from dlkit.model_wrapper import read_metadata

        directory = check_model_dir(args.LoadModel)
        name = read_metadata(directory).get("Name") or setup.name
        wrapper = make_wrapper(name, **common)
        wrapper.Load(directory)
    else:
        load_previous = bool(args.LoadPrevious or setup.config.get("LoadPreviousModel"))
        wrapper = make_wrapper(setup.name, LoadPrevious=load_previous, **common)
        if load_previous:
            previous = wrapper.find_previous()
            if previous is not None:
                wrapper.Load(previous)
                wrapper.ContinuesPrevious = True  # resume: train() counts the earlier runs' epochs
    make_deterministic(setup.config)
    if wrapper.Model is None:
        if setup.config.get("Seed") is not None:  # the same scan point builds the same initial weights
            import keras

            keras.utils.set_random_seed(int(setup.config["Seed"]))
        wrapper.Build()
        from dlkit.distribute import float32_outputs

        float32_outputs(wrapper.Model)  # under a mixed Precision: predictions and losses stay float32
        compile_model(wrapper)
    wrapper.Config = dict(setup.config)  # what this run resolved, also when continuing a loaded model
    wrapper.set_scan_point(setup.point or None, setup.index, setup.hash)
    wrapper.LoadPrevious = False  # already handled above
    wrapper.Initialize()
    return wrapper


def train(wrapper, setup: RunSetup, train_data, validation_data=None, callbacks=(), **fit_kwargs):
    """Train with the callbacks every run gets: GracefulExit always, TimeStopping if ``RunningTime``; then save.

    ``Epochs`` counts over resumes when the wrapper continues the newest save (``-p``/``LoadPreviousModel``,
    ``wrapper.ContinuesPrevious``): the earlier runs' epochs (``wrapper.PreviousEpochs``, the sum of their
    ``EpochTime`` lengths) are Keras' ``initial_epoch``, so only the remaining ``Epochs - PreviousEpochs`` are
    trained, with epoch numbers continuing; none if the earlier runs reached ``Epochs`` (the run is still
    saved and ``"completed"``). Otherwise - a fresh model, or ``-L DIR`` - it trains ``Epochs`` epochs.
    """
    from dlkit import protocol
    from dlkit.callbacks import GracefulExit, ScanProgress, TimeStopping

    epochs = setup.config["Epochs"]
    initial = wrapper.PreviousEpochs if getattr(wrapper, "ContinuesPrevious", False) else 0
    graceful = GracefulExit()
    # (ScanProgress runs after the wrapper's save of each epoch: an epoch is reported once saved)
    all_callbacks = [graceful, *callbacks]
    if getattr(wrapper, "Writes", True):  # (in a job of several processes, the first reports)
        all_callbacks.append(ScanProgress(wrapper.OutDir, wrapper.PreviousEpochs))
    if setup.config.get("RunningTime"):  # in a scan its budget is an interruption: the point resumes
        all_callbacks.append(TimeStopping(setup.config["RunningTime"], resumable=protocol.current() is not None))
    if initial:
        log.info("%s: resuming after %d earlier epoch(s); training %d more to reach Epochs=%d", wrapper.Name,
                 initial, max(epochs - initial, 0), epochs)
    log.info("%s: training", wrapper.Name)
    every = setup.config.get("CheckpointEvery")
    if every is None and protocol.current() is not None:
        every = SCAN_CHECKPOINT_SECONDS
    with graceful:  # handlers stay installed through the save: a SIGTERM then is recorded, not fatal
        wrapper.Train(train_data, Epochs=epochs, validation_data=validation_data, Callbacks=all_callbacks,
                      InitialEpoch=initial, CheckpointEvery=every or None, **fit_kwargs)
        mid = wrapper.MetaData.get("MidEpoch")
        if mid and getattr(wrapper, "Writes", True):  # progress inside an epoch counts: a point resumed at the next
            # batch is not stuck
            protocol.report(epochs=round(wrapper.MetaData["TotalEpochs"] + mid["batch"] / mid["steps"], 4))
        if wrapper.MetaData.get("Status") in ("completed", "stopped"):
            # until finish(): a run killed during its analysis must not look complete (the scan would count it)
            wrapper.MetaData["TrainStatus"] = wrapper.MetaData["Status"]
            wrapper.MetaData["Status"] = "analysing"
        log.info("%s: saving", wrapper.Name)
        wrapper.Save()
    if graceful.interrupted and not wrapper.Interrupted:  # the signal came during the save: stop before analysis
        raise Interrupted(graceful.received_signal)
    return graceful


def summary_footer(setup: RunSetup) -> str:
    """The lines an experiment prints after its summary table: the run's wall time (from its configuration on:
    imports, data, training, analysis) and the command that compares it with the other runs of its scan."""
    minutes, seconds = divmod(round(time.monotonic() - setup.started), 60)
    wall = f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
    return (f"wall time: {wall}\n"
            f"next: python -m dlkit.ScanAnalysis {shlex.quote(str(setup.output_base))}   # compare the runs")


def finish(wrapper) -> int:
    """Write the final metadata and return the process exit code: 75 if a signal stopped training, 77
    (:data:`dlkit.protocol.EXIT_PRUNED`) if that signal came from a search's pruner. ``RunningTime`` (``-r``)
    keeps DLKit's meaning outside a scan (the run ends, exit 0); inside one, its budget is an interruption
    (75): the scan requeues the point, which resumes with ``-p`` up to its ``Epochs``."""
    from dlkit import protocol as point
    from dlkit.callbacks.time_stopping import TIME_LIMIT_REASON

    interrupted = wrapper.Interrupted
    out_of_time = str(wrapper.MetaData.get("StopReason") or "").startswith(TIME_LIMIT_REASON)
    if out_of_time and point.current() is not None:
        wrapper.MetaData["TrainStatus"] = "interrupted"
        interrupted = True
    status = wrapper.MetaData.pop("TrainStatus", None)
    if interrupted and point.pruned():
        wrapper.MetaData["StopReason"] = "pruned by the search"
        wrapper.finish(Status="pruned")
        log.info("%s: pruned by the search; saved in %s", wrapper.Name, wrapper.OutDir)
        return point.EXIT_PRUNED
    wrapper.finish(Status=status)
    if interrupted:
        log.warning("%s: stopped by %s; saved in %s - resume with -p (exit code %d)", wrapper.Name,
                    "its time budget (RunningTime) in a scan" if out_of_time else "a signal", wrapper.OutDir,
                    point.EXIT_INTERRUPTED)
        return point.EXIT_INTERRUPTED
    return point.EXIT_OK


@dataclass
class ExperimentResult:
    """What one run of an experiment gives back (:meth:`Experiment.run`).

    ``exit_code`` is the CLI's: 0 done, 75 stopped by a signal after saving (resume with ``LoadPrevious=True``),
    77 pruned by a search. ``metrics`` are the analysis' results (also in ``wrapper.MetaData``), ``figures``
    and ``tables`` what it drew and tabulated (also saved in ``run_dir``); empty when the analysis did not run.
    """

    exit_code: int
    run_dir: Path
    wrapper: Any
    config: dict
    metrics: dict
    figures: dict
    tables: dict
    setup: RunSetup
    summary: str

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK


@dataclass(frozen=True)
class Experiment:
    """One experiment: what only it knows; :meth:`run` (Python) and :meth:`main` (CLI) do the rest.

    Parameters
    ----------
    module
        Its ``python -m`` name (``"calodnn.ClassificationExperiment"``).
    doc
        Its module docstring: the first line is the ``--help`` description.
    prefix
        Model names are ``prefix`` plus the scan point's ``_<key><value>``.
    defaults, types, ranges
        Every config entry with its default (the one place defaults live; the model classes read them
        from the resolved config), declared types, and allowed ranges (over :data:`dlkit.config.RANGES`).
    test_overrides
        What ``--Test`` changes (a small dataset, few epochs).
    setup_data
        ``setup_data(config, test)``: a context manager yielding the data (``train``, ``validation``
        generators and what the model and analysis need); it releases the readers on exit.
    make_wrapper
        ``make_wrapper(name, data, **wrapper_kwargs)``: the experiment's ModelWrapper.
    analysis
        ``analysis(wrapper, data, config)``: an :class:`~dlkit.analysis.AnalysisResults`.
    summary
        ``summary(wrapper, config)``: the text the CLI prints at the end.
    compile, check_config, after_build, fit_kwargs
        Optional: the compile step (:func:`compile_model`), a check of entries a type cannot express (before
        any data is made), a step after the model is built or loaded, extra arguments to ``fit``.
    """

    module: str
    doc: str
    prefix: str
    defaults: Mapping[str, Any]
    setup_data: Callable[[dict, bool], AbstractContextManager]
    make_wrapper: Callable[..., Any]
    analysis: Callable[[Any, Any, dict], Any]
    summary: Callable[[Any, dict], str]
    default_config: str | os.PathLike | None = None
    types: Mapping[str, Any] = field(default_factory=dict)
    ranges: Mapping[str, Any] = field(default_factory=dict)
    test_overrides: Mapping[str, Any] = field(default_factory=dict)
    compile: Callable[[Any], None] = compile_model
    check_config: Callable[[dict], None] | None = None
    after_build: Callable[[Any, Any], None] | None = None
    fit_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def description(self) -> str:
        return (self.doc or self.module).strip().splitlines()[0]

    def parser(self) -> argparse.ArgumentParser:
        parser = make_parser(self.description, self.default_config)
        parser.prog = prog(self.module)
        return parser

    def run(self, config: str | os.PathLike | None = None, point: int | None = None, Test: bool = False,
            **overrides) -> ExperimentResult:  # noqa: N803 - DLKit's flag name
        """Run the experiment from Python; returns an :class:`ExperimentResult` (no printing, no ``sys.exit``;
        the run's progress is in ``logging`` and, per epoch, in ``result.wrapper.History``).

        ``config`` is a config file (default: the experiment's), ``point`` the scan point (``-s``), ``Test``
        the ``--Test`` mode. Every other keyword is a config entry (``Epochs=3``, ``Width=128``: Python values,
        checked like a config file's) or a flag by its DLKit name (``OutputBase``, ``data``, ``LoadModel``,
        ``LoadPrevious``, ``NoTrain``, ``NoAnalysis``, ``runningtime``, ``tensorboard``, ``cpu``, ``gpu``).
        Errors in what was asked for raise :class:`~dlkit.config.ConfigError` / :class:`UserError` naming it.

        >>> result = run(point=12, Test=True, Epochs=3, OutputBase="/scratch/me/TrainedModels")
        >>> result.metrics["Ele_AUC"], result.run_dir
        """
        return self._execute(self._namespace(config, point, Test, overrides), cli=False)

    def cli(self, argv: list[str] | None = None) -> int:
        """The command line without ``sys.exit``: parse ``argv``, run, print the summary; returns the exit code."""
        return run_main(self._cli, argv)

    def main(self, argv: list[str] | None = None):
        """``python -m <module>``."""
        sys.exit(self.cli(argv))

    def _cli(self, argv) -> int:
        result = self._execute(self.parser().parse_args(argv))
        print(result.summary)
        print(summary_footer(result.setup))
        return result.exit_code

    def _namespace(self, config, point, test, overrides: Mapping[str, Any]) -> argparse.Namespace:
        """The parsed flags the CLI would have, from :meth:`run`'s keywords, checked as the CLI checks them."""
        parser = self.parser()
        args = parser.parse_args([])
        args.config = None if config is None else str(config)
        args.hyperparamset = point
        args.Test = bool(test)
        internal = {"help", "default_config", "set", "config", "hyperparamset", "Test", "verbose"}
        flags = {a.dest: a for a in parser._actions if a.dest not in internal}
        entries = {}
        for key, value in overrides.items():
            action = flags.get(key)
            if action is None and key in self.defaults:
                entries[key] = value
                continue
            if action is None:
                close = difflib.get_close_matches(key, [*flags, *self.defaults], n=3)
                raise ConfigError(f"run({key}=...): not a config entry or flag of {self.module}"
                                  + (f"; did you mean {', '.join(close)}?" if close else ""))
            if isinstance(value, os.PathLike):  # OutputBase=Path(...), data=Path(...)
                value = os.fspath(value)
            if action.nargs == 0:  # store_true
                if not isinstance(value, bool):
                    raise ConfigError(f"run({key}={value!r}): expected True or False")
            elif value is not None and action.type is not None:
                try:
                    value = action.type(value)
                except (TypeError, ValueError):
                    raise ConfigError(f"run({key}={value!r}): expected {action.type.__name__}") from None
            setattr(args, key, value)
        args.overrides = entries
        return args

    def _execute(self, args: argparse.Namespace, cli: bool = True) -> ExperimentResult:
        """The steps every experiment shares: device, config, data, load or build, train, analyse, save.
        From Python (``cli=False``) it sets up no logging and Keras prints no epoch lines."""
        configure_device(args, configure_logging=cli)
        fit_kwargs = dict(self.fit_kwargs) if cli else {**self.fit_kwargs, "verbose": 0}
        setup = resolve_run(args, self.defaults, prefix=self.prefix, test_overrides=self.test_overrides,
                            types=self.types, flag_keys=FLAG_KEYS, ranges=self.ranges, import_backend=False)
        from dlkit import distribute, schedules
        from dlkit.quiet import import_keras

        distribute.join(setup.config, relaunch=cli)  # several processes (srun): join the job before the backend
        import_keras()
        if self.check_config is not None:
            self.check_config(setup.config)
        log.info("scan point %s/%d %s -> %s", setup.index, setup.scan_size, setup.point, setup.name)
        results = None
        from dlkit.generators.fitting import check_entries

        check_entries(setup.config)  # the fitted entries' values, before any data is set up
        schedules.check_entries(setup.config)
        devices = distribute.Devices(setup.config)  # DataParallel on torch: refused here
        with self.setup_data(setup.config, bool(args.Test)) as data:
            check_entries(setup.config, getattr(data, "fitted_entries", ()), self.module)
            with devices:  # the precision and the devices of building, loading and training the model
                wrapper = load_or_build(args, setup, lambda name, **kw: devices.adopt(self.make_wrapper(
                    name, data, **kw)), self.compile)
                wrapper.MetaData["Devices"] = devices.describe()
                if hasattr(data, "fit_transforms"):  # fitted on the training split, or the loaded run's (MetaData)
                    data.fit_transforms(wrapper.MetaData, setup.config)
                if self.after_build is not None:
                    self.after_build(wrapper, data)
                if not args.NoTrain:
                    train(wrapper, setup, devices.feed(data.train), devices.feed(data.validation),
                          training_callbacks(wrapper, setup.config), **fit_kwargs)
            if not args.NoAnalysis and not wrapper.Interrupted and devices.writes:
                if devices.processes > 1:  # its variables span the job's processes: the analysis reads the save
                    _reload_for_analysis(wrapper)
                results = self.analysis(wrapper, data, setup.config)
                wrapper.MetaData.update(results.metadata)
                results.save(wrapper.OutDir)
                if args.NoTrain:
                    wrapper.Save()
            code = finish(wrapper)
            devices.barrier("the run is over")  # (the other processes wait for rank 0's analysis)
        if not devices.writes:
            summary = f"{wrapper.Name}: process {devices.rank} of {devices.processes}; the first writes the run"
            return ExperimentResult(exit_code=code, run_dir=Path(wrapper.OutDir), wrapper=wrapper,
                                    config=setup.config, metrics={}, figures={}, tables={}, setup=setup,
                                    summary=summary)
        summary = self.summary(wrapper, setup.config)
        if args.Test:  # said once here for every experiment: a --Test run's numbers are no physics
            from dlkit.analysis.results import smoke_test_summary

            summary = smoke_test_summary(summary, setup.config, wrapper.MetaData)
        return ExperimentResult(exit_code=code, run_dir=Path(wrapper.OutDir), wrapper=wrapper, config=setup.config,
                                metrics=dict(results.metadata) if results else {},
                                figures=dict(results.figures) if results else {},
                                tables=dict(results.tables) if results else {}, setup=setup, summary=summary)


def _reload_for_analysis(wrapper) -> None:
    """Rank 0 of a job of several processes, after training: the model again from its save, on this process'
    devices alone (the trained variables are arrays of the whole job)."""
    from dlkit.metadata import MODEL_FILE
    from dlkit.saving import load_model

    saved = Path(wrapper.OutDir) / MODEL_FILE
    wrapper.Model = load_model(saved if saved.is_file() else Path(wrapper.InDir) / MODEL_FILE)


class Interrupted(BaseException):
    """A stop signal outside training (data setup, analysis, the final save): raised in the main thread so the
    run unwinds - its data pipeline's reader processes and shared memory released - and exits 75. (During
    training :class:`~dlkit.callbacks.GracefulExit` handles the signals itself: the epoch ends and is saved.)"""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signal_name = signal.Signals(signum).name


def _interrupt(signum, frame):
    raise Interrupted(signum)


def run_main(run: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Call ``run(argv)``; user errors become one line on stderr and exit code 2; SIGTERM, SIGINT or SIGUSR1
    at any phase ends the run with exit code 75 (77 for a search trial the pruner stopped), its last save
    intact and nothing of it left running."""
    from dlkit.cachedir import UnsafeDirectoryError
    from dlkit.metadata import MetaDataError  # not dlkit.model_wrapper: an experiment without Keras stays light
    from dlkit import protocol as point
    from dlkit.protocol import EXIT_INTERRUPTED

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        return run(argv)
    except (ConfigError, UserError, MetaDataError, FileNotFoundError, UnsafeDirectoryError,
            *_pipeline_errors()) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (Interrupted, KeyboardInterrupt) as exc:  # KeyboardInterrupt: GracefulExit's forced quit (2nd signal)
        name = getattr(exc, "signal_name", "a second signal")
        print(f"stopped by {name}; the last save is intact: run again with -p to resume (exit code "
              f"{EXIT_INTERRUPTED})", file=sys.stderr)
        return point.EXIT_PRUNED if point.pruned() else EXIT_INTERRUPTED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _pipeline_errors() -> tuple[type[BaseException], ...]:
    """The data pipeline's file/key errors are user errors too (if the run imported the pipeline at all)."""
    generators = sys.modules.get("dlkit.generators")
    return (generators.GeneratorError,) if generators is not None else ()
