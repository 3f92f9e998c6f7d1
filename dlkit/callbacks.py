"""Training callbacks: time budget, graceful exit on batch-system signals, per-class ROC AUC.

All callbacks are plain :class:`keras.callbacks.Callback` subclasses and work with any Keras
backend. A callback that stops training sets ``model.stop_training = True`` and records a
human-readable ``stop_reason`` (``None`` while it has not stopped anything); ``ModelWrapper``
reads ``stop_reason`` from its callbacks after ``fit`` to store why training stopped.

Keras calls callbacks in list order, and a callback sees only what the callbacks before it
wrote into ``logs``. Put :class:`AUCCallback` *before* ``ModelCheckpoint``/``EarlyStopping``
that monitor its ``val_auc_*`` values::

    callbacks = [
        AUCCallback((x_val, y_val), class_names=["Ele", "ChPi"]),
        keras.callbacks.EarlyStopping(monitor="val_auc_mean", mode="max", patience=3),
        TimeStopping(seconds=3600),
        GracefulExit(),
    ]
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time

import keras
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["EXIT_CODE_INTERRUPTED", "TimeStopping", "GracefulExit", "AUCCallback", "ScanProgress",
           "AtomicModelCheckpoint"]

#: Exit status of a run stopped by a signal after saving: 75 is sysexits' ``EX_TEMPFAIL``
#: ("temporary failure, retry"), so a batch system or a wrapper script may requeue the job.
EXIT_CODE_INTERRUPTED = 75


class TimeStopping(keras.callbacks.Callback):
    """Stop training cleanly when a wall-clock time budget is spent (DLKit's ``-r``).

    The budget is counted from ``on_train_begin``. Training stops

    - after the current batch once the elapsed time is ``>= seconds`` (checked at every
      train batch end, and again at every epoch end);
    - at an epoch end, when ``predict_next_epoch`` is true and one more epoch, estimated as
      the mean duration of the epochs so far, would not fit in the remaining budget. This
      leaves time to save the model before the batch system's wall-time kill.

    Keras still runs validation and ``on_epoch_end`` for an epoch cut short after a batch.

    Parameters
    ----------
    seconds : float or None
        Time budget in seconds; ``None`` means no limit, ``0`` stops after the first batch.
        Negative values raise ``ValueError``.
    verbose : bool, default False
        Log the duration of every epoch at INFO level. The stop itself is always logged.
    predict_next_epoch : bool, default True
        Also stop at an epoch end when the next epoch is not expected to fit.

    Attributes
    ----------
    epoch_times : list of float
        Duration in seconds of each epoch (``on_epoch_begin`` to ``on_epoch_end``); the last one
        may be partial when training stopped mid-epoch. ``history`` is an alias (DLKit stored
        it as ``MetaData["EpochTime"]``).
    stop_reason : str or None
        Why this callback stopped training, ``None`` if it did not.
    stopped_epoch : int or None
        The epoch (0-based) in which it stopped training.

    Examples
    --------
    >>> stopper = TimeStopping(seconds=4 * 3600)
    >>> model.fit(x, y, epochs=1000, callbacks=[stopper])
    >>> stopper.stop_reason, stopper.epoch_times
    """

    def __init__(self, seconds, verbose=False, predict_next_epoch=True):
        super().__init__()
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float, np.number)):
                raise TypeError(f"TimeStopping: seconds must be a number or None, got {seconds!r}")
            if math.isnan(seconds) or seconds < 0:
                raise ValueError(f"TimeStopping: seconds must be >= 0 or None, got {seconds!r}")
            seconds = float(seconds)
        self.seconds = seconds
        self.verbose = verbose
        self.predict_next_epoch = predict_next_epoch
        self.epoch_times = []
        self.stop_reason = None
        self.stopped_epoch = None
        self._train_start = None
        self._epoch_start = None
        self._epoch = 0

    @property
    def history(self):
        """Alias of :attr:`epoch_times` (the name DLKit used)."""
        return self.epoch_times

    @property
    def elapsed(self):
        """Seconds since training began (0 before ``on_train_begin``)."""
        if self._train_start is None:
            return 0.0
        return time.monotonic() - self._train_start

    def on_train_begin(self, logs=None):
        self._train_start = time.monotonic()
        self._epoch_start = self._train_start
        self.epoch_times = []
        self.stop_reason = None
        self.stopped_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if self.seconds is None or self.stop_reason is not None:
            return
        elapsed = self.elapsed
        if elapsed >= self.seconds:
            self._stop(
                f"time limit of {self.seconds:g} s reached after {elapsed:.1f} s "
                f"(epoch {self._epoch + 1}, batch {batch + 1})"
            )

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        duration = now - (self._epoch_start if self._epoch_start is not None else now)
        self.epoch_times.append(duration)
        if self.verbose:
            logger.info(
                "TimeStopping: epoch %d took %.1f s (%.1f s elapsed)", epoch + 1, duration, self.elapsed
            )
        if self.seconds is None or self.stop_reason is not None:
            return
        elapsed = self.elapsed
        if elapsed >= self.seconds:
            self._stop(
                f"time limit of {self.seconds:g} s reached after {elapsed:.1f} s (end of epoch {epoch + 1})"
            )
            return
        if self.predict_next_epoch:
            estimate = float(np.mean(self.epoch_times))
            remaining = self.seconds - elapsed
            if estimate > remaining:
                self._stop(
                    f"time limit of {self.seconds:g} s: the next epoch (~{estimate:.1f} s) would not fit "
                    f"in the remaining {remaining:.1f} s (after epoch {epoch + 1})"
                )

    def _stop(self, reason):
        self.stop_reason = reason
        self.stopped_epoch = self._epoch
        self.model.stop_training = True
        logger.info("TimeStopping: %s; stopping training", reason)

    def get_config(self):
        return {
            "seconds": self.seconds,
            "verbose": self.verbose,
            "predict_next_epoch": self.predict_next_epoch,
        }


def _default_signals():
    names = ("SIGTERM", "SIGINT", "SIGUSR1")
    return tuple(getattr(signal, n) for n in names if hasattr(signal, n))


def _to_signal(sig):
    if isinstance(sig, str):
        name = sig.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if not hasattr(signal, name):
            raise ValueError(f"GracefulExit: unknown signal {sig!r}")
        return signal.Signals(getattr(signal, name))
    return signal.Signals(sig)


class GracefulExit(keras.callbacks.Callback):
    """Stop training after the current batch when the batch system sends a signal.

    At ``on_train_begin`` it installs handlers for ``signals`` (by default SIGTERM, SIGINT and
    SIGUSR1, e.g. Slurm's ``--signal=B:USR1@300`` warning or PBS ``qdel -W``); at
    ``on_train_end`` it puts the previous handlers back. On a signal it records it
    (``received_signal``, ``signal_name``), sets ``stop_reason = "signal SIGTERM"`` and sets
    ``model.stop_training = True``: Keras checks that flag after every train batch, so the
    current batch finishes, then validation and ``on_epoch_end`` (checkpoints) of that epoch
    run and ``fit`` returns normally.

    A second signal of the same kind while already stopping restores the previous handlers
    and raises ``KeyboardInterrupt`` (force quit, e.g. Ctrl-C twice); a different signal is
    only logged.

    The experiment should then save and exit with :data:`EXIT_CODE_INTERRUPTED` (75,
    ``EX_TEMPFAIL``) so that the job can be requeued and resumed. If ``fit`` raises, call
    :meth:`restore` (or use the callback as a context manager, which installs the handlers on
    entry and restores them on exit, covering the save after ``fit`` too).

    Signal handlers can only be installed from the main thread; elsewhere a warning is logged
    and the callback does nothing.

    Parameters
    ----------
    signals : iterable of int, signal.Signals or str, default (SIGTERM, SIGINT, SIGUSR1)
        Signals to catch; names such as ``"SIGUSR2"`` or ``"TERM"`` are accepted.

    Attributes
    ----------
    received_signal : int or None
        Number of the first signal received.
    signal_name : str or None
        Its name, e.g. ``"SIGTERM"``.
    stop_reason : str or None
        ``"signal SIGTERM"`` etc. once a signal was received.
    interrupted : bool
        Whether a signal was received.
    EXIT_CODE : int
        :data:`EXIT_CODE_INTERRUPTED`.

    Examples
    --------
    >>> with GracefulExit() as graceful:
    ...     model.fit(x, y, epochs=100, callbacks=[graceful])
    ...     model.save("model.keras")
    >>> if graceful.interrupted:
    ...     sys.exit(EXIT_CODE_INTERRUPTED)
    """

    EXIT_CODE = EXIT_CODE_INTERRUPTED

    def __init__(self, signals=None):
        super().__init__()
        self.signals = tuple(_to_signal(s) for s in (_default_signals() if signals is None else signals))
        self.received_signal = None
        self.signal_name = None
        self.stop_reason = None
        self._previous = {}
        self._installed = False
        self._installed_by_fit = False

    @property
    def interrupted(self):
        """True once one of the signals was received."""
        return self.received_signal is not None

    @property
    def installed(self):
        """True while this callback's handlers are installed."""
        return self._installed

    def install(self):
        """Install the handlers (and reset the received-signal state); no-op if installed.

        Returns
        -------
        bool
            Whether the handlers are installed (False outside the main thread).
        """
        if self._installed:
            return True
        if threading.current_thread() is not threading.main_thread():
            logger.warning(
                "GracefulExit: not in the main thread, signal handlers cannot be installed; "
                "%s will not stop training gracefully",
                ", ".join(s.name for s in self.signals),
            )
            return False
        self.received_signal = None
        self.signal_name = None
        self.stop_reason = None
        self._previous = {}
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        self._installed = True
        return True

    def restore(self):
        """Put back the handlers that were installed before :meth:`install`; idempotent."""
        if not self._installed:
            return
        for sig, previous in self._previous.items():
            # getsignal() gives None for a handler not installed from Python: use the default.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous = {}
        self._installed = False
        self._installed_by_fit = False

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received_signal is not None:
            if signum == self.received_signal:
                logger.warning("GracefulExit: second %s received, forcing exit", name)
                self.restore()
                raise KeyboardInterrupt(f"second {name} received while stopping")
            logger.warning(
                "GracefulExit: %s received while already stopping after %s", name, self.signal_name
            )
            return
        self.received_signal = int(signum)
        self.signal_name = name
        self.stop_reason = f"signal {name}"
        logger.warning(
            "GracefulExit: %s received, stopping after the current batch (send it again to force quit)", name
        )
        if self._model is not None:  # not self.model: no JAX state sync inside a signal handler
            self._model.stop_training = True

    def on_train_begin(self, logs=None):
        if not self._installed:
            self._installed_by_fit = self.install()
        if self.interrupted:  # a signal arrived before fit (context-manager use)
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self._installed_by_fit:
            self.restore()

    def __enter__(self):
        self.install()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.restore()
        return False

    def get_config(self):
        return {"signals": [s.name for s in self.signals]}


class AUCCallback(keras.callbacks.Callback):
    """Per-class one-vs-rest ROC AUC on validation data after every epoch, written into ``logs``.

    The values go into the epoch ``logs`` as ``<prefix><class name>`` (``val_auc_Ele``), so
    that ``History``, ``ModelCheckpoint`` and ``EarlyStopping`` can use them. With more than one
    class, ``<prefix>mean`` (``val_auc_mean``) holds the mean over the classes with a defined
    AUC. **Order matters**: Keras calls callbacks in list order, so this callback must come
    before the callbacks that monitor its values.

    Binary models with a single sigmoid output get one AUC, named after the positive class
    (``class_names[-1]``, e.g. ``["Pi0", "Gamma"]`` gives ``val_auc_Gamma``; default ``"1"``)
    and no mean. A class absent from (or the only class
    in) the labels gets NaN and a logged warning.

    Parameters
    ----------
    validation_data : tuple or iterable
        ``(x, y)`` with ``x`` an array, list or dict of arrays, and ``y`` one-hot ``(N, C)`` or
        integer class indices ``(N,)``; or a ``keras.utils.PyDataset``/iterable yielding
        ``(x, y)`` (or ``(x, y, sample_weight)``) batches. Exactly ``steps`` batches are used
        each epoch if given, else ``len()`` batches if the dataset has a length, else all it
        yields (an endless generator needs ``steps``). It is iterated again every epoch, so pass
        a re-iterable (a PyDataset, a list, a ``tf.data.Dataset``), not a one-shot generator.
    class_names : sequence of str, optional
        Names for the output columns; default ``"0"`` .. ``"C-1"``.
    batch_size : int, default 1024
        Prediction batch size for ``(x, y)`` data.
    prefix : str, default "val_auc_"
        Prefix of the keys written into ``logs``.
    steps : int, optional
        Number of batches to draw from a dataset each epoch.

    Attributes
    ----------
    history : dict of str to list of float
        The values of every epoch, by log key.

    Examples
    --------
    >>> auc = AUCCallback((x_val, y_val), class_names=["Ele", "ChPi", "Gamma", "Pi0"])
    >>> checkpoint = keras.callbacks.ModelCheckpoint("best.keras", monitor="val_auc_Ele",
    ...                                              mode="max", save_best_only=True)
    >>> model.fit(x, y, epochs=10, callbacks=[auc, checkpoint])  # auc first
    """

    def __init__(self, validation_data, class_names=None, batch_size=1024, prefix="val_auc_", steps=None):
        super().__init__()
        if isinstance(validation_data, tuple) and len(validation_data) not in (2, 3):
            raise ValueError(
                "AUCCallback: validation_data must be (x, y) or a dataset, "
                f"got a tuple of {len(validation_data)}"
            )
        self.validation_data = validation_data
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.batch_size = int(batch_size)
        self.prefix = prefix
        self.steps = None if steps is None else int(steps)
        self.history = {}
        self._warned = set()

    # -- data --------------------------------------------------------------------------------
    def _n_batches(self):
        """Number of batches to draw from a dataset: ``steps``, else its length, else None."""
        if self.steps is not None:
            return self.steps
        data = self.validation_data
        try:
            if hasattr(data, "__len__"):
                return len(data)
            return getattr(data, "num_batches", None)  # PyDataset defining num_batches only
        except (TypeError, NotImplementedError):  # e.g. a tf.data.Dataset of unknown length
            return None

    def _predict(self):
        """Return ``(predictions, labels)`` as numpy arrays for the validation data."""
        data = self.validation_data
        if isinstance(data, tuple):
            pred = self.model.predict(data[0], batch_size=self.batch_size, verbose=0)
            return self._as_array(pred), np.asarray(data[1])
        preds, labels = [], []
        n_batches = self._n_batches()
        for i, batch in enumerate(data):
            if n_batches is not None and i >= n_batches:
                break
            preds.append(self._as_array(self.model.predict_on_batch(batch[0])))
            labels.append(np.asarray(keras.ops.convert_to_numpy(batch[1])))
        if not preds:
            raise ValueError("AUCCallback: validation_data yielded no batches")
        return np.concatenate(preds), np.concatenate(labels)

    @staticmethod
    def _as_array(pred):
        if isinstance(pred, (list, tuple, dict)):
            raise ValueError("AUCCallback: the model has several outputs; it needs a single (N, C) output")
        return np.asarray(keras.ops.convert_to_numpy(pred))

    @staticmethod
    def _binarize(y, n_columns):
        """Return ``(N, n_columns)`` 0/1 labels from one-hot or integer-index labels."""
        y = np.asarray(y)
        if n_columns > 1 and y.ndim == 2 and y.shape[1] == n_columns:
            return (y > 0.5).astype(np.int8)  # one-hot (or multi-label)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(
                f"AUCCallback: labels of shape {y.shape} do not match predictions with {n_columns} columns"
            )
        if n_columns == 1:
            return (y > 0.5).astype(np.int8)[:, None]
        return (np.rint(y).astype(np.int64)[:, None] == np.arange(n_columns)[None, :]).astype(np.int8)

    def _names(self, n_columns):
        if n_columns == 1:
            if self.class_names and len(self.class_names) > 2:
                raise ValueError(
                    f"AUCCallback: {len(self.class_names)} class_names for a single-column (binary) output"
                )
            return [self.class_names[-1] if self.class_names else "1"]
        names = self.class_names or [str(i) for i in range(n_columns)]
        if len(names) != n_columns:
            raise ValueError(
                f"AUCCallback: {len(names)} class_names for a model output with {n_columns} columns"
            )
        return names

    # -- AUC ---------------------------------------------------------------------------------
    def compute(self):
        """Return ``{log key: AUC}`` for the current model on the validation data."""
        from sklearn.metrics import roc_auc_score

        pred, y = self._predict()
        if pred.ndim == 1:
            pred = pred[:, None]
        if pred.ndim != 2:
            raise ValueError(f"AUCCallback: expected (N, C) predictions, got shape {pred.shape}")
        n_columns = pred.shape[1]
        labels = self._binarize(y, n_columns)
        if len(labels) != len(pred):
            raise ValueError(f"AUCCallback: {len(labels)} labels for {len(pred)} predictions")
        result = {}
        values = []
        for column, name in enumerate(self._names(n_columns)):
            target = labels[:, column]
            n_pos = int(target.sum())
            if n_pos == 0 or n_pos == len(target):
                if name not in self._warned:
                    logger.warning(
                        "AUCCallback: class %r is %s in the validation labels; its AUC is NaN",
                        name,
                        "absent" if n_pos == 0 else "the only class",
                    )
                    self._warned.add(name)
                auc = float("nan")
            else:
                auc = float(roc_auc_score(target, pred[:, column]))
                values.append(auc)
            result[self.prefix + name] = auc
        if n_columns > 1:
            result[self.prefix + "mean"] = float(np.mean(values)) if values else float("nan")
        return result

    def on_epoch_end(self, epoch, logs=None):
        result = self.compute()
        if logs is not None:
            logs.update(result)
        for key, value in result.items():
            self.history.setdefault(key, []).append(value)


class ScanProgress(keras.callbacks.Callback):
    """Report a scan point's progress to the scan ledger: its run directory and the epochs done over resumes.

    ``dlkit.scan status`` shows them, and the ledger uses the epoch count to tell a point that makes progress
    from one that is interrupted again and again without completing an epoch (``stuck``). Outside a scan
    (no ``DLKIT_SCAN_*`` environment) it does nothing. :func:`dlkit.experiment.train` adds it.

    Parameters
    ----------
    run_dir : path
        The run's model directory (``ModelWrapper.OutDir``).
    initial_epoch : int, default 0
        Epochs done by earlier runs this one continues (``-p``).

    Examples
    --------
    >>> model.fit(x, y, epochs=10, initial_epoch=done, callbacks=[ScanProgress(out_dir, done)])
    """

    def __init__(self, run_dir, initial_epoch=0):
        super().__init__()
        from dlkit.scan import point

        self._lease = point.current()
        self.run_dir = run_dir
        self.initial_epoch = int(initial_epoch)
        self.epochs = self.initial_epoch
        self.history: dict[str, dict[str, float]] = {}

    def on_train_begin(self, logs=None):
        if self._lease is not None:
            self._lease.report(run_dir=str(self.run_dir), epochs=self.epochs)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1
        if self._lease is not None:
            # the epoch's metrics by epoch number (over resumes): a search's pruner reads them
            for key, value in (logs or {}).items():
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(value):
                    self.history.setdefault(key, {})[str(self.epochs)] = value
            self._lease.report(epochs=self.epochs, history=self.history)


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras' ``ModelCheckpoint`` whose file is replaced atomically.

    Keras writes the checkpoint in place, truncating it first, so a job killed during a checkpoint save loses
    the best model it had. Here each save goes to a hidden file beside it (fsynced), which then replaces the
    checkpoint in one rename: a kill at any moment leaves the previous checkpoint or the new one, whole.
    Everything else - ``monitor``, ``save_best_only``, ``mode``, file name patterns - is Keras'.

    >>> checkpoint = AtomicModelCheckpoint("TrainedModels/Run/Checkpoint.keras", monitor="val_loss",
    ...                                    save_best_only=True)
    >>> model.fit(x, y, validation_split=0.1, epochs=10, callbacks=[checkpoint])
    """

    def _save_model(self, epoch, batch, logs):  # Keras 3's one place that writes the file
        from pathlib import Path

        from dlkit.metadata import atomic_write

        filepath = Path(self._get_file_path(epoch, batch, logs))
        if not self._should_save_model(epoch, batch, logs, str(filepath)):
            return
        filepath.parent.mkdir(parents=True, exist_ok=True)
        save = self.model.save_weights if self.save_weights_only else self.model.save
        # Keras checks the suffix of the file it writes: keep the checkpoint's (.keras, .weights.h5)
        suffix = ".weights.h5" if filepath.name.endswith(".weights.h5") else filepath.suffix
        atomic_write(filepath, lambda tmp: save(str(tmp), overwrite=True), suffix=f".tmp{suffix}")
        if self.verbose > 0:
            logger.info("epoch %d: saved checkpoint %s", epoch + 1, filepath)
