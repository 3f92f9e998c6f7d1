"""Uncertainties of the binned analysis numbers (issue 19 item 1): Clopper-Pearson efficiency intervals,
bootstrap AUC intervals, fit-parameter errors and the "at bound" flag. All seeded; a few seconds in all."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta, binom, binomtest, norm
from sklearn.metrics import roc_auc_score

from dlkit.analysis import (
    ONE_SIGMA,
    binned_auc,
    binned_value_columns,
    bootstrap_auc,
    clopper_pearson,
    fit_resolution,
    plot_binned,
    plot_resolution,
    resolution_fit_table,
    resolution_function,
    resolution_vs_energy,
)
from dlkit.analysis.regression import fit_label as _fit_label

# -- Clopper-Pearson --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cl", [ONE_SIGMA, 0.9, 0.95])
def test_clopper_pearson_equals_scipy(cl):
    alpha = 1 - cl
    for n in (1, 2, 7, 50, 1000):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            lower, upper = clopper_pearson(k, n, cl)
            # scipy's own exact binomial interval, an independent implementation
            ci = binomtest(k, n).proportion_ci(confidence_level=cl, method="exact")
            assert lower == pytest.approx(ci.low, abs=1e-10) and upper == pytest.approx(ci.high, abs=1e-10)
            # and the defining tail probabilities: P(K >= k | lower) = P(K <= k | upper) = alpha / 2
            if 0 < k:
                assert binom.sf(k - 1, n, lower) == pytest.approx(alpha / 2, rel=1e-6)
                assert lower == pytest.approx(beta.ppf(alpha / 2, k, n - k + 1), rel=1e-12)
            if k < n:
                assert binom.cdf(k, n, upper) == pytest.approx(alpha / 2, rel=1e-6)


def test_clopper_pearson_edges_and_arrays():
    alpha = 1 - ONE_SIGMA
    for n in (1, 10, 100):
        lower, upper = clopper_pearson(0, n)
        assert lower == 0.0 and upper == pytest.approx(1 - (alpha / 2) ** (1 / n))
        lower, upper = clopper_pearson(n, n)
        assert upper == 1.0 and lower == pytest.approx((alpha / 2) ** (1 / n))
    assert all(np.isnan(clopper_pearson(0, 0)))
    k, n = np.array([0, 3, 10, 0]), np.array([10, 10, 10, 0])
    lower, upper = clopper_pearson(k, n)
    assert lower.shape == (4,) and lower[0] == 0 and upper[2] == 1 and np.isnan(lower[3])
    assert lower[1] == pytest.approx(clopper_pearson(3, 10)[0]) and lower[1] < 0.3 < upper[1]
    with pytest.raises(ValueError, match="0 <= k <= n"):
        clopper_pearson(11, 10)
    with pytest.raises(ValueError, match="confidence level"):
        clopper_pearson(1, 10, cl=68.3)


@pytest.mark.parametrize("n", [10, 50, 200])
def test_clopper_pearson_coverage_on_simulated_bernoulli(n):
    """Many simulated experiments of n Bernoulli trials: the 68.3 % interval covers p in >= ~68 % of them
    (it is conservative; the naive sqrt(eff(1-eff)/n) interval undercovers near 0 and 1)."""
    rng = np.random.default_rng(19)
    experiments = 4000
    for p in (0.02, 0.1, 0.5, 0.9, 0.98):
        k = (rng.random((experiments, n)) < p).sum(axis=1)
        lower, upper = clopper_pearson(k, np.full(experiments, n))
        coverage = np.mean((lower <= p) & (p <= upper))
        assert coverage >= ONE_SIGMA - 0.02, (n, p, coverage)  # 0.02: ~3 sigma of the simulation
        if n == 10 and p in (0.02, 0.98):
            eff = k / n
            wald = np.sqrt(eff * (1 - eff) / n)
            assert np.mean(np.abs(eff - p) <= wald) < 0.3  # what the flat binomial error does at the edge


# -- bootstrap AUC ----------------------------------------------------------------------------------------


def _gaussian_sample(rng, n_signal, n_background, d):
    scores = np.r_[rng.normal(d, 1, n_signal), rng.normal(0, 1, n_background)]
    return np.r_[np.ones(n_signal, bool), np.zeros(n_background, bool)], scores


def test_bootstrap_auc_covers_the_analytic_auc_and_shrinks_with_n():
    """Signal N(d, 1) vs background N(0, 1): AUC = Phi(d / sqrt 2)."""
    d = 1.0
    truth = norm.cdf(d / np.sqrt(2))
    rng = np.random.default_rng(7)
    widths = {}
    for n, experiments in ((50, 300), (500, 100)):
        covered, width, aucs = [], [], []
        for experiment in range(experiments):
            labels, scores = _gaussian_sample(rng, n, n, d)
            lower, upper = bootstrap_auc(labels, scores, n_boot=100, seed=experiment)
            aucs.append(roc_auc_score(labels, scores))
            covered.append(lower <= truth <= upper)
            width.append(upper - lower)
        widths[n] = np.mean(width)
        # 68 % within ~3 sigma of the experiments (the percentile bootstrap undercovers a little at small n)
        assert 0.55 <= np.mean(covered) <= 0.82, (n, np.mean(covered))
        # the interval's half width estimates the spread of the AUC over repeated experiments
        assert widths[n] / 2 == pytest.approx(np.std(aucs), rel=0.25)
    assert 2.5 < widths[50] / widths[500] < 4.0  # ~ sqrt(10)


def test_bootstrap_auc_seeded_ties_and_degenerate_cases():
    rng = np.random.default_rng(1)
    labels = rng.random(300) < 0.4
    scores = rng.integers(0, 4, 300) + labels  # heavy ties
    auc = roc_auc_score(labels, scores)
    first = bootstrap_auc(labels, scores, n_boot=300, seed=5)
    assert first == bootstrap_auc(labels, scores, n_boot=300, seed=5)  # seeded: reproducible
    assert first != bootstrap_auc(labels, scores, n_boot=300, seed=6)
    assert first[0] < auc < first[1]
    # evaluated in chunks of resamples (bounded memory): other draws, the same interval within its noise
    assert bootstrap_auc(labels, scores, n_boot=300, seed=5, max_values=1000) == pytest.approx(first, abs=0.01)
    assert all(np.isnan(bootstrap_auc(labels, scores, n_boot=0)))
    assert all(np.isnan(bootstrap_auc(np.ones(5, bool), np.arange(5.0))))
    perfect = bootstrap_auc(labels, labels.astype(float), n_boot=50)
    assert perfect == (1.0, 1.0)


def test_binned_auc_columns_and_plot():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, 3000)
    scores = rng.random((3000, 3))
    scores[np.arange(3000), truth] += rng.uniform(0, 1, 3000)
    energy = rng.uniform(0, 100, 3000)
    edges = np.linspace(0, 100, 5)
    names = ["a", "b", "c"]
    frame = binned_auc(truth, scores, energy, edges, names, n_boot=100)
    for i, name in enumerate(names):
        assert {f"{name}_lower", f"{name}_upper", f"n_{name}"} <= set(frame.columns)
        assert np.all(frame[f"{name}_lower"] < frame[name]) and np.all(frame[name] < frame[f"{name}_upper"])
        for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
            sel = (energy >= lo) & (energy < hi)
            assert frame[f"n_{name}"].iloc[b] == np.sum(truth[sel] == i)
            assert frame[name].iloc[b] == pytest.approx(roc_auc_score(truth[sel] == i, scores[sel, i]))
    again = binned_auc(truth, scores, energy, edges, names, n_boot=100)
    pd.testing.assert_frame_equal(frame, again)  # seeded
    assert frame.a_upper.sub(frame.a_lower).max() < 0.1
    assert binned_value_columns(frame) == names
    off = binned_auc(truth, scores, energy, edges, names, n_boot=0)
    assert off["a_lower"].isna().all() and not off["a"].isna().any()

    fig = plot_binned(frame)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == names
    assert len(ax.containers) == 3  # one error-bar container per class
    plot_binned(off)  # NaN intervals draw no bars, no error


# -- efficiencies in the experiments' tables --------------------------------------------------------------


def test_lartpcdnn_efficiency_tables_carry_clopper_pearson_intervals():
    from lartpcdnn.analysis import binned_efficiency, efficiency_at_fake_rate, efficiency_table

    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 2000)
    scores = rng.dirichlet(np.ones(3), 2000)
    scores[np.arange(2000), y] += 0.5
    energy = rng.uniform(0, 1, 2000)
    names = ["p", "q", "r"]
    table, _, _ = efficiency_table(y, scores, names, fake_rate=0.05)
    for i, name in enumerate(names):
        eff = efficiency_at_fake_rate(scores[y == i, i], scores[y != i, i], 0.05)
        k, n = round(eff * np.sum(y == i)), np.sum(y == i)
        assert (table.loc[name, "efficiency lower"], table.loc[name, "efficiency upper"]) == pytest.approx(
            clopper_pearson(k, n))
    binned = binned_efficiency(y, scores, energy, [0, 0.5, 1.0], names, fake_rate=0.05)
    for b, (lo, hi) in enumerate(((0, 0.5), (0.5, 1.0))):
        sel = (energy >= lo) & (energy < hi)
        for i, name in enumerate(names):
            sig = sel & (y == i)
            threshold = np.sort(scores[sel & (y != i), i])[::-1][int(np.floor(0.05 * np.sum(sel & (y != i))))]
            k = int(np.sum(scores[sig, i] > threshold))
            assert binned[f"n_{name}"].iloc[b] == sig.sum() and binned[name].iloc[b] == k / sig.sum()
            assert (binned[f"{name}_lower"].iloc[b], binned[f"{name}_upper"].iloc[b]) == pytest.approx(
                clopper_pearson(k, int(sig.sum())))
    assert len(plot_binned(binned, ylabel="efficiency").axes[0].containers) == 3


def test_clustercount_efficiency_vs_amplitude_intervals():
    from clustercount.analysis import _efficiency_figure, _efficiency_vs_amplitude

    rng = np.random.default_rng(5)
    label = (rng.random(5000) < 0.3).astype(int)
    amplitude = rng.uniform(0, 20, 5000)
    selected = {"LSTM": rng.random(5000) < 0.8, "derivative": rng.random(5000) < 0.6}
    table = _efficiency_vs_amplitude(label, amplitude, selected, np.array([0, 5, 10, 20, 40.0]))
    inside = (amplitude >= 5) & (amplitude < 10)
    for name, sel in selected.items():
        for kind, events in (("eff", inside & (label == 1)), ("fake", inside & (label == 0))):
            k, n = int(sel[events].sum()), int(events.sum())
            row = table.iloc[1]
            assert row[f"{name}_{kind}"] == pytest.approx(k / n)
            assert (row[f"{name}_{kind}_lower"], row[f"{name}_{kind}_upper"]) == pytest.approx(clopper_pearson(k, n))
    assert np.isnan(table["LSTM_eff_lower"].iloc[3])  # an empty bin
    _efficiency_figure(table, "t")


# -- resolution fits: errors and "at bound" ----------------------------------------------------------------


def test_resolution_fit_at_bound_is_flagged_in_table_and_legend():
    energy = np.geomspace(5, 500, 20)
    y = resolution_function(energy, 0.1, 0.0, 0.02)  # no noise term: b ends at its bound 0
    fit = fit_resolution(energy, y, 0.02 * y)
    assert fit["b_at_bound"] and np.isnan(fit["b_err"])
    assert not fit["a_at_bound"] and not fit["c_at_bound"] and fit["a_err"] > 0 and fit["c_err"] > 0
    label = _fit_label(fit)
    assert "b=0 (at bound)" in label and "a=0.1\u00b1" in label
    full = fit_resolution(energy, resolution_function(energy, 0.1, 0.5, 0.02), 0.02 * y)
    assert not any(full[f"{p}_at_bound"] for p in "abc") and "at bound" not in _fit_label(full)
    table = resolution_fit_table({"Ele": fit, "Gamma": full})
    assert table.loc["Ele", "b_at_bound"] and not table.loc["Gamma", "b_at_bound"]
    assert "at bound" in table.loc["Ele", "fit"] and np.isfinite(table.loc["Gamma", "b_err"])
    fixed = fit_resolution(energy, y, 0.02 * y, fix={"b": 0.0})
    assert not fixed["b_at_bound"] and fixed["b_err"] == 0  # fixed is not "at bound"
    # numerically at the bound: a tiny value is flagged, not printed as 1e-18
    assert _fit_label({"a": 0.1, "a_err": 0.01, "b": 1e-18, "b_err": np.nan, "b_at_bound": True,
                       "c": 0.02, "c_err": 0.001}).count("at bound") == 1

    rng = np.random.default_rng(6)
    e_true = rng.uniform(5, 500, 20000)
    e_pred = e_true * (1 + rng.normal(0, 1, e_true.size) * resolution_function(e_true, 0.1, 0.0, 0.02))
    binned = resolution_vs_energy(e_true, e_pred, np.geomspace(5, 500, 11))
    binned.attrs["fit"] = fit
    legend = [t.get_text() for t in plot_resolution({"Ele": binned}).axes[0].get_legend().get_texts()]
    assert any("at bound" in t for t in legend)


def test_regression_summary_flags_bound():
    from calodnn.regression import _parameter_text

    md = {"Ele_Resolution_a": 0.151, "Ele_Resolution_a_err": 0.003, "Ele_Resolution_a_at_bound": False,
          "Ele_Resolution_b": 1e-18, "Ele_Resolution_b_err": float("nan"), "Ele_Resolution_b_at_bound": True}
    assert _parameter_text(md, "Ele_Resolution_a") == "0.1510 +- 0.0030"
    assert _parameter_text(md, "Ele_Resolution_b") == "0 (at bound)"
