"""A trained run directory, read for export and prediction: its metadata, model file, experiment and recipe.

:func:`load_run` reads ``MetaData.json`` (the one saved with ``model.keras``: :func:`dlkit.metadata.read_saved_pair`),
finds the experiment that trained it and its :class:`~dlkit.export.recipes.Recipe` - which arrays of which
files are the model's inputs, the pre-process that made them, what each output means - and
:meth:`Run.describe` turns that into the JSON that ``model.onnx`` and the score files carry.

The experiment of a run is, in this order: the one named by the caller (``--experiment``), the metadata's
``"Experiment"`` entry, the module its command line ran (``Provenance.argv``: ``python -m calodnn.X`` or a
console script), else the experiment whose model-name prefix the run's name starts with (among the console
scripts of the installed dlkit). An experiment module may define ``prediction_inputs(config, metadata)``
returning a :class:`~dlkit.export.recipes.Recipe` (the hook); dlkit's own experiments have theirs in
:mod:`dlkit.export.recipes`. No Keras is imported here.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from dlkit.experiment import UserError

log = logging.getLogger(__name__)

__all__ = ["ExportError", "Run", "load_run", "config_sha256", "experiment_of", "known_experiments"]


class ExportError(UserError):
    """A run that cannot be exported or predicted with (one line naming what and why; exit code 2)."""


def config_sha256(config) -> str:
    """sha256 of the resolved configuration as canonical JSON (sorted keys): equal configs, equal hashes."""
    from dlkit.metadata import to_jsonable

    text = json.dumps(to_jsonable(config or {}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def known_experiments() -> list[str]:
    """Experiment modules: dlkit's console scripts that are not dlkit's own tools, and the built-in recipes."""
    from dlkit.export.recipes import BUILTIN

    modules = list(BUILTIN)
    try:
        from importlib.metadata import distribution

        for ep in distribution("dlkit").entry_points:
            module = ep.value.split(":")[0]
            if ep.group == "console_scripts" and not module.startswith("dlkit") and module not in modules:
                modules.append(module)
    except Exception:  # noqa: BLE001 - not installed as a distribution: the built-in list
        pass
    return modules


def _from_argv(argv) -> str | None:
    """The experiment module a run's command line ran: ``python -m pkg.Mod`` leaves ``.../pkg/Mod.py`` in
    ``argv[0]``; a console script its name."""
    if not argv:
        return None
    first = Path(str(argv[0]))
    known = known_experiments()
    if first.suffix == ".py":
        dotted = f"{first.parent.name}.{first.stem}"
        return dotted if dotted in known else None
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group="console_scripts"):
            if ep.name == first.name and ep.value.split(":")[0] in known:
                return ep.value.split(":")[0]
    except Exception:  # noqa: BLE001
        return None
    return None


def _prefix(module: str) -> str | None:
    try:
        experiment = getattr(importlib.import_module(module), "EXPERIMENT", None)
    except ImportError:
        return None
    return getattr(experiment, "prefix", None)


def experiment_of(metadata: dict, explicit: str | None = None) -> str | None:
    """The module of the experiment that trained the run (see the module docstring), or None."""
    if explicit:
        return explicit
    if metadata.get("Experiment"):
        return str(metadata["Experiment"])
    found = _from_argv((metadata.get("Provenance") or {}).get("argv"))
    if found:
        return found
    name = str(metadata.get("Name") or "")
    matches = []
    for module in known_experiments():
        prefix = _prefix(module)
        if prefix and (name == prefix or name.startswith((prefix + "_", prefix + "."))):
            matches.append((len(prefix), module))
    return max(matches)[1] if matches else None


@dataclass
class Run:
    """A saved run: its directory, metadata (``MetaData.json``), resolved configuration and experiment."""

    directory: Path
    metadata: dict
    experiment: str | None
    recipe: object = None  # dlkit.export.recipes.Recipe, or None when the experiment is unknown
    notes: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.metadata.get("Name") or self.directory.name)

    @property
    def config(self) -> dict:
        return dict(self.metadata.get("Configuration") or {})

    @property
    def model_path(self) -> Path:
        from dlkit.metadata import MODEL_FILE

        return self.directory / MODEL_FILE

    @property
    def trained_backend(self) -> str | None:
        return (self.metadata.get("Provenance") or {}).get("backend")

    def fitted_standardize(self):
        """The run's fitted :class:`~dlkit.generators.Standardize` (``MetaData["Fitted"]``), or None."""
        from dlkit.generators.fitting import FITTED_KEY, FittedTransforms

        return FittedTransforms.from_json(self.metadata.get(FITTED_KEY)).standardize

    def preprocess(self):
        """The readers' pre-process of the run's inputs: the recipe's fixed steps, then the fitted
        standardization (as in training: :mod:`dlkit.generators.fitting`)."""
        from dlkit.generators.preprocess import Chain

        steps = [s for s in (getattr(self.recipe, "preprocess", None), self.fitted_standardize()) if s is not None]
        return None if not steps else steps[0] if len(steps) == 1 else Chain(*steps)

    def describe(self, model=None) -> dict:
        """What an exported model carries (JSON values): the run, its inputs, outputs and pre-processing."""
        from dlkit.export.recipes import describe_outputs, describe_preprocess, model_io

        import dlkit

        inputs, outputs = model_io(model) if model is not None else ([], [])
        recipe = self.recipe
        return {
            "dlkit_version": dlkit.__version__,
            "run_name": self.name,
            "run_dir": str(self.directory),
            "experiment": self.experiment,
            "config_sha256": config_sha256(self.metadata.get("Configuration")),
            "hyperparam_hash": self.metadata.get("HyperParamHash"),
            "model_sha256": self.metadata.get("ModelSHA256"),
            "trained_backend": self.trained_backend,
            "inputs": [dict(spec, source=(recipe.keys.get(spec["name"]) if recipe else spec["name"]),
                            description=(recipe.sources.get(spec["name"]) if recipe else None)) for spec in inputs],
            "outputs": describe_outputs(recipe, outputs),
            "preprocessing": describe_preprocess(self.preprocess()),
            "preprocessing_in_graph": False,
            "fitted": self.metadata.get("Fitted"),
            "class_names": list(recipe.classes) if recipe and recipe.classes else None,
            "configuration": self.metadata.get("Configuration"),
        }


def _recipe(module: str | None, metadata: dict):
    """The experiment's own ``prediction_inputs`` hook, else dlkit's built-in recipe, else None."""
    from dlkit.export.recipes import BUILTIN

    if module is None:
        return None
    config = dict(metadata.get("Configuration") or {})
    try:
        hook = getattr(importlib.import_module(module), "prediction_inputs", None)
    except ImportError as exc:
        raise ExportError(f"experiment {module}: cannot import it ({exc})") from None
    if hook is not None:
        return hook(config, metadata)
    builtin = BUILTIN.get(module)
    return None if builtin is None else builtin(config, metadata)


def load_run(directory: str | os.PathLike, experiment: str | None = None, need_model: bool = True) -> Run:
    """Read a run directory; :class:`ExportError` when it is not one (or has no saved model)."""
    from dlkit.metadata import MetaDataError, read_saved_pair

    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise ExportError(f"{directory}: no such run directory")
    try:
        metadata = read_saved_pair(directory)
    except MetaDataError as exc:
        raise ExportError(str(exc)) from None
    run = Run(directory=directory, metadata=metadata, experiment=experiment_of(metadata, experiment))
    if need_model and not run.model_path.is_file():
        raise ExportError(f"{directory}: no {run.model_path.name} in it (the run never saved a model)")
    run.recipe = _recipe(run.experiment, metadata)
    if run.recipe is None:
        run.notes.append("experiment unknown: inputs are read by their model names, only the fitted "
                         "standardization is applied, outputs are described by their shapes")
        log.warning("%s: %s", directory, run.notes[-1])
    return run
