"""Load a saved ``.keras`` model with its optimizer on any Keras backend, whichever backend saved it.

Keras records the class of a torch-backend optimizer by its backend module
(``keras.src.backend.torch.optimizers.torch_adam``), so loading such a model with its optimizer under
TensorFlow or JAX imports torch into that process (``import tensorflow, torch._dynamo`` can crash it) and
leaves a torch optimizer that cannot step on the other backend's variables. :func:`load_model` loads
those files through a copy whose optimizer entries name the public ``keras.optimizers`` class instead:
the same class, configuration and saved state (``iterations``, moments), built for the current backend.
Files that name no other backend's optimizer are loaded as they are.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["foreign_optimizer_modules", "load_model"]

_BACKEND_OPTIMIZER = re.compile(r"^keras\.src\.backend\.(?P<backend>\w+)\.optimizers(\.|$)")


def _config(path: Path) -> dict | None:
    """The model's ``config.json``, or None when ``path`` is not a readable ``.keras`` archive (Keras then
    reports the problem itself)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _optimizer_entries(node):
    """Every serialized object (``{"module", "class_name", ...}``) inside an optimizer's config, nested
    ones (a LossScaleOptimizer's inner optimizer) included."""
    if isinstance(node, dict):
        if isinstance(node.get("module"), str) and "class_name" in node:
            yield node
        for value in node.values():
            yield from _optimizer_entries(value)
    elif isinstance(node, list):
        for value in node:
            yield from _optimizer_entries(value)


def _foreign(config: dict, backend: str) -> list[dict]:
    optimizer = (config.get("compile_config") or {}).get("optimizer")
    out = []
    for entry in _optimizer_entries(optimizer):
        match = _BACKEND_OPTIMIZER.match(entry["module"])
        if match and match["backend"] != backend:
            out.append(entry)
    return out


def foreign_optimizer_modules(path: str | os.PathLike, backend: str | None = None) -> list[str]:
    """The backend-specific optimizer modules a saved model names that are not ``backend``'s (default:
    the current Keras backend); empty when the model loads as it is."""
    import keras

    config = _config(Path(path))
    if config is None:
        return []
    return [entry["module"] for entry in _foreign(config, backend or keras.backend.backend())]


def load_model(path: str | os.PathLike, compile: bool = True, safe_mode: bool = True):
    """``keras.saving.load_model`` that also loads a model saved with its optimizer under another backend
    (see the module docstring); ``compile=False`` skips the optimizer anyway."""
    import keras

    from dlkit.models import register as register_point_layers
    from dlkit.schedules import register

    register()  # a model saved with a dlkit learning-rate schedule in its optimizer
    register_point_layers()  # a point model (dlkit.models)
    path = Path(path)
    config = _config(path) if compile else None
    foreign = _foreign(config, keras.backend.backend()) if config is not None else []
    if not foreign:
        return keras.saving.load_model(str(path), compile=compile, safe_mode=safe_mode)
    modules = sorted({entry["module"] for entry in foreign})
    log.info("%s: optimizer saved as %s; loading it as keras.optimizers.%s on the %s backend", path,
             ", ".join(modules), foreign[0]["class_name"], keras.backend.backend())
    for entry in foreign:
        entry["module"] = "keras.optimizers"
        entry["registered_name"] = None
    with tempfile.TemporaryDirectory(prefix="dlkit-load-") as tmp:
        neutral = Path(tmp) / path.name
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(neutral, "w") as dst:
            for info in src.infolist():
                if info.filename == "config.json":
                    dst.writestr(info, json.dumps(config))
                else:
                    with src.open(info) as fin, dst.open(info, "w") as fout:
                        shutil.copyfileobj(fin, fout, 1 << 20)
        return keras.saving.load_model(str(neutral), compile=compile, safe_mode=safe_mode)
