"""Energy regression scan: the DNN on cells (dense branches + per-layer sums) trained on all four particles
mixed, over the loss (seed 001's MSE / MSRE / MRSE and a Gaussian NLL with a predicted uncertainty), Width and
Depth.

36 points. In DLKit order (keys sorted, last fastest) -s 0 is Depth=1, Width=32, loss=MSE, and -s 6 is
Depth=1, Width=64, loss=MRSE.
"""

Config = {
    "Particles": ["Ele", "Gamma", "Pi0", "ChPi"],
    "ECAL": True,
    "HCAL": True,
    "Model": "Dense",
    "activation": "relu",
    "optimizer": "Adam",
    "lr": 0.001,
    "Epochs": 10,
    "BatchSize": 128,
}

Params = {
    "loss": ["MSE", "MSRE", "MRSE", "GaussianNLL"],
    "Width": [32, 64, 128],
    "Depth": [1, 2, 3],
}
