"""clustercount analysis and PID arithmetic against independent references (scikit-learn, numpy)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from clustercount.analysis import peak_finding_metrics, residual_stats, tune_baseline
from clustercount.pid import PIDOptions, separation_power, truncated_mean


def test_peak_finding_metrics_against_sklearn():
    rng = np.random.default_rng(0)
    label = rng.random(20000) < 0.35
    scores = np.clip(rng.normal(np.where(label, 0.7, 0.3), 0.2), 0, 1)
    deriv = np.where(label, rng.random(20000) < 0.5, rng.random(20000) < 0.02)
    md, _ = peak_finding_metrics(label.astype(int), scores, deriv)
    assert md["Peak_AUC"] == pytest.approx(roc_auc_score(label, scores), abs=1e-12)
    assert md["DerivEfficiency"] == pytest.approx(deriv[label].mean())
    assert md["DerivFakeRate"] == pytest.approx(deriv[~label].mean())
    fpr, tpr, _ = roc_curve(label, scores)
    assert md["EffAtDerivFake"] == pytest.approx(np.interp(md["DerivFakeRate"], fpr, tpr))
    # The cut reproduces (about) the derivative's fake rate and the quoted efficiency.
    cut = md["ThresholdAtDerivFake"]
    assert (scores[~label] >= cut).mean() <= md["DerivFakeRate"] + 1e-3
    assert abs((scores[label] >= cut).mean() - md["EffAtDerivFake"]) < 0.01


def test_tune_baseline_finds_the_true_gap_and_calibration():
    rng = np.random.default_rng(1)
    n_true = rng.poisson(25, 5000).astype(float)
    gaps = np.arange(0.0, 10.0, 1.0)
    # Column 4 is an unbiased count with small noise; column 7 is 0.5 N + 3 with smaller noise.
    tp = np.stack([n_true + rng.normal(0, 6 - abs(j - 4) * 0.3 + 2, 5000) for j in range(10)], axis=1)
    tp[:, 4] = n_true + rng.normal(0, 1.0, 5000)
    tp[:, 7] = 0.5 * n_true + 3 + rng.normal(0, 0.3, 5000)
    base = tune_baseline(tp, n_true, gaps)
    assert base["gap"] == 4.0 and base["calibrated_gap"] == 7.0
    b, a = np.polyfit(tp[:, 7], n_true, 1)
    assert base["a"] == pytest.approx(a) and base["b"] == pytest.approx(b)


def test_residual_stats():
    pred, true = np.array([1.0, 2.0, 4.0]), np.array([1.0, 1.0, 1.0])
    s = residual_stats(pred, true)
    assert s["mean"] == pytest.approx(4 / 3) and s["std"] == pytest.approx(np.std([0, 1, 3]))
    assert s["rms"] == pytest.approx(np.sqrt(10 / 3)) and s["mae"] == pytest.approx(4 / 3)


def test_separation_power_and_truncated_mean():
    rng = np.random.default_rng(2)
    a, b = rng.normal(10, 1, 100000), rng.normal(13, 2, 100000)
    assert separation_power(a, b) == pytest.approx(3 / 1.5, rel=0.01)
    x = rng.random((50, 100))
    np.testing.assert_allclose(truncated_mean(x, 0.7), np.sort(x, axis=1)[:, :70].mean(axis=1))
    np.testing.assert_allclose(truncated_mean(x, 1.0), x.mean(axis=1))


def test_pid_options_validation():
    assert PIDOptions(momenta=[10, 20]).momenta == (10.0, 20.0)
    with pytest.raises(ValueError, match="two of"):
        PIDOptions(particles=("pi", "kaon"))
    with pytest.raises(ValueError, match="positive"):
        PIDOptions(momenta=(0,))
