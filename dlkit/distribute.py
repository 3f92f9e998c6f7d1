"""Bigger than one GPU: data parallelism over the visible devices, and mixed precision.

Two config entries of every experiment (:data:`DISTRIBUTE_DEFAULTS`, part of ``dlkit.experiment.RUN_DEFAULTS``):

``DataParallel`` (False)
    True: synchronous data parallelism over every device this process sees - Keras'
    ``keras.distribution.DataParallel`` on JAX, TensorFlow's ``tf.distribute.MirroredStrategy`` on TensorFlow.
    ``BatchSize`` is the global batch: the generator serves it as on one device and each of the ``n`` devices
    trains on ``BatchSize / n`` of its events (``BatchSize`` must be a multiple of ``n``). A last batch of the
    epoch that is not a multiple of ``n`` is padded to one with copies of its first events at sample weight 0,
    its own events weighted ``padded / real``: the loss - a mean over the batch - and so the gradient are the
    same as on one device (BatchNormalization sees the copies; Keras' epoch means of the loss and metrics
    count that batch at its padded size). torch: not supported through ``fit`` (refused, exit 2).
    Which devices: ``CUDA_VISIBLE_DEVICES`` (``--gpu``, a scan slot's GPUs) decides.
``Precision`` ("float32")
    Keras' dtype policy while the model is built: ``"float32"``, ``"mixed_bfloat16"`` or ``"mixed_float16"``
    (variables float32, computation in 16 bits; ``mixed_float16`` trains through Keras'
    ``LossScaleOptimizer``, dynamic loss scaling). The output layers compute in float32 (:func:`float32_outputs`):
    predictions, losses and everything in ``MetaData.json`` stay float32, and a saved model loads and predicts in
    float32 whatever the policy of the process loading it. A loaded model (``-p``, ``-L``) keeps the precision
    it was built with.

Several processes, one or more nodes (JAX): under Slurm, ``srun -n N python -m <experiment> ...
--set DataParallel=true`` starts N processes that train one model together. Each joins the job
(:func:`join`: ``jax.distributed.initialize``, which reads Slurm's environment, before the backend starts;
gloo collectives on CPUs), the devices of all of them make one ``DataParallel`` mesh, and ``BatchSize`` stays
the global batch: every process serves the same global batches and trains on its share of each (its
``BatchSize / N`` rows, :class:`EvenBatches` ``share``), so across the processes every event is served exactly
once per epoch. Only the first process (rank 0) writes the run: its directory, ``MetaData.json``, the saves,
the scan's progress, the analysis. (Gathering the arrays of a save takes every process, so the others save
too, into a private temporary directory removed when they exit.) All processes start from the same random
state (``Seed``, or one they agree on), so that they build - or, before a load, create - the same variables. A
process that dies makes the others fail at JAX's next heartbeat (100 s); ``srun --kill-on-bad-exit`` would also
end them when one exits 75, so it is not used.
A stop by a signal or a time budget is agreed on after every batch (the processes exchange one number): all of
them stop after the same batch, rank 0 saves once, all exit 75, and ``-p`` resumes all of them from that save.
``dlkit-scan run --engine slurm --ntasks-per-point N`` gives each point N tasks: the point, started as one
process by the scan's worker, runs itself under ``srun`` (:data:`ENV_TASKS`). TensorFlow's multi-worker
strategy is not wired in: several processes with TensorFlow are refused in one line (one process per node, or
JAX). Every process reads whole batches and keeps its share: reading only the share needs the generator's
help (a ``shard`` option serving each process its rows).

:class:`Devices` applies all this around the part of a run that builds, loads and trains the model
(:meth:`dlkit.experiment.Experiment.run`); the analysis after it runs on one device of rank 0.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import sys
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from dlkit.config import ConfigError

log = logging.getLogger(__name__)

__all__ = ["DISTRIBUTE_DEFAULTS", "PRECISIONS", "ENV_TASKS", "check_entries", "join", "slurm_step", "Devices",
           "EvenBatches", "float32_outputs"]

#: Set by dlkit-scan's Slurm engine for points of several tasks (``--ntasks-per-point``): the point, started as
#: one process, runs itself under ``srun`` with that many tasks (:func:`join`).
ENV_TASKS = "DLKIT_POINT_TASKS"

#: The values of ``Precision`` (Keras' dtype policies).
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")

#: The entries of every experiment, with their defaults.
DISTRIBUTE_DEFAULTS = {
    "DataParallel": False,      # True: synchronous data parallelism over the visible devices; BatchSize global
    "Precision": "float32",     # or "mixed_bfloat16", "mixed_float16" (loss scaling); outputs stay float32
}


def check_entries(config: Mapping, backend: str | None = None) -> None:
    """``Precision``'s value, and ``DataParallel`` on a backend that has it (``backend``: Keras' backend
    name, once known); a :class:`~dlkit.config.ConfigError` in one line naming the entry."""
    precision = config.get("Precision", "float32")
    if precision not in PRECISIONS:
        raise ConfigError(f"config entry 'Precision' = {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if config.get("DataParallel") and backend == "torch":
        raise ConfigError("config entry 'DataParallel' = True: data parallelism is not supported on the torch "
                          "backend through Keras' fit; use KERAS_BACKEND=jax or KERAS_BACKEND=tensorflow")


def slurm_step() -> tuple[int, int] | None:
    """(this task's rank, the tasks) inside a Slurm job step of several tasks (``srun -n N``, N > 1), else None."""
    tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS") or 0)
    return (int(os.environ.get("SLURM_PROCID") or 0), tasks) if tasks > 1 else None


def backend_name() -> str:
    """The Keras backend this process will use, read as Keras reads it (``KERAS_BACKEND``, else
    ``$KERAS_HOME/keras.json``, else TensorFlow), without importing Keras."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        return json.loads(Path(home, "keras.json").read_text()).get("backend") or "tensorflow"
    except (OSError, ValueError):
        return "tensorflow"


def join(config: Mapping, relaunch: bool = False) -> tuple[int, int]:
    """Before the Keras backend starts: make this process one of the job's. Returns (rank, processes).

    Inside ``srun -n N`` (N > 1) with ``DataParallel``: ``jax.distributed.initialize()`` (Slurm's environment
    names the coordinator, the rank and the count; the visible GPUs are this process' devices). Outside such a
    step, in a job of several tasks (:data:`ENV_TASKS` - a scan's point of several tasks - or ``SLURM_NTASKS``
    of the batch script) and with ``relaunch`` (a command line), the process runs itself again under ``srun``
    (``exec``: the scan's worker keeps waiting on the same process id; srun passes signals to every task).
    Several tasks without ``DataParallel``, or on TensorFlow or torch, are a :class:`~dlkit.config.ConfigError` in
    one line."""
    step, wanted = slurm_step(), int(os.environ.get(ENV_TASKS) or 1)
    if config.get("DataParallel") and step is None and ENV_TASKS not in os.environ and os.environ.get("SLURM_JOB_ID"):
        wanted = int(os.environ.get("SLURM_NTASKS") or 1)  # a batch script of a job of several tasks
    if not config.get("DataParallel"):
        if step is not None:
            raise ConfigError(f"this process is task {step[0]} of {step[1]} of a Slurm job step (srun -n "
                              f"{step[1]}) but config entry 'DataParallel' is off: set DataParallel=true to train "
                              "one model with all of them, or start one task")
        if wanted > 1:
            raise ConfigError(f"the scan gives this point {wanted} tasks (--ntasks-per-point) but config entry "
                              "'DataParallel' is off: set DataParallel=true")
        return 0, 1
    tasks = step[1] if step is not None else wanted
    if tasks > 1 and backend_name() != "jax":
        raise ConfigError(f"config entry 'DataParallel' over {tasks} processes (Slurm tasks) runs on JAX "
                          f"(KERAS_BACKEND=jax), not on {backend_name()}: start one process per node instead")
    if step is None and wanted > 1:
        srun = shutil.which("srun")
        if not relaunch or srun is None:
            raise ConfigError(f"DataParallel over {wanted} Slurm tasks: the run starts them itself from the command "
                              f"line, under srun ({'no srun here' if srun is None else 'not from Python'})")
        argv = [srun, f"--ntasks={wanted}", sys.executable, *sys.orig_argv[1:]]
        log.info("DataParallel: running under %s", " ".join(argv))
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(srun, argv)
    if step is None:
        return 0, 1
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPUs of several processes (tests, CI)
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    # every GPU Slurm gives the task (--gpus-per-task), not JAX's default of the one at SLURM_LOCALID
    jax.distributed.initialize(**({"local_device_ids": list(range(len(visible)))} if visible else {}))
    log.info("DataParallel: process %d of %d joined (%d local device(s))", jax.process_index(), jax.process_count(),
             jax.local_device_count())
    return jax.process_index(), jax.process_count()


def float32_outputs(model) -> list[str]:
    """Make the layers that give ``model``'s outputs compute in float32 (a no-op under a float32 policy);
    returns their names. A model that is not a graph of layers (subclassed) is left as it is, with a warning."""
    import keras

    outputs = getattr(model, "outputs", None)
    if keras.config.dtype_policy().compute_dtype == "float32" or not outputs:
        if outputs is None and keras.config.dtype_policy().compute_dtype != "float32":
            log.warning("%s: not a functional model; its outputs stay in %s", model.name,
                        keras.config.dtype_policy().compute_dtype)
        return []
    names = []
    for tensor in keras.tree.flatten(outputs):
        layer = tensor._keras_history[0]
        if layer.dtype_policy.compute_dtype != "float32":
            layer.dtype_policy = "float32"
            names.append(layer.name)
    return names


class EvenBatches:
    """A dlkit generator (or any ``keras.utils.PyDataset`` serving ``(x, y[, weight])``) whose batches split
    evenly over ``replicas`` devices: a batch whose size is not a multiple is padded with copies of its first
    events at weight 0, its own events weighted ``padded / real`` (the loss, a mean, is unchanged). Every
    batch then carries sample weights (ones where the data has none), so that all batches have one structure.
    With ``share=(index, count)`` (process ``index`` of ``count``) it serves only that process' rows of each
    (padded) batch: the ``index``-th of ``count`` equal contiguous parts. Seeking (``seek``), the epoch hooks and
    the other attributes are the wrapped generator's."""

    def __new__(cls, *args, **kwargs):  # a keras.utils.PyDataset, Keras imported on first use
        import keras

        made = _CLASSES.get(cls)
        if made is None:
            made = _CLASSES[cls] = type(cls.__name__, (cls, keras.utils.PyDataset), {"__module__": cls.__module__})
        return object.__new__(made)

    def __init__(self, data, replicas: int, share: tuple[int, int] = (0, 1)):
        import keras

        keras.utils.PyDataset.__init__(self, workers=1, use_multiprocessing=False)
        self.data, self.replicas, self.share = data, int(replicas), (int(share[0]), int(share[1]))
        if self.replicas % self.share[1]:
            raise ValueError(f"EvenBatches: {replicas} devices do not split over {share[1]} processes")

    def __len__(self) -> int:
        return len(self.data)

    @property
    def num_batches(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        batch = self.data[index]
        if not isinstance(batch, tuple) or len(batch) not in (2, 3):
            raise TypeError(f"DataParallel: a training batch must be (x, y) or (x, y, weight), got "
                            f"{type(batch).__name__}")
        import keras

        x, y = batch[0], batch[1]
        rows = len(keras.tree.flatten(x)[0])
        weight = np.asarray(batch[2], np.float32) if len(batch) == 3 else np.ones(rows, np.float32)
        pad = -rows % self.replicas
        if pad:
            take = np.arange(pad) % rows
            padded = lambda a: np.concatenate([np.asarray(a), np.asarray(a)[take]])  # noqa: E731
            weight = np.concatenate([weight * ((rows + pad) / rows), np.zeros(pad, np.float32)]).astype(np.float32)
            x, y = keras.tree.map_structure(padded, x), keras.tree.map_structure(padded, y)
        index, count = self.share
        if count == 1:
            return x, y, weight
        part = (rows + pad) // count
        mine = slice(index * part, (index + 1) * part)
        return keras.tree.map_structure(lambda a: a[mine], x), keras.tree.map_structure(lambda a: a[mine], y), \
            weight[mine]

    def seek(self, position: int) -> None:
        self.data.seek(position)

    def on_epoch_begin(self):
        hook = getattr(self.data, "on_epoch_begin", None)
        if hook is not None:
            hook()

    def on_epoch_end(self):
        hook = getattr(self.data, "on_epoch_end", None)
        if hook is not None:
            hook()

    def close(self):
        close = getattr(self.data, "close", None)
        if close is not None:
            close()

    def __getattr__(self, name):
        if name in ("data", "replicas", "share") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.data, name)


_CLASSES: dict = {}


def _last_batch(data) -> int | None:
    """The size of the epoch's last batch of a dlkit generator (None when ``data`` does not say)."""
    try:
        n, size, events = len(data), int(data.batch_size), int(data.events_per_epoch)
    except (AttributeError, TypeError, ValueError):
        return None
    return events - (n - 1) * size if n else None


class Devices:
    """The devices and the precision of a run, as a context manager around building and training its model.

    >>> with Devices(config) as devices:      # before the model is built or loaded
    ...     wrapper = load_or_build(...)
    ...     wrapper.Train(devices.feed(train), validation_data=devices.feed(validation), ...)

    Entering sets the dtype policy (``Precision``) and, with ``DataParallel``, the distribution (JAX) or enters
    the strategy's scope (TensorFlow); leaving puts back what was there. ``replicas`` is the number of devices
    one global batch is split over (of all processes); ``rank`` and ``processes`` say which process of a job of
    several (:func:`join`) this is, and ``writes`` whether it writes (rank 0).
    """

    def __init__(self, config: Mapping):
        import keras

        self.backend = keras.backend.backend()
        check_entries(config, self.backend)
        self.precision = config.get("Precision", "float32")
        self.data_parallel = bool(config.get("DataParallel"))
        self.batch_size = config.get("BatchSize")
        self.replicas = 1
        self.devices: list[str] = []
        self.strategy = None
        self.rank, self.processes = 0, 1
        if self.data_parallel and self.backend == "jax":
            import jax

            self.rank, self.processes = jax.process_index(), jax.process_count()
        self.seed = config.get("Seed")
        self._stack = ExitStack()

    @property
    def writes(self) -> bool:
        return self.rank == 0

    def agree(self, value: int) -> int:
        """The largest ``value`` over the processes of the job (every one of them must call it)."""
        if self.processes == 1:
            return int(value)
        from jax.experimental import multihost_utils

        return int(np.max(multihost_utils.process_allgather(np.int32(value))))

    def barrier(self, name: str) -> None:
        """Wait until every process of the job is here."""
        if self.processes > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"dlkit: {name}")

    def adopt(self, wrapper):
        """Tell a ModelWrapper of a job of several processes which one it is: only rank 0 writes; stops agreed on
        after every batch (``Agreement``). Returns it."""
        if self.processes > 1:
            wrapper.Writes = self.writes
            wrapper.Agreement = self.agree
        return wrapper

    def __enter__(self) -> Devices:
        import keras

        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.precision)
        self._stack.callback(keras.config.set_dtype_policy, previous)
        if self.data_parallel:
            self._enter_data_parallel()
        if self.processes > 1:  # the same random state everywhere: a model is built (also before a load) the same
            seed = self.seed if self.seed is not None else self.agree(int(np.random.default_rng().integers(1 << 30)))
            keras.utils.set_random_seed(int(seed))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _enter_data_parallel(self) -> None:
        import keras

        if self.backend == "jax":
            devices = keras.distribution.list_devices()  # of every process of the job
            previous = keras.distribution.distribution()
            keras.distribution.set_distribution(keras.distribution.DataParallel(
                devices=devices, auto_shard_dataset=False))  # each process serves its share itself (feed)
            self._stack.callback(keras.distribution.set_distribution, previous)
            self.devices, self.replicas = [str(d) for d in devices], len(devices)
        elif self.backend == "tensorflow":
            import tensorflow as tf  # the strategy is TensorFlow's own: Keras has no other way to it

            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
            self.strategy = tf.distribute.MirroredStrategy(devices)
            self._stack.enter_context(self.strategy.scope())
            self.devices, self.replicas = devices, self.strategy.num_replicas_in_sync
        else:  # check_entries refused torch; numpy has no training
            raise ConfigError(f"config entry 'DataParallel' = True: not supported on the {self.backend} backend")
        log.info("DataParallel: %d device(s) (%s) of %d process(es), global batch %s", self.replicas,
                 ", ".join(self.devices), self.processes, self.batch_size)
        if self.replicas == 1:
            log.warning("DataParallel: this process sees one device (CUDA_VISIBLE_DEVICES=%s); nothing to split",
                        os.environ.get("CUDA_VISIBLE_DEVICES"))
        if self.batch_size is not None and int(self.batch_size) % self.replicas:
            raise ConfigError(f"config entry 'BatchSize' = {self.batch_size} is not a multiple of the "
                              f"{self.replicas} devices DataParallel splits each batch over")

    def feed(self, data):
        """``data`` as the devices take it: a generator whose last batch does not split evenly is wrapped
        (:class:`EvenBatches`), and in a job of several processes each serves its share; anything else is
        returned as it is."""
        if self.replicas == 1 or data is None or not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
            return data
        if isinstance(data, (np.ndarray, tuple, list, dict)):
            if self.processes > 1:
                raise ConfigError("DataParallel over several processes needs a generator (dlkit's), not arrays")
            return data
        if self.processes > 1:
            return EvenBatches(data, self.replicas, share=(self.rank, self.processes))
        last = _last_batch(data)
        if last is not None and last % self.replicas == 0 and int(data.batch_size) % self.replicas == 0:
            return data
        log.info("DataParallel: the last batch of %r (%s events) is padded to a multiple of %d at weight 0", data,
                 last, self.replicas)
        return EvenBatches(data, self.replicas)

    def describe(self) -> dict:
        """What ``MetaData.json`` records (``Devices``)."""
        return {"backend": self.backend, "precision": self.precision, "data_parallel": self.data_parallel,
                "replicas": self.replicas, "devices": self.devices, "processes": self.processes}


def private_directory(name: str) -> Path:
    """A temporary directory of this process (a non-writing rank's ``OutDir``), removed when it exits."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=f"dlkit-{name}-"))
    atexit.register(shutil.rmtree, path, True)
    return path
