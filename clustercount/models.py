"""clustercount models: the LSTM peak classifier and the 1D-CNN cluster counter of seed 004.

Functional Keras with ``keras.layers`` only (any backend). Every hyperparameter of the talk's scan (loss,
activation, neurons, dropout; batch size, epochs and optimizer are training options) comes from the resolved
configuration and really changes the model::

    model = build_peak_classifier((15, 1), Neurons=32, activation="relu")     # (N, 15, 1) -> P(signal)
    model = build_cluster_counter((1024, 1), Filters=16, Neurons=64)          # (N, 1024, 1) -> N_clusters
"""

from __future__ import annotations

import keras
from keras import layers

from dlkit import ModelWrapper
from dlkit.config import ConfigError

__all__ = ["build_peak_classifier", "build_cluster_counter", "PeakFinderModel", "ClusterCounterModel", "POOLINGS"]

POOLINGS = ("flatten", "average")


def _init(activation: str, init: str) -> str:
    """SELU needs LeCun-normal weights to self-normalise; keep any explicit choice."""
    return "lecun_normal" if activation == "selu" and init == "glorot_uniform" else init


def build_peak_classifier(window_shape=(15, 1), Neurons: int = 32, activation: str = "relu", Dropout: float = 0.0,
                          LSTMLayers: int = 1, DenseLayers: int = 1, WeightInitialization: str = "glorot_uniform",
                          name: str = "PeakFinder") -> keras.Model:
    """Window of samples around a candidate peak -> probability that it is an ionisation signal.

    ``LSTMLayers`` x LSTM(Neurons) reading the window in time order, then ``DenseLayers`` x
    [Dense(Neurons, activation), Dropout?], then Dense(1, sigmoid).
    """
    if Neurons < 1 or LSTMLayers < 1 or DenseLayers < 0:
        raise ConfigError(f"config entries: need Neurons >= 1, LSTMLayers >= 1, DenseLayers >= 0 (got {Neurons}, "
                         f"{LSTMLayers}, {DenseLayers})")
    init = _init(activation, WeightInitialization)
    inp = keras.Input(shape=tuple(window_shape), name="window")
    x = inp
    for i in range(LSTMLayers):
        x = layers.LSTM(Neurons, return_sequences=i < LSTMLayers - 1, name=f"lstm{i}")(x)
    for i in range(DenseLayers):
        x = layers.Dense(Neurons, activation=activation, kernel_initializer=init, name=f"dense{i}")(x)
        if Dropout:
            x = layers.Dropout(Dropout, name=f"dropout{i}")(x)
    out = layers.Dense(1, activation="sigmoid", name="signal")(x)
    return keras.Model(inp, out, name=name)


def build_cluster_counter(input_shape=(1024, 1), Filters: int = 16, KernelSize: int = 5, ConvLayers: int = 3,
                          Neurons: int = 64, activation: str = "relu", Dropout: float = 0.0, Pooling: str = "flatten",
                          WeightInitialization: str = "glorot_uniform", name: str = "ClusterCounter") -> keras.Model:
    """Detected peak times (counts in time bins) -> number of primary clusters (a linear output).

    ``ConvLayers`` x [Conv1D(Filters * 2^i, KernelSize, activation), MaxPool(2)], then the feature map
    flattened (keeps where in the window peaks are: their drift times) or averaged, Dense(Neurons,
    activation), Dropout?, Dense(1).
    """
    if Pooling not in POOLINGS:
        raise ConfigError(f"config entry 'Pooling' = {Pooling!r}; expected one of {POOLINGS}")
    if Filters < 1 or KernelSize < 1 or ConvLayers < 1 or Neurons < 1:
        raise ConfigError("config entries Filters, KernelSize, ConvLayers and Neurons must be >= 1")
    init = _init(activation, WeightInitialization)
    inp = keras.Input(shape=tuple(input_shape), name="times")
    x = inp
    for i in range(ConvLayers):
        x = layers.Conv1D(Filters * 2**i, KernelSize, padding="same", activation=activation, kernel_initializer=init,
                          name=f"conv{i}")(x)
        if x.shape[1] >= 2:
            x = layers.MaxPooling1D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x) if Pooling == "flatten" else layers.GlobalAveragePooling1D(name="gap")(x)
    x = layers.Dense(Neurons, activation=activation, kernel_initializer=init, name="dense")(x)
    if Dropout:
        x = layers.Dropout(Dropout, name="dropout")(x)
    out = layers.Dense(1, name="n_clusters")(x)
    return keras.Model(inp, out, name=name)


class PeakFinderModel(ModelWrapper):
    """ModelWrapper building :func:`build_peak_classifier` from ``Config`` and the window shape."""

    def __init__(self, Name, window_shape=(15, 1), **kwargs):
        super().__init__(Name, **kwargs)
        self.window_shape = tuple(window_shape)

    def Build(self):
        c = self.Config
        self.Model = build_peak_classifier(
            self.window_shape, Neurons=c["Neurons"], activation=c["activation"], Dropout=c["Dropout"],
            LSTMLayers=c["LSTMLayers"], DenseLayers=c["DenseLayers"],
            WeightInitialization=c["WeightInitialization"], name=self.Name.replace(".", "_"))
        self.MetaData["input_shape"] = list(self.window_shape)
        return self.Model


class ClusterCounterModel(ModelWrapper):
    """ModelWrapper building :func:`build_cluster_counter` from ``Config`` and the input shape."""

    def __init__(self, Name, input_shape=(1024, 1), **kwargs):
        super().__init__(Name, **kwargs)
        self.input_shape = tuple(input_shape)

    def Build(self):
        c = self.Config
        self.Model = build_cluster_counter(
            self.input_shape, Filters=c["Filters"], KernelSize=c["KernelSize"], ConvLayers=c["ConvLayers"],
            Neurons=c["Neurons"], activation=c["activation"], Dropout=c["Dropout"], Pooling=c["Pooling"],
            WeightInitialization=c["WeightInitialization"], name=self.Name.replace(".", "_"))
        self.MetaData["input_shape"] = list(self.input_shape)
        return self.Model
