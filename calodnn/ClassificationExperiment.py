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

from calodnn.configs import CONFIG_DIR, DATA_DEFAULTS, MODEL_DEFAULTS, READER_DEFAULTS, TEST_OVERRIDES
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
    "Model": "Dense",
    **MODEL_DEFAULTS,
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
RANGES = {"AUCBootstrap": at_least(0), "CNNFilters": at_least(1), "ECALNorm": above(0), "HCALNorm": above(0)}


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


EXPERIMENT = Experiment("calodnn.ClassificationExperiment", __doc__, prefix="CaloDNN", defaults=DEFAULTS,
                        default_config=DEFAULT_CONFIG, types=TYPES, ranges=RANGES, test_overrides=TEST_OVERRIDES,
                        setup_data=setup_data, make_wrapper=make_wrapper, analysis=analysis, summary=summary)
run, cli, main = EXPERIMENT.run, EXPERIMENT.cli, EXPERIMENT.main

if __name__ == "__main__":
    main()
