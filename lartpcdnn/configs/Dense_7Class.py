"""The dense baseline (DLKit's FullyConnectedClassification per view, merged): 4x4 average-pooled views,
Depth hidden layers of Width per view, 7 classes. 18 points: Depth x Width x lr; -s 0 is Depth=2,
Width=64, lr=0.001.
"""

Config = {
    "Particles": ["electron", "muon", "pionPlus", "photon", "pion0", "proton", "kaonPlus"],
    "Model": "Dense",
    "DensePool": 4,
    "activation": "relu",
    "optimizer": "Adam",
    "Epochs": 10,
    "BatchSize": 32,
}

Params = {
    "Depth": [2, 1, 3],
    "Width": [64, 32, 128],
    "lr": [0.001, 0.0003],
}
