"""The point models on the hit lists (dlkit.models), single-task and multi-task: 4-class softmax (Ele, Gamma,
Pi0, ChPi), with MultiTask > 0 also the energy (loss weight MultiTask, MRSE).

6 points. In DLKit order (keys sorted, last fastest): -s 0 DeepSets, -s 2 ParticleNet, -s 4 Transformer, each
single-task; -s 1, 3, 5 the same with an energy head of weight 1.
"""

Config = {
    "Particles": ["Ele", "Gamma", "Pi0", "ChPi"],
    "optimizer": "Adam",
    "lr": 0.001,
    "Epochs": 10,
    "BatchSize": 128,
    "MaxPoints": 128,
    "PointWidth": 64,
    "PointDepth": 2,
    "EnergyLoss": "MRSE",
}

Params = {
    "MultiTask": [0.0, 1.0],
    "Model": ["DeepSets", "ParticleNet", "Transformer"],
}
