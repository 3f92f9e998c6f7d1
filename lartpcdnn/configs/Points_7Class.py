"""The point models on the 3D charge deposits (dlkit.models), 7 particle classes: one scan point per model,
all with PointWidth 64, PointDepth 2 (-s 0 is the transformer of lartpcdnn.point_study's table; its
ParticleNet and DeepSets are sized apart there, POINT_CONFIGS).

    python -m lartpcdnn.ClassificationExperiment -C lartpcdnn/configs/Points_7Class.py -s 0   # Transformer
    python -m lartpcdnn.ClassificationExperiment -C lartpcdnn/configs/Points_7Class.py -s 1   # ParticleNet
    python -m lartpcdnn.ClassificationExperiment -C lartpcdnn/configs/Points_7Class.py -s 2   # DeepSets

The simulated deposit files (parquet, ``Hits``) are made on first use; with --data, the class directories'
``*.parquet`` files (``--set Hits=\\"root\\"`` for ROOT files).
"""

Config = {
    "Particles": ["electron", "muon", "pionPlus", "photon", "pion0", "proton", "kaonPlus"],
    "Hits": "parquet",
    "MaxPoints": 128,
    "PointWidth": 64,
    "PointDepth": 2,
    "Heads": 4,
    "Neighbours": 8,
    "Pooling": "mean",
    "optimizer": "Adam",
    "lr": 0.001,
    "Epochs": 15,
    "BatchSize": 32,
}

#: One point per model; the model names (LArTPCDNN_ModelTransformer, ...) say which.
Params = {
    "Model": ["Transformer", "ParticleNet", "DeepSets"],
}
