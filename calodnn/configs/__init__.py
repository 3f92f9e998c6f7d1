"""Default scan configs of calodnn (plain Python files defining ``Config`` and ``Params``)."""

from pathlib import Path

from dlkit.models.config import CONFIG_DEFAULTS as POINT_DEFAULTS
from dlkit.models.config import RANGES as POINT_RANGES

__all__ = ["CONFIG_DIR", "DATA_DEFAULTS", "MODEL_DEFAULTS", "POINT_DEFAULTS", "POINT_RANGES", "READER_DEFAULTS",
           "REGRESSION_SIM_CONFIG", "TEST_OVERRIDES"]

CONFIG_DIR = Path(__file__).parent

#: CaloSimConfig overrides of the simulated regression dataset: the same showers and fluctuations as the
#: classification dataset, stored as raw visible energies (thin/thick ECAL and HCAL sampling fractions).
#: Here, not in calodnn.regression, so that RegressionExperiment's DEFAULTS (and --help) import nothing heavy.
REGRESSION_SIM_CONFIG = {"raw_visible_energy": True}

#: The entries both calodnn experiments (classification and regression) share, with their defaults.
#: The data: the dataset's particles and split.
DATA_DEFAULTS = {
    "DataDir": None,            # one sub-directory per particle; None: the simulated default dataset
    "Particles": ["Ele", "Gamma", "Pi0", "ChPi"],
    "MaxEvents": 0,             # events used in total (all particles); 0: all
    "ValidationFraction": 0.1,
    "TestFraction": 0.2,
    "SimEventsPerClass": 5000,  # size of the simulated default dataset
    "ECAL": True,
    "HCAL": True,
    "Hits": "parquet",          # point models: format of the hit files (root, rntuple, parquet, hdf5)
}
#: How the readers deliver it (dlkit.generators).
READER_DEFAULTS = {
    "Premix": True,             # DLKit's default: read from a premixed file made once
    "Preload": False,
    "Cache": True,
    "Workers": 0,               # reader processes; 0: from the CPU count
    "Seed": 0,
}
#: The networks' shape (calodnn.models and calodnn.calibration read these from the resolved config).
MODEL_DEFAULTS = {
    "Width": 64,
    "Depth": 2,
    "activation": "relu",
    "Dropout": 0.0,
    "BatchNormalization": False,
    "WeightInitialization": "glorot_uniform",
    "CNNFilters": 8,
    # point models (Model = DeepSets, ParticleNet, Transformer; dlkit.models) on the hit lists
    **POINT_DEFAULTS,
}
#: --Test: a few thousand events, 2 epochs, small point models; output under TrainedModels.Test/.
TEST_OVERRIDES = {"SimEventsPerClass": 1000, "MaxEvents": 4000, "Epochs": 2,
                  "MaxPoints": 32, "PointWidth": 16, "PointDepth": 2, "Neighbours": 8}   # point models: small too
