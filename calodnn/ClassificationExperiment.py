"""Particle classification in the LCD calorimeter (Ele, Gamma, Pi0, ChPi) from ECAL and HCAL cells.

    python -m calodnn.ClassificationExperiment -s 12          # scan point 12 of the default config
    python -m calodnn.ClassificationExperiment --Test         # a quick check: few events, 2 epochs
    python -m calodnn.ClassificationExperiment -C my_scan.py -s 3 --data /data/LCD/V2/MLDataset

From Python (a notebook): ``result = ClassificationExperiment.run(point=12, Test=True, Epochs=3)`` returns
the run directory, wrapper, resolved config, metrics (``result.metrics["Ele_AUC"]``) and figures.
With no data configured the first run simulates the default dataset into the cache
(``$DLKIT_DATA/calodnn`` or ``~/.cache/dlkit/calodnn``; ``--data DIR`` points at real files instead).
Exit codes: 0 done, 2 a configuration/data error, 75 stopped by a signal after saving (resume with -p).
"""

from __future__ import annotations

from calodnn.configs import (CONFIG_DIR, DATA_DEFAULTS, MODEL_DEFAULTS, POINT_RANGES, READER_DEFAULTS,
                             TEST_OVERRIDES)
from dlkit.config import above, at_least
from dlkit.experiment import RUN_DEFAULTS, Experiment

DEFAULT_CONFIG = CONFIG_DIR / "Dense_4Class.py"

#: Every valid config entry with its default; config files, flags and scan points override these.
DEFAULTS = {
    **DATA_DEFAULTS,
    "ECALNorm": "NonLinear",    # "NonLinear" (DLKit's tanh(log)), a number to divide by, or None
    "HCALNorm": "NonLinear",
    "Balanced": False,          # True: equal class counts per batch; False: natural proportions
    **READER_DEFAULTS,
    # model
    "Model": "Dense",           # Dense, CNN (images) or DeepSets, ParticleNet, Transformer (hit lists)
    **MODEL_DEFAULTS,
    "MultiTask": 0.0,           # point models: > 0 adds an energy head, this its loss weight (the classes' is 1)
    "EnergyLoss": "MRSE",       # the energy head's loss (dlkit.losses or Keras)
    # training
    "loss": "categorical_crossentropy",
    "optimizer": "SGD",
    "lr": 0.01,
    "decay": 0.0,
    "momentum": 0.0,
    "Epochs": 10,
    "BatchSize": 128,
    **RUN_DEFAULTS,
    # analysis
    "EnergyBins": [10.0, 510.0, 10],
    "AUCBootstrap": 200,        # bootstrap resamples per bin for the AUC-vs-energy intervals (0: none)
}
TYPES = {"DataDir": str, "RunningTime": (int, float), "ECALNorm": (str, int, float), "HCALNorm": (str, int, float)}
#: Allowed values of this experiment's own numeric entries (dlkit.config.RANGES has the shared ones).
RANGES = {"AUCBootstrap": at_least(0), "CNNFilters": at_least(1), "ECALNorm": above(0), "HCALNorm": above(0),
          "MultiTask": at_least(0), **POINT_RANGES}


def setup_data(config, test):
    from calodnn.data import setup_data

    return setup_data(config)


def make_wrapper(name, data, **kwargs):
    from calodnn.models import CaloClassifier

    return CaloClassifier(name, data.input_shapes, len(data.class_names), **kwargs)


def analysis(wrapper, data, config):
    from calodnn.analysis import classification_analysis

    return classification_analysis(wrapper, data, config)


def summary(wrapper, config):
    from calodnn.analysis import summary_table

    return summary_table(wrapper)


def check_config(config):
    """Entries a type check cannot validate, before any data is made or read."""
    from calodnn.models import MODEL_TYPES, POINT_MODELS
    from dlkit.config import ConfigError
    from dlkit.losses import get_loss
    from dlkit.models.config import check_entries

    if config["Model"] not in MODEL_TYPES:
        raise ConfigError(f"config entry 'Model' = {config['Model']!r}; expected one of {MODEL_TYPES}")
    if config["Model"] in POINT_MODELS:
        check_entries(config)
    if config["MultiTask"] and config["Model"] not in POINT_MODELS:
        raise ConfigError(f"config entry 'MultiTask': the energy head is built on the point models {POINT_MODELS}, "
                          f"not on {config['Model']!r} (whose images are normalised non-linearly)")
    try:
        get_loss(config["EnergyLoss"])
    except ValueError as exc:
        raise ConfigError(f"config entry 'EnergyLoss': {exc}") from None


def compile_model(wrapper):
    """dlkit's compile step; a multi-task network gets a loss per head, the energy's weighted by ``MultiTask``."""
    from dlkit.experiment import compile_model as compile_experiment_model
    from dlkit.losses import get_metric

    c = wrapper.Config
    if not c["MultiTask"]:
        return compile_experiment_model(wrapper)
    compile_experiment_model(wrapper, {"classes": ["accuracy"], "energy": [get_metric("MBE")]},
                             loss={"classes": c["loss"], "energy": c["EnergyLoss"]}, loss_weights={"classes": 1.0, "energy": float(c["MultiTask"])})



def prediction_inputs(config, metadata):
    """dlkit.export's recipe of a run (the hook :mod:`dlkit.export.run` looks for); see
    :func:`calodnn.data.prediction_recipe`."""
    from calodnn.data import prediction_recipe

    return prediction_recipe({**DEFAULTS, **dict(config)}, metadata, regression=False)


EXPERIMENT = Experiment("calodnn.ClassificationExperiment", __doc__, prefix="CaloDNN", defaults=DEFAULTS,
                        default_config=DEFAULT_CONFIG, types=TYPES, ranges=RANGES, test_overrides=TEST_OVERRIDES,
                        setup_data=setup_data, make_wrapper=make_wrapper, analysis=analysis, summary=summary,
                        compile=compile_model, check_config=check_config)
run, cli, main = EXPERIMENT.run, EXPERIMENT.cli, EXPERIMENT.main

if __name__ == "__main__":
    main()
