"""The default scan: a siamese CNN over both wire planes, 7 particle classes.

24 points: Depth x Filters x Width x lr. Keys sort as Depth, Filters, Width, lr (DLKit order, the last
varies fastest), and every list starts with the default, so -s 0 is the model the README quotes
(Depth=4, Filters=8, Width=64, lr=0.001: ~140k parameters, ~180 events/s training on 2 CPU cores).
"""

Config = {
    "Particles": ["electron", "muon", "pionPlus", "photon", "pion0", "proton", "kaonPlus"],
    "Model": "CNN",
    "SharedTrunk": True,
    "activation": "relu",
    "optimizer": "Adam",
    "Epochs": 15,
    "BatchSize": 32,
}

Params = {
    "Depth": [4, 3, 5],
    "Filters": [8, 16],
    "Width": [64, 128],
    "lr": [0.001, 0.0003],
}
