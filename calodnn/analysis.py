"""calodnn's analysis steps on the test set: per-class AUC, AUC vs energy, gamma/pi0, confusion, plots."""

from __future__ import annotations

import logging

import numpy as np
from tabulate import tabulate

from dlkit.analysis import (
    AnalysisResults,
    binned_auc,
    bootstrap_auc,
    confusion,
    multiclass_roc,
    pairwise_scores,
    plot_binned,
    plot_chained_history,
    plot_confusion,
    plot_roc,
)
from dlkit.analysis.results import format_interval
from dlkit.metadata import chained_history

log = logging.getLogger(__name__)

__all__ = ["classification_analysis", "pairwise_scores", "summary_table"]


def classification_analysis(wrapper, data, config) -> AnalysisResults:
    """Predict the test set and compute DLKit's ``<Class>_AUC`` plus AUC vs energy and the confusion matrix.

    Every AUC carries a seeded bootstrap 68 % interval from ``config["AUCBootstrap"]`` resamples (default
    200): ``<Class>_AUC_lower``/``_upper`` in the metadata; ``<Class>_lower``, ``<Class>_upper`` in the CSVs
    of AUC vs energy and error bars in its plots."""
    log.info("%s: analysis of the test sample", wrapper.Name)
    names = list(data.class_names)
    x, y, energy = data.read_test()
    prediction = wrapper.Model.predict(x, batch_size=max(config["BatchSize"], 1024), verbose=0)
    energy_pred = None
    if isinstance(prediction, dict):  # a multi-task network: its classes and its energy
        prediction, energy_pred = prediction["classes"], prediction["energy"]
    scores = np.asarray(prediction)
    y_index = y.argmax(axis=1)
    curves, metadata = multiclass_roc(y, scores, names)
    metadata["Accuracy"] = float(np.mean(scores.argmax(axis=1) == y_index))
    metadata["NTestEvents"] = int(len(y_index))
    lo, hi, nbins = config["EnergyBins"]
    edges = np.linspace(lo, hi, int(nbins) + 1)
    n_boot = int(config.get("AUCBootstrap", 200))  # bootstrap resamples of each AUC interval
    for i, name in enumerate(names):
        metadata[f"{name}_AUC_lower"], metadata[f"{name}_AUC_upper"] = bootstrap_auc(y_index == i, scores[:, i],
                                                                                     n_boot)
    tables = {"AUCvsEnergy": binned_auc(y, scores, energy, edges, names, n_boot=n_boot),
              "Confusion": confusion(y, scores, names)}
    figures = {
        "ROC": plot_roc(curves, title=wrapper.Name),
        "AUCvsEnergy": plot_binned(tables["AUCvsEnergy"], title=f"{wrapper.Name}: one-vs-rest AUC"),
        "Confusion": plot_confusion(tables["Confusion"], title=wrapper.Name),
    }
    if "Gamma" in names and "Pi0" in names:  # the hard pair of the paper
        g, p = names.index("Gamma"), names.index("Pi0")
        labels, pair_scores, keep = pairwise_scores(y_index, scores, g, p)
        pair = np.stack([1 - pair_scores, pair_scores], axis=1)
        pair_curves, pair_md = multiclass_roc(labels, pair, ["Pi0", "Gamma"])
        metadata["GammaPi0_AUC"] = pair_md["Gamma_AUC"]
        metadata["GammaPi0_AUC_lower"], metadata["GammaPi0_AUC_upper"] = bootstrap_auc(labels == 1, pair_scores,
                                                                                       n_boot)
        table = binned_auc(labels, pair, energy[keep], edges, ["Pi0", "Gamma"], n_boot=n_boot)
        table = table[["n_events", "n_Gamma", "Gamma", "Gamma_lower", "Gamma_upper"]]
        tables["GammaPi0_AUCvsEnergy"] = table.rename(columns={
            "Gamma": "GammaPi0_AUC", "Gamma_lower": "GammaPi0_AUC_lower", "Gamma_upper": "GammaPi0_AUC_upper"})
        figures["GammaPi0_AUCvsEnergy"] = plot_binned(tables["GammaPi0_AUCvsEnergy"], ["GammaPi0_AUC"],
                                                      title=f"{wrapper.Name}: gamma vs pi0")
    if energy_pred is not None:
        _energy_analysis(wrapper, np.asarray(energy_pred), energy, y_index, names, edges, metadata, tables, figures)
    if chained_history(wrapper.MetaData):  # the loss curves over every resume of this model
        figures["History"] = plot_chained_history(wrapper.MetaData, title=wrapper.Name)
    return AnalysisResults(metadata=metadata, tables=tables, figures=figures)


def _energy_analysis(wrapper, pred, energy, y_index, names, edges, metadata, tables, figures) -> None:
    """A multi-task network's energy head: the regression experiment's resolution fit per particle."""
    from calodnn.regression import resolution_tables
    from dlkit.analysis import plot_resolution, resolution_fit_table
    from dlkit.losses import split_gaussian_prediction

    sigma = None
    if pred.ndim == 2 and pred.shape[1] == 2:
        pred, sigma = (np.asarray(v, np.float64) for v in split_gaussian_prediction(pred))
    res_tables, res_md = resolution_tables(energy, pred.reshape(len(pred), -1)[:, 0], y_index, names, edges, sigma)
    metadata.update(res_md)
    tables.update({f"Resolution_{name}": t for name, t in res_tables.items()})
    if res_tables:
        tables["ResolutionFit"] = resolution_fit_table({name: t.attrs["fit"] for name, t in res_tables.items()})
        figures["Resolution"] = plot_resolution(res_tables, title=wrapper.Name)


def summary_table(wrapper) -> str:
    """A short human summary of the run: where it is, how it stopped, the AUCs."""
    md = wrapper.MetaData
    rows = [["model", md.get("Name")], ["directory", md.get("OutDir")], ["scan point", md.get("HyperParamSet")],
            ["status", md.get("Status")], ["stopped", md.get("StopReason")],
            ["epochs (all runs)", md.get("TotalEpochs", md.get("Epochs"))]]
    history = md.get("History") or {}
    for key in ("loss", "val_loss", "val_accuracy"):
        if history.get(key):
            rows.append([f"final {key}", history[key][-1]])
    rows += [[key, format_interval(value, md.get(f"{key}_lower"), md.get(f"{key}_upper"), ".4f")]
             for key, value in md.items() if key.endswith("_AUC")]  # with its 68 % bootstrap interval
    if "Accuracy" in md:
        rows.append(["test accuracy", md["Accuracy"]])
    text = tabulate(rows, tablefmt="simple", floatfmt=".4f")
    if any(key.endswith("_Resolution_a") for key in md):  # a multi-task network's energy head
        from calodnn.regression import resolution_summary

        text += "\n\n" + resolution_summary(md)
    return text
