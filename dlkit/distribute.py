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

:class:`Devices` applies both around the part of a run that builds, loads and trains the model
(:meth:`dlkit.experiment.Experiment.run`); the analysis after it runs on one device.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import ExitStack

import numpy as np

from dlkit.config import ConfigError

log = logging.getLogger(__name__)

__all__ = ["DISTRIBUTE_DEFAULTS", "PRECISIONS", "check_entries", "Devices", "EvenBatches", "float32_outputs"]

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
    Seeking (``seek``), the epoch hooks and the other attributes are the wrapped generator's."""

    def __new__(cls, *args, **kwargs):  # a keras.utils.PyDataset, Keras imported on first use
        import keras

        made = _CLASSES.get(cls)
        if made is None:
            made = _CLASSES[cls] = type(cls.__name__, (cls, keras.utils.PyDataset), {"__module__": cls.__module__})
        return object.__new__(made)

    def __init__(self, data, replicas: int):
        import keras

        keras.utils.PyDataset.__init__(self, workers=1, use_multiprocessing=False)
        self.data, self.replicas = data, int(replicas)

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
        if not pad:
            return x, y, weight
        take = np.arange(pad) % rows
        padded = lambda a: np.concatenate([np.asarray(a), np.asarray(a)[take]])  # noqa: E731
        weight = np.concatenate([weight * ((rows + pad) / rows), np.zeros(pad, np.float32)]).astype(np.float32)
        return keras.tree.map_structure(padded, x), keras.tree.map_structure(padded, y), weight

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
        if name in ("data", "replicas") or name.startswith("__"):
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
    one global batch is split over.
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
        self._stack = ExitStack()

    def __enter__(self) -> Devices:
        import keras

        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.precision)
        self._stack.callback(keras.config.set_dtype_policy, previous)
        if self.data_parallel:
            self._enter_data_parallel()
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _enter_data_parallel(self) -> None:
        import keras

        if self.backend == "jax":
            devices = keras.distribution.list_devices()
            previous = keras.distribution.distribution()
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
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
        log.info("DataParallel: %d device(s) (%s), global batch %s", self.replicas, ", ".join(self.devices),
                 self.batch_size)
        if self.replicas == 1:
            log.warning("DataParallel: this process sees one device (CUDA_VISIBLE_DEVICES=%s); nothing to split",
                        os.environ.get("CUDA_VISIBLE_DEVICES"))
        if self.batch_size is not None and int(self.batch_size) % self.replicas:
            raise ConfigError(f"config entry 'BatchSize' = {self.batch_size} is not a multiple of the "
                              f"{self.replicas} devices DataParallel splits each batch over")

    def feed(self, data):
        """``data`` as the devices take it: a generator whose last batch does not split evenly is wrapped
        (:class:`EvenBatches`); anything else is returned as it is."""
        if self.replicas == 1 or data is None or not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
            return data
        if isinstance(data, (np.ndarray, tuple, list, dict)):
            return data
        last = _last_batch(data)
        if last is not None and last % self.replicas == 0 and int(data.batch_size) % self.replicas == 0:
            return data
        log.info("DataParallel: the last batch of %r (%s events) is padded to a multiple of %d at weight 0", data,
                 last, self.replicas)
        return EvenBatches(data, self.replicas)

    def describe(self) -> dict:
        """What ``MetaData.json`` records (``Devices``)."""
        return {"backend": self.backend, "precision": self.precision, "data_parallel": self.data_parallel,
                "replicas": self.replicas, "devices": self.devices}
