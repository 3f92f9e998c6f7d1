"""Statistical uncertainties of the numbers the analyses report in bins: efficiencies and AUCs.

- :func:`clopper_pearson`: the exact (Clopper-Pearson) binomial interval of an efficiency ``k/n``, from the
  quantiles of the beta distribution (:data:`scipy.stats.beta`). It is conservative: it covers the true
  efficiency in at least ``cl`` of repeated experiments, for every efficiency and every ``n``.
- :func:`bootstrap_auc`: a seeded percentile-bootstrap interval of a ROC AUC. The events are resampled
  with replacement *within each class* (the stratified bootstrap, as R's ``pROC::ci.auc``), so every
  resample has signal and background and keeps the sample's class counts; each resample's AUC is the
  Mann-Whitney statistic ``U / (n_s n_b)`` (:func:`scipy.stats.mannwhitneyu`, evaluated for all resamples at
  once), which equals :func:`sklearn.metrics.roc_auc_score`, ties counted one half.

``cl`` is the central coverage of the interval: 0.683 (the default) is "1 sigma".

>>> lower, upper = clopper_pearson(45, 50)          # efficiency 0.9 of 50 events
>>> lower, upper = bootstrap_auc(is_signal, scores, n_boot=200, seed=0)
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta, mannwhitneyu

__all__ = ["clopper_pearson", "bootstrap_auc", "ONE_SIGMA"]

#: Central probability of +-1 sigma of a Gaussian, the default coverage of the intervals.
ONE_SIGMA = 0.6827


def _check_cl(cl: float) -> float:
    cl = float(cl)
    if not 0 < cl < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {cl}")
    return cl


def clopper_pearson(k, n, cl: float = ONE_SIGMA):
    """Clopper-Pearson interval ``(lower, upper)`` of the efficiency ``k / n`` with central coverage ``cl``.

    ``lower = Beta(alpha/2; k, n-k+1)`` and ``upper = Beta(1-alpha/2; k+1, n-k)`` quantiles with
    ``alpha = 1 - cl``; ``lower = 0`` at ``k = 0`` and ``upper = 1`` at ``k = n``. ``k`` and ``n`` may be
    arrays (broadcast); ``n = 0`` gives NaN (no efficiency to bound). Returns floats for scalar input.

    >>> clopper_pearson(0, 10)       # (0.0, 0.1585...)
    """
    cl = _check_cl(cl)
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    if np.any((k < 0) | (k > n)):
        raise ValueError(f"clopper_pearson needs 0 <= k <= n, got k={k}, n={n}")
    alpha = 1.0 - cl
    with np.errstate(invalid="ignore", divide="ignore"):
        lower = np.where(k > 0, beta.ppf(alpha / 2, np.maximum(k, 1e-300), n - k + 1), 0.0)
        upper = np.where(k < n, beta.ppf(1 - alpha / 2, k + 1, np.maximum(n - k, 1e-300)), 1.0)
    empty = n <= 0
    lower, upper = np.where(empty, np.nan, lower), np.where(empty, np.nan, upper)
    if lower.ndim == 0:
        return float(lower), float(upper)
    return lower, upper


def bootstrap_auc(labels, scores, n_boot: int = 200, cl: float = ONE_SIGMA, seed: int | np.random.Generator = 0,
                  max_values: int = 4_000_000):
    """Percentile-bootstrap interval ``(lower, upper)`` of the ROC AUC of ``scores`` for ``labels`` (1 = signal).

    ``n_boot`` stratified resamples (events drawn with replacement within the signal and within the
    background), seeded with ``seed`` (an int or a :class:`numpy.random.Generator`); the interval is the
    ``(1-cl)/2`` and ``(1+cl)/2`` quantiles of the resampled AUCs. NaN without signal or background events,
    or with ``n_boot = 0``. ``max_values`` bounds the resampled scores held in memory at once.

    >>> lower, upper = bootstrap_auc(truth == 1, scores[:, 1], n_boot=200, seed=0)
    """
    cl = _check_cl(cl)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels for {scores.size} scores")
    signal, background = scores[labels], scores[~labels]
    n_boot = int(n_boot)
    if n_boot <= 0 or not signal.size or not background.size:
        return float("nan"), float("nan")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    per_chunk = max(1, int(max_values) // scores.size)
    aucs = []
    for start in range(0, n_boot, per_chunk):
        m = min(per_chunk, n_boot - start)
        s = signal[rng.integers(0, signal.size, (m, signal.size))]
        b = background[rng.integers(0, background.size, (m, background.size))]
        u = mannwhitneyu(s, b, axis=1, method="asymptotic", use_continuity=False).statistic
        aucs.append(np.atleast_1d(u) / (signal.size * background.size))
    aucs = np.concatenate(aucs)
    lower, upper = np.quantile(aucs, [(1 - cl) / 2, (1 + cl) / 2])
    return float(lower), float(upper)
