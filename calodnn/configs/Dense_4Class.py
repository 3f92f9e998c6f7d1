"""The talks' scan: dense ECAL and HCAL branches merged into a 4-class softmax (Ele, Gamma, Pi0, ChPi).

180 points: Width x Depth x lr x decay. In DLKit order (keys sorted, last fastest) -s 12 is
Depth=1, Width=64, decay=0.01, lr=0.1.
"""

Config = {
    "Particles": ["Ele", "Gamma", "Pi0", "ChPi"],
    "ECAL": True,
    "HCAL": True,
    "ECALNorm": "NonLinear",
    "HCALNorm": "NonLinear",
    "Model": "Dense",
    "activation": "relu",
    "optimizer": "SGD",
    "Epochs": 10,
    "BatchSize": 128,
}

Params = {
    "Width": [32, 64, 128, 256, 512],
    "Depth": [1, 2, 3, 4],
    "lr": [0.1, 0.01, 0.001],
    "decay": [0.1, 0.01, 0.001],
}
