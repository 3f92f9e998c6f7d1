"""dlkit.analysis.regression against numpy references and synthetic data with known parameters."""

import numpy as np
import pytest

from dlkit.analysis import (RegressionAnalysis, fit_resolution, gaussian_core, plot_resolution, plot_response,
                            resolution_function, resolution_vs_energy, save_figure)

TRUTH = {"a": 0.15, "b": 0.5, "c": 0.01}


def smeared(n=200_000, seed=11, a=0.15, b=0.5, c=0.01, scale=1.0):
    """E uniform in 10-500, e_pred = scale * E * (1 + N(0, sigma(E)/E))."""
    rng = np.random.default_rng(seed)
    energy = rng.uniform(10, 500, n)
    e_pred = scale * energy * (1 + rng.normal(size=n) * resolution_function(energy, a, b, c))
    return energy, e_pred


@pytest.fixture(scope="module")
def analysed():
    energy, e_pred = smeared()
    table, metadata = RegressionAnalysis(energy, e_pred, np.geomspace(10, 500, 31))
    return energy, e_pred, table, metadata


def test_gaussian_core_recovers_gaussian_within_errors():
    values = np.random.default_rng(5).normal(2.0, 0.3, 20_000)
    core = gaussian_core(values)
    assert core["method"] == "gaussian_core" and not core["fallback"] and core["converged"]
    assert abs(core["mean"] - 2.0) < 3 * core["mean_err"]
    assert abs(core["sigma"] - 0.3) < 3 * core["sigma_err"]
    # the errors are those of a Gaussian fit: the same order as the full-sample mean/std errors
    assert 0.5 < core["mean_err"] / (0.3 / np.sqrt(20_000)) < 2
    assert core["n"] == 20_000 and core["n_core"] < 20_000


def test_gaussian_core_ignores_tails_unlike_rms():
    rng = np.random.default_rng(6)
    values = np.concatenate([rng.normal(1.0, 0.05, 18_000), rng.normal(0.8, 0.4, 2_000)])
    core = gaussian_core(values)
    assert core["sigma"] == pytest.approx(0.05, rel=0.05)
    assert core["mean"] == pytest.approx(1.0, abs=0.005)
    assert values.std() > 2.5 * core["sigma"]


def test_gaussian_core_falls_back_to_mean_std_for_few_events():
    values = np.random.default_rng(7).normal(1.0, 0.1, 20)
    core = gaussian_core(values, min_events=50)
    assert core["fallback"] and core["method"] == "rms"
    assert core["mean"] == pytest.approx(values.mean()) and core["sigma"] == pytest.approx(values.std(ddof=1))
    assert core["mean_err"] == pytest.approx(values.std(ddof=1) / np.sqrt(20))
    assert gaussian_core(np.ones(100))["fallback"]  # zero width: no fit, no crash


def test_resolution_vs_energy_rms_matches_numpy():
    energy, e_pred = smeared(n=20_000, seed=3)
    edges = np.array([10, 50, 100, 250, 500.0])
    table = resolution_vs_energy(energy, e_pred, edges, fit="rms")
    ratio = e_pred / energy
    counts, _ = np.histogram(energy, edges)
    assert list(table.n_events) == list(counts)
    assert np.allclose(table.index, 0.5 * (edges[:-1] + edges[1:]))
    for b in range(4):
        sel = (energy >= edges[b]) & (energy < edges[b + 1])
        r = ratio[sel]
        assert table.response.iloc[b] == pytest.approx(r.mean())
        assert table.resolution.iloc[b] == pytest.approx(r.std(ddof=1) / r.mean())
        assert table.e_mean.iloc[b] == pytest.approx(energy[sel].mean())
        assert table.bias.iloc[b] == pytest.approx((e_pred[sel] - energy[sel]).mean())


def test_resolution_vs_energy_core_fit_and_sparse_bins_flagged():
    energy, e_pred = smeared(n=50_000, seed=4, scale=1.05)
    edges = np.array([10, 100, 200, 300, 499, 500])  # the last bin holds ~100 events
    table = resolution_vs_energy(energy, e_pred, edges, min_events=200)
    assert list(table.method[:4]) == ["gaussian_core"] * 4 and not table.fallback[:4].any()
    assert table.fallback.iloc[-1] and table.method.iloc[-1] == "rms"
    pulls = (table.response - 1.05) / table.response_err
    assert np.all(np.abs(pulls) < 4)
    expected = resolution_function(table.e_mean, **TRUTH)
    assert np.all(np.abs(table.resolution - expected) < 4 * table.resolution_err + 0.05 * expected)


def test_resolution_vs_energy_drops_bad_events_and_checks_input():
    energy = np.array([0.0, 10, 20, 30])
    table = resolution_vs_energy(energy, energy * 1.1, [5, 40], fit="rms")
    assert table.n_events.iloc[0] == 3 and table.response.iloc[0] == pytest.approx(1.1)
    with pytest.raises(ValueError, match="fit must be"):
        resolution_vs_energy(energy, energy, [5, 40], fit="landau")
    with pytest.raises(ValueError, match="values"):
        resolution_vs_energy(energy, energy[:2], [5, 40])


def test_fit_resolution_exact_points():
    energy = np.geomspace(5, 500, 25)
    y = resolution_function(energy, **TRUTH)
    fit = fit_resolution(energy, y, 0.01 * y)
    for p, true in TRUTH.items():
        assert fit[p] == pytest.approx(true, rel=1e-4)
        assert fit[f"{p}_err"] > 0
    assert fit["chi2"] < 1e-6 and fit["ndf"] == 22 and fit["n_points"] == 25


def test_fit_resolution_bounds_fix_and_bad_points():
    energy = np.geomspace(5, 500, 20)
    y = resolution_function(energy, 0.1, 0.0, 0.02)
    y = y * (1 + 0.02 * np.random.default_rng(2).normal(size=y.size))
    err = 0.02 * y
    err[3] = np.nan  # ignored
    fit = fit_resolution(energy, y, err)
    assert min(fit["a"], fit["b"], fit["c"]) >= 0 and fit["n_points"] == 19
    assert fit["b"] < 0.1 and (np.isnan(fit["b_err"]) or fit["b_err"] > 0)  # NaN error when at the bound
    fixed = fit_resolution(energy, y, 0.02 * y, fix={"b": 0.0})
    assert fixed["b"] == 0 and fixed["b_err"] == 0 and fixed["ndf"] == 18
    assert fixed["a"] == pytest.approx(0.1, rel=0.05) and fixed["c"] == pytest.approx(0.02, rel=0.1)
    assert np.isnan(fit_resolution([10, 20], [0.1, 0.05], [0.01, 0.01])["a"])
    with pytest.raises(ValueError, match="unknown parameter"):
        fit_resolution(energy, y, err, fix={"d": 1})


def test_regression_analysis_recovers_known_resolution(analysed):
    """The issue's test: 200k events smeared with a=0.15, b=0.5, c=0.01 -> within 3 sigma."""
    energy, e_pred, table, metadata = analysed
    fit = table.attrs["fit"]
    for p, true in TRUTH.items():
        value, error = metadata[f"Resolution_{p}"], metadata[f"Resolution_{p}_err"]
        assert value == fit[p]
        assert abs(value - true) < 3 * error, (p, value, error)
        assert 0.001 * true < error < 0.2 * true, (p, error)  # uncertainties reasonable
    assert metadata["Resolution_chi2"] / metadata["Resolution_ndf"] < 2.5
    assert not table.fallback.any() and table.n_events.sum() == len(energy)


def test_regression_analysis_bias_keys(analysed):
    energy, e_pred, _, metadata = analysed
    assert metadata["MeanBias"] == pytest.approx(np.mean(e_pred - energy))
    assert metadata["MeanRelativeBias"] == pytest.approx(np.mean((e_pred - energy) / energy))
    _, prefixed = RegressionAnalysis(energy[:5000], e_pred[:5000] * 0.9, 5, prefix="Ele_")
    assert set(prefixed) >= {"Ele_Resolution_a", "Ele_Resolution_c_err", "Ele_MeanBias",
                             "Ele_MeanRelativeBias"}
    assert prefixed["Ele_MeanRelativeBias"] == pytest.approx(np.mean(e_pred[:5000] * 0.9 / energy[:5000]) - 1)


def test_resolution_and_response_plots_render(analysed, tmp_path):
    _, _, table, _ = analysed
    other = table.copy()
    other["resolution"] *= 1.2
    fig = plot_resolution({"Ele": table, "Gamma": other}, fits={"Ele": table.attrs["fit"]}, logx=True)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    fit = table.attrs["fit"]
    assert f"Ele: a={fit['a']:.3g}\u00b1{fit['a_err']:.2g}, b={fit['b']:.3g}" in labels[0]
    paths = save_figure(fig, tmp_path, "Resolution")
    paths += save_figure(plot_response([table, other], labels=["Ele", "Gamma"]), tmp_path, "Response")
    assert all(p.stat().st_size > 1000 for p in paths) and {p.suffix for p in paths} == {".png", ".pdf"}
