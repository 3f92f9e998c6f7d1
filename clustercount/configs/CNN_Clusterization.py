"""Seed 004's clusterization scan: 1D CNN on the detected peak times (1024, 1) -> number of primary clusters.

216 points over the talk's hyperparameters: BatchSize x Dropout x Neurons x activation x loss x optimizer
(keys sorted, last fastest: -s 0 is BatchSize=250, Dropout=0.0, Neurons=32, activation=relu, loss=mae,
optimizer=RMSprop, the talk's optimizer). The learning rate is each optimizer's Keras default.
"""

Config = {
    "Filters": 16,
    "KernelSize": 5,
    "ConvLayers": 3,
    "Pooling": "flatten",
    "Epochs": 30,
    "EarlyStopping": True,
    "EarlyStopping_patience": 5,
}

Params = {
    "loss": ["mae", "mse"],
    "activation": ["relu", "selu", "sigmoid"],
    "Neurons": [32, 64, 128],
    "BatchSize": [250, 1000],
    "optimizer": ["RMSprop", "Adam", "SGD"],
    "Dropout": [0.0, 0.2],
}
