"""GracefulExit: stop after the current batch when the batch system sends a signal."""

from __future__ import annotations

import logging
import signal
import threading

from dlkit.callbacks.base import StoppingCallback
from dlkit.protocol import EXIT_INTERRUPTED

logger = logging.getLogger(__name__)


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


class GracefulExit(StoppingCallback):
    """Stop training after the current batch when the batch system sends a signal (resumable: with dlkit's
    generators the run resumes with ``-p`` at the next batch).

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

    The experiment should then save and exit with :data:`~dlkit.protocol.EXIT_INTERRUPTED` (75,
    ``EX_TEMPFAIL``) so that the job can be requeued and resumed. If ``fit`` raises, call
    :meth:`restore` (or use the callback as a context manager, which installs the handlers on
    entry and restores them on exit, covering the save after ``fit`` too).

    Signal handlers can only be installed from the main thread; elsewhere a warning is logged
    and the callback does nothing.

    With ``defer`` (set by ``ModelWrapper.Train`` in a job of several processes training one model), the
    handler only records the signal: the processes agree after every batch whether one of them got one, and
    all stop after the same batch (:mod:`dlkit.distribute`).

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

    EXIT_CODE = EXIT_INTERRUPTED
    resumable = True
    defer = False

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
        if self._model is not None and not self.defer:  # not self.model: no JAX state sync in a signal handler
            self._model.stop_training = True

    def on_train_begin(self, logs=None):
        if not self._installed:
            self._installed_by_fit = self.install()
        if self.interrupted and not self.defer:  # a signal arrived before fit (context-manager use)
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
