"""ModelWrapper: the bookkeeping around one Keras model - build, compile, train, save, resume, metadata.

Subclass it, build ``self.Model`` in :meth:`Build`, and let the wrapper do the rest::

    class Dense(ModelWrapper):
        def Build(self):
            inputs = keras.Input((10,))
            x = keras.layers.Dense(self.Config["Width"], activation="relu")(inputs)
            self.Model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))

    wrapper = Dense("Dense_64", Config=resolved_config)
    wrapper.Build()
    wrapper.BuildOptimizer("SGD", lr=0.01, decay=0.001)
    wrapper.Compile(Loss="categorical_crossentropy", Metrics=["accuracy"])
    wrapper.Initialize()                 # claims TrainedModels/Dense_64[.n]/
    wrapper.Train(x, y, Epochs=10, BatchSize=128, validation_data=(xv, yv))
    wrapper.Save()

On disk, ``<OutputBase>/<Name>[.<n>]/`` holds ``model.keras`` (architecture, weights and optimizer
state) and ``MetaData.json``. Guarantees:

- The directory is claimed with an atomic ``mkdir``: two processes starting the same name get two
  directories, and a second run of a scan point never overwrites the first.
- Every save writes beside the target and renames over it, so a process killed mid-save leaves the
  previous save intact. With ``SaveEveryEpoch`` (default) a killed run is resumable from its last epoch.
- ``Load`` restores the optimizer state and chains the metadata: the loaded run's metadata is appended
  to ``MetaData["InputMetaData"]`` and training continues in a new directory, so the full loss curve
  over resumes can be rebuilt (:func:`chained_history`).
- ``Load`` keeps Keras' safe mode unless the caller passes ``safe_mode=False``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import operator
import os
import platform
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import keras

import dlkit
import dlkit.losses  # noqa: F401 - registers dlkit's losses so saved models load without custom_objects
import dlkit.schedules

log = logging.getLogger(__name__)

__all__ = [
    "ModelWrapper",
    "MetaDataError",
    "to_jsonable",
    "read_metadata",
    "chained_history",
    "MODEL_FILE",
    "METADATA_FILE",
]

from dlkit.metadata import (  # noqa: E402 - re-exported: DLKit users import them from here
    METADATA_FILE,
    MODEL_FILE,
    MetaDataError,
    atomic_write,
    chained_history,
    claim_run_dir,
    read_metadata,
    read_saved_pair,
    run_dirs,
    save_pair,
    to_jsonable,
)
from dlkit import protocol as scan_point  # noqa: E402 - the scan's fence: a point whose lease was lost writes nothing
from dlkit.training_state import (  # noqa: E402
    CALLBACK_STATE,
    MID_EPOCH,
    MidEpochStop,
    Restorer,
    callback_states,
    metric_states,
    random_states,
    seekable,
)
from dlkit.saving import load_model  # noqa: E402

dlkit.schedules.register()  # dlkit's learning-rate schedules: saved optimizers with one load


def _provenance() -> dict:
    return {
        "dlkit_version": dlkit.__version__,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "backend_version": _backend_version(),
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "argv": list(sys.argv),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # a scan slot's GPU
    }


def _backend_version() -> str | None:
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "numpy"}.get(
        keras.backend.backend()
    )
    mod = sys.modules.get(module) if module else None
    return getattr(mod, "__version__", None)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def _optimizer_names() -> list[str]:
    return sorted(
        name for name in dir(keras.optimizers)
        if isinstance(getattr(keras.optimizers, name), type)
        and issubclass(getattr(keras.optimizers, name), keras.optimizers.Optimizer)
        and name not in ("Optimizer", "LossScaleOptimizer")
    )


def _steps_per_epoch(x, batch_size: int | None) -> int | None:
    """Batches per epoch of ``fit``'s ``x``: a ``PyDataset``'s length, or arrays in batches of ``batch_size``
    (Keras' 32 by default); None when it cannot tell (a ``tf.data`` dataset, a generator)."""
    if isinstance(x, keras.utils.PyDataset):
        return len(x)
    first = keras.tree.flatten(x)[0] if x is not None else None
    if hasattr(first, "shape") and len(getattr(first, "shape", ())) > 0:
        return -(-int(first.shape[0]) // int(batch_size or 32))
    return None


class _Bookkeeping(keras.callbacks.Callback):
    """Internal, first in the list: records history and epoch times into the wrapper; with seekable data
    (``steps`` per epoch), a resumable stop (``stoppers``) in the middle of an epoch ends ``fit`` after that
    batch (:class:`~dlkit.training_state.MidEpochStop`) instead of ending the epoch early."""

    def __init__(self, wrapper: "ModelWrapper", stoppers: Sequence = (), steps: int | None = None,
                 first_batch: int = 0, seconds_before: float = 0.0):
        super().__init__()
        self.wrapper = wrapper
        self.stoppers = list(stoppers)
        self.steps = steps
        self.first_batch = first_batch          # the resumed epoch starts here ...
        self.seconds_before = seconds_before    # ... after this long in the interrupted run
        self.agreed_reason = None               # a stop another process of the job asked for
        self._t0 = None
        self._epoch = 0

    @property
    def seconds(self) -> float:
        """Time in the epoch in progress, over the runs it spans."""
        return self.seconds_before + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()
        self._epoch = epoch

    def check_stop(self, batch: int) -> None:
        """After ``batch``: raise :class:`MidEpochStop` if a resumable stop came and the epoch is not over."""
        if self.steps is None or not self.model.stop_training:
            return
        done = self.first_batch + batch + 1
        reason = next((cb.stop_reason for cb in self.stoppers if cb.stop_reason), None) or self.agreed_reason
        if reason is not None and done < self.steps:  # (after the epoch's last batch it ends as usual)
            raise MidEpochStop(self._epoch, done, reason)

    def agree(self, agreement) -> None:
        """In a job of several processes (``agreement``: the largest of a number over them): stop every process
        after this batch if one must - a signal (3), a time budget or another resumable stop (2), any other (1) -
        so that they all stop after the same batch, as one."""
        local = next((cb.stop_reason for cb in self.stoppers if cb.stop_reason), None)
        code = 0 if not self.model.stop_training and local is None else 1
        if local is not None:
            code = 3 if local.startswith("signal") else 2
        agreed = agreement(code)
        if agreed >= 2 and local is None:
            self.agreed_reason = ("signal on another process of the job" if agreed == 3 else
                                  "stopped on another process of the job (its time budget)")
        if agreed:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        w = self.wrapper
        w.MetaData["EpochTime"].append(self.seconds)
        self.first_batch, self.seconds_before = 0, 0.0
        logs = logs or {}
        n_before = len(w.MetaData["EpochTime"]) - 1
        for key, value in logs.items():
            w.History.setdefault(key, [None] * n_before).append(to_jsonable(value))
        for key, values in w.History.items():  # a metric missing this epoch keeps the columns aligned
            if len(values) < n_before + 1:
                values.append(None)


class _MidEpochGuard(keras.callbacks.Callback):
    """Internal, last in the list: after every batch's callbacks (a signal may come in any of them), right
    before Keras looks at ``stop_training``, ask the bookkeeping whether this is a mid-epoch stop; and every
    ``every`` seconds, ``checkpoint`` the mid-epoch state without stopping."""

    def __init__(self, bookkeeping: _Bookkeeping, every: float | None = None, checkpoint=None, agreement=None):
        super().__init__()
        self.bookkeeping, self.every, self.checkpoint, self.agreement = bookkeeping, every, checkpoint, agreement
        self._last = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        b = self.bookkeeping
        if self.agreement is not None:
            b.agree(self.agreement)
        b.check_stop(batch)
        if self.every and b.steps and time.monotonic() - self._last >= self.every:
            done = b.first_batch + batch + 1
            if done < b.steps:  # (an epoch's end saves anyway)
                self.checkpoint(MidEpochStop(b._epoch, done, "periodic checkpoint"))
            self._last = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self._last = time.monotonic()
        if self.agreement is not None:  # (Keras looks at stop_training after this, the last callback)
            self.bookkeeping.agree(self.agreement)


class _Saver(keras.callbacks.Callback):
    """Internal, after the user's callbacks (so their state is this epoch's): saves after every epoch, with the
    callbacks' state."""

    def __init__(self, wrapper: "ModelWrapper", callbacks: Sequence, save_every_epoch: bool):
        super().__init__()
        self.wrapper, self.callbacks, self.save_every_epoch = wrapper, list(callbacks), save_every_epoch

    def on_epoch_end(self, epoch, logs=None):
        self.wrapper.MetaData[CALLBACK_STATE] = callback_states(self.callbacks)
        self.wrapper.MetaData.pop(MID_EPOCH, None)
        if self.save_every_epoch:
            self.wrapper.Save()


class ModelWrapper:
    """Bookkeeping of one model's build, compile, training, evaluation and saves.

    Parameters
    ----------
    Name
        The model name; the output directory is ``OutputBase/Name`` or, if taken, ``Name.1``, ...
    Loss, Optimizer
        Defaults for :meth:`Compile`: a loss name (dlkit physics losses included, see
        :func:`dlkit.losses.get_loss`) or object, and a Keras optimizer object.
    OutputBase
        Directory holding the model directories (DLKit's ``TrainedModels``).
    InDir
        A saved model directory to :meth:`Load` from.
    LoadPrevious
        On :meth:`Initialize`, load the newest complete save of ``Name`` under ``OutputBase`` if any
        (then :attr:`ContinuesPrevious` is True: the run resumes that one, and
        :func:`dlkit.experiment.train` trains only the epochs left of ``Epochs``).
    Config
        The resolved configuration the model is built from; stored as ``MetaData["Configuration"]``.
    ScanPoint, HyperParamSet, HyperParamHash
        The scan point this run trains (stored, with each scanned value also as a top-level key, as
        DLKit's scan tables expect).

    In a job of several processes training one model (:mod:`dlkit.distribute`), ``Writes`` is False on all
    but the first: that wrapper claims no run directory and reports nothing to a scan; its ``OutDir`` is a
    private temporary directory, removed when the process exits, where its saves go (gathering a model's arrays
    to save them takes every process of the job, so every one saves). ``Agreement`` (the largest of a number
    over the processes) makes every stop happen after the same batch on all of them.
    """

    def __init__(
        self,
        Name: str,
        Loss: Any = None,
        Optimizer: Any = None,
        OutputBase: str | os.PathLike = "TrainedModels",
        InDir: str | os.PathLike | None = None,
        LoadPrevious: bool = False,
        Config: Mapping | None = None,
        ScanPoint: Mapping | None = None,
        HyperParamSet: int | None = None,
        HyperParamHash: str | None = None,
    ):
        if not Name or not isinstance(Name, str) or os.sep in Name or Name in (".", ".."):
            raise ValueError(f"ModelWrapper Name must be a plain directory name, got {Name!r}")
        self.Name = Name
        self.Loss = Loss
        self.Optimizer = Optimizer
        self.OutputBase = Path(OutputBase)
        self.InDir = Path(InDir) if InDir else None
        self.LoadPrevious = LoadPrevious
        self.ContinuesPrevious = False
        self.Model: keras.Model | None = None
        self.OutDir: Path | None = None
        self.Metrics: list = []
        self.History: dict[str, list] = {}
        self.Config = dict(Config or {})
        self.Writes = True
        self.Agreement = None
        self.MetaData: dict[str, Any] = {
            "Name": Name,
            "Configuration": to_jsonable(self.Config),
            "InputMetaData": [],
            "InputDir": None,
            "History": self.History,
            "EpochTime": [],
            "Status": "new",
        }
        self.set_scan_point(ScanPoint, HyperParamSet, HyperParamHash)

    # -- building -------------------------------------------------------------------------------
    def Build(self) -> keras.Model:  # noqa: N802 - DLKit's API
        """Subclasses set ``self.Model`` here (and may return it)."""
        raise NotImplementedError(f"{type(self).__name__}.Build() must set self.Model")

    def set_scan_point(self, point: Mapping | None, index: int | None = None, hash_: str | None = None):
        """Record the scan point; each scanned value also becomes a top-level metadata key (DLKit)."""
        if point is None:
            return
        from dlkit.permutator import point_hash

        point = to_jsonable(dict(point))
        self.MetaData["ScanPoint"] = point
        self.MetaData["HyperParamSet"] = index
        self.MetaData["HyperParamHash"] = hash_ or point_hash(point)
        for key, value in point.items():
            self.MetaData.setdefault(key, value)

    def BuildOptimizer(self, optimizer: str | keras.optimizers.Optimizer = "SGD", lr: float | None = None,
                       decay: float = 0.0, **params) -> keras.optimizers.Optimizer:  # noqa: N802
        """Make an optimizer from its Keras class name and parameters - no eval.

        ``decay`` keeps DLKit's (Keras 2) meaning, ``lr_t = lr / (1 + decay * iterations)``, as a
        :class:`keras.optimizers.schedules.InverseTimeDecay` schedule. ``lr`` may be a schedule itself
        (:func:`dlkit.schedules.learning_rate`; then ``decay`` must be 0). Other keyword arguments are the
        optimizer's own (``momentum``, ``rho``, ...); an unknown one is an error naming it.
        """
        if isinstance(optimizer, keras.optimizers.Optimizer):
            self.Optimizer = optimizer
            return optimizer
        names = _optimizer_names()
        cls = getattr(keras.optimizers, str(optimizer), None)
        if cls is None or str(optimizer) not in names:
            import difflib

            close = difflib.get_close_matches(str(optimizer), names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"optimizer {optimizer!r} is not a Keras optimizer class{hint} "
                             f"(valid: {', '.join(names)})")
        if decay is None or decay < 0:
            raise ValueError(f"optimizer decay must be >= 0, got {decay!r}")
        if decay and isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            raise ValueError(f"optimizer decay {decay!r} (DLKit's inverse-time decay) with the learning-rate "
                             f"schedule {type(lr).__name__}: use one of them")
        kwargs = dict(params)
        if lr is not None:
            kwargs["learning_rate"] = lr
        if decay:
            initial = kwargs.get("learning_rate", cls().get_config()["learning_rate"])
            kwargs["learning_rate"] = keras.optimizers.schedules.InverseTimeDecay(
                initial_learning_rate=float(initial), decay_steps=1, decay_rate=float(decay)
            )
        try:
            self.Optimizer = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"optimizer {optimizer}: invalid parameter ({exc})") from exc
        return self.Optimizer

    def Compile(self, Loss: Any = None, Optimizer: Any = None, Metrics: Sequence | None = None,
                **compile_kwargs) -> None:  # noqa: N802
        """Compile ``self.Model``; a loss name may be one of dlkit's physics losses. A model of several named
        outputs may take ``Loss`` and ``Metrics`` as dicts by output name."""
        from dlkit.losses import get_loss

        def resolve(loss):
            return get_loss(loss) if isinstance(loss, str) else loss

        def name(item):
            return item if isinstance(item, str) else getattr(item, "name", item)

        if self.Model is None:
            raise RuntimeError(f"{self.Name}: Compile() before Build() set self.Model")
        if Loss is not None:
            self.Loss = Loss
        if Optimizer is not None:
            self.Optimizer = Optimizer
        if self.Optimizer is None:
            self.BuildOptimizer()
        if self.Loss is None:
            raise ValueError(f"{self.Name}: no loss given to Compile()")
        if Metrics is not None:
            self.Metrics = dict(Metrics) if isinstance(Metrics, Mapping) else list(Metrics)
        per_output = isinstance(self.Loss, Mapping)
        loss = {k: resolve(v) for k, v in self.Loss.items()} if per_output else resolve(self.Loss)
        self.Model.compile(optimizer=self.Optimizer, loss=loss, metrics=self.Metrics, **compile_kwargs)
        self.MetaData["Loss"] = to_jsonable({k: name(v) for k, v in self.Loss.items()} if per_output
                                            else name(self.Loss))
        metrics = self.Metrics
        self.MetaData["Metrics"] = to_jsonable({k: [name(m) for m in v] for k, v in metrics.items()}
                                               if isinstance(metrics, Mapping) else [name(m) for m in metrics])
        self._record_optimizer()

    def _record_optimizer(self):
        if self.Optimizer is not None:
            self.MetaData["Optimizer"] = type(self.Optimizer).__name__
            self.MetaData["OptimizerClass"] = type(self.Optimizer).__name__
            self.MetaData["OptimizerConfig"] = to_jsonable(keras.optimizers.serialize(self.Optimizer)["config"])

    # -- output directory -----------------------------------------------------------------------
    def _candidate_dirs(self) -> list[tuple[int, Path]]:
        """Existing ``Name`` / ``Name.<n>`` directories under OutputBase, numbered (bare name = 0)."""
        return run_dirs(self.OutputBase, self.Name)

    def MakeOutputDir(self) -> Path:  # noqa: N802
        """Claim a fresh ``OutputBase/Name[.n]``: ``mkdir`` is atomic, so no two processes share one."""
        scan_point.guard()  # a scan point whose lease was taken over claims nothing
        return claim_run_dir(self.OutputBase, self.Name)

    def Initialize(self) -> Path:  # noqa: N802
        """Claim the output directory (loading the previous save first if ``LoadPrevious``)."""
        if self.LoadPrevious and self.Model is None:
            previous = self.find_previous()
            if previous is not None:
                self.Load(previous)
                self.ContinuesPrevious = True
            else:
                log.info("%s: no previous save under %s; starting fresh", self.Name, self.OutputBase)
        elif self.InDir is not None and self.Model is None:
            self.Load(self.InDir)
        if not self.Writes:  # another process of the job writes the run; this one saves where nobody looks
            from dlkit.distribute import private_directory

            self.OutDir = private_directory(self.Name)
            self.MetaData.update(OutDir=str(self.OutDir), Status="initialized", Provenance=_provenance())
            return self.OutDir
        self.OutDir = self.MakeOutputDir()
        self.MetaData["OutDir"] = str(self.OutDir)
        self.MetaData["Status"] = "initialized"
        self.MetaData["Provenance"] = _provenance()
        self.MetaData["StartTime"] = _now()
        self._write_metadata()  # a run killed before its first save is still visible (and flagged)
        scan_point.report(run_dir=str(self.OutDir), epochs=self.PreviousEpochs)  # also if it trains no epoch
        log.info("%s: output directory %s", self.Name, self.OutDir)
        return self.OutDir

    def find_previous(self) -> Path | None:
        """The newest directory of this Name holding a complete save, or None."""
        for _, directory in reversed(self._candidate_dirs()):
            if (directory / MODEL_FILE).is_file():
                try:
                    read_metadata(directory)
                except MetaDataError as exc:
                    log.warning("skipping %s: %s", directory, exc)
                    continue
                return directory
        return None

    # -- training -------------------------------------------------------------------------------
    def Train(self, x=None, y=None, Epochs: int = 1, BatchSize: int | None = None, Callbacks: Sequence = (),
              validation_data=None, SaveEveryEpoch: bool = True, InitialEpoch: int = 0,
              CheckpointEvery: float | None = None, **fit_kwargs):  # noqa: N802
        """``Model.fit`` with bookkeeping: history, epoch times, why it stopped, a save every epoch.

        ``Epochs`` and ``InitialEpoch`` are Keras' ``epochs`` and ``initial_epoch``: training runs the
        epochs numbered ``InitialEpoch + 1`` to ``Epochs``, i.e. ``Epochs - InitialEpoch`` of them, and
        callbacks and logs see the epoch numbers continue. With the default ``InitialEpoch=0`` it trains
        ``Epochs`` epochs (also after :meth:`Load`: DLKit's ``-L``, "train Epochs more"). To resume up to
        a total, pass ``InitialEpoch=self.PreviousEpochs`` (what :func:`dlkit.experiment.train` does after
        ``-p``). If ``InitialEpoch >= Epochs`` nothing is trained (no ``fit``, no callbacks): the run is
        ``"completed"`` and ``StopReason`` says the configured epochs were already done.

        With data that can be positioned (dlkit's generators), a stop by a ``resumable`` callback (a signal)
        in the middle of an epoch ends ``fit`` after that batch, and a run continuing this one (``-p``) picks up
        at the next batch, as if never stopped (:mod:`dlkit.training_state`); ``CheckpointEvery`` (seconds)
        saves that state periodically without stopping, so a ``kill -9`` loses at most that much.

        Without a ``verbose`` argument, Keras' progress bar is shown on a terminal and one line per epoch is
        written otherwise (a batch job's log). ``Callbacks`` run in the given order (put dlkit's AUC callback before checkpoints that
        monitor it). Returns the Keras History. The status becomes ``"completed"`` or, if a callback
        stopped training early, ``"stopped"`` (``StopReason`` says which and why); an exception
        marks the run ``"failed"`` (saved metadata says so) and is re-raised. ``MetaData["Epochs"]`` is
        the number of epochs this run trained, ``MetaData["TotalEpochs"]`` that over all resumes
        (:attr:`PreviousEpochs` plus this run's).
        """
        if self.Model is None:
            raise RuntimeError(f"{self.Name}: Train() before Build()/Load()")
        if "initial_epoch" in fit_kwargs:  # Keras' name for it
            if InitialEpoch:
                raise TypeError(f"{self.Name}: Train() got both InitialEpoch and initial_epoch")
            InitialEpoch = fit_kwargs.pop("initial_epoch")
        try:
            initial = -1 if isinstance(InitialEpoch, bool) else operator.index(InitialEpoch)
        except TypeError:
            initial = -1
        if initial < 0:
            raise ValueError(f"{self.Name}: InitialEpoch must be an integer >= 0, got {InitialEpoch!r}")
        InitialEpoch = initial
        if self.OutDir is None:
            self.Initialize()
        callbacks = [cb for cb in Callbacks if not getattr(cb, "after_save", False)]
        after_save = [cb for cb in Callbacks if getattr(cb, "after_save", False)]  # e.g. ScanProgress
        self.MetaData["Status"] = "training"
        self.MetaData["InitialEpoch"] = InitialEpoch
        self.MetaData.setdefault("TrainStartTime", _now())
        if InitialEpoch >= Epochs:
            log.info("%s: the configured %d epochs were already done (%d before this run); not training",
                     self.Name, Epochs, InitialEpoch)
            history = keras.callbacks.History()
            history.set_model(self.Model)
            history.on_train_begin()
            self._finish_training(None, f"the configured {Epochs} epochs were already done ({InitialEpoch} "
                                        f"before this run); trained none")
            return history
        # Keras' progress bar redraws with ANSI codes: in a batch log (stdout not a terminal) one line per epoch
        fit_kwargs.setdefault("verbose", "auto" if sys.stdout.isatty() else 2)
        previous, mid = self._continued_run(InitialEpoch, x)
        steps = len(x) if seekable(x) else None
        per_epoch = fit_kwargs.get("steps_per_epoch") or _steps_per_epoch(x, BatchSize)
        if per_epoch and getattr(self.Model, "optimizer", None) is not None:
            dlkit.schedules.bind(self.Model.optimizer, per_epoch)  # an epoch-based schedule learns its length
        bookkeeping = _Bookkeeping(self, [cb for cb in callbacks if getattr(cb, "resumable", False)], steps,
                                   first_batch=mid["batch"] if mid else 0,
                                   seconds_before=mid.get("seconds", 0.0) if mid else 0.0)
        saver = _Saver(self, callbacks, SaveEveryEpoch)

        def checkpoint(at: MidEpochStop) -> None:
            self._record_mid_epoch(at, bookkeeping, callbacks, steps, quiet=True)
            self.Save()

        guard = _MidEpochGuard(bookkeeping, CheckpointEvery if steps else None, checkpoint, self.Agreement)
        if self.Agreement is not None:  # signals are acted on where the processes agree, never in the handler
            for cb in callbacks:
                if hasattr(cb, "defer"):
                    cb.defer = True
        states = (previous or {}).get(CALLBACK_STATE)

        def fit(epochs, initial, restorer, **extra):
            return self.Model.fit(x, y, batch_size=BatchSize, epochs=epochs, initial_epoch=initial,
                                  callbacks=[bookkeeping, *callbacks, saver, *after_save, restorer, guard],
                                  validation_data=validation_data, **fit_kwargs, **extra)

        try:
            history = None
            if mid:  # first the rest of the interrupted epoch, with its metric accumulators and random state
                history = fit(InitialEpoch + 1, InitialEpoch, Restorer(callbacks, states, mid),
                              steps_per_epoch=steps - mid["batch"])
                states = callback_states(callbacks)
            if not mid or (InitialEpoch + 1 < Epochs and not self.Model.stop_training):
                history = fit(Epochs, InitialEpoch + (1 if mid else 0), Restorer(callbacks, states))
        except MidEpochStop as stop:
            self._record_mid_epoch(stop, bookkeeping, callbacks, steps)
            self._finish_training(stop.reason, "")
            return getattr(self.Model, "history", None)
        except BaseException as exc:
            self.MetaData["Status"] = "failed"
            self.MetaData["StopReason"] = f"{type(exc).__name__}: {exc}"
            self.MetaData["EndTime"] = _now()
            self._write_metadata()
            raise
        reason = None
        for cb in callbacks:
            reason = reason or getattr(cb, "stop_reason", None)
            if reason is None and getattr(cb, "stopped_epoch", 0):  # keras EarlyStopping
                reason = f"{type(cb).__name__} at epoch {cb.stopped_epoch + 1}"
        done = f"completed {Epochs} epochs"
        if InitialEpoch:
            done += f" ({Epochs - InitialEpoch} in this run, {InitialEpoch} before)"
        self._finish_training(reason, done)
        return history

    def _continued_run(self, initial_epoch: int, x) -> tuple[dict | None, dict | None]:
        """(metadata of the run this one continues (``-p``), its mid-epoch record if this run picks up there);
        seeks seekable data to where the continued run stopped."""
        chain = self.MetaData.get("InputMetaData") or []
        if not getattr(self, "ContinuesPrevious", False) or not chain or initial_epoch != self.PreviousEpochs:
            return None, None
        previous = chain[-1]
        mid = previous.get(MID_EPOCH)
        if not seekable(x):
            if mid:
                log.warning("%s: the run it continues stopped in epoch %d, but this data cannot be positioned; "
                            "that epoch starts again", self.Name, mid["epoch"] + 1)
            return previous, None
        if mid and (mid.get("epoch") != initial_epoch or mid.get("steps") != len(x)):
            log.warning("%s: the mid-epoch record (epoch %s, %s batches) does not fit this run (epoch %d, %d "
                        "batches); the epoch starts again", self.Name, mid.get("epoch"), mid.get("steps"),
                        initial_epoch + 1, len(x))
            mid = None
        x.seek(initial_epoch * len(x) + (mid["batch"] if mid else 0))
        if mid:
            log.info("%s: continuing epoch %d at batch %d of %d", self.Name, initial_epoch + 1, mid["batch"] + 1,
                     len(x))
        return previous, mid

    def _record_mid_epoch(self, stop: MidEpochStop, bookkeeping: _Bookkeeping, callbacks: Sequence,
                          steps: int, quiet: bool = False) -> None:
        """What the next run needs to pick up at batch ``stop.batch`` (:mod:`dlkit.training_state`)."""
        if hasattr(self.Model, "jax_state_sync"):  # JAX keeps the training state outside the model during fit
            self.Model.jax_state_sync()
        self.MetaData[MID_EPOCH] = {"epoch": stop.epoch, "batch": stop.batch, "steps": steps,
                                    "seconds": bookkeeping.seconds, "metrics": metric_states(self.Model),
                                    "random": random_states(self.Model)}
        self.MetaData[CALLBACK_STATE] = callback_states(callbacks)
        log.log(logging.DEBUG if quiet else logging.WARNING,
                "%s: %s in epoch %d after batch %d of %d; -p continues from the next batch", self.Name,
                stop.reason if quiet else f"stopped ({stop.reason})", stop.epoch + 1, stop.batch, steps)

    def _finish_training(self, reason: str | None, completed: str) -> None:
        ran = len(self.MetaData["EpochTime"])
        self.MetaData["Epochs"] = ran
        self.MetaData["StopReason"] = reason or completed
        if reason is None:
            self.MetaData["Status"] = "completed"
        else:
            self.MetaData["Status"] = "interrupted" if reason.startswith("signal") else "stopped"
        self.MetaData["EndTime"] = _now()
        self.MetaData["TotalEpochs"] = ran + self.PreviousEpochs

    @property
    def PreviousEpochs(self) -> int:  # noqa: N802
        """Epochs trained by the earlier runs this one continues: ``len(EpochTime)`` summed over
        ``MetaData["InputMetaData"]`` (0 for a fresh model)."""
        return sum(len(m.get("EpochTime") or []) for m in self.MetaData.get("InputMetaData") or [])

    @property
    def Interrupted(self) -> bool:  # noqa: N802
        """True if the last Train() was stopped by a signal (GracefulExit)."""
        return self.MetaData.get("Status") == "interrupted"

    # -- saving and loading ---------------------------------------------------------------------
    def _refresh_metadata(self) -> None:
        self.MetaData["History"] = self.History
        self.MetaData["Configuration"] = to_jsonable(self.Config or self.MetaData.get("Configuration"))

    def _write_metadata(self) -> None:
        scan_point.guard()
        self._refresh_metadata()
        text = json.dumps(to_jsonable(self.MetaData), indent=1)

        def write(tmp):
            Path(tmp).write_text(text)

        atomic_write(self.OutDir / METADATA_FILE, write)

    def Save(self, OutDir: str | os.PathLike | None = None) -> Path:  # noqa: N802
        """Save the model (with optimizer state) and metadata as one (:func:`dlkit.metadata.save_pair`: a kill at
        any moment leaves a consistent pair, MetaData records the model file's sha256); returns the directory."""
        if OutDir is not None:
            self.OutDir = Path(OutDir)
            self.OutDir.mkdir(parents=True, exist_ok=True)
            self.MetaData["OutDir"] = str(self.OutDir)
        if self.OutDir is None:
            self.Initialize()
        if self.Model is None:
            raise RuntimeError(f"{self.Name}: nothing to save, no model built or loaded")
        scan_point.guard()
        self._record_optimizer()
        self.MetaData["SaveTime"] = _now()
        self._refresh_metadata()
        if not save_pair(self.OutDir, lambda tmp: self.Model.save(str(tmp)), self.MetaData,
                         abandon=scan_point.fenced):
            scan_point.guard()  # taken over while writing: nothing landed; stop here, writing nothing more
        return self.OutDir

    def Load(self, InDir: str | os.PathLike, MetaDataOnly: bool = False, safe_mode: bool = True,
             compile: bool = True) -> "ModelWrapper":  # noqa: N802
        """Load a saved model directory to continue from it.

        The optimizer state is restored with the model, also from a save made on another Keras backend
        (:func:`dlkit.saving.load_model`). The loaded run's metadata becomes the base
        of this run's, and is appended (without its own chain) to ``InputMetaData``; history and
        epoch times start afresh for the new run. ``safe_mode=False`` allows models with Python
        lambdas to load: only for files you trust.
        """
        InDir = Path(InDir)
        previous = read_metadata(InDir) if MetaDataOnly else read_saved_pair(InDir)
        if not MetaDataOnly:
            model_path = InDir / MODEL_FILE
            if not model_path.is_file():
                raise MetaDataError(f"{model_path}: model file missing; the run in {InDir} never saved a model")
            try:
                self.Model = load_model(model_path, compile=compile, safe_mode=safe_mode)  # any backend's save
            except Exception as exc:
                raise MetaDataError(f"{model_path}: cannot load model: {type(exc).__name__}: {exc}") from exc
            if compile and getattr(self.Model, "optimizer", None) is not None:
                self.Optimizer = self.Model.optimizer
        chain = list(previous.get("InputMetaData") or [])
        previous_run = dict(previous)
        previous_run["InputMetaData"] = []
        self.History = {}
        self.MetaData = dict(previous)
        self.MetaData.update(
            {
                "InputMetaData": chain + [previous_run],
                "InputDir": str(InDir),
                "History": self.History,
                "EpochTime": [],
                "Status": "loaded",
            }
        )
        for key in ("OutDir", "StopReason", "EndTime", "TrainStartTime", "SaveTime", "Epochs", "InitialEpoch",
                    MID_EPOCH, CALLBACK_STATE):
            self.MetaData.pop(key, None)
        if not self.Config:
            self.Config = dict(previous.get("Configuration") or {})
        self.Loss = previous.get("Loss", self.Loss)
        self.Metrics = list(previous.get("Metrics") or self.Metrics)
        self.InDir = InDir
        self.OutDir = None
        self.ContinuesPrevious = False  # set by whoever loaded the newest previous save (LoadPrevious, -p)
        log.info("%s: loaded %s (%d earlier run(s))", self.Name, InDir, len(self.MetaData["InputMetaData"]))
        return self

    def finish(self, Status: str | None = None) -> None:
        """Mark the run finished (e.g. after analysis) and write the metadata once more."""
        if Status is not None:
            self.MetaData["Status"] = Status
        self.MetaData["EndTime"] = _now()
        if self.OutDir is not None:
            self._write_metadata()

