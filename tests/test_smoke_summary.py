"""A ``--Test`` run's summary says it is a smoke test; small-sample numbers carry intervals or say "n too small"."""

import contextlib
import math
from types import SimpleNamespace

import keras
import numpy as np
from scipy.stats import beta
from sklearn.metrics import roc_auc_score

from dlkit import Experiment, ModelWrapper
from dlkit.analysis import AnalysisResults
from dlkit.experiment import RUN_DEFAULTS
from lartpcdnn.analysis import efficiency_table, summary_table


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch):
        super().__init__()
        self.x, self.y, self.batch = x, y, batch

    def __len__(self):
        return math.ceil(len(self.x) / self.batch)

    def __getitem__(self, i):
        return self.x[i * self.batch:(i + 1) * self.batch], self.y[i * self.batch:(i + 1) * self.batch]


class _Dense(ModelWrapper):
    def Build(self):
        inputs = keras.Input((4,))
        self.Model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))


def _experiment():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype("float32")
    y = keras.utils.to_categorical((x[:, 0] > 0).astype(int), 2)

    @contextlib.contextmanager
    def setup_data(config, test):
        n = config["Events"]
        yield SimpleNamespace(train=_Batches(x[:n], y[:n], 16), validation=None, test=(x[n:], y[n:]))

    def analysis(wrapper, data, config):
        tx, ty = data.test
        scores = wrapper.Model.predict(tx, verbose=0)
        return AnalysisResults({"Toy_AUC": float(roc_auc_score(ty[:, 1], scores[:, 1])), "NTestEvents": len(ty)})

    return Experiment("toy_smoke", "A toy experiment.", prefix="Toy", defaults={"Epochs": 3, "Events": 64,
                      "optimizer": "Adam", "lr": 0.01, "loss": "categorical_crossentropy", **RUN_DEFAULTS},
                      test_overrides={"Epochs": 1, "Events": 80}, setup_data=setup_data,
                      make_wrapper=lambda name, data, **kw: _Dense(name, **kw), analysis=analysis,
                      summary=lambda wrapper, config: f"Toy_AUC {wrapper.MetaData['Toy_AUC']:.3f}")


def test_a_test_run_summary_says_it_is_a_smoke_test_and_a_full_run_does_not(tmp_path):
    experiment = _experiment()
    smoke = experiment.run(Test=True, OutputBase=str(tmp_path / "TM"))
    assert smoke.ok and smoke.summary.startswith("SMOKE TEST (--Test): 1 epoch(s) and 16 test events.")
    assert "mean nothing physically" in " ".join(smoke.summary.split())
    assert smoke.summary.rstrip().endswith(f"Toy_AUC {smoke.metrics['Toy_AUC']:.3f}")  # the experiment's own
    full = experiment.run(OutputBase=str(tmp_path / "TM"))
    assert full.ok and full.summary == f"Toy_AUC {full.metrics['Toy_AUC']:.3f}"


def _scores(n_per_class, n_classes, seed):
    """Softmax-like scores that separate the classes a little."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(n_classes), n_per_class)
    logits = rng.normal(size=(truth.size, n_classes)) + 1.0 * np.eye(n_classes)[truth]
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return keras.utils.to_categorical(truth, n_classes), scores, truth


def _wrapper(md):
    return SimpleNamespace(MetaData=md)


def _hanley_mcneil_sigma(auc, n_s, n_b):
    """The AUC's standard error of Hanley & McNeil (1982), an independent scale for the bootstrap interval."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    return math.sqrt((auc * (1 - auc) + (n_s - 1) * (q1 - auc * auc) + (n_b - 1) * (q2 - auc * auc)) / (n_s * n_b))


def test_lartpcdnn_summary_on_8_events_per_class_says_n_too_small_and_gives_auc_intervals():
    names = [f"c{i}" for i in range(7)]
    y, scores, truth = _scores(8, 7, seed=1)
    _, _, md = efficiency_table(y, scores, names)
    md["NTestEvents"] = len(truth)
    text = summary_table(_wrapper(md))
    rows = {line.split()[0]: line for line in text.splitlines() if line.split() and line.split()[0] in names}
    assert len(rows) == 7
    for i, name in enumerate(names):
        assert "n too small (48 background events < 100)" in rows[name]  # 1 % of 48 events is no working point
        auc = roc_auc_score(truth == i, scores[:, i])
        lower, upper = md[f"{name}_AUC_lower"], md[f"{name}_AUC_upper"]
        assert f"{auc:.3f} [{lower:.3f}, {upper:.3f}]" in rows[name]
        assert lower <= auc <= upper
        # a 68 % interval is about +-1 sigma: within a factor 2 of Hanley-McNeil's width
        ratio = (upper - lower) / (2 * _hanley_mcneil_sigma(auc, 8, 48))
        assert 0.5 < ratio < 2.0, (name, ratio)


def test_lartpcdnn_summary_on_a_large_sample_shows_the_clopper_pearson_interval():
    names = ["a", "b", "c"]
    y, scores, truth = _scores(200, 3, seed=2)
    _, _, md = efficiency_table(y, scores, names, n_boot=50)
    md["NTestEvents"] = len(truth)
    text = summary_table(_wrapper(md))
    assert "n too small" not in text
    for i, name in enumerate(names):
        background = np.sort(scores[truth != i, i])[::-1]
        threshold = background[int(0.01 * background.size)]  # at most 1 % of the 400 background events above
        k = int(np.count_nonzero(scores[truth == i, i] > threshold))
        lower = beta.ppf((1 - 0.6827) / 2, k, 200 - k + 1) if k else 0.0
        upper = beta.ppf((1 + 0.6827) / 2, k + 1, 200 - k) if k < 200 else 1.0
        assert md[f"{name}_Eff1pctFake"] == k / 200
        line = next(li for li in text.splitlines() if li.split() and li.split()[0] == name)
        assert f"{k / 200:.3f} [{lower:.3f}, {upper:.3f}]" in line
