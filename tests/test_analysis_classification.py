"""dlkit.analysis classification functions against scikit-learn and numpy references."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dlkit.analysis import (bin_data_index, binned_auc, confusion, multiclass_roc, plot_binned, plot_confusion,
                            plot_history, plot_roc, rejection_at_efficiency, save_figure)

NAMES = ["Ele", "Gamma", "Pi0", "ChPi"]


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 4, 4000)
    scores = rng.random((4000, 4))
    scores[np.arange(4000), truth] += rng.uniform(0, 1, 4000)
    scores /= scores.sum(axis=1, keepdims=True)
    energy = rng.uniform(10, 510, 4000)
    return truth, np.eye(4)[truth], scores, energy


def test_auc_equals_sklearn(sample):
    truth, onehot, scores, _ = sample
    for labels in (truth, onehot):
        curves, metadata = multiclass_roc(labels, scores, NAMES)
        for i, name in enumerate(NAMES):
            assert metadata[f"{name}_AUC"] == pytest.approx(roc_auc_score(truth == i, scores[:, i]), abs=1e-12)
            assert curves[name]["auc"] == metadata[f"{name}_AUC"]


def test_missing_class_gives_nan(sample):
    truth, _, scores, _ = sample
    keep = truth != 2
    _, metadata = multiclass_roc(truth[keep], scores[keep], NAMES)
    assert np.isnan(metadata["Pi0_AUC"]) and not np.isnan(metadata["Ele_AUC"])


def test_bin_data_index_and_binned_auc(sample):
    truth, _, scores, energy = sample
    indices, edges = bin_data_index(energy, 10, 510, 5)
    assert np.allclose(edges, [10, 110, 210, 310, 410, 510])
    assert sum(len(i) for i in indices) == len(energy)
    for b, idx in enumerate(indices):
        assert np.all((energy[idx] >= edges[b]) & (energy[idx] < edges[b + 1]))
    frame = binned_auc(truth, scores, energy, edges, NAMES)
    assert list(frame.n_events) == [len(i) for i in indices]
    for b, idx in enumerate(indices):
        assert frame["Gamma"].iloc[b] == pytest.approx(roc_auc_score(truth[idx] == 1, scores[idx, 1]))


def test_rejection_at_efficiency(sample):
    truth, _, scores, _ = sample
    rejection = rejection_at_efficiency(truth, scores, signal=0, efficiency=0.8)
    # numpy reference: threshold at the 20 % quantile of signal scores, count background above it
    threshold = np.quantile(scores[truth == 0, 0], 0.2)
    fake = np.mean(scores[truth != 0, 0] >= threshold)
    assert rejection == pytest.approx(1 / fake, rel=0.03)


def test_confusion_rows_sum_to_one(sample):
    truth, onehot, scores, _ = sample
    frame = confusion(onehot, scores, NAMES)
    assert list(frame.index) == NAMES and np.allclose(frame.sum(axis=1), 1)
    predicted = scores.argmax(1)
    assert frame.loc["Pi0", "Gamma"] == pytest.approx(np.mean(predicted[truth == 2] == 1))


def test_plots_render_headless(sample, tmp_path):
    truth, _, scores, energy = sample
    curves, _ = multiclass_roc(truth, scores, NAMES)
    figures = {
        "roc": plot_roc(curves), "rej": plot_roc(curves, log_rejection=True),
        "auc_e": plot_binned(binned_auc(truth, scores, energy, np.linspace(10, 510, 6), NAMES)),
        "cm": plot_confusion(confusion(truth, scores, NAMES)),
        "hist": plot_history({"loss": [1.0, 0.5, None], "val_loss": [1.1, 0.7, 0.6]}, boundaries=[2]),
    }
    for stem, fig in figures.items():
        for path in save_figure(fig, tmp_path, stem):
            assert path.stat().st_size > 1000


def test_dlkit_multiclassification_analysis(sample, tmp_path):
    from dlkit.analysis import BinMultiClassificationAnalysis, MultiClassificationAnalysis

    truth, onehot, scores, energy = sample

    class FakeWrapper:  # ModelWrapper's duck type: .Model.predict and .OutDir
        OutDir = tmp_path

        class Model:
            @staticmethod
            def predict(x, batch_size=None, verbose=0):
                return scores[x]

    index_map = {"Ele": 0, "Gamma": 1, "Pi0": 2, "ChPi": 3}  # name -> index is inverted, as in DLKit
    result, metadata = MultiClassificationAnalysis(FakeWrapper(), np.arange(len(truth)), onehot, 512,
                                                   PDFFileName="ROC", IndexMap=index_map)
    assert np.array_equal(result, scores)
    for i, name in enumerate(NAMES):
        assert metadata[f"{name}_AUC"] == pytest.approx(roc_auc_score(truth == i, scores[:, i]), abs=1e-12)
    assert (tmp_path / "ROC.pdf").stat().st_size > 1000 and (tmp_path / "ROC.png").exists()
    _, by_scores = MultiClassificationAnalysis(scores, Test_Y=truth, IndexMap=dict(enumerate(NAMES)))
    assert by_scores == metadata

    indices, edges = bin_data_index(energy, 10, 510, 5)
    aucs = BinMultiClassificationAnalysis(None, onehot, edges, indices, result=scores, IndexMap=index_map)
    frame = binned_auc(truth, scores, energy, edges, NAMES)
    assert list(aucs) == [f"{n}_AUC" for n in NAMES]
    for name in NAMES:
        assert aucs[f"{name}_AUC"] == pytest.approx(list(frame[name]))


def test_pairwise_scores_two_class_discriminant():
    from dlkit.analysis import pairwise_scores

    y = np.array([0, 1, 2, 1, 0])
    scores = np.array([[0.6, 0.2, 0.2], [0.1, 0.3, 0.6], [0.2, 0.2, 0.6], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    labels, disc, keep = pairwise_scores(y, scores, signal=0, background=1)
    assert keep.tolist() == [True, True, False, True, True]
    assert labels.tolist() == [1, 0, 0, 1]
    np.testing.assert_allclose(disc, [0.75, 0.25, 0.5, 0.0])  # p0 / (p0 + p1); 0/0 gives 0, not NaN


def test_analysis_results_save_and_merge(tmp_path):
    import pandas as pd
    from matplotlib.figure import Figure

    from dlkit.analysis import AnalysisResults

    fig = Figure()
    fig.add_subplot().plot([0, 1])
    a = AnalysisResults({"Ele_AUC": 0.9}, {"Confusion": pd.DataFrame({"x": [1, 2]})})
    merged = a.merge(AnalysisResults({"Ele_AUC": 0.95, "Accuracy": 0.8}, figures={"ROC": fig}))
    assert merged.metadata == {"Ele_AUC": 0.95, "Accuracy": 0.8}
    paths = merged.save(tmp_path)
    assert sorted(p.name for p in paths) == ["Confusion.csv", "ROC.pdf", "ROC.png"]
    assert pd.read_csv(tmp_path / "Confusion.csv", index_col=0)["x"].tolist() == [1, 2]
