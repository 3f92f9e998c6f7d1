"""Particle classification in the LArIAT liquid-argon TPC from the two wire-plane images.

    python -m lartpcdnn.ClassificationExperiment -s 0          # scan point 0: the default siamese CNN
    python -m lartpcdnn.ClassificationExperiment --Test        # a quick check: tiny dataset, 2 epochs
    python -m lartpcdnn.ClassificationExperiment -C lartpcdnn/configs/Dense_7Class.py -s 0   # dense baseline
    python -m lartpcdnn.ClassificationExperiment -s 3 --data /data/LArIAT/2D   # real files: <dir>/<class>/*.2d.h5
    python -m lartpcdnn.ClassificationExperiment --set Model=\"ParticleNet\"   # a point model on the 3D deposits

With no data configured the first run simulates the default dataset into the cache
(``$DLKIT_DATA/lartpcdnn`` or ``~/.cache/dlkit/lartpcdnn``). Raw events (2 x 240 x 4096) are down-sampled,
cropped and normalised in the generator's reader processes; the processed events are cached, so epochs
after the first read 16x fewer bytes and do no processing. A point model (``Model`` DeepSets, ParticleNet or
Transformer) reads the same events' 3D charge deposits instead (``Hits``: the deposit files' format), the
``MaxPoints`` largest per event, scaled in the readers.
Exit codes: 0 done, 2 a configuration/data error, 75 stopped by a signal after saving (resume with -p).
"""

from __future__ import annotations

from dlkit.config import ConfigError, Range, above, at_least
from dlkit.experiment import RUN_DEFAULTS, Experiment
from dlkit.models import CONFIG_DEFAULTS as POINT_DEFAULTS
from lartpcdnn.configs import CONFIG_DIR

DEFAULT_CONFIG = CONFIG_DIR / "SiameseCNN_7Class.py"

#: Every valid config entry with its default; config files, flags and scan points override these.
DEFAULTS = {
    # data
    "DataDir": None,            # one sub-directory per class (LArIAT names); None: the simulated default dataset
    "FilePattern": "*.2d.h5",   # the 2D files in each class directory
    "FeaturesKey": "features",  # dataset of the (N, 2, wires, ticks) images (newer LArIAT files: "images")
    "Particles": ["electron", "muon", "pionPlus", "photon", "pion0", "proton", "kaonPlus"],
    "Hits": "parquet",          # point models: format of the deposit files (parquet, root, rntuple, hdf5)
    "HitsPattern": None,        # point models: their files in each class directory; None: from Hits (*.parquet)
    "PointCentre": [23.5, 0.0, 45.0],  # point models: deposit coordinates relative to this (x, y, z) [cm] ...
    "PointScale": 20.0,         # ... in units of this [cm]; the charge as log(dep_q / 1 MeV)
    "EnergyMin": None,          # keep events with Energy >= EnergyMin [GeV] (DLKit: Energy > 0.61); None: all
    "MaxEvents": 0,             # events used in total (all classes); 0: all
    "ValidationFraction": 0.1,
    "TestFraction": 0.2,
    "SimEventsPerClass": 300,   # size of the simulated default dataset
    "SimEventsPerFile": 100,
    "SimSeed": 0,
    "DownSampleFactor": 8,      # ticks summed into one (4096 -> 512)
    "ScanWindowSize": 256,      # down-sampled ticks kept around the most charge; None: all
    "NormScale": 50.0,          # tanh-log scale [ADC sum]: x -> tanh(sign(x) log(1 + |x|/scale) / 2); None: off
    "ImageDtype": "float16",    # dtype of the processed, cached images
    "MirrorDrift": True,        # training augmentation: mirror the drift direction of half the events
    "Balanced": False,          # True: equal class counts per batch; False: natural proportions
    "Preload": False,
    "Cache": True,
    "Workers": 0,               # reader processes per generator; 0: from the CPU count
    "Seed": 0,
    # model
    "Model": "CNN",             # "CNN" (two-view siamese), "Dense" (baseline), or on the 3D deposits "DeepSets",
                                # "ParticleNet", "Transformer" (dlkit.models; sized by the entries below)
    **POINT_DEFAULTS,           # MaxPoints, PointWidth, PointDepth, Neighbours, Heads, PairBias, Pooling
    "Width": 64,
    "Depth": 4,                 # CNN: conv blocks after the stem; Dense: hidden layers per view
    "Filters": 8,
    "SharedTrunk": True,        # siamese: one trunk for both planes
    "DensePool": 4,             # Dense: average-pool each view by this before flattening
    "activation": "relu",
    "Dropout": 0.0,
    "BatchNormalization": False,
    "WeightInitialization": "glorot_uniform",
    # training
    "loss": "categorical_crossentropy",
    "optimizer": "Adam",
    "lr": 0.001,
    "decay": 0.0,
    "momentum": 0.0,
    "Epochs": 15,
    "BatchSize": 32,
    **RUN_DEFAULTS,
    # analysis
    "EnergyBins": [0.1, 1.0, 6],
    "FakeRate": 0.01,           # working point of the efficiency tables (DUNE: ~90 % at 1 %)
    "AUCBootstrap": 200,        # bootstrap resamples per bin for the AUC-vs-energy intervals (0: none)
}
#: Declared types; a declared entry also accepts None (ScanWindowSize, NormScale: None switches them off).
TYPES = {"DataDir": str, "RunningTime": (int, float), "EnergyMin": (int, float), "ScanWindowSize": int,
         "NormScale": (int, float), "HitsPattern": str}
#: Allowed values of this experiment's own numeric entries (dlkit.config.RANGES has the shared ones).
RANGES = {"AUCBootstrap": at_least(0), "EnergyMin": at_least(0), "DownSampleFactor": at_least(1),
          "ScanWindowSize": at_least(1), "NormScale": above(0), "DensePool": at_least(1),
          "FakeRate": Range(0.0, 1.0, low_open=True, high_open=True), "MaxPoints": at_least(1),
          "PointWidth": at_least(1), "PointDepth": at_least(1), "Neighbours": at_least(1), "Heads": at_least(1),
          "PointScale": above(0)}
#: --Test: a tiny dataset (7 x 40 events, ~20 s to simulate), 2 epochs, output under TrainedModels.Test/.
TEST_OVERRIDES = {"SimEventsPerClass": 40, "SimEventsPerFile": 20, "Epochs": 2, "BatchSize": 16}


def check_config(config):
    """The entries a type cannot check, before any data is made: ``Model``, and for a point model ``Hits`` and
    the shared point-model entries (:func:`dlkit.models.config.check_entries`: ``Pooling``, ``Heads``)."""
    from dlkit.models.config import check_entries
    from lartpcdnn.data import HIT_FORMATS
    from lartpcdnn.models import check_model_name

    if check_model_name(config["Model"]) is None:
        return
    if config["Hits"] not in HIT_FORMATS:
        raise ConfigError(f"config entry 'Hits' = {config['Hits']!r}; expected one of {list(HIT_FORMATS)}")
    check_entries(config)


def setup_data(config, test):
    from lartpcdnn.data import setup_data

    return setup_data(config)


def make_wrapper(name, data, **kwargs):
    from lartpcdnn.models import LArClassifier

    return LArClassifier(name, data.input_shapes, len(data.class_names), **kwargs)


def analysis(wrapper, data, config):
    from lartpcdnn.analysis import classification_analysis

    return classification_analysis(wrapper, data, config)


def summary(wrapper, config):
    from lartpcdnn.analysis import summary_table

    return summary_table(wrapper, config["FakeRate"])


def prediction_inputs(config, metadata):
    """dlkit.export's recipe of a run (the hook :mod:`dlkit.export.run` looks for): dlkit's built-in one for the
    CNN and the dense baseline; for a point model the deposit files (``Hits``, ``HitsPattern``) of each particle
    directory, read as the run read them: the collection ``deposits`` of ``dep_x, dep_y, dep_z, dep_q`` sorted by
    ``dep_q``, ``MaxPoints`` per event, scaled by :class:`lartpcdnn.preprocess.ScaleDeposits`."""
    from dlkit.export.recipes import BUILTIN, Recipe
    from dlkit.generators import Collection
    from lartpcdnn.data import HIT_FORMATS, POINT_INPUT, make_preprocess
    from lartpcdnn.models import check_model_name
    from lartpcdnn.simulate import DEPOSIT_COLUMNS

    config = {**DEFAULTS, **dict(config)}  # a run saved before an entry existed has its default
    if check_model_name(config["Model"]) is None:
        return BUILTIN[EXPERIMENT.module](config, metadata)
    pre = make_preprocess(config)
    particles = [str(p) for p in config["Particles"]]
    keys = {POINT_INPUT: Collection(DEPOSIT_COLUMNS, max_points=int(config["MaxPoints"]), sort_by="dep_q"),
            "Energy": "Energy"}
    source = (f"the {config['MaxPoints']} largest deposits (dep_q) of the event: (x, y, z - {list(pre.centre)} cm) "
              f"/ {pre.length:g} cm, log(dep_q / {pre.charge:g} MeV); zero-padded")
    return Recipe(inputs=[POINT_INPUT, f"{POINT_INPUT}_mask"], keys=keys, preprocess=pre, classes=particles,
                  pattern=config["HitsPattern"] or HIT_FORMATS[config["Hits"]], truth={"true_energy": "Energy"},
                  outputs=[{"kind": "classification", "classes": particles}],
                  sources={POINT_INPUT: source, f"{POINT_INPUT}_mask": "True for the real points"})


EXPERIMENT = Experiment("lartpcdnn.ClassificationExperiment", __doc__, prefix="LArTPCDNN", defaults=DEFAULTS,
                        default_config=DEFAULT_CONFIG, types=TYPES, ranges=RANGES, test_overrides=TEST_OVERRIDES,
                        setup_data=setup_data, make_wrapper=make_wrapper, analysis=analysis, summary=summary,
                        check_config=check_config)
run, cli, main = EXPERIMENT.run, EXPERIMENT.cli, EXPERIMENT.main

if __name__ == "__main__":
    main()
