"""Energy regression in the LCD calorimeter from ECAL and HCAL cells, per particle type or mixed.

    python -m calodnn.RegressionExperiment -s 6                      # scan point 6: Depth 1, Width 64, MRSE
    python -m calodnn.RegressionExperiment --Test                    # a quick check: few events, 2 epochs
    python -m calodnn.RegressionExperiment -s 3 --set 'Particles=["Gamma"]'   # photons only, Gaussian NLL
    python -m calodnn.RegressionExperiment --set Model=Linear        # the "simple calibration" baseline
    python -m calodnn.RegressionExperiment -C my_scan.py -s 3 --data /data/LCD/V2/MLDataset --set ECALNorm=100

Models (config ``Model``): ``Linear`` (sum of cells x fitted scale), ``PerChannel`` (CALICE: one weight per
cell), ``LayerMLP`` (BHCal: MLP on per-layer sums), ``Dense`` (DNN on the cells, default), ``CNN``, and the point
models ``DeepSets``, ``ParticleNet``, ``Transformer`` on the hit lists (``--set Model=ParticleNet``). The loss
is named by config ``loss``: MSE, MAE, MSRE, MRSE, GaussianNLL (2 outputs: mu and log sigma^2), ResolutionChi2
or any Keras loss (the default scan sets it per point, so choose it with -s or a config file). With no data
configured the first run simulates the regression dataset (raw visible energies, see
:mod:`calodnn.regression`) into the cache. The analysis fits sigma/E = a/sqrt(E) (+) b/E (+) c per particle
and stores ``<Particle>_Resolution_a`` ... in the metadata (``python -m dlkit.ScanAnalysis``).
Exit codes: 0 done, 2 a configuration/data error, 75 stopped by a signal after saving (resume with -p).
"""

from __future__ import annotations

from calodnn.configs import (CONFIG_DIR, DATA_DEFAULTS, MODEL_DEFAULTS, POINT_RANGES, READER_DEFAULTS,
                             REGRESSION_SIM_CONFIG, TEST_OVERRIDES)
from dlkit.config import above, at_least
from dlkit.experiment import RUN_DEFAULTS, Experiment
from dlkit.experiment import compile_model as compile_experiment_model

DEFAULT_CONFIG = CONFIG_DIR / "Regression.py"

#: Every valid config entry with its default; config files, flags and scan points override these.
DEFAULTS = {
    **DATA_DEFAULTS,  # Particles: trained together (mixed), analysed one by one
    "SimConfig": dict(REGRESSION_SIM_CONFIG),  # CaloSimConfig overrides of the simulated dataset
    "ECALNorm": 3.53,           # cells / norm: visible GeV / (thin-layer sampling fraction x EnergyScale)
    "HCALNorm": 2.7,            # (linear norms keep calibrations linear; for calibrated data use EnergyScale)
    "EnergyScale": 100.0,       # the network works in units of this many GeV
    "Augment": False,           # flips and rotations in the readers: true (all 8), "flips" or "rotations"
    **READER_DEFAULTS,
    # model
    "Model": "Dense",           # Linear, PerChannel, LayerMLP, Dense, CNN or a point model (calodnn.calibration)
    **MODEL_DEFAULTS,
    # training
    "loss": "MRSE",
    "optimizer": "Adam",
    "lr": 0.001,
    "decay": 0.0,
    "momentum": 0.0,
    "Epochs": 10,
    "BatchSize": 128,
    **RUN_DEFAULTS,
    # analysis
    "EnergyBins": [10.0, 510.0, 10],
}
TYPES = {"DataDir": str, "RunningTime": (int, float), "ECALNorm": (str, int, float), "HCALNorm": (str, int, float),
         "Augment": (bool, str)}
#: Allowed values of this experiment's own numeric entries (dlkit.config.RANGES has the shared ones).
RANGES = {"CNNFilters": at_least(1), "ECALNorm": above(0), "HCALNorm": above(0), "EnergyScale": above(0),
          **POINT_RANGES}


def setup_data(config, test):
    from calodnn.regression import setup_regression_data

    return setup_regression_data(config)


def make_wrapper(name, data, **kwargs):
    from calodnn.calibration import CaloRegressor

    return CaloRegressor(name, data.input_shapes, **kwargs)


def analysis(wrapper, data, config):
    from calodnn.regression import regression_analysis

    return regression_analysis(wrapper, data, config)


def summary(wrapper, config):
    from calodnn.regression import regression_summary

    return regression_summary(wrapper)


def check_config(config):
    """Entries a type check cannot validate, before any data is made or read."""
    from calodnn.calibration import REGRESSION_MODELS
    from calodnn.models import POINT_MODELS
    from dlkit.models.config import check_entries
    from dlkit.config import ConfigError
    from dlkit.losses import get_loss

    if config["Model"] not in REGRESSION_MODELS:
        raise ConfigError(f"config entry 'Model' = {config['Model']!r}; expected one of {REGRESSION_MODELS}")
    if config["Model"] in POINT_MODELS:
        check_entries(config)
    try:
        get_loss(config["loss"])
    except ValueError as exc:
        raise ConfigError(f"config entry 'loss': {exc}") from None
    if config["Augment"] not in (False, True, "flips", "rotations"):
        raise ConfigError(f"config entry 'Augment' = {config['Augment']!r}; expected false, true, 'flips' or "
                          "'rotations'")


def compile_model(wrapper):
    """dlkit's compile step with the mean-bias metric (not for a (mu, log sigma^2) Gaussian-NLL output)."""
    from dlkit.losses import get_metric

    compile_experiment_model(wrapper, [] if wrapper.Model.outputs[0].shape[-1] == 2 else [get_metric("MBE")])



def prediction_inputs(config, metadata):
    """dlkit.export's recipe of a run (the hook :mod:`dlkit.export.run` looks for); see
    :func:`calodnn.data.prediction_recipe`."""
    from calodnn.data import prediction_recipe

    return prediction_recipe({**DEFAULTS, **dict(config)}, metadata, regression=True)


EXPERIMENT = Experiment("calodnn.RegressionExperiment", __doc__, prefix="CaloReg", defaults=DEFAULTS,
                        default_config=DEFAULT_CONFIG, types=TYPES, ranges=RANGES, test_overrides=TEST_OVERRIDES,
                        setup_data=setup_data, make_wrapper=make_wrapper, analysis=analysis, summary=summary,
                        compile=compile_model, check_config=check_config)
run, cli, main = EXPERIMENT.run, EXPERIMENT.cli, EXPERIMENT.main

if __name__ == "__main__":
    main()
