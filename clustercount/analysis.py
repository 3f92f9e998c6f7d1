"""clustercount's analysis steps on the test sets: each returns an :class:`dlkit.analysis.AnalysisResults`.

- :func:`peak_finding_analysis`: ROC and AUC of the peak classifier (``Peak_AUC``), the derivative
  algorithm's operating point on the same candidates (``DerivEfficiency``, ``DerivFakeRate``) and the
  network's efficiency at that fake rate (``EffAtDerivFake``), efficiency vs pulse height, an example waveform.
- :func:`clusterization_analysis`: the residual ``N_pred - N_true`` of the cluster counter
  (``NclResidualRMS`` = its standard deviation, ``NclResidualMean``) against the derivative + time-proximity
  baseline, its gap tuned on the training set (``BaselineResidualRMS``) and also linearly calibrated there
  (``BaselineCalibratedRMS``).

Key results are top-level metadata entries so that ``python -m dlkit.ScanAnalysis TrainedModels/ -a
Peak_AUC,EffAtDerivFake`` tabulates a scan.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from tabulate import tabulate

from dlkit.analysis import AnalysisResults, clopper_pearson, style
from dlkit.metadata import chained_history

log = logging.getLogger(__name__)

__all__ = ["peak_finding_analysis", "peak_finding_metrics", "clusterization_analysis", "tune_baseline",
           "residual_stats", "summary_table", "history_figure"]


# ---------------------------------------------------------------------------------------------------------
# Peak finding
# ---------------------------------------------------------------------------------------------------------


def peak_finding_metrics(label, scores, deriv) -> tuple[dict, dict]:
    """ROC of ``scores`` and the derivative algorithm's point on the same candidates.

    ``deriv`` marks the candidates the derivative algorithm selected. Returns ``(metadata, curve)``; the
    metadata holds ``Peak_AUC``, ``DerivEfficiency`` and ``DerivFakeRate`` (fractions of the signal and noise
    candidates it selects), ``EffAtDerivFake`` (the classifier's efficiency at that fake rate, interpolated
    on its ROC), ``FakeAtDerivEff`` and ``ThresholdAtDerivFake`` (the score cut of that working point).
    """
    from dlkit.analysis import multiclass_roc

    label = np.asarray(label).reshape(-1).astype(int)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    deriv = np.asarray(deriv).reshape(-1).astype(bool)
    curves, aucs = multiclass_roc(label, np.stack([1 - scores, scores], axis=1), ["Noise", "Peak"])
    c = curves["Peak"]
    fpr, tpr, thr = c["fpr"], c["tpr"], c["thresholds"]
    d_eff = float(deriv[label == 1].mean()) if (label == 1).any() else float("nan")
    d_fake = float(deriv[label == 0].mean()) if (label == 0).any() else float("nan")
    md = {"Peak_AUC": aucs["Peak_AUC"], "DerivEfficiency": d_eff, "DerivFakeRate": d_fake}
    if len(fpr):
        md["EffAtDerivFake"] = float(np.interp(d_fake, fpr, tpr))
        md["FakeAtDerivEff"] = float(np.interp(d_eff, tpr, fpr))
        i = int(np.searchsorted(fpr, d_fake, side="right") - 1)
        md["ThresholdAtDerivFake"] = float(min(thr[max(i, 0)], 1.0))
        md["EffGainAtDerivFake"] = md["EffAtDerivFake"] - d_eff
    return md, c


def _efficiency_vs_amplitude(label, amplitude, selected: dict, edges) -> pd.DataFrame:
    """Per amplitude bin and selection: the fraction of signal (``<name>_eff``) and of noise (``<name>_fake``)
    candidates accepted, each with its Clopper-Pearson 68.3 % interval (``<name>_eff_lower``, ...)."""
    rows = []
    sig = label == 1
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (amplitude >= lo) & (amplitude < hi)
        row = {"amp_low": lo, "amp_high": hi, "n_signal": int((inside & sig).sum()),
               "n_noise": int((inside & ~sig).sum())}
        for name, sel in selected.items():
            for kind, events in (("eff", inside & sig), ("fake", inside & ~sig)):
                k, n = int(np.count_nonzero(sel[events])), int(np.count_nonzero(events))
                lower, upper = clopper_pearson(k, n)
                row[f"{name}_{kind}"] = k / n if n else np.nan
                row[f"{name}_{kind}_lower"], row[f"{name}_{kind}_upper"] = lower, upper
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.index = pd.Index(0.5 * (edges[:-1] + edges[1:]), name="amplitude_noise_rms")
    return frame


def _roc_figure(curve, md, title) -> Figure:
    fig, ax = style.figure((6, 5))
    ax.plot(curve["fpr"], curve["tpr"], label=f"LSTM (AUC {curve['auc']:.4f})")
    ax.plot([md["DerivFakeRate"]], [md["DerivEfficiency"]], "s", color="C3",
            label=f"derivative ({md['DerivEfficiency']:.3f} at {md['DerivFakeRate']:.4f})")
    if "EffAtDerivFake" in md:
        ax.plot([md["DerivFakeRate"]], [md["EffAtDerivFake"]], "o", color="C0",
                label=f"LSTM at the same fake rate: {md['EffAtDerivFake']:.3f}")
    ax.set(xscale="log", xlim=(1e-4, 1), ylim=(0, 1.01), xlabel="fake rate (noise candidates accepted)",
           ylabel="efficiency (signal candidates accepted)", title=title)
    style.legend(ax, loc="lower right")
    return fig


def _efficiency_figure(table, title) -> Figure:
    fig, ax = style.figure((6, 4.5))
    for name, fmt in (("LSTM", "o-"), ("derivative", "s--")):
        for kind, what, alpha in (("eff", "efficiency", 1.0), ("fake", "fake rate", 0.5)):
            y = table[f"{name}_{kind}"].to_numpy(dtype=float)
            lower, upper = (table[f"{name}_{kind}_{b}"].to_numpy(dtype=float) for b in ("lower", "upper"))
            yerr = np.nan_to_num(np.clip(np.stack([y - lower, upper - y]), 0, None))
            ax.errorbar(table.index, y, yerr=yerr, fmt=fmt, ms=4, capsize=2, alpha=alpha, label=f"{name} {what}")
    ax.set(xlabel="candidate height above baseline [noise RMS]", ylabel="fraction accepted", ylim=(0, 1.02),
           title=title)
    style.legend(ax)
    return fig


def _scores_figure(label, scores, threshold, title) -> Figure:
    fig, ax = style.figure((6, 4.5))
    bins = np.linspace(0, 1, 51)
    ax.hist(scores[label == 0], bins, histtype="step", density=True, label="noise candidates")
    ax.hist(scores[label == 1], bins, histtype="step", density=True, label="signal candidates")
    ax.axvline(threshold, color="grey", ls=":", label="cut at the derivative's fake rate")
    ax.set(yscale="log", xlabel="LSTM score", ylabel="density", title=title)
    style.legend(ax)
    return fig


def waveform_figure(model, data, threshold: float, title: str | None = None, index: int = 0) -> Figure | None:
    """A test waveform with its candidates: truth, derivative algorithm and the classifier (the talk's
    'evaluation by waveform')."""
    import h5py

    if not data.test_samples:
        return None
    entry = data.test_samples[0]
    with h5py.File(entry.file, "r") as f:
        source = f.attrs.get("source")
        wf_idx = f["waveform_index"][entry.start:entry.stop]
        if len(wf_idx) == 0:
            return None
        target = int(np.unique(wf_idx)[min(index, len(np.unique(wf_idx)) - 1)])
        rows = np.flatnonzero(wf_idx == target) + entry.start
        window = f["window"][rows[0]:rows[-1] + 1].astype(np.float32)
        sample = f["sample"][rows[0]:rows[-1] + 1]
        ptype = f["peak_type"][rows[0]:rows[-1] + 1]
        deriv = f["deriv"][rows[0]:rows[-1] + 1].astype(bool)
    try:
        with h5py.File(source, "r") as f:
            wave = f["waveform"][target].astype(np.float32)
            dt = 1.0 / float(f.attrs.get("sampling_ghz", 1.2))
    except (OSError, TypeError, KeyError):
        log.info("waveform figure skipped: source file %s not readable", source)
        return None
    scores = np.asarray(model.predict(window / np.float32(data.scale), verbose=0)).reshape(-1)
    t = np.arange(len(wave)) * dt
    fig, ax = style.figure((11, 4.5))
    ax.plot(t, wave, lw=0.7, color="k")
    h = wave[sample]
    ax.plot(t[sample[ptype == 1]], h[ptype == 1] + 3, "v", color="C3", ms=5, label="truth: primary")
    ax.plot(t[sample[ptype == 2]], h[ptype == 2] + 3, "v", color="C1", ms=5, label="truth: secondary")
    ax.plot(t[sample[scores >= threshold]], h[scores >= threshold] + 6, "o", mfc="none", color="C0",
            label="LSTM: signal")
    ax.plot(t[sample[deriv]], h[deriv] + 9, "s", mfc="none", color="C2", label="derivative: peak")
    around = sample[ptype > 0] if (ptype > 0).any() else sample
    lo, hi = t[around].min() - 40, t[around].max() + 60
    ax.set(xlim=(lo, hi), xlabel="time [ns]", ylabel="amplitude [mV]", title=title)
    style.legend(ax, ncol=2)
    return fig


def history_figure(wrapper, keys=None) -> Figure | None:
    """Training curves over all resumes of the run (None before any training)."""
    from dlkit.analysis import history_boundaries, plot_history

    history = chained_history(wrapper.MetaData)
    if not history:
        return None
    return plot_history(history, keys=keys, title=wrapper.Name, boundaries=history_boundaries(wrapper.MetaData))


def peak_finding_analysis(wrapper, data, config) -> AnalysisResults:
    """Predict the test candidates; compare with the derivative algorithm on the same candidates."""
    test = data.read_test()
    label = np.asarray(test["label"]).reshape(-1).astype(int)
    deriv = np.asarray(test["deriv"]).reshape(-1).astype(bool)
    amplitude = np.asarray(test["amplitude"]).reshape(-1)
    ptype = np.asarray(test["peak_type"]).reshape(-1)
    scores = np.asarray(wrapper.Model.predict(test["window"], batch_size=8192, verbose=0)).reshape(-1)
    md, curve = peak_finding_metrics(label, scores, deriv)
    md["Accuracy"] = float(np.mean((scores >= 0.5) == (label == 1)))
    md["NTestCandidates"] = int(len(label))
    md["SignalFraction"] = float(label.mean())
    for kind, name in ((1, "Primary"), (2, "Secondary")):  # each signal type against the noise
        keep = (ptype == kind) | (label == 0)
        if (ptype == kind).any() and (label == 0).any():
            md[f"{name}_AUC"] = peak_finding_metrics(label[keep], scores[keep], deriv[keep])[0]["Peak_AUC"]
    threshold = md.get("ThresholdAtDerivFake", 0.5)
    edges = np.array([0, 2, 3, 4, 5, 6, 8, 10, 15, 20, 40, 1e9], dtype=float)
    table = _efficiency_vs_amplitude(label, amplitude, {"LSTM": scores >= threshold, "derivative": deriv}, edges)
    roc = pd.DataFrame({"fpr": curve["fpr"], "tpr": curve["tpr"], "threshold": curve["thresholds"]})
    step = max(1, len(roc) // 2000)  # a readable CSV: ~2000 points of the curve
    figures = {"ROC": _roc_figure(curve, md, wrapper.Name),
               "EfficiencyVsAmplitude": _efficiency_figure(table, f"{wrapper.Name}: at equal fake rate"),
               "Scores": _scores_figure(label, scores, threshold, wrapper.Name)}
    wave = waveform_figure(wrapper.Model, data, threshold, title=f"{wrapper.Name}: a test waveform")
    if wave is not None:
        figures["Waveform"] = wave
    hist = history_figure(wrapper)
    if hist is not None:
        figures["History"] = hist
    return AnalysisResults(metadata=md, tables={"EfficiencyVsAmplitude": table, "ROC": roc.iloc[::step]},
                           figures=figures)


# ---------------------------------------------------------------------------------------------------------
# Clusterization
# ---------------------------------------------------------------------------------------------------------


def residual_stats(pred, true) -> dict:
    """Mean, standard deviation (the spread), RMS and mean absolute value of ``pred - true``."""
    r = np.asarray(pred, dtype=np.float64).reshape(-1) - np.asarray(true, dtype=np.float64).reshape(-1)
    return {"mean": float(r.mean()), "std": float(r.std()), "rms": float(np.sqrt(np.mean(r * r))),
            "mae": float(np.abs(r).mean())}


def tune_baseline(tp_counts, n_true, gaps) -> dict:
    """Pick the time-proximity gap on training data: smallest spread of the raw count's residual, and the
    smallest spread after a linear calibration ``N = a + b count`` (least squares) - the fairest baseline.

    Returns ``{"gap", "gap_index", "calibrated_gap", "calibrated_index", "a", "b"}``.
    """
    tp = np.asarray(tp_counts, dtype=np.float64)
    y = np.asarray(n_true, dtype=np.float64).reshape(-1)
    spread = (tp - y[:, None]).std(axis=0)
    g = int(np.argmin(spread))
    best = None
    for j in range(tp.shape[1]):
        design = np.stack([np.ones_like(y), tp[:, j]], axis=1)
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        s = float((design @ coef - y).std())
        if best is None or s < best[0]:
            best = (s, j, coef)
    _, j, coef = best
    return {"gap": float(gaps[g]), "gap_index": g, "calibrated_gap": float(gaps[j]), "calibrated_index": j,
            "a": float(coef[0]), "b": float(coef[1])}


def _residual_figure(residuals: dict, title) -> Figure:
    fig, ax = style.figure((6.5, 4.5))
    lo = min(np.percentile(r, 0.5) for r in residuals.values())
    hi = max(np.percentile(r, 99.5) for r in residuals.values())
    bins = np.linspace(np.floor(lo) - 0.5, np.ceil(hi) + 0.5, int(np.ceil(hi) - np.floor(lo)) + 2)
    for name, r in residuals.items():
        ax.hist(r, bins, histtype="step", lw=1.5, label=f"{name}: mean {np.mean(r):+.2f}, spread {np.std(r):.2f}")
    ax.set(xlabel="N$_{cl}$ reconstructed - true", ylabel="waveforms", title=title)
    style.legend(ax)
    return fig


def _counts_figure(series: dict, title) -> Figure:
    fig, ax = style.figure((6.5, 4.5))
    hi = max(np.percentile(v, 99.8) for v in series.values())
    bins = np.arange(-0.5, hi + 1.5, 1.0)
    for name, v in series.items():
        ax.hist(v, bins, histtype="step", lw=1.5, label=f"{name} (mean {np.mean(v):.2f})")
    ax.set(xlabel="number per waveform", ylabel="waveforms", title=title)
    style.legend(ax)
    return fig


def _profile_figure(true, preds: dict, title) -> Figure:
    fig, ax = style.figure((6, 5))
    values = np.unique(true)
    for name, p in preds.items():
        means = [p[true == v].mean() for v in values]
        stds = [p[true == v].std() for v in values]
        ax.errorbar(values, means, yerr=stds, fmt="o", ms=3, capsize=2, label=name)
    ax.plot(values, values, color="grey", ls=":", lw=1)
    ax.set(xlabel="true N$_{cl}$", ylabel="reconstructed N$_{cl}$ (mean, spread)", title=title)
    style.legend(ax)
    return fig


def clusterization_analysis(wrapper, data, config, predictions=None) -> AnalysisResults:
    """Predict the test waveforms' cluster counts; compare with the tuned time-proximity baseline."""
    from clustercount.data import TP_GAPS_NS

    test = data.read_test()
    peak_model = getattr(data, "peak_model", None)
    finder = "derivative" if peak_model is None else str(peak_model)
    true = np.asarray(test["n_clusters"], dtype=np.float64).reshape(-1)
    if predictions is None:
        predictions = wrapper.Model.predict(test["times"], batch_size=2048, verbose=0)
    pred = np.asarray(predictions, dtype=np.float64).reshape(-1)
    train = data.read_baseline_train()
    base = tune_baseline(train["tp_counts"], train["n_clusters"], TP_GAPS_NS)
    tp = np.asarray(test["tp_counts"], dtype=np.float64)
    raw = tp[:, base["gap_index"]]
    calibrated = base["a"] + base["b"] * tp[:, base["calibrated_index"]]
    cnn, r_raw, r_cal = residual_stats(pred, true), residual_stats(raw, true), residual_stats(calibrated, true)
    md = {"NclResidualMean": cnn["mean"], "NclResidualRMS": cnn["std"], "NclMAE": cnn["mae"], "NclRMSE": cnn["rms"],
          "BaselineGapNs": base["gap"], "BaselineResidualMean": r_raw["mean"], "BaselineResidualRMS": r_raw["std"],
          "BaselineCalibratedGapNs": base["calibrated_gap"], "BaselineCalibratedRMS": r_cal["std"],
          "BaselineCalibration": [base["a"], base["b"]],
          "NclSpreadRatio": cnn["std"] / min(r_raw["std"], r_cal["std"]),
          "MeanTrueNcl": float(true.mean()), "MeanPredictedNcl": float(pred.mean()),
          "MeanDetectedPeaks": float(np.mean(test["n_peaks"])), "NTestWaveforms": int(len(true)),
          "TrueNclSpread": float(true.std()), "PeakFinder": finder,
          # slope of the mean prediction vs the true count (< 1: shrinkage toward the training mean)
          "NclSlope": (float(np.cov(pred, true)[0, 1] / max(np.var(true, ddof=1), 1e-12)) if len(true) > 1
                       else float("nan"))}
    rows = []
    for pdg in np.unique(test["particle"]):
        sel = np.asarray(test["particle"]).reshape(-1) == pdg
        rows.append({"particle": int(pdg), "n": int(sel.sum()), "true_mean": float(true[sel].mean()),
                     "cnn_mean": float(pred[sel].mean()), "cnn_spread": float((pred - true)[sel].std()),
                     "baseline_spread": float((raw - true)[sel].std()),
                     "calibrated_spread": float((calibrated - true)[sel].std())})
    table = pd.DataFrame(rows).set_index("particle")
    name = wrapper.Name
    figures = {
        "Residuals": _residual_figure({"CNN": pred - true, f"time proximity ({base['gap']:g} ns)": raw - true,
                                       "time proximity, calibrated": calibrated - true}, name),
        "Counts": _counts_figure({"true clusters": true, "CNN": np.rint(pred),
                                  f"detected peaks ({'derivative' if peak_model is None else 'LSTM'})":
                                      test["n_peaks"], "time proximity (derivative peaks)": raw}, name),
        "Profile": _profile_figure(true, {"CNN": pred, "time proximity, calibrated": calibrated}, name),
    }
    hist = history_figure(wrapper)
    if hist is not None:
        figures["History"] = hist
    return AnalysisResults(metadata=md, tables={"ResidualsByParticle": table}, figures=figures)


# ---------------------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------------------


def summary_table(wrapper, keys) -> str:
    """A short human summary of the run: where it is, how it stopped, the key results."""
    md = wrapper.MetaData
    rows = [["model", md.get("Name")], ["directory", md.get("OutDir")], ["scan point", md.get("HyperParamSet")],
            ["status", md.get("Status")], ["stopped", md.get("StopReason")],
            ["epochs (all runs)", md.get("TotalEpochs", md.get("Epochs"))]]
    history = md.get("History") or {}
    for key in ("loss", "val_loss"):
        if history.get(key):
            rows.append([f"final {key}", history[key][-1]])
    rows += [[key, md[key]] for key in keys if key in md]
    return tabulate(rows, tablefmt="simple", floatfmt=".4f")
