"""Regression analysis: response and resolution vs true energy, and the calorimeter resolution fit.

The response ``r = e_pred / e_true`` is studied in bins of the true energy. In each bin the core of the
``r`` distribution is fitted with a Gaussian (:func:`gaussian_core`); the response is its mean and the
relative resolution ``sigma/E`` its width divided by the response. The resolution curve is then fitted
with the calorimeter parametrisation (:func:`fit_resolution`)::

    sigma/E = a/sqrt(E) (+) b/E (+) c        (+): sum in quadrature, a, b, c >= 0

>>> table, metadata = RegressionAnalysis(e_true, e_pred, edges=np.geomspace(10, 500, 25))
>>> metadata["Resolution_a"], metadata["Resolution_a_err"]
>>> fig = plot_resolution(table)          # the fit is kept in table.attrs["fit"]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.optimize import curve_fit, nnls
from scipy.stats import norm

log = logging.getLogger(__name__)

__all__ = ["gaussian_core", "resolution_vs_energy", "resolution_function", "fit_resolution", "fit_label",
           "resolution_fit_table", "RegressionAnalysis"]

_PARAMS = ("a", "b", "c")


def _rms(values: np.ndarray, method: str, fallback: bool) -> dict:
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    sigma = float(values.std(ddof=1)) if n > 1 else math.nan
    return {"mean": mean, "mean_err": sigma / math.sqrt(n) if n > 1 else math.nan,
            "sigma": sigma, "sigma_err": sigma / math.sqrt(2 * (n - 1)) if n > 1 else math.nan,
            "n": n, "n_core": n, "method": method, "fallback": fallback, "converged": not fallback}


def gaussian_core(values, nsigma: float = 2.0, min_events: int = 50, max_iter: int = 20) -> dict:
    """Iterative Gaussian fit of the core of a distribution, within ``mean +- nsigma * sigma``.

    Start from the median and the MAD-based width; then repeatedly histogram the values inside the
    window (``sqrt(n)`` bins, 10 to 100) and fit ``N * width * normal_pdf(x; mean, sigma)`` with
    :func:`scipy.optimize.curve_fit`, moving the window to the new mean and sigma, until both change by
    less than a tenth of their errors. The bin errors are ``sqrt`` of the previous iteration's
    prediction (Pearson's chi2, which avoids the low bias of ``sqrt(count)`` errors). The Gaussian fit of a
    truncated window is unbiased for Gaussian data, unlike the standard deviation of a clipped sample.

    Fewer than ``min_events`` values (in the sample or in the window), or a failed fit, fall back to the
    sample mean and standard deviation with ``fallback=True`` and ``method="rms"``.

    Returns a dict: ``mean, mean_err, sigma, sigma_err, n, n_core, method, fallback, converged``.

    >>> gaussian_core(np.random.default_rng(1).normal(1.0, 0.1, 10_000))["sigma"]   # ~0.1
    """
    v = np.asarray(values, dtype=float).reshape(-1)
    v = v[np.isfinite(v)]
    n = len(v)
    if n < max(min_events, 3):
        return _rms(v, "rms", True)
    mu = float(np.median(v))
    s = 1.482602218505602 * float(np.median(np.abs(v - mu)))
    tiny = 1e-9 * max(abs(mu), 1e-300)
    if not s > tiny:
        s = float(v.std())
    if not s > tiny:  # all values (nearly) equal: nothing to fit
        return _rms(v, "rms", True)
    coverage = 2 * norm.cdf(nsigma) - 1
    amplitude = n * coverage
    previous = None
    result = None
    for _ in range(max_iter):
        lo, hi = mu - nsigma * s, mu + nsigma * s
        inside = v[(v >= lo) & (v <= hi)]
        m = len(inside)
        if m < min_events:
            break
        nbins = int(np.clip(round(math.sqrt(m)), 10, 100))
        try:
            counts, edges = np.histogram(inside, bins=nbins, range=(lo, hi))
        except ValueError:  # a window too narrow for the floating-point resolution
            break
        x = 0.5 * (edges[:-1] + edges[1:])
        width = edges[1] - edges[0]

        def model(x, amp, mean, sigma):
            return amp * width * norm.pdf(x, mean, sigma)

        guess = (amplitude if previous is None else previous[0], mu, s)
        errors = np.sqrt(np.maximum(model(x, *guess), 1.0))
        try:
            popt, pcov = curve_fit(model, x, counts, p0=guess, sigma=errors, absolute_sigma=True,
                                   bounds=([0, lo, 1e-6 * s], [np.inf, hi, 10 * s]))
        except (RuntimeError, ValueError) as exc:
            log.debug("gaussian_core: fit failed (%s)", exc)
            break
        perr = np.sqrt(np.diag(pcov))
        if not (np.all(np.isfinite(popt)) and np.all(np.isfinite(perr)) and popt[2] > 0):
            break
        result = {"mean": float(popt[1]), "mean_err": float(perr[1]), "sigma": float(popt[2]),
                  "sigma_err": float(perr[2]), "n": n, "n_core": m, "method": "gaussian_core",
                  "fallback": False, "converged": False}
        # Moving the window reshuffles the events at its edges, so the iteration converges only to
        # within a fraction of the statistical error.
        done = (abs(popt[1] - mu) <= max(0.1 * perr[1], 1e-6 * s)
                and abs(popt[2] - s) <= max(0.1 * perr[2], 1e-6 * s))
        previous, mu, s = popt, float(popt[1]), float(popt[2])
        if done:
            result["converged"] = True
            return result
    if result is not None:
        log.debug("gaussian_core: not converged after %d iterations; keeping the last fit", max_iter)
        return result
    log.info("gaussian_core: %d values, core fit impossible; falling back to mean/std", n)
    return _rms(v, "rms", True)


def resolution_vs_energy(e_true, e_pred, edges=10, fit: str = "gaussian_core", nsigma: float = 2.0,
                         min_events: int = 50) -> pd.DataFrame:
    """Response and relative resolution of ``e_pred`` in bins of ``e_true``.

    Parameters
    ----------
    e_true, e_pred
        True and predicted energies, shape ``(N,)`` or ``(N, 1)``. Events with ``e_true <= 0`` or a
        non-finite ratio are dropped (with a warning).
    edges
        Bin edges of ``e_true``, or a number of equal bins between its minimum and maximum.
    fit
        ``"gaussian_core"`` (default, :func:`gaussian_core` of ``e_pred/e_true`` per bin) or ``"rms"``
        (mean and standard deviation). Bins with too few events fall back to ``"rms"`` and are flagged.

    Returns
    -------
    DataFrame indexed by ``bin_centre`` with ``bin_low, bin_high, e_mean`` (mean true energy, the
    abscissa to fit against), ``n_events, response, response_err, resolution, resolution_err``
    (``sigma/response``, i.e. sigma/E after the energy-scale correction), ``bias`` (mean of
    ``e_pred - e_true``), ``method`` and ``fallback``.

    >>> table = resolution_vs_energy(e_true, e_pred, np.geomspace(10, 500, 21))
    >>> table[["e_mean", "resolution", "resolution_err"]]
    """
    if fit not in ("gaussian_core", "rms"):
        raise ValueError(f"fit must be 'gaussian_core' or 'rms', got {fit!r}")
    e_true = np.asarray(e_true, dtype=float).reshape(-1)
    e_pred = np.asarray(e_pred, dtype=float).reshape(-1)
    if e_true.shape != e_pred.shape:
        raise ValueError(f"e_true has {e_true.size} values, e_pred {e_pred.size}")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = e_pred / e_true
    good = (e_true > 0) & np.isfinite(ratio)
    if not good.all():
        log.warning("resolution_vs_energy: dropping %d events with e_true <= 0 or a non-finite ratio",
                    int((~good).sum()))
        e_true, e_pred, ratio = e_true[good], e_pred[good], ratio[good]
    if np.isscalar(edges):
        if not e_true.size:
            raise ValueError("resolution_vs_energy: no events to choose bin edges from")
        edges = np.linspace(e_true.min(), e_true.max(), int(edges) + 1)
    edges = np.asarray(edges, dtype=float)
    which = np.digitize(e_true, edges) - 1
    which[e_true == edges[-1]] = len(edges) - 2  # the last bin includes its upper edge
    rows = []
    for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        sel = which == b
        n = int(sel.sum())
        row = {"bin_low": lo, "bin_high": hi, "e_mean": float(e_true[sel].mean()) if n else math.nan,
               "n_events": n, "bias": float((e_pred[sel] - e_true[sel]).mean()) if n else math.nan}
        if n == 0:
            core = _rms(ratio[sel], "empty", True)
        elif fit == "rms":
            core = _rms(ratio[sel], "rms", n < 2)
        else:
            core = gaussian_core(ratio[sel], nsigma=nsigma, min_events=min_events)
        response, sigma = core["mean"], core["sigma"]
        resolution = sigma / response if response else math.nan
        relative_sigma_err = core["sigma_err"] / sigma if sigma else math.nan
        relative_mean_err = core["mean_err"] / response if response else math.nan
        resolution_err = abs(resolution) * math.hypot(relative_sigma_err, relative_mean_err)
        row.update(response=response, response_err=core["mean_err"], resolution=resolution,
                   resolution_err=resolution_err, method=core["method"], fallback=core["fallback"])
        rows.append(row)
    columns = ["bin_low", "bin_high", "e_mean", "n_events", "response", "response_err", "resolution",
               "resolution_err", "bias", "method", "fallback"]
    frame = pd.DataFrame(rows, columns=columns)
    frame.index = pd.Index(0.5 * (edges[:-1] + edges[1:]), name="bin_centre")
    flagged = int(frame.fallback.sum())
    if flagged and fit == "gaussian_core":
        log.info("resolution_vs_energy: %d of %d bins fell back to mean/std (few events)",
                 flagged, len(frame))
    return frame


def resolution_function(energy, a: float, b: float, c: float):
    """``sigma/E = sqrt((a/sqrt(E))**2 + (b/E)**2 + c**2)``."""
    energy = np.asarray(energy, dtype=float)
    return np.sqrt(a * a / energy + b * b / (energy * energy) + c * c)


def fit_resolution(energy, sigma_over_e, errors=None, fix: Mapping[str, float] | None = None,
                   p0: Mapping[str, float] | None = None) -> dict:
    """Fit ``sigma/E = a/sqrt(E) (+) b/E (+) c`` (quadrature sum) with a, b, c >= 0.

    A weighted least-squares fit (:func:`scipy.optimize.curve_fit`, bounded, ``absolute_sigma``), started
    from a non-negative linear fit of ``(sigma/E)**2`` in ``1/E`` and ``1/E**2``. Points with a non-finite
    value or error, or an error <= 0, are ignored.

    Parameters
    ----------
    energy, sigma_over_e, errors
        The points and their 1-sigma errors; without errors the points are weighted equally and the
        parameter errors are scaled by the fit's chi2/ndf.
    fix
        Parameters held fixed, e.g. ``{"b": 0.0}`` (their errors are 0).
    p0
        Starting values, overriding the linear-fit estimate.

    Returns
    -------
    dict with ``a, b, c, a_err, b_err, c_err, a_at_bound, b_at_bound, c_at_bound, chi2, ndf, n_points``;
    NaNs (and a warning) if fewer points than free parameters remain or the fit fails. A parameter that
    ends at (or numerically at) its bound 0 is flagged ``<p>_at_bound = True`` and gets error NaN (the
    curve depends on its square, so the fit has no curvature there): at bound means a value below
    ``1e-6 * max(sigma/E)``, or a term (``a/sqrt(E)``, ``b/E``, ``c`` at the lowest fitted energy) below
    ``1e-3`` of the smallest point, i.e. below 1e-6 of it in quadrature. :func:`~dlkit.analysis.plot_resolution`
    writes "at bound" in the legend. Refit with it fixed (``fix={"b": 0}``) to get the others' errors
    without it. Fixed parameters are not flagged.

    >>> fit = fit_resolution(table.e_mean, table.resolution, table.resolution_err)
    >>> f"a = {fit['a']:.3f} +- {fit['a_err']:.3f}"
    """
    energy = np.asarray(energy, dtype=float).reshape(-1)
    y = np.asarray(sigma_over_e, dtype=float).reshape(-1)
    weighted = errors is not None
    err = np.asarray(errors, dtype=float).reshape(-1) if weighted else np.ones_like(y)
    fix = dict(fix or {})
    unknown = (set(fix) | set(p0 or {})) - set(_PARAMS)
    if unknown:
        raise ValueError(f"fit_resolution: unknown parameter(s) {sorted(unknown)}; "
                         "the parameters are a, b, c")
    free = [p for p in _PARAMS if p not in fix]
    good = np.isfinite(energy) & (energy > 0) & np.isfinite(y) & np.isfinite(err) & (err > 0)
    energy, y, err = energy[good], y[good], err[good]
    out = {p: float(fix.get(p, math.nan)) for p in _PARAMS}
    out.update({f"{p}_err": 0.0 if p in fix else math.nan for p in _PARAMS})
    out.update({f"{p}_at_bound": False for p in _PARAMS})
    out.update(chi2=math.nan, ndf=max(int(len(y) - len(free)), 0), n_points=int(len(y)))
    if len(y) < max(len(free), 1):
        log.warning("fit_resolution: %d usable points for %d free parameters; no fit", len(y), len(free))
        return out

    # Starting values: non-negative least squares of y^2 = a^2/E + b^2/E^2 + c^2, weighted by 1/err(y^2).
    design = np.stack([1 / energy, 1 / energy**2, np.ones_like(energy)], axis=1)
    target = y**2 - sum(fix.get(p, 0.0) ** 2 * design[:, i] for i, p in enumerate(_PARAMS) if p in fix)
    w = 1 / (2 * np.maximum(y, 1e-12) * err)
    cols = [i for i, p in enumerate(_PARAMS) if p in free]
    squares, _ = nnls(design[:, cols] * w[:, None], target * w)
    scale = float(np.max(y))
    start = {p: max(math.sqrt(s), 1e-3 * scale) for p, s in zip(free, squares)}
    start.update({p: float(v) for p, v in (p0 or {}).items() if p in free})

    def model(e, *values):
        params = dict(fix)
        params.update(zip(free, values))
        return resolution_function(e, params["a"], params["b"], params["c"])

    try:
        popt, pcov = curve_fit(model, energy, y, p0=[start[p] for p in free], sigma=err,
                               absolute_sigma=weighted, bounds=(0, np.inf), maxfev=10000)
    except (RuntimeError, ValueError) as exc:
        log.warning("fit_resolution: fit failed: %s", exc)
        return out
    chi2 = float(np.sum(((y - model(energy, *popt)) / err) ** 2))
    perr = np.sqrt(np.clip(np.diag(pcov), 0, None))
    # the largest contribution of each term to sigma/E over the fitted range, against the smallest point
    reach = {"a": 1 / math.sqrt(float(energy.min())), "b": 1 / float(energy.min()), "c": 1.0}
    smallest = float(np.min(y[y > 0])) if np.any(y > 0) else scale
    for p, value, error in zip(free, popt, perr):
        # sigma/E depends on p**2: no curvature at 0, no error
        at_bound = bool(value <= 1e-6 * scale or value * reach[p] <= 1e-3 * smallest)
        out[p], out[f"{p}_err"] = float(value), math.nan if at_bound else float(error)
        out[f"{p}_at_bound"] = at_bound
        if at_bound:
            log.info("fit_resolution: %s is at its bound 0; its error is undefined (NaN)", p)
    out["chi2"] = chi2
    return out


def fit_label(fit: Mapping) -> str:
    """``a=0.151±0.003, b=0 (at bound), c=0.0102±0.0004``: each parameter of a :func:`fit_resolution` result
    with its fit error, or flagged (the legend of :func:`~dlkit.analysis.plot_resolution`, the ``fit`` column
    of :func:`resolution_fit_table`)."""
    parts = []
    for p in ("a", "b", "c"):
        value, error = fit.get(p, np.nan), fit.get(f"{p}_err", np.nan)
        if fit.get(f"{p}_at_bound"):
            parts.append(f"{p}=0 (at bound)")
            continue
        parts.append(f"{p}={value:.3g}" + (f"\u00b1{error:.2g}" if error and np.isfinite(error) else ""))
    return ", ".join(parts)


def resolution_fit_table(fits: Mapping[str, Mapping]) -> pd.DataFrame:
    """The :func:`fit_resolution` results of several fits (``{label: fit}``), one row each, as a table.

    Columns ``a, a_err, a_at_bound, b, ..., c_at_bound, chi2, ndf, n_points`` and ``fit`` (the parameters
    written out, ``a=0.151±0.003, b=0 (at bound), ...``, as in :func:`~dlkit.analysis.plot_resolution`'s
    legend), indexed by ``label``: the CSV beside the resolution plot.

    >>> resolution_fit_table({name: table.attrs["fit"] for name, table in tables.items()})
    """
    columns = [f"{p}{suffix}" for p in _PARAMS for suffix in ("", "_err", "_at_bound")]
    columns += ["chi2", "ndf", "n_points"]
    rows = []
    for label, fit in fits.items():
        row = {c: fit.get(c, False if c.endswith("_at_bound") else math.nan) for c in columns}
        row["fit"] = fit_label(fit)
        rows.append(row)
    return pd.DataFrame(rows, index=pd.Index([str(k) for k in fits], name="label"), columns=[*columns, "fit"])


def RegressionAnalysis(e_true, e_pred, edges=10, prefix: str = "", fit: str = "gaussian_core",
                       fix: Mapping[str, float] | None = None, nsigma: float = 2.0,
                       min_events: int = 50):  # noqa: N802 - DLKit's name
    """Resolution and response vs energy plus the resolution fit, as ``(table, metadata)``.

    ``table`` is :func:`resolution_vs_energy`'s with the :func:`fit_resolution` result in
    ``table.attrs["fit"]``. ``metadata`` holds the keys a scan table shows (each prefixed with
    ``prefix``): ``Resolution_a``, ``Resolution_a_err``, ``Resolution_a_at_bound`` (see
    :func:`fit_resolution`), ... ``Resolution_c_at_bound``, ``Resolution_chi2``,
    ``Resolution_ndf``, ``MeanBias`` (mean of ``e_pred - e_true``) and ``MeanRelativeBias`` (mean of
    ``(e_pred - e_true) / e_true``). The resolution is fitted against each bin's mean true energy.

    >>> table, md = RegressionAnalysis(y_test[:, 0], wrapper.Model.predict(x_test)[:, 0],
    ...                                np.geomspace(10, 500, 21), prefix="Ele_")
    >>> wrapper.MetaData.update(md)
    """
    e_true_a = np.asarray(e_true, dtype=float).reshape(-1)
    e_pred_a = np.asarray(e_pred, dtype=float).reshape(-1)
    table = resolution_vs_energy(e_true_a, e_pred_a, edges, fit=fit, nsigma=nsigma, min_events=min_events)
    result = fit_resolution(table.e_mean, table.resolution, table.resolution_err, fix=fix)
    table.attrs["fit"] = result
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = (e_pred_a - e_true_a) / e_true_a
    keys = ("a", "a_err", "a_at_bound", "b", "b_err", "b_at_bound", "c", "c_err", "c_at_bound", "chi2", "ndf")
    metadata = {f"{prefix}Resolution_{k}": result[k] for k in keys}
    metadata[f"{prefix}MeanBias"] = float(np.mean(e_pred_a - e_true_a)) if e_true_a.size else math.nan
    finite = relative[np.isfinite(relative)]
    metadata[f"{prefix}MeanRelativeBias"] = float(finite.mean()) if finite.size else math.nan
    return table, metadata
