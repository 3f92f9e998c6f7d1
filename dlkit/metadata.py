"""Saved-run metadata without Keras: the file names, JSON conversion, atomic writes, reading, chains.

Kept apart from :mod:`dlkit.model_wrapper` so scan tables and notebooks read thousands of
``MetaData.json`` files without importing Keras.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dlkit.datasets import atomic_file, fsync_file

logger = logging.getLogger(__name__)

__all__ = ["MODEL_FILE", "METADATA_FILE", "MODEL_HASH", "MetaDataError", "save_pair", "read_saved_pair",
           "file_sha256", "to_jsonable", "atomic_write", "read_metadata",
           "metadata_problems", "chained_history", "run_dirs", "claim_run_dir"]

MODEL_FILE = "model.keras"
METADATA_FILE = "MetaData.json"


class MetaDataError(RuntimeError):
    """A saved model directory is unreadable; the message names the file."""


def to_jsonable(value: Any) -> Any:
    """Convert ``value`` into plain JSON types.

    numpy scalars and arrays become Python numbers and lists, tuples lists, paths strings, callables
    their qualified name; NaN and infinities become None (JSON has no NaN); anything else its repr.
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    return repr(value)


def atomic_write(path: Path, write, suffix: str = "") -> None:
    """Call ``write(tmp_path)``, then rename the temporary file over ``path`` (:func:`dlkit.datasets.atomic_file`,
    dlkit's one atomic write; a hidden temporary name is never mistaken for a save)."""
    with atomic_file(path, suffix=suffix) as tmp:
        write(tmp)


#: MetaData's record of the model file it belongs to (its sha256), checked when the model is loaded.
MODEL_HASH = "ModelSHA256"
#: A save's complete metadata waits here until its model file is in place (see :func:`save_pair`).
PENDING_METADATA = f".{METADATA_FILE}.pending"
_PENDING_MODEL = f".{MODEL_FILE}.pending.keras"  # Keras insists on the .keras suffix


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_pair(directory: str | os.PathLike, write_model, metadata: dict, abandon=None) -> bool:
    """Save a model file and its metadata as one: a kill at any moment leaves a consistent pair.

    ``write_model(path)`` writes the model; ``metadata`` gets the file's sha256 (:data:`MODEL_HASH`). Both are
    written complete (fsynced) under hidden names, then the model and the metadata are renamed into place.
    Killed before the first rename: the previous pair stands. Killed between the renames: the new model and
    its complete pending metadata are there, and :func:`read_saved_pair` reads that metadata with the model.
    ``abandon()`` is asked right before the renames (a scan point whose lease was taken over while it wrote):
    if True, nothing lands and False is returned.
    """
    directory = Path(directory)
    model_tmp, meta_tmp = directory / _PENDING_MODEL, directory / PENDING_METADATA
    try:
        write_model(model_tmp)
        fsync_file(model_tmp)
        metadata[MODEL_HASH] = file_sha256(model_tmp)
        meta_tmp.write_text(json.dumps(to_jsonable(metadata), indent=1))
        fsync_file(meta_tmp)
        if abandon is not None and abandon():
            raise _Abandoned
    except _Abandoned:
        model_tmp.unlink(missing_ok=True)
        meta_tmp.unlink(missing_ok=True)
        return False
    except BaseException:
        model_tmp.unlink(missing_ok=True)
        meta_tmp.unlink(missing_ok=True)
        raise
    os.replace(model_tmp, directory / MODEL_FILE)
    os.replace(meta_tmp, directory / METADATA_FILE)
    return True


class _Abandoned(Exception):
    pass


def read_saved_pair(directory: str | os.PathLike) -> dict:
    """The metadata that belongs to the directory's ``model.keras`` (what :meth:`ModelWrapper.Load` resumes
    from): ``MetaData.json``, or - for a :func:`save_pair` killed between its renames - the complete pending
    metadata saved with that model. Nothing is changed on disk (the run that wrote it may be someone else's).
    :class:`MetaDataError` when no metadata matches the model file."""
    directory = Path(directory)
    metadata = read_metadata(directory)
    expected, model = metadata.get(MODEL_HASH), directory / MODEL_FILE
    if not expected or not model.is_file():
        return metadata  # saved before dlkit recorded the hash, or no model yet
    actual = file_sha256(model)
    if actual == expected:
        return metadata
    try:
        pending = json.loads((directory / PENDING_METADATA).read_text())
    except (OSError, ValueError):
        pending = {}
    if isinstance(pending, dict) and pending.get(MODEL_HASH) == actual:
        logger.warning("%s: its last save was cut short between the model and MetaData.json; using the metadata "
                       "saved with the model (%s)", directory, PENDING_METADATA)
        return pending
    raise MetaDataError(f"{model} is not the model its {METADATA_FILE} was saved with ({MODEL_HASH} differs): the "
                        "directory was changed by hand, or a save was cut short outside dlkit")


def read_metadata(directory: str | os.PathLike) -> dict:
    """Read ``MetaData.json`` of a saved model directory; errors name the file."""
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise MetaDataError(f"{path}: no metadata file (not a dlkit model directory, or never saved)")
    try:
        with open(path) as f:
            metadata = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MetaDataError(f"{path}: corrupt metadata JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise MetaDataError(f"{path}: metadata must be a JSON object, got {type(metadata).__name__}")
    return metadata


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _history_problem(history) -> str | None:
    if not isinstance(history, Mapping):
        return f"expected a dict of per-epoch lists, got {type(history).__name__}"
    for metric, values in history.items():
        if not isinstance(values, list) or not all(v is None or _number(v) for v in values):
            return f"{metric!r} must be a list of numbers, got {values!r:.60}"
    return None


def metadata_problems(metadata: Mapping) -> dict[str, str]:
    """``{key: what is wrong}`` of a ``MetaData.json`` against its schema; empty when it is valid.

    Required: ``Name`` and ``Status`` (strings) and ``History`` (metric -> list of numbers, null for a missing
    value). Where present: ``Configuration`` and ``ScanPoint`` dicts, ``EpochTime`` a list of numbers, epoch
    counts non-negative integers, times strings, ``InputMetaData`` a list of metadata dicts (their History
    checked too), every ``*_AUC`` a number in [0, 1]. Other keys are free (experiments add their own).
    """
    problems: dict[str, str] = {}
    for key in ("Name", "Status"):
        if key not in metadata:
            problems[key] = "missing"
        elif not isinstance(metadata[key], str):
            problems[key] = f"expected a string, got {metadata[key]!r:.60}"
    if "History" not in metadata:
        problems["History"] = "missing"
    elif (problem := _history_problem(metadata["History"])) is not None:
        problems["History"] = problem
    for key, value in metadata.items():
        if value is None:
            continue
        if key in ("Configuration", "ScanPoint") and not isinstance(value, Mapping):
            problems[key] = f"expected a dict, got {type(value).__name__}"
        elif key == "EpochTime" and not (isinstance(value, list) and all(_number(v) for v in value)):
            problems[key] = f"expected a list of seconds, got {value!r:.60}"
        elif key in ("Epochs", "TotalEpochs", "InitialEpoch", "PreviousEpochs") and not (
                isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            problems[key] = f"expected a non-negative integer, got {value!r:.60}"
        elif key in ("StartTime", "EndTime", "SaveTime") and not isinstance(value, str):
            problems[key] = f"expected a time string, got {value!r:.60}"
        elif key.endswith("_AUC") and not (_number(value) and 0.0 <= value <= 1.0):
            problems[key] = f"expected a number in [0, 1], got {value!r:.60}"
        elif key == "InputMetaData":
            if not isinstance(value, list) or not all(isinstance(run, Mapping) for run in value):
                problems[key] = "expected a list of the earlier runs' metadata"
            else:
                for i, run in enumerate(value):
                    if "History" in run and (problem := _history_problem(run["History"])) is not None:
                        problems[f"InputMetaData[{i}].History"] = problem
    return problems


def chained_history(metadata: Mapping) -> dict[str, list]:
    """The training history over all resumes: earlier runs' ``History`` followed by this run's."""
    runs = list(metadata.get("InputMetaData") or []) + [metadata]
    history: dict[str, list] = {}
    for run in runs:
        run_history = run.get("History") or {}
        n = max((len(v) for v in run_history.values()), default=0)
        previous = max((len(v) for v in history.values()), default=0)
        for key in set(history) | set(run_history):
            values = history.setdefault(key, [None] * previous)
            new = list(run_history.get(key, []))
            values.extend(new + [None] * (n - len(new)))
    return history


def run_dirs(output_base: str | os.PathLike, name: str) -> list[tuple[int, Path]]:
    """The existing ``name`` / ``name.<n>`` run directories under ``output_base``, numbered (bare name = 0)."""
    output_base = Path(output_base)
    if not output_base.is_dir():
        return []
    pattern = re.compile(re.escape(name) + r"(?:\.(\d+))?")
    found = []
    for entry in output_base.iterdir():
        m = pattern.fullmatch(entry.name)
        if m and entry.is_dir():
            found.append((int(m.group(1) or 0), entry))
    return sorted(found)


def claim_run_dir(output_base: str | os.PathLike, name: str) -> Path:
    """Claim a fresh ``output_base/name[.n]``: ``mkdir`` is atomic, so no two processes share one."""
    output_base = Path(output_base)
    output_base.mkdir(parents=True, exist_ok=True)
    taken = [n for n, _ in run_dirs(output_base, name)]
    n = 0 if not taken else max(taken) + 1
    for _ in range(100000):
        candidate = output_base / (name if n == 0 else f"{name}.{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            n += 1
            continue
        return candidate
    raise RuntimeError(f"could not claim an output directory for {name} under {output_base}")
