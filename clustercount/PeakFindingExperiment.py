"""Peak finding in drift-chamber waveforms: an LSTM classifies candidate peaks as ionisation signal or noise.

    python -m clustercount.PeakFindingExperiment -s 18         # scan point 18 (LSTM(32)): the main job
    python -m clustercount.PeakFindingExperiment --Test        # a quick check: few waveforms, 2 epochs
    python -m clustercount.PeakFindingExperiment -C my_scan.py -s 3 --data /data/waveforms

Step 1 of seed 004's two-step reconstruction. Candidates are the local maxima of each waveform above
``CandidateThreshold`` noise RMS (plus the derivative algorithm's peaks); the network sees 15 samples around
each, shape (15, 1), and is compared with the derivative algorithm on the same candidates: ``Peak_AUC`` and
the efficiency at the derivative's fake rate (``EffAtDerivFake`` vs ``DerivEfficiency``).

With no data configured the first run simulates the default waveform dataset into the cache
(``$DLKIT_DATA/clustercount`` or ``~/.cache/dlkit/clustercount``) and derives the candidate windows from it.
Exit codes: 0 done, 2 a configuration/data error, 75 stopped by a signal after saving (resume with -p).
"""

from __future__ import annotations

from clustercount.common import DATA_DEFAULTS, TRAINING_DEFAULTS, TYPES, compile_model
from clustercount.configs import CONFIG_DIR
from dlkit.config import above, at_least
from dlkit.experiment import Experiment

DEFAULT_CONFIG = CONFIG_DIR / "LSTM_PeakFinding.py"

#: Every valid config entry with its default; config files, flags and scan points override these.
DEFAULTS = {
    **DATA_DEFAULTS,
    "MaxEvents": 300000,        # candidates used in total (~70 per waveform); 0: all
    "CandidateThreshold": 2.0,  # local maxima above this many noise RMS are candidates
    "WindowBefore": 7,          # samples before the candidate peak (window = 7 + 1 + 7 = 15)
    "WindowAfter": 7,
    "MatchTolerance": 2.0,      # samples between a candidate and a true pulse peak for "signal"
    "WindowScale": 10.0,        # mV: windows are divided by it
    # model (and "Neurons", "activation", "Dropout" below)
    "LSTMLayers": 1,
    "DenseLayers": 1,
    # training
    **TRAINING_DEFAULTS,
    "loss": "binary_crossentropy",
}
#: --Test: a small simulated dataset, 60k candidates, 2 epochs, output under TrainedModels.Test/.
TEST_OVERRIDES = {"SimWaveforms": 4000, "MaxEvents": 60000, "Epochs": 2}
#: Allowed values of this experiment's own numeric entries (dlkit.config.RANGES has the shared ones).
RANGES = {"CandidateThreshold": above(0), "WindowBefore": at_least(0), "WindowAfter": at_least(0),
          "MatchTolerance": at_least(0), "WindowScale": above(0), "LSTMLayers": at_least(1), "DenseLayers": at_least(0),
          "Neurons": at_least(1), "SimWaveforms": at_least(1)}
#: Results shown in the summary (and worth a ScanAnalysis column).
RESULT_KEYS = ("Peak_AUC", "Primary_AUC", "Secondary_AUC", "DerivEfficiency", "DerivFakeRate", "EffAtDerivFake",
               "FakeAtDerivEff", "Accuracy", "NTestCandidates")


def setup_data(config, test):
    from clustercount.data import setup_peak_data

    return setup_peak_data(config)


def make_wrapper(name, data, **kwargs):
    from clustercount.data import input_shape
    from clustercount.models import PeakFinderModel

    return PeakFinderModel(name, input_shape(data.train, "window"), **kwargs)


def analysis(wrapper, data, config):
    from clustercount.analysis import peak_finding_analysis

    return peak_finding_analysis(wrapper, data, config)


def summary(wrapper, config):
    from clustercount.analysis import summary_table

    return summary_table(wrapper, RESULT_KEYS)


EXPERIMENT = Experiment("clustercount.PeakFindingExperiment", __doc__, prefix="PeakFinding", defaults=DEFAULTS,
                        default_config=DEFAULT_CONFIG, types=TYPES, ranges=RANGES, test_overrides=TEST_OVERRIDES,
                        setup_data=setup_data, make_wrapper=make_wrapper, analysis=analysis, summary=summary,
                        compile=lambda w: compile_model(w, ["accuracy"]), fit_kwargs={"verbose": 2})
run, cli, main = EXPERIMENT.run, EXPERIMENT.cli, EXPERIMENT.main

if __name__ == "__main__":
    main()
