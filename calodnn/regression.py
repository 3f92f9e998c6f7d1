"""calodnn energy regression: the data of a run (cells -> true energy) and its analysis steps.

Data: the LCD layout (``<DataDir>/<Particle>/*.h5`` with ``ECAL``, ``HCAL``, ``energy``), one particle or several
mixed (config ``Particles``); with no ``DataDir`` the simulated regression dataset is made on first use. Its
cells hold the *visible* energy (:data:`REGRESSION_SIM_CONFIG`: thin and thick ECAL layers and the HCAL
sample different fractions of the deposit, as raw data do), so that a plain sum of cells is a poor
calibration and a learned one has something to recover. The generators deliver ``((ECAL, HCAL), energy)``;
ECAL/HCAL are divided by ``ECALNorm``/``HCALNorm`` in the readers (linear, so calibrations stay linear),
optionally flipped and rotated there too (``Augment``, :mod:`dlkit.augment`).

Analysis: per particle, the response and resolution vs true energy and the fit
``sigma/E = a/sqrt(E) (+) b/E (+) c`` (:func:`dlkit.analysis.RegressionAnalysis`); the fit parameters are
top-level metadata keys (``Ele_Resolution_a`` ...) so scan tables show them. With the Gaussian NLL the
analysis uses the predicted mean and reports the pull width of the predicted uncertainty.

This module does not import Keras at the top: analysis steps import what they need when called.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from calodnn.configs import REGRESSION_SIM_CONFIG
from calodnn.data import (HITS, HitFeatures, Normalize, calo_normalize, data_arrays, dataset_dir, feed, model_feed,
                          premix, premix_location, run_inputs, sample_keys)
from dlkit.config import ConfigError
from dlkit.experiment import RunData

log = logging.getLogger(__name__)

__all__ = ["REGRESSION_SIM_CONFIG", "RegressionData", "setup_regression_data", "make_preprocess",
           "predict_energy", "resolution_tables", "regression_analysis",
           "regression_summary"]


_AUGMENT_MODES = {True: "all", "all": "all", "flips": "flips", "rotations": "rotations"}


def make_preprocess(config: dict, augment: bool = True):
    """The readers' pre-process: normalisation, then (training only) flips/rotations if ``Augment``."""
    normalize = calo_normalize(config)
    mode = config.get("Augment")
    if not augment or mode in (False, None, "none"):
        return normalize
    if mode not in _AUGMENT_MODES:
        raise ConfigError(f"config entry 'Augment' = {mode!r}; expected false, true, 'flips' or 'rotations'")
    from dlkit.augment import FlipRotate
    from dlkit.generators.preprocess import Chain

    keys = tuple(k for k in ("ECAL", "HCAL") if config[k])
    return Chain(normalize, FlipRotate(keys, mode=_AUGMENT_MODES[mode]))


def _sim_config(config: dict):
    from calodnn.simulate import CaloSimConfig

    overrides = config.get("SimConfig") or {}
    try:
        return CaloSimConfig.from_dict(dict(overrides))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config entry 'SimConfig' = {overrides!r}: {exc}") from None


@dataclass
class RegressionData(RunData):
    """Generators of ``((ECAL, HCAL), energy)`` and test-set access of one run; close it (or ``with``)."""

    train: object
    validation: object
    test_samples: list
    particles: list[str]
    input_shapes: dict[str, tuple]
    inputs: list[str]
    normalize: Normalize
    data_dir: Path
    options: dict = field(default_factory=dict)

    def read_test(self):
        """The whole test set in memory (no augmentation): ``(model inputs, true energy, particle index)``."""
        arrays = self.read_test_arrays(self.particles, self.normalize, onehot=False)
        return (feed(arrays, self.inputs), np.asarray(arrays["energy"], np.float64).reshape(-1),
                np.asarray(arrays["class_index"]).reshape(-1))


def setup_regression_data(config: dict) -> RegressionData:
    """Build the run's data from the resolved configuration (see RegressionExperiment.DEFAULTS)."""
    from dlkit.generators import (
        MultiClassGenerator,
        SampleSpec,
        Select,
        make_samples_from_dirs,
        split_fractions,
        split_samples,
    )

    inputs = run_inputs(config)
    if HITS in inputs:
        if config["Augment"]:
            raise ConfigError(f"config entry 'Augment' flips and rotates images; the point model {config['Model']!r} "
                              "reads hit lists: set Augment=False")
        normalize = train_preprocess = HitFeatures()
    else:
        normalize = make_preprocess(config, augment=False)
        train_preprocess = make_preprocess(config, augment=True)
    data_dir, pattern = dataset_dir(config, inputs, _sim_config(config))
    particles = list(config["Particles"])
    if not particles:
        raise ConfigError("config entry 'Particles' is empty; expected e.g. ['Ele'] or ['Ele', 'Gamma']")
    keys = data_arrays(inputs) + ["energy"]
    samples = make_samples_from_dirs(data_dir, sample_keys(config, inputs), classes=particles, pattern=pattern)
    train_s, val_s, test_s = split_samples(samples, split_fractions(config, samples), seed=config["Seed"],
                                           allow_empty_classes=config["AllowEmptyClasses"])
    augmenting = train_preprocess is not normalize
    cache, preload = bool(config["Cache"]), bool(config["Preload"])
    if augmenting and (cache or preload):
        # The cache and the preload keep the first pass's pre-processed events: the flips would freeze.
        log.warning("Augment is on: the training generator runs without cache and preload (they would "
                    "store one fixed set of flips)")
    options = dict(n_workers=config["Workers"] or None)
    select = Select(model_feed(inputs), "energy")
    batch = config["BatchSize"]
    gens = []
    for part, name in ((train_s, "train"), (val_s, "validation")):
        training = name == "train"
        pre = train_preprocess if training else normalize
        use_cache = cache and not (training and augmenting)
        use_preload = preload and not (training and augmenting)
        if config["Premix"]:
            path = premix(part, keys, particles, premix_location(), seed=config["Seed"],
                          n_workers=options["n_workers"])
            spec = [SampleSpec(str(path), {k: k for k in keys}, "mixed")]
            gens.append(MultiClassGenerator(spec, batch, onehot=False, class_index=False, shuffle=training,
                                            seed=config["Seed"], preprocess=pre, postprocess=select,
                                            cache=use_cache, preload=use_preload, **options))
        else:
            class_map = {p: i for i, p in enumerate(particles)}
            gens.append(MultiClassGenerator(part, batch, class_index_map=class_map, onehot=False, class_index=False,
                                            shuffle=training, seed=config["Seed"], preprocess=pre,
                                            postprocess=select, cache=use_cache, preload=use_preload, **options))
    train_gen, val_gen = gens
    shapes = {k: tuple(train_gen.shapes[k][1:]) for k in inputs}
    log.info("regression data %s: %d train / %d validation batches of %d; inputs %s", data_dir, len(train_gen),
             len(val_gen), batch, shapes)
    return RegressionData(train=train_gen, validation=val_gen, test_samples=test_s, particles=particles,
                          input_shapes=shapes, inputs=inputs, normalize=normalize, data_dir=data_dir,
                          options=options)


def predict_energy(model, x, batch_size: int = 1024):
    """``(mu, sigma)`` in GeV: the model's energy and, for a 2-unit Gaussian-NLL output, its uncertainty
    (else sigma is None)."""
    from dlkit.losses import split_gaussian_prediction

    pred = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    if pred.ndim == 2 and pred.shape[1] == 2:
        mu, sigma = split_gaussian_prediction(pred)
        return np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    return pred.reshape(len(pred), -1)[:, 0].astype(np.float64), None


def resolution_tables(e_true, e_pred, particle_index, particles, edges, sigma=None, fix=None):
    """Per particle: :func:`dlkit.analysis.RegressionAnalysis` tables and ``<P>_``-prefixed metadata.

    With ``sigma`` (predicted uncertainties) also ``<P>_PullWidth`` (std of ``(pred - true) / sigma``, 1 for
    calibrated uncertainties) and ``<P>_MeanPredictedRelSigma``. Particles without test events are skipped.
    """
    from dlkit.analysis import RegressionAnalysis

    e_true = np.asarray(e_true, float).reshape(-1)
    e_pred = np.asarray(e_pred, float).reshape(-1)
    particle_index = np.asarray(particle_index).reshape(-1)
    tables, metadata = {}, {}
    for i, name in enumerate(particles):
        sel = particle_index == i
        if not sel.any():
            log.warning("no test events of %s: no resolution for it", name)
            continue
        table, md = RegressionAnalysis(e_true[sel], e_pred[sel], edges, prefix=f"{name}_", fix=fix)
        md[f"{name}_NTestEvents"] = int(sel.sum())
        if sigma is not None:
            s = np.asarray(sigma, float).reshape(-1)[sel]
            pulls = (e_pred[sel] - e_true[sel]) / np.maximum(s, 1e-12)
            md[f"{name}_PullWidth"] = float(np.std(pulls)) if pulls.size > 1 else math.nan
            md[f"{name}_MeanPredictedRelSigma"] = float(np.mean(s / e_true[sel]))
        tables[name] = table
        metadata.update(md)
    return tables, metadata


def regression_analysis(wrapper, data: RegressionData, config: dict) -> "AnalysisResults":
    """Predict the test set; per particle the resolution fit, response, bias; plots and tables."""
    from dlkit.analysis import (
        AnalysisResults,
        plot_chained_history,
        plot_resolution,
        plot_response,
        resolution_fit_table,
    )
    from dlkit.metadata import chained_history

    x, e_true, index = data.read_test()
    mu, sigma = predict_energy(wrapper.Model, x, max(config["BatchSize"], 1024))
    lo, hi, nbins = config["EnergyBins"]
    edges = np.linspace(lo, hi, int(nbins) + 1)
    tables, metadata = resolution_tables(e_true, mu, index, data.particles, edges, sigma)
    metadata["NTestEvents"] = int(len(e_true))
    figures = {}
    if tables:
        figures["Resolution"] = plot_resolution(tables, title=wrapper.Name)
        figures["Response"] = plot_response(tables, title=wrapper.Name)
    if chained_history(wrapper.MetaData):  # the loss curves over every resume of this model
        figures["History"] = plot_chained_history(wrapper.MetaData, title=wrapper.Name)
    csv_tables = {f"Resolution_{name}": t for name, t in tables.items()}
    if tables:  # a, b, c per particle with their fit errors and "at bound" flags (the legend's numbers)
        csv_tables["ResolutionFit"] = resolution_fit_table({name: t.attrs["fit"] for name, t in tables.items()})
    return AnalysisResults(metadata=metadata, tables=csv_tables, figures=figures)


def _parameter_text(md, key: str) -> str:
    """``0.1512 +- 0.0031``, or ``0 (at bound)`` for a fit parameter that ended at its bound 0."""
    value, error = md.get(key), md.get(f"{key}_err")
    if md.get(f"{key}_at_bound"):
        return "0 (at bound)"
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.4f}" + (f" +- {error:.4f}" if error is not None and np.isfinite(error) and error else "")


def regression_summary(wrapper) -> str:
    """A short human summary: where the run is, how it stopped, and per particle a, b, c and the bias."""
    md = wrapper.MetaData
    rows = [["model", md.get("Name")], ["directory", md.get("OutDir")], ["scan point", md.get("HyperParamSet")],
            ["loss", md.get("Loss")], ["status", md.get("Status")], ["stopped", md.get("StopReason")],
            ["epochs (all runs)", md.get("TotalEpochs", md.get("Epochs"))]]
    history = md.get("History") or {}
    for key in ("loss", "val_loss"):
        if history.get(key):
            rows.append([f"final {key}", history[key][-1]])
    text = tabulate(rows, tablefmt="simple", floatfmt=".4g")
    resolution = resolution_summary(md)
    return text + "\n\n" + resolution if resolution else text


def resolution_summary(md) -> str:
    """The resolution fit per particle in a run's metadata (``<P>_Resolution_a`` ...), as a text table."""
    particles = [k[:-len("_Resolution_a")] for k in md if k.endswith("_Resolution_a")]
    if not particles:
        return ""
    frame = pd.DataFrame(
        [[p, *(_parameter_text(md, f"{p}_Resolution_{k}") for k in "abc"), md.get(f"{p}_MeanRelativeBias")]
         for p in particles],
        columns=["particle", "a [GeV^1/2]", "b [GeV]", "c", "mean (E_pred-E)/E"])
    return "sigma/E = a/sqrt(E) (+) b/E (+) c\n" + tabulate(frame, headers="keys", tablefmt="simple", floatfmt=".4f",
                                                             showindex=False)
