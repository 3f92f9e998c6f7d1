"""lartpcdnn's analysis steps on the test set: per-class AUC, efficiency at 1 % fake rate, confusion, vs energy.

The talks' figure of merit is DUNE's requirement: ~90 % signal efficiency at a 1 % fake rate for single
particles. :func:`efficiency_at_fake_rate` computes it one-vs-rest per class: the selection "softmax
output of the class above a threshold", the threshold set so that at most 1 % of the other classes'
events pass, and the fraction of the class's own events that pass. With ``n_b`` background events the
smallest fake rate that can be resolved is ``1 / n_b``; the tables say how many there were.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from tabulate import tabulate

from dlkit.analysis import (
    ONE_SIGMA,
    AnalysisResults,
    binned_auc,
    bootstrap_auc,
    clopper_pearson,
    confusion,
    multiclass_roc,
    pairwise_scores,
    plot_binned,
    plot_chained_history,
    plot_confusion,
    plot_roc,
)
from dlkit.analysis.classification import class_indices
from dlkit.analysis.results import TOO_SMALL, format_interval
from dlkit.metadata import chained_history

__all__ = ["efficiency_at_fake_rate", "efficiency_table", "binned_efficiency", "classification_analysis",
           "summary_table", "FAKE_RATE", "HARD_PAIRS"]

#: The DUNE working point of the talks.
FAKE_RATE = 0.01
#: Pairs whose separation the physics makes hard: e/gamma (trunk dE/dx, conversion gap), mu/pi (interactions,
#: Michel), gamma/pi0 (second shower), K/pi and p/pi (dE/dx, Bragg peak).
HARD_PAIRS = (("electron", "photon"), ("photon", "pion0"), ("muon", "pionPlus"), ("kaonPlus", "pionPlus"),
              ("proton", "pionPlus"))


def _passing(signal_scores, background_scores, fake_rate: float) -> tuple[int, int]:
    """``(k, n)``: the signal events above the threshold of :func:`efficiency_at_fake_rate`, of ``n``;
    ``k = -1`` without signal or background."""
    s = np.asarray(signal_scores, np.float64).reshape(-1)
    b = np.sort(np.asarray(background_scores, np.float64).reshape(-1))[::-1]
    if not s.size or not b.size:
        return -1, int(s.size)
    if not 0 <= fake_rate < 1:
        raise ValueError(f"fake_rate must be in [0, 1), got {fake_rate}")
    k = int(np.floor(fake_rate * b.size + 1e-9))
    return int(np.count_nonzero(s > b[k])), int(s.size)


def efficiency_at_fake_rate(signal_scores, background_scores, fake_rate: float = FAKE_RATE) -> float:
    """Fraction of signal with score above the threshold that lets at most ``fake_rate`` of the background pass.

    The threshold is the ``k+1``-th highest background score with ``k = floor(fake_rate * n_b)`` (the
    strictest cut with at most ``k`` background events above it); NaN without signal or background.
    """
    k, n = _passing(signal_scores, background_scores, fake_rate)
    return float("nan") if k < 0 else k / n


def _efficiency_with_interval(signal_scores, background_scores, fake_rate: float, cl: float) -> dict:
    """Efficiency at ``fake_rate``, its Clopper-Pearson interval and the signal count (the interval is that of
    the signal binomial at the threshold: the threshold's own fluctuation with the background is not in it)."""
    k, n = _passing(signal_scores, background_scores, fake_rate)
    if k < 0:
        return {"eff": float("nan"), "lower": float("nan"), "upper": float("nan"), "n": n}
    lower, upper = clopper_pearson(k, n, cl)
    return {"eff": k / n, "lower": lower, "upper": upper, "n": n}


def efficiency_table(y, scores, class_names: Sequence[str], fake_rate: float = FAKE_RATE, cl: float = ONE_SIGMA,
                     n_boot: int = 200, seed: int = 0):
    """Per class: AUC, efficiency at ``fake_rate`` (one vs rest) with its Clopper-Pearson ``cl`` interval
    (columns ``efficiency lower``, ``efficiency upper``: the signal binomial at the fixed threshold), event
    counts; and metadata entries.

    Returns ``(table, curves, metadata)`` with ``metadata`` holding ``<Class>_AUC`` (DLKit's keys) with its
    seeded bootstrap interval (``<Class>_AUC_lower``, ``_upper``; ``n_boot`` resamples, 0 for none),
    ``<Class>_Eff<percent>pctFake`` with its interval (``..._lower``, ``..._upper``) and the class's test
    events ``<Class>_NSignal`` (its background: ``NTestEvents`` minus those); ``curves`` as
    :func:`dlkit.analysis.multiclass_roc` gives them.
    """
    scores = np.asarray(scores)
    truth = class_indices(y)
    curves, metadata = multiclass_roc(y, scores, class_names)
    tag = f"Eff{fake_rate * 100:g}pctFake"
    rows = []
    for i, name in enumerate(class_names):
        sig = truth == i
        e = _efficiency_with_interval(scores[sig, i], scores[~sig, i], fake_rate, cl)
        metadata[f"{name}_{tag}"] = e["eff"]
        metadata[f"{name}_{tag}_lower"], metadata[f"{name}_{tag}_upper"] = e["lower"], e["upper"]
        metadata[f"{name}_AUC_lower"], metadata[f"{name}_AUC_upper"] = bootstrap_auc(sig, scores[:, i], n_boot, cl,
                                                                                     seed)
        metadata[f"{name}_NSignal"] = int(sig.sum())
        rows.append({"class": name, "AUC": metadata[f"{name}_AUC"], f"efficiency at {fake_rate:.0%} fake": e["eff"],
                     "efficiency lower": e["lower"], "efficiency upper": e["upper"],
                     "n_signal": int(sig.sum()), "n_background": int((~sig).sum())})
    return pd.DataFrame(rows).set_index("class"), curves, metadata


def binned_efficiency(y, scores, values, edges, class_names: Sequence[str], fake_rate: float = FAKE_RATE,
                      cl: float = ONE_SIGMA) -> pd.DataFrame:
    """Efficiency at ``fake_rate`` per class in bins of ``values`` (e.g. true energy), one vs rest in each bin.

    Per class the efficiency (column ``<name>``), its Clopper-Pearson ``cl`` interval (``<name>_lower``,
    ``<name>_upper``; :func:`dlkit.analysis.clopper_pearson` of the signal events passing the bin's
    threshold) and the bin's signal count ``n_<name>``; :func:`dlkit.analysis.plot_binned` draws the error bars.
    """
    scores = np.asarray(scores)
    truth = class_indices(y)
    values = np.asarray(values).reshape(-1)
    edges = np.asarray(edges, dtype=float)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (values >= lo) & (values < hi)
        row = {"bin_low": lo, "bin_high": hi, "n_events": int(sel.sum())}
        for i, name in enumerate(class_names):
            sig = sel & (truth == i)
            e = _efficiency_with_interval(scores[sig, i], scores[sel & (truth != i), i], fake_rate, cl)
            row[name], row[f"{name}_lower"], row[f"{name}_upper"], row[f"n_{name}"] = (
                e["eff"], e["lower"], e["upper"], e["n"])
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.index = pd.Index(0.5 * (edges[:-1] + edges[1:]), name="bin_centre")
    return frame


def classification_analysis(wrapper, data, config) -> AnalysisResults:
    """Predict the test set; ``<Class>_AUC``, ``<Class>_Eff1pctFake``, pair AUCs, confusion, vs energy, plots."""
    names = list(data.class_names)
    x, y, energy = data.read_test()
    scores = np.asarray(wrapper.Model.predict(x, batch_size=max(config["BatchSize"], 128), verbose=0))
    y_index = y.argmax(axis=1)
    fake = float(config.get("FakeRate", FAKE_RATE))
    n_boot = int(config.get("AUCBootstrap", 200))
    table, curves, metadata = efficiency_table(y, scores, names, fake, n_boot=n_boot)
    metadata["Accuracy"] = float(np.mean(scores.argmax(axis=1) == y_index))
    metadata["NTestEvents"] = len(y_index)
    lo, hi, nbins = config["EnergyBins"]
    edges = np.linspace(lo, hi, int(nbins) + 1)
    tables = {"Efficiency": table, "AUCvsEnergy": binned_auc(y, scores, energy, edges, names, n_boot=n_boot),
              "EfficiencyvsEnergy": binned_efficiency(y, scores, energy, edges, names, fake),
              "Confusion": confusion(y, scores, names)}
    pairs = []
    for a, b in HARD_PAIRS:
        if a in names and b in names:
            labels, pair_scores, _ = pairwise_scores(y_index, scores, names.index(a), names.index(b))
            _, md = multiclass_roc(labels, np.stack([1 - pair_scores, pair_scores], axis=1), [b, a])
            metadata[f"{a}_{b}_AUC"] = md[f"{a}_AUC"]
            metadata[f"{a}_{b}_AUC_lower"], metadata[f"{a}_{b}_AUC_upper"] = bootstrap_auc(
                np.asarray(labels).reshape(-1) == 1, pair_scores, n_boot)
            pairs.append({"signal": a, "background": b, "AUC": md[f"{a}_AUC"]})
    if pairs:
        tables["PairAUC"] = pd.DataFrame(pairs)
    elabel = "true kinetic energy [GeV]"
    roc = plot_roc(curves, title=wrapper.Name, log_rejection=True)
    roc.axes[0].axhline(1.0 / fake, ls="--", color="grey", lw=1)  # the DUNE working point
    roc.axes[0].text(0.02, 1.1 / fake, f"{fake:.0%} fake rate", color="grey", fontsize=8)
    figures = {
        "ROC": roc,
        "AUCvsEnergy": plot_binned(tables["AUCvsEnergy"], xlabel=elabel, title=f"{wrapper.Name}: one-vs-rest AUC"),
        "EfficiencyvsEnergy": plot_binned(tables["EfficiencyvsEnergy"], xlabel=elabel,
                                          ylabel=f"efficiency at {fake:.0%} fake rate",
                                          title=f"{wrapper.Name}: efficiency at {fake:.0%} fake"),
        "Confusion": plot_confusion(tables["Confusion"], title=wrapper.Name),
    }
    if chained_history(wrapper.MetaData):  # the loss curves over every resume of this model
        figures["History"] = plot_chained_history(wrapper.MetaData, title=wrapper.Name)
    return AnalysisResults(metadata=metadata, tables=tables, figures=figures)


def _efficiency_text(md, name: str, tag: str, fake_rate: float) -> str:
    """The efficiency at ``fake_rate`` with its interval, or "n too small" where fewer than ``1 / fake_rate``
    background events cannot resolve that fake rate (8 events of each of 7 classes: 48 for a 1 % working point)."""
    n_signal, n_test = md.get(f"{name}_NSignal"), md.get("NTestEvents")
    if isinstance(n_signal, int) and isinstance(n_test, int):
        n_background = n_test - n_signal
        if n_background * fake_rate < 1:
            return f"{TOO_SMALL} ({n_background} background events < {1 / fake_rate:g})"
    return format_interval(md[f"{name}{tag}"], md.get(f"{name}{tag}_lower"), md.get(f"{name}{tag}_upper"))


def summary_table(wrapper, fake_rate: float = FAKE_RATE) -> str:
    """A short human summary: where the run is, how it stopped, then per class AUC and efficiency at 1 % fake,
    each with its 68 % interval (bootstrap, Clopper-Pearson), or "n too small" (see :func:`_efficiency_text`)."""
    md = wrapper.MetaData
    rows = [["model", md.get("Name")], ["directory", md.get("OutDir")], ["scan point", md.get("HyperParamSet")],
            ["status", md.get("Status")], ["stopped", md.get("StopReason")],
            ["epochs (all runs)", md.get("TotalEpochs", md.get("Epochs"))]]
    history = md.get("History") or {}
    for key in ("loss", "val_loss", "val_accuracy"):
        if history.get(key):
            rows.append([f"final {key}", history[key][-1]])
    if "Accuracy" in md:
        rows.append(["test accuracy", md["Accuracy"]])
    text = tabulate(rows, tablefmt="simple", floatfmt=".4f")
    tag = f"_Eff{fake_rate * 100:g}pctFake"
    classes = [k[:-4] for k in md if k.endswith("_AUC") and f"{k[:-4]}{tag}" in md]
    if classes:
        per = [[c, format_interval(md[f"{c}_AUC"], md.get(f"{c}_AUC_lower"), md.get(f"{c}_AUC_upper")),
                _efficiency_text(md, c, tag, fake_rate)] for c in classes]
        text += "\n\n" + tabulate(per, headers=["class", "AUC [68% interval]",
                                                 f"eff @ {fake_rate:.0%} fake [68% interval]"])
    pairs = [[k[:-4].replace("_", " vs "), format_interval(v, md.get(f"{k}_lower"), md.get(f"{k}_upper"))]
             for k, v in md.items() if k.endswith("_AUC") and k.count("_") == 2]
    if pairs:
        text += "\n\n" + tabulate(pairs, headers=["pair", "AUC [68% interval]"])
    return text
