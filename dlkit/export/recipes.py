"""How a run's events become its model's inputs, and what its outputs mean: one :class:`Recipe` per experiment.

A recipe says which arrays of which files the readers read (``keys``), the fixed pre-process that turns them
into the model's inputs (run in the generator's reader processes, as in training), the class names (one
sub-directory each, as the experiments read their data) or a flat directory of files, the truth arrays worth
writing beside the scores, and the meaning of each output. The run's *fitted* standardization
(``MetaData["Fitted"]``) is not part of a recipe: :meth:`dlkit.export.run.Run.preprocess` chains it after.

An experiment module defines its own with a function ``prediction_inputs(config, metadata) -> Recipe``
(the hook :mod:`dlkit.export.run` looks for). dlkit's experiments are in :data:`BUILTIN`, built from their
saved configuration with dlkit's pre-processes where they are the same arithmetic (calodnn's ``Normalize``,
clustercount's scaling); lartpcdnn's wire-data processing is its own, so its recipe loads
``lartpcdnn.data.make_preprocess`` by name, as a plugin (dlkit imports no experiment package).

This module imports numpy only: the reader processes unpickle :class:`AsFloat32` from it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Recipe", "AsFloat32", "BUILTIN", "describe_preprocess", "describe_outputs", "model_io",
           "output_columns"]


@dataclass
class Recipe:
    """The inputs and outputs of an experiment's model (see the module docstring).

    ``inputs``: the model's inputs, in its order (arrays of a pre-processed batch); ``keys``: array name ->
    dataset, branch or column read from the files (inputs and truth); ``preprocess``: the readers' fixed
    pre-process (picklable) or None; ``classes``: class names, one sub-directory of the data directory each
    (None: the files are in the directory itself, all of class ``flat_class``, the name the experiment gives
    them: its split of the events is seeded with it); ``pattern``: their file names; ``truth``: output column ->
    batch array (written where the files have it); ``outputs``: per model output, what it is
    (``{"kind": "classification", "classes": [...]}``, ``{"kind": "regression", "target": "energy",
    "unit": "GeV"}``, ...); ``sources``: per input, where it comes from (text); ``firmware_input``: the layer
    whose output an hls4ml firmware takes (None: the model's inputs).
    """

    inputs: list
    keys: dict
    preprocess: object = None
    classes: list | None = None
    pattern: str = "*.h5"
    truth: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)
    sources: dict = field(default_factory=dict)
    firmware_input: str | None = None
    flat_class: str = "events"


class AsFloat32:
    """Picklable pre-process: the named arrays as float32 (their stored dtype is often narrower)."""

    def __init__(self, names):
        self.names = tuple(names)

    def __call__(self, arrays):
        for name in self.names:
            arrays[name] = np.asarray(arrays[name]).astype(np.float32)
        return arrays

    def __repr__(self):
        return f"AsFloat32({list(self.names)!r})"


# ------------------------------------------------------------------------------------------------------------
# dlkit's experiments
# ------------------------------------------------------------------------------------------------------------


def _calodnn(config: dict, metadata: dict, regression: bool) -> Recipe:
    """calodnn: ``<dir>/<Particle>/*.h5`` with ECAL, HCAL, energy; ``ECALNorm``/``HCALNorm`` in the readers
    (:func:`calodnn.data.calo_normalize`: dlkit's ``Normalize``)."""
    from dlkit.generators.preprocess import Normalize

    inputs = [k for k in ("ECAL", "HCAL") if config.get(k, True)]
    norms = {k: config.get(f"{k}Norm") for k in inputs}
    particles = [str(p) for p in config.get("Particles") or []]
    sources = {k: f"{k} cells of the file, divided by {k}Norm={norms[k]!r}" if not isinstance(norms[k], str)
               else f"{k} cells of the file, tanh(sign(x) log(1 + |x|) / 2)" for k in inputs}
    recipe = Recipe(inputs=inputs, keys={**{k: k for k in inputs}, "energy": "energy"},
                    preprocess=Normalize(norms), classes=particles, truth={"true_energy": "energy"}, sources=sources)
    if not regression:
        recipe.outputs = [{"kind": "classification", "classes": particles}]
        return recipe
    n_out = int(metadata.get("N_outputs") or 1)
    output = {"kind": "regression", "target": "energy", "unit": "GeV", "columns": ["energy_pred"]}
    if n_out == 2:
        output.update(columns=["energy_pred", "energy_log_var"], units=["GeV", "log(GeV^2)"],
                      note="Gaussian NLL: mu and log sigma^2 (dlkit.losses.split_gaussian_prediction)")
    recipe.outputs = [output]
    if config.get("Model") in ("LayerMLP", "Linear"):  # the per-layer energies: what a trigger sums upstream
        recipe.firmware_input = "layer_sums" if len(inputs) > 1 else f"{inputs[0]}_layer_sums"
    return recipe


def _lartpcdnn(config: dict, metadata: dict) -> Recipe:
    """lartpcdnn: ``<dir>/<particle>/<FilePattern>`` with the raw ``features`` (events, 2, wires, ticks) and
    ``Energy``; down-sampled, cropped and normalised into two views by its ``ProcessWireData``."""
    data = importlib.import_module("lartpcdnn.data")  # its own pre-process, loaded as a plugin
    preprocess = data.make_preprocess(config)
    views = list(preprocess.views)
    particles = [str(p) for p in config.get("Particles") or []]
    key = config.get("FeaturesKey", "features")
    sources = {v: f"{key}[:, {i}] (the {v} plane): ticks summed by {preprocess.factor}, the {preprocess.window}-tick "
                  f"window with the most charge, tanh(sign(x) log(1 + |x| / {preprocess.scale}) / 2)"
               for i, v in enumerate(views)}
    return Recipe(inputs=views, keys={"features": key, "Energy": "Energy"}, preprocess=preprocess, classes=particles,
                  pattern=config.get("FilePattern", "*.2d.h5"), truth={"true_energy": "Energy"},
                  outputs=[{"kind": "classification", "classes": particles}], sources=sources)


def _peak_finding(config: dict, metadata: dict) -> Recipe:
    """clustercount peak finding: the derived ``peaks_*.h5`` files (``window`` (K, 15, 1) mV, ``label``),
    windows divided by ``WindowScale`` (as its ``WindowPreprocess``)."""
    from dlkit.generators.preprocess import Chain, Normalize

    scale = float(config.get("WindowScale", 10.0))
    return Recipe(inputs=["window"], keys={"window": "window", "label": "label"},
                  preprocess=Chain(AsFloat32(["window"]), Normalize({"window": scale})), classes=None,
                  flat_class="peaks",
                  truth={"true_label": "label"},
                  outputs=[{"kind": "binary classification", "classes": ["noise", "signal"],
                            "meaning": "probability that the candidate peak is an ionisation signal"}],
                  sources={"window": f"samples around a candidate peak [mV] / WindowScale={scale}"})


def _clusterization(config: dict, metadata: dict) -> Recipe:
    """clustercount clusterization: the derived ``clusters_*.h5`` files (``times`` (N, bins, 1) counts of
    detected peaks per time bin, ``n_clusters``)."""
    return Recipe(inputs=["times"], keys={"times": "times", "n_clusters": "n_clusters"},
                  preprocess=AsFloat32(["times"]), classes=None, flat_class="waveforms",
                  truth={"true_n_clusters": "n_clusters"},
                  outputs=[{"kind": "regression", "target": "n_clusters", "unit": "clusters",
                            "columns": ["n_clusters_pred"]}],
                  sources={"times": "detected peaks per time bin over the waveform window (counts)"})


#: The recipes of dlkit's experiments, by experiment module.
BUILTIN: dict[str, Callable[[dict, dict], Recipe]] = {
    "calodnn.ClassificationExperiment": lambda c, m: _calodnn(c, m, regression=False),
    "calodnn.RegressionExperiment": lambda c, m: _calodnn(c, m, regression=True),
    "lartpcdnn.ClassificationExperiment": _lartpcdnn,
    "clustercount.PeakFindingExperiment": _peak_finding,
    "clustercount.ClusterizationExperiment": _clusterization,
}


# ------------------------------------------------------------------------------------------------------------
# Descriptions (JSON)
# ------------------------------------------------------------------------------------------------------------


def describe_preprocess(step) -> list[dict]:
    """The pre-processing as JSON steps, in order; the fitted constants included."""
    from dlkit.metadata import to_jsonable

    if step is None:
        return []
    steps = getattr(step, "steps", None)
    if steps is not None and type(step).__name__ == "Chain":
        return [d for s in steps for d in describe_preprocess(s)]
    name = type(step).__name__
    if name == "Normalize":
        return [{"step": "Normalize", "arrays": to_jsonable(step.norms),
                 "formula": "x / norm; 'nonlinear': tanh(sign(x) * log(|x| + 1) / 2)"}]
    if name == "Standardize":
        return [{"step": "Standardize", "constants": to_jsonable(step.constants), "mask_suffix": step.mask_suffix,
                 "formula": "(x - center) / scale; in a collection only where <name>_mask is true"}]
    if isinstance(step, AsFloat32):
        return [{"step": "AsFloat32", "arrays": list(step.names)}]
    doc = (type(step).__doc__ or "").strip().splitlines()
    params = {k: v for k, v in vars(step).items() if not k.startswith("_")} if hasattr(step, "__dict__") else {}
    return [{"step": f"{type(step).__module__}.{type(step).__qualname__}", "doc": doc[0] if doc else "",
             "parameters": to_jsonable(params)}]


def model_io(model) -> tuple[list[dict], list[dict]]:
    """The model's inputs and outputs: ``{"name", "shape" (None for the batch), "dtype"}`` each; outputs are
    named by their layers."""
    inputs = [{"name": t.name, "shape": [None if d is None else int(d) for d in t.shape], "dtype": str(t.dtype)}
              for t in model.inputs]
    names = list(getattr(model, "output_names", None) or [t._keras_history[0].name for t in model.outputs])
    outputs = [{"name": name, "shape": [None if d is None else int(d) for d in t.shape], "dtype": str(t.dtype)}
               for name, t in zip(names, model.outputs)]
    return inputs, outputs


def output_columns(meaning: dict, width: int, name: str) -> list[str]:
    """The score-file columns of one output of ``width`` values."""
    if meaning.get("columns") and len(meaning["columns"]) == width:
        return list(meaning["columns"])
    classes = meaning.get("classes") or []
    if meaning.get("kind") == "classification" and len(classes) == width:
        return [f"score_{c}" for c in classes]
    if meaning.get("kind") == "binary classification" and width == 1 and classes:
        return [f"score_{classes[-1]}"]
    return [name] if width == 1 else [f"{name}_{i}" for i in range(width)]


def describe_outputs(recipe, outputs: list[dict]) -> list[dict]:
    """Each model output with its meaning (the recipe's, else its shape's) and its score-file columns."""
    meanings = list(getattr(recipe, "outputs", None) or [])
    out = []
    for i, spec in enumerate(outputs):
        meaning = dict(meanings[i]) if i < len(meanings) else {"kind": "unknown"}
        width = int(np.prod([d for d in spec["shape"][1:] if d is not None])) if len(spec["shape"]) > 1 else 1
        out.append({**spec, **meaning, "columns": output_columns(meaning, width, spec["name"])})
    return out
