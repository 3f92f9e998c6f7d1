"""Clusterization of drift-chamber waveforms: a 1D CNN counts the primary clusters from the detected peak times.

    python -m clustercount.ClusterizationExperiment -s 0          # scan point 0: the two-step chain
    python -m clustercount.ClusterizationExperiment -s 0 --set PeakModel=TrainedModels/PeakFinding_...
    python -m clustercount.ClusterizationExperiment -s 0 --set PeakModel=derivative   # single step
    python -m clustercount.ClusterizationExperiment --Test        # a quick check: few waveforms, 2 epochs
    python -m clustercount.ClusterizationExperiment -C my_scan.py -s 3 --data /data/waveforms

Step 2 of seed 004's two-step reconstruction. The detected peak times of each waveform - by default the
peaks of an LSTM peak finder trained once on the same waveforms and cached (``PeakModel = "auto"``, see
:mod:`clustercount.chain`; the talk's pipeline), or of a given trained PeakFindingExperiment model, or
(``"derivative"``) the derivative algorithm's - encoded as counts in 1024 time bins (shape (1024, 1)), are
regressed to the true number of primary clusters (MAE by default) and compared with the derivative +
time-proximity baseline: the spread of ``N_pred - N_true`` (``NclResidualRMS`` vs ``BaselineResidualRMS``
and ``BaselineCalibratedRMS``). Then, with ``PID`` on, the pi/K separation power of dN/dx from the trained
counter against dE/dx over tracks of ``PIDCells`` cells, vs momentum (``PID_RatioMean``;
:mod:`clustercount.pid`).

With no data configured the first run simulates the default waveform dataset into the cache
(``$DLKIT_DATA/clustercount`` or ``~/.cache/dlkit/clustercount``) and derives the peak-time inputs from it.
Exit codes: 0 done, 2 a configuration/data error, 75 stopped by a signal after saving (resume with -p).
"""

from __future__ import annotations

from clustercount.common import TYPES as COMMON_TYPES
from clustercount.common import DATA_DEFAULTS, TRAINING_DEFAULTS, compile_model
from clustercount.configs import CONFIG_DIR
from dlkit.config import at_least
from dlkit.experiment import Experiment

DEFAULT_CONFIG = CONFIG_DIR / "CNN_Clusterization.py"

#: Every valid config entry with its default; config files, flags and scan points override these.
DEFAULTS = {
    **DATA_DEFAULTS,
    "TimeBins": 1024,           # time bins of the peak-time encoding over the window
    "PeakModel": "auto",        # whose peaks are encoded: "auto" (an LSTM peak finder trained once on the
                                # same waveforms, cached: the two-step chain), a trained PeakFindingExperiment
                                # model directory, or "derivative" (the derivative algorithm's peaks)
    "PeakModelPoint": 18,       # "auto": scan point of PeakFindingExperiment's default config to train
    "PeakModelSet": {},         # "auto": its config overrides, e.g. {"Epochs": 10}
    "PeakThreshold": None,      # its score cut; None: its ThresholdAtDerivFake (the derivative's fake rate)
    # model (and "Neurons", "activation", "Dropout" below)
    "Filters": 16,
    "KernelSize": 5,
    "ConvLayers": 3,
    "Pooling": "flatten",       # "flatten" (keeps drift-time positions) or "average"
    # training
    **TRAINING_DEFAULTS,
    "Neurons": 64,
    "loss": "mae",
    "optimizer": "RMSprop",
    "Epochs": 30,
    # particle identification (clustercount.pid)
    "PID": True,
    "PIDMomenta": [4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
    "PIDParticles": ["pi", "K"],
    "PIDTracks": 100,
    "PIDCells": 100,
    "PIDSeed": 1,
}
TYPES = {**COMMON_TYPES, "PeakModel": str, "PeakThreshold": (int, float), "PeakModelSet": dict}
#: --Test: a small simulated dataset, 2 epochs, a small PID study, output under TrainedModels.Test/.
TEST_OVERRIDES = {"SimWaveforms": 4000, "Epochs": 2, "PIDMomenta": [5.0, 20.0], "PIDTracks": 20, "PIDCells": 50}
#: Allowed values of this experiment's own numeric entries (dlkit.config.RANGES has the shared ones).
RANGES = {"TimeBins": at_least(1), "PeakModelPoint": at_least(0), "KernelSize": at_least(1),
          "ConvLayers": at_least(1), "Neurons": at_least(1), "PIDTracks": at_least(1), "PIDCells": at_least(1),
          "PIDSeed": at_least(0)}
#: Results shown in the summary (and worth a ScanAnalysis column).
RESULT_KEYS = ("NclResidualMean", "NclResidualRMS", "BaselineResidualRMS", "BaselineCalibratedRMS", "BaselineGapNs",
               "NclSpreadRatio", "NclSlope", "MeanTrueNcl", "MeanPredictedNcl", "MeanDetectedPeaks", "PID_RatioMean",
               "PID_RatioMin", "PID_TruthRatioMean", "PID_BaselineRatioMean")


def setup_data(config, test):
    """The waveforms, the peak finder ``PeakModel`` names (trained once for ``"auto"``, ``--Test``-sized in
    ``--Test``), then the clusterization data on its peaks."""
    from clustercount.chain import peak_model_dir
    from clustercount.data import resolve_waveforms, setup_cluster_data

    waveforms = resolve_waveforms(config)
    return setup_cluster_data(config, waveforms, peak_model_dir(config, waveforms, test))


def check_config(config):
    from clustercount.chain import check_peak_model

    check_peak_model(config)


def make_wrapper(name, data, **kwargs):
    from clustercount.data import input_shape
    from clustercount.models import ClusterCounterModel

    return ClusterCounterModel(name, input_shape(data.train, "times"), **kwargs)


def record_peak_finder(wrapper, data):
    wrapper.MetaData["PeakFinder"] = "derivative" if data.peak_model is None else str(data.peak_model)


def analysis(wrapper, data, config):
    """The cluster-count analysis, then (with ``PID``) the PID study with this counter."""
    from clustercount.analysis import clusterization_analysis

    results = clusterization_analysis(wrapper, data, config)
    if config["PID"]:
        results = results.merge(pid_analysis(wrapper, config, results.metadata["BaselineGapNs"], data.scorer))
    return results


def summary(wrapper, config):
    from clustercount.analysis import summary_table

    return summary_table(wrapper, RESULT_KEYS)


def pid_analysis(wrapper, config, baseline_gap_ns, scorer=None):
    """The PID study of :mod:`clustercount.pid` with this run's counter, peak finder and simulation settings."""
    from clustercount.data import DerivationOptions
    from clustercount.pid import PIDOptions, pid_dataset, pid_study
    from clustercount.simulate import DriftSimConfig

    options = PIDOptions.from_config(config)
    sim = DriftSimConfig.from_dict(config["SimConfig"] or {})
    samples = pid_dataset(sim, options, DerivationOptions.from_config(config), scorer=scorer)
    return pid_study(samples, options, lambda x: wrapper.Model.predict(x, batch_size=2048, verbose=0),
                     baseline_gap_ns, title=wrapper.Name)


EXPERIMENT = Experiment("clustercount.ClusterizationExperiment", __doc__, prefix="Clusterization", defaults=DEFAULTS,
                        default_config=DEFAULT_CONFIG, types=TYPES, ranges=RANGES, test_overrides=TEST_OVERRIDES,
                        setup_data=setup_data, make_wrapper=make_wrapper, analysis=analysis, summary=summary,
                        compile=lambda w: compile_model(w, ["mae", "mse"]), check_config=check_config,
                        after_build=record_peak_finder,
                        fit_kwargs={"verbose": 2})  # one line per epoch: batch logs stay readable
run, cli, main = EXPERIMENT.run, EXPERIMENT.cli, EXPERIMENT.main

if __name__ == "__main__":
    main()
