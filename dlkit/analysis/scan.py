"""Comparing the runs of a scan: DLKit's notebook API (``LoadModels``, ``ScanTable``, ``PlotMetaData``, ...).

Each ``TrainedModels/<Name>[.n]/`` directory becomes a :class:`ScanModel`: its path, its metadata (the
``MetaData.json`` dict, empty if unreadable), a status flag and, on request, the Keras model. A run
that failed, was interrupted, was killed, or left corrupt metadata is a flagged model, never an
exception::

    from dlkit.analysis.scan import *

    MyModels = LoadModels("TrainedModels/")                  # a directory, a glob or a list
    GetGoodParams(MyModels)                                  # ['Width', 'Depth', 'Ele_AUC', ...]
    GetHistorical(MyModels)                                  # adds 'All_History.val_loss', ...
    ResetNames(MyModels, ["Width", "Depth"])                 # "Width=32 Depth=1"
    ScanTable(MyModels, ["Model Name", "Width", "Depth", "Epochs", "Ele_AUC"], sort=[1, 2, 0])
    ScanTable(MyModels, select=lambda md: md["Depth"] > 1 and md.status == "ok", sort="-Ele_AUC")
    PlotMetaDataMany(MyModels, 4, ["All_History.val_loss"])  # a Figure, 4 models per panel
    PlotMetaData(MyModels, "Epochs")                         # bar chart of a scalar

Column names (and ``PlotMetaData`` keys) are a top-level key (``"Ele_AUC"``, ``"All_History.loss"``), a
dotted path into nested dicts (``"Configuration.lr"``), with DLKit's ``[i]`` indexing into lists
(``"FinalScore[0]"``, ``"History.val_loss[-1]"``, ``"InputMetaData[0].Epochs"``); or one of the computed
columns ``Model Name``, ``Status``, ``Message``, ``Path``, ``Epochs`` (summed over resumes); a name
found nowhere else falls back to the scan point, then to the last value of that metric in the history
over resumes (``"loss"``, ``"val_accuracy"``). Nothing is ``eval``'d: selections are Python callables.
"""

from __future__ import annotations

import difflib
import glob
import logging
import math
import numbers
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dlkit.analysis import style

log = logging.getLogger(__name__)

__all__ = [
    "ScanModel", "LoadModels", "PointModels", "ScanTable", "format_table", "default_columns", "column_value",
    "check_columns", "UnknownColumnError", "find_model_dirs", "scanned_parameters",
    "GetGoodParams", "GetHistorical", "GetEpochs", "ResetNames", "SelectModels", "PlotMetaData",
    "PlotMetaDataMany", "FLAGS",
    "load_models", "scan_table", "get_good_params", "get_historical", "get_epochs", "reset_names",
    "select_models", "plot_metadata", "plot_metadata_many",
]

#: The status flags of a :class:`ScanModel`.
FLAGS = ("ok", "stopped", "interrupted", "pruned", "failed", "running/killed", "corrupt", "invalid", "no metadata",
         "model error", "missing", "stuck")

#: The columns computed from the model rather than read from its metadata.
COMPUTED_COLUMNS = ("Model Name", "Status", "Message", "Path", "Epochs")

_MISSING = object()
_INDEX = re.compile(r"\[(-?\d+)\]")
_UNFINISHED = ("new", "initialized", "training", "loaded")


def _mw():
    """dlkit.metadata (Keras-free)."""
    import dlkit.metadata as mw

    return mw


class ScanModel(Mapping):
    """One run of a scan: ``path``, ``metadata``, ``status``, ``message``, ``model`` and a display ``name``.

    It reads as its metadata (``m["Width"]``, ``m.get("Ele_AUC")``), so selection callables written
    for a metadata dict work on it, and it keeps DLKit's attribute names (``m.MetaData``, ``m.Name``,
    ``m.Model``). ``status`` is one of :data:`FLAGS`:

    ``ok``
        completed (or finished without training);
    ``stopped``
        a callback (EarlyStopping, TimeStopping) ended training; ``message`` says which;
    ``interrupted``
        a signal stopped it (resumable);
    ``pruned``
        a search trial that ``dlkit.scan search``'s pruner stopped early (final: no analysis metrics);
    ``failed``
        training raised; ``message`` holds the error;
    ``running/killed``
        no ``EndTime``: still running, or killed (SIGKILL, node failure) - possibly without model;
    ``corrupt``
        ``MetaData.json`` unreadable (``message`` says why);
    ``invalid``
        ``MetaData.json`` fails its schema (:func:`dlkit.metadata.metadata_problems`): a required key missing
        or a value of the wrong type; ``message`` names each key and why; the bad values show as empty cells
        (never sorted among good ones);
    ``no metadata``
        the directory holds no ``MetaData.json``;
    ``model error``
        the model was requested (``MetaDataOnly=False``) but could not be loaded;
    ``missing``, ``stuck``
        (:func:`PointModels` only) a scan point with no complete run yet - pending or running (``message``
        says which) - or one the scan gave up on as stuck; a point that failed in the scan is ``failed``.
    """

    def __init__(self, path: str | os.PathLike, metadata: Mapping | None = None, status: str = "ok",
                 message: str = "", model: Any = None, name: str | None = None):
        self.path = Path(path)
        self.metadata: dict = dict(metadata or {})
        self.status = status
        self.message = message
        self.model = model
        self.name = name if name is not None else self.path.name
        self.invalid: dict[str, str] = {}  # key -> what is wrong with it (status "invalid")
        self._history: dict | None = None

    # -- Mapping over the metadata -------------------------------------------------------------
    def __getitem__(self, key):
        return self.metadata[key]

    def __iter__(self) -> Iterator:
        return iter(self.metadata)

    def __len__(self) -> int:
        return len(self.metadata)

    __eq__ = object.__eq__  # two runs are never "equal" because their metadata is
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"ScanModel({self.name!r}, status={self.status!r}, path={str(self.path)!r})"

    # -- DLKit names ---------------------------------------------------------------------------
    @property
    def MetaData(self) -> dict:  # noqa: N802
        return self.metadata

    @property
    def Name(self) -> str:  # noqa: N802
        return self.name

    @Name.setter
    def Name(self, value: str) -> None:  # noqa: N802
        self.name = value

    @property
    def Model(self):  # noqa: N802
        return self.model

    # -- derived -------------------------------------------------------------------------------
    @property
    def ok(self) -> bool:
        """True for runs that ended normally (``ok`` or ``stopped``)."""
        return self.status in ("ok", "stopped")

    @property
    def history(self) -> dict[str, list]:
        """The training history over all resumes (:func:`dlkit.model_wrapper.chained_history`)."""
        if self._history is None and any(k.endswith("History") for k in self.invalid):
            self._history = {}
        if self._history is None:
            try:
                self._history = _mw().chained_history(self.metadata) if self.metadata else {}
            except (TypeError, AttributeError, ValueError) as exc:  # malformed History entries
                log.warning("%s: unreadable History (%s)", self.path, exc)
                self._history = {}
        return self._history

    @property
    def epochs(self) -> int | None:
        """Epochs trained over all resumes (None without metadata)."""
        return _total_epochs(self.metadata)


# -- loading ------------------------------------------------------------------------------------

def _has_run_files(path: Path) -> bool:
    mw = _mw()
    return (path / mw.METADATA_FILE).exists() or (path / mw.MODEL_FILE).exists()


def _model_dirs(path: Path, explicit: bool) -> list[Path]:
    """A model directory itself, or the immediate (non-hidden) sub-directories of a container."""
    if _has_run_files(path):
        return [path]
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        return subdirs
    return [] if explicit else [path]  # a glob match without metadata is a (flagged) run


def find_model_dirs(spec) -> list[Path]:
    """The model directories named by a directory, a glob, a ``MetaData.json`` path or a list of those.

    A directory holding ``MetaData.json`` or ``model.keras`` is one run; any other directory stands for
    its immediate sub-directories (``TrainedModels/``). Raises FileNotFoundError for a path that does
    not exist or a glob that matches nothing.
    """
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found += _model_dirs(path, explicit=True)
        elif path.is_file():
            if path.name != _mw().METADATA_FILE:
                raise NotADirectoryError(f"{path}: not a model directory")
            found.append(path.parent)
        elif glob.has_magic(str(item)):
            matches = sorted(Path(m) for m in glob.glob(str(item)))
            if not matches:
                raise FileNotFoundError(f"{item}: no match")
            for match in matches:
                if match.is_dir():
                    found += _model_dirs(match, explicit=False)
                elif match.name == _mw().METADATA_FILE:
                    found.append(match.parent)
        else:
            raise FileNotFoundError(f"{item}: no such directory")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _status_of(metadata: Mapping) -> tuple[str, str]:
    status = metadata.get("Status")
    reason = str(metadata.get("StopReason") or "")
    if status == "completed":
        return "ok", reason
    if status in ("stopped", "interrupted", "pruned", "failed"):
        return status, reason
    if status == "analysing":
        return "running/killed", "trained and saved, but its analysis did not finish (still running, or killed)"
    ended = bool(metadata.get("EndTime"))
    if status is None or status in _UNFINISHED:
        if ended:
            return "ok", f"finished without training (Status {status})" if status else reason
        saved = metadata.get("SaveTime")
        return "running/killed", (f"Status {status!r}, no EndTime: still running, or killed; "
                                  + (f"last saved {saved}" if saved else "never saved a model"))
    return str(status), reason  # a status this version does not know: shown as is


def _load_one(path: Path, metadata_only: bool, safe_mode: bool, compile: bool) -> ScanModel:
    mw = _mw()
    metadata_path = path / mw.METADATA_FILE
    if not metadata_path.exists():
        has_model = (path / mw.MODEL_FILE).exists()
        model = ScanModel(path, {}, "no metadata",
                          f"{metadata_path}: missing" + (f" ({mw.MODEL_FILE} present)" if has_model else ""))
    else:
        try:
            model = ScanModel(path, mw.read_metadata(path))
            model.invalid = mw.metadata_problems(model.metadata)
            if model.invalid:
                model.status = "invalid"
                model.message = "; ".join(f"{key}: {why}" for key, why in model.invalid.items())
            else:
                model.status, model.message = _status_of(model.metadata)
        except (mw.MetaDataError, OSError) as exc:
            model = ScanModel(path, {}, "corrupt", str(exc))
    if not metadata_only:
        model_path = path / mw.MODEL_FILE
        try:
            if not model_path.is_file():
                raise FileNotFoundError(f"{model_path}: missing")
            from dlkit.saving import load_model  # a save of any backend, also with compile=True

            model.model = load_model(model_path, compile=compile, safe_mode=safe_mode)
        except Exception as exc:  # noqa: BLE001 - any load error becomes a flag, not a crash
            note = f"{type(exc).__name__}: {exc}" if not isinstance(exc, FileNotFoundError) else str(exc)
            run = model.status + (f": {model.message}" if model.message else "")
            model.message = f"{note} (run status {run})"
            model.status = "model error"
    if model.status != "ok":
        log.info("%s: %s %s", path, model.status, model.message)
    return model


def LoadModels(ModelDirs, MetaDataOnly: bool = True, progress: bool | None = None, safe_mode: bool = True,
               compile: bool = False) -> list[ScanModel]:  # noqa: N802, N803 - DLKit's names
    """Load the runs of a scan as :class:`ScanModel` objects, one per model directory.

    Parameters
    ----------
    ModelDirs
        A ``TrainedModels/`` directory (its immediate sub-directories), one model directory, a glob
        (``"TrainedModels/Dense_*"``), or a list of these. ScanModel objects in a list pass through.
    MetaDataOnly
        Read only ``MetaData.json`` (fast, no Keras model); False also loads ``model.keras`` into
        ``.model`` - a failure flags the run ``"model error"``.
    progress
        Show a tqdm bar on stderr; default: when loading 50 or more runs and stderr is a terminal.
    safe_mode, compile
        Passed to :func:`keras.saving.load_model` (``safe_mode=False`` only for files you trust).

    Returns a list in path order; unreadable runs are flagged, never raised. Raises FileNotFoundError
    if a path does not exist or a glob matches nothing.

    >>> MyModels = LoadModels("TrainedModels/")
    >>> [m.Name for m in MyModels if m.status != "ok"]
    >>> MyModel = LoadModels("TrainedModels/Dense_64.1", MetaDataOnly=False)[0].Model
    """
    items = [ModelDirs] if isinstance(ModelDirs, (str, os.PathLike)) else list(ModelDirs)
    ready = [m for m in items if isinstance(m, ScanModel)]
    named = [m for m in items if not isinstance(m, ScanModel)]
    paths = find_model_dirs(named) if named else []
    if progress is None:
        progress = len(paths) >= 50 and sys.stderr.isatty()
    iterator: Iterable[Path] = paths
    if progress:
        from tqdm import tqdm

        iterator = tqdm(paths, desc="loading models", unit="model", file=sys.stderr)
    loaded = [_load_one(p, MetaDataOnly, safe_mode, compile) for p in iterator]
    flagged = sum(not m.ok for m in loaded)
    if flagged:
        log.info("LoadModels: %d of %d runs flagged", flagged, len(loaded))
    return ready + loaded


def _newest_complete(runs: list[ScanModel]) -> ScanModel:
    """The newest run that ended normally, else the newest run (flagged)."""
    def order(m: ScanModel):
        suffix = m.path.name.rpartition(".")[2]
        return (str(m.metadata.get("EndTime") or ""), int(suffix) if suffix.isdigit() else 0)

    ok = [m for m in runs if m.ok]
    return max(ok or runs, key=order)


def PointModels(path, name: str | None = None) -> list[ScanModel]:  # noqa: N802
    """One :class:`ScanModel` per scan point: the newest complete run of each point.

    With a ``dlkit.scan`` ledger under ``path`` (an OutputBase), every point of the scan is a row, in point
    order: a done point is its completed run (the ledger knows which), a point without one is a placeholder
    flagged ``missing`` (pending or running), ``failed`` or ``stuck`` whose ``message`` is the ledger's last error.
    Without a ledger (runs started by hand with ``-s``), the runs under ``path`` are grouped by their
    ``HyperParamSet`` and the newest complete run of each point is kept.
    """
    from dlkit.scan.api import status_rows
    from dlkit.scan.ledger import Ledger, ScanError

    try:
        ledgers = Ledger.find(path, name)
    except ScanError:
        ledgers = []
    if not ledgers:
        groups: dict[Any, list[ScanModel]] = {}
        for m in LoadModels(path):
            key = (m.metadata.get("Name", m.name).rsplit(".", 1)[0] if m.metadata.get("HyperParamSet") is None
                   else m.metadata.get("HyperParamSet"))
            groups.setdefault(key, []).append(m)
        return [_newest_complete(runs) for _, runs in sorted(groups.items(), key=lambda kv: str(kv[0]).zfill(12))]
    out = []
    for ledger in ledgers:
        params_of = ledger.params_lookup()
        for row in status_rows(ledger):
            index = row["point"]
            if row["state"] in ("done", "pruned") and row.get("run_dir") and Path(row["run_dir"]).is_dir():
                out.append(_load_one(Path(row["run_dir"]), True, True, False))
                continue
            point = params_of(index) or {}  # a search trial not sampled yet has none
            status = row["state"] if row["state"] in ("failed", "stuck") else "missing"
            message = row.get("last_error") or ""
            if status == "missing":
                message = (f"{row['state']} on {row['host']}" if row["state"] == "running" else row["state"]) + (
                    f" after {row['attempts']} attempt(s): {message}" if row["attempts"] and message else "")
            out.append(ScanModel(ledger.path, {"HyperParamSet": index, "ScanPoint": point, **point}, status,
                                 message, name=f"{ledger.name}[{index}]"))
    return out


def _as_models(models) -> list[ScanModel]:
    if isinstance(models, (str, os.PathLike)):
        return LoadModels(models)
    models = list(models)
    if all(isinstance(m, ScanModel) for m in models):
        return models
    return LoadModels(models)


# -- values -------------------------------------------------------------------------------------

def _lookup(obj, expr: str):
    """Resolve ``expr`` (``a.b[0].c``; keys may contain dots) in nested dicts and lists; no eval."""
    if expr == "":
        return obj
    if expr.startswith("["):
        m = _INDEX.match(expr)
        if m is None or isinstance(obj, (str, bytes, Mapping)) or not isinstance(obj, Sequence):
            return _MISSING
        try:
            item = obj[int(m.group(1))]
        except IndexError:
            return _MISSING
        rest = expr[m.end():]
        return _lookup(item, rest[1:] if rest.startswith(".") else rest)
    if not isinstance(obj, Mapping):
        return _MISSING
    cuts = [len(expr)] + [i for i in range(len(expr) - 1, 0, -1) if expr[i] in ".["]
    for cut in cuts:  # the longest key first: "All_History.loss" is one key
        head, rest = expr[:cut], expr[cut:]
        if head in obj:
            if rest.startswith("."):
                rest = rest[1:]
                if not rest:
                    continue
            value = _lookup(obj[head], rest)
            if value is not _MISSING:
                return value
    return _MISSING


def _walk(obj, keys: Sequence):
    """DLKit's key path ``["History", "val_loss"]``: exact keys (or list indices), in turn."""
    for key in keys:
        try:
            obj = obj[key]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return obj


def _run_epochs(run) -> int:
    if not isinstance(run, Mapping):
        return 0
    history = run.get("History")
    lengths = [len(v) for v in history.values() if isinstance(v, list)] if isinstance(history, Mapping) else []
    n = max(lengths, default=0)
    epoch_time = run.get("EpochTime")
    return max(n, len(epoch_time) if isinstance(epoch_time, list) else 0)


def _total_epochs(metadata: Mapping) -> int | None:
    if not metadata:
        return None
    earlier = metadata.get("InputMetaData")
    total = _run_epochs(metadata) + (sum(_run_epochs(r) for r in earlier) if isinstance(earlier, list) else 0)
    recorded = metadata.get("TotalEpochs")
    if total == 0 and isinstance(recorded, int) and not isinstance(recorded, bool):
        return recorded
    return total


def _last(values) -> Any:
    for v in reversed(list(values)):
        if v is not None:
            return v
    return None


class UnknownColumnError(LookupError):
    """A table column or sort key that no run has; the message names it and the closest valid names."""


def column_value(model: ScanModel, column) -> Any:
    """The value of one table column for one run (None when absent); see the module docstring."""
    value = _column_value(model, column)
    return None if value is _MISSING else value


def _column_value(model: ScanModel, column) -> Any:
    """:func:`column_value`, with ``_MISSING`` where the run has no such column (None: it has, empty)."""
    if isinstance(column, (list, tuple)):
        value = _walk(model.metadata, column)
        return None if value is not _MISSING and str(column[0]) in model.invalid else value
    if column == "Model Name":
        return model.name
    if column == "Status":
        return model.status
    if column == "Message":
        return model.message
    if column == "Path":
        return str(model.path)
    if column == "Epochs":
        return model.epochs
    if re.split(r"[.\[]", str(column), maxsplit=1)[0] in model.invalid:
        return None  # a value that failed the schema is not shown, nor sorted among the good ones
    value = _lookup(model.metadata, column)
    if value is _MISSING:
        point = model.metadata.get("ScanPoint")
        if isinstance(point, Mapping) and column in point:
            value = point[column]
    if value is _MISSING and column in model.history:
        value = _last(model.history[column])
    return value


def check_columns(models: Sequence[ScanModel], columns: Sequence, what: str = "column") -> None:
    """Raise :class:`UnknownColumnError` for a column (or sort key) that no run in ``models`` has - a typo such
    as ``Gamma_AUCC`` - naming it and the closest names the runs do have."""
    if not models:
        return
    for column in columns:
        if isinstance(column, int) or column in COMPUTED_COLUMNS:
            continue
        if any(_column_value(m, column) is not _MISSING for m in models):
            continue
        known = set(COMPUTED_COLUMNS)
        for m in models:
            known.update(k for k in m.metadata if isinstance(k, str))
            point = m.metadata.get("ScanPoint")
            known.update(point if isinstance(point, Mapping) else ())
            known.update(m.history)
        name = ".".join(map(str, column)) if isinstance(column, (list, tuple)) else str(column)
        close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownColumnError(f"{what} {name!r}: no run has it{hint} (python -m dlkit.ScanAnalysis DIR "
                                 "--list-keys lists the keys)")


def _missing(value) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _sort_key(value, reverse: bool) -> tuple:
    if _missing(value):
        return (-1 if reverse else 3, 0)  # missing values last, whatever the direction
    if isinstance(value, numbers.Real):
        return (0, float(value))
    return (1, str(value))


# -- the notebook API ----------------------------------------------------------------------------

def default_columns(models) -> list[str]:
    """Model Name, Status, the scanned parameters, Epochs, every ``*_AUC``, resolution fit parameters,
    and the final ``loss`` / ``val_loss`` (those present in any run)."""
    models = _as_models(models)
    analysis: dict[str, None] = {}
    metrics: dict[str, None] = {}
    for m in models:
        for key, value in m.metadata.items():
            wanted = key.endswith("_AUC") or re.search(r"Resolution_[abc]$", key)
            if wanted and not isinstance(value, (list, dict)):
                analysis.setdefault(key)
        for metric in ("loss", "val_loss"):
            if metric in m.history:
                metrics.setdefault(metric)
    final = [k for k in ("loss", "val_loss") if k in metrics]
    return ["Model Name", "Status", *scanned_parameters(models), "Epochs", *analysis, *final]


def scanned_parameters(models) -> list[str]:
    """The names of the scanned parameters (each run's ``ScanPoint`` keys), in first-seen order."""
    scanned: dict[str, None] = {}
    for m in _as_models(models):
        point = m.metadata.get("ScanPoint")
        if isinstance(point, Mapping):
            scanned.update(dict.fromkeys(point))
    return list(scanned)


def _sort_models(models: list[ScanModel], sort, columns: Sequence, reverse: bool) -> list[ScanModel]:
    if sort is None:
        return list(models)
    specs = [sort] if isinstance(sort, (str, int)) else list(sort)
    resolved = []
    for spec in specs:
        descending = False
        if isinstance(spec, str) and spec.startswith("-") and len(spec) > 1:
            descending, spec = True, spec[1:]
        if isinstance(spec, int) and not isinstance(spec, bool):
            if not -len(columns) <= spec < len(columns):
                raise IndexError(f"sort column {spec} out of range: the table has {len(columns)} columns "
                                 f"({', '.join(map(str, columns))})")
            spec = columns[spec]
        else:
            check_columns(models, [spec], "sort key")
        resolved.append((spec, descending))
    ordered = list(models)
    for spec, descending in reversed(resolved):  # stable sorts, least significant key first
        flip = descending != reverse
        ordered.sort(key=lambda m: _sort_key(column_value(m, spec), flip), reverse=flip)
    return ordered


def _column_frame(rows: list[list], columns: list) -> pd.DataFrame:
    data = {}
    for j, column in enumerate(columns):
        values = [row[j] for row in rows]
        present = [v for v in values if not _missing(v)]
        if present and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in present):
            series = pd.Series([None if _missing(v) else int(v) for v in values],
                               dtype="Int64" if len(present) < len(values) else "int64")
        elif present and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in present):
            series = pd.Series([np.nan if _missing(v) else float(v) for v in values], dtype="float64")
        else:
            series = pd.Series(values, dtype=object)
        data[j] = series
    frame = pd.DataFrame(data, index=pd.RangeIndex(len(rows)))
    frame.columns = [c if isinstance(c, str) else ".".join(map(str, c)) for c in columns]
    return frame


def ScanTable(Models, columns: Sequence | None = None, sort=None, select: Callable | None = None,
              reverse: bool = False) -> pd.DataFrame:  # noqa: N802, N803
    """A table of the runs of a scan, one row per run (flagged runs included), as a DataFrame.

    Parameters
    ----------
    Models
        :class:`ScanModel` objects, or anything :func:`LoadModels` takes.
    columns
        Column names (see the module docstring); integers pick from :func:`default_columns`, which is
        also the default: Model Name, Status, the scanned parameters, Epochs (over resumes), each
        ``*_AUC``, resolution parameters, final loss and val_loss.
    sort
        A column name or index, or a list of them (DLKit's ``[1, 2, 0]``): indices refer to
        ``columns``; names may be any column expression, and a leading ``-`` sorts that key descending.
        Missing values sort last. A column or sort key that no run has is an :class:`UnknownColumnError`
        naming it and the closest valid names.
    select
        ``callable(model) -> bool`` on each :class:`ScanModel` (which reads like its metadata dict);
        runs for which it raises KeyError/TypeError/ValueError/IndexError are left out.
    reverse
        Sort descending.

    >>> ScanTable(MyModels, ["Model Name", "Width", "Depth", "Epochs", "Ele_AUC"], sort=[1, 2, 0])
    >>> ScanTable("TrainedModels/", select=lambda m: m.status == "ok" and m["lr"] < 0.1, sort="-Ele_AUC")
    >>> print(format_table(ScanTable(MyModels)))
    """
    models = _as_models(Models)
    if select is not None:
        models = SelectModels(models, select)
    defaults = default_columns(models) if columns is None or any(isinstance(c, int) for c in columns) else []
    if columns is None:
        columns = defaults
    else:
        columns = [defaults[c] if isinstance(c, int) and not isinstance(c, bool) else c for c in columns]
    check_columns(models, columns)
    models = _sort_models(models, sort, columns, reverse)
    rows = [[column_value(m, c) for c in columns] for m in models]
    return _column_frame(rows, list(columns))


def format_table(frame: pd.DataFrame, tablefmt: str = "simple", floatfmt: str = ".4f",
                 missing: str = "N/A") -> str:
    """A scan table as text with :mod:`tabulate` (DLKit's print), missing values shown as ``missing``.

    >>> print(format_table(ScanTable(MyModels), tablefmt="github"))
    """
    from tabulate import tabulate

    rows = [[None if _missing(v) else v for v in row] for row in frame.itertuples(index=False, name=None)]
    return tabulate(rows, headers=[str(c) for c in frame.columns], tablefmt=tablefmt, floatfmt=floatfmt,
                    missingval=missing)


def GetGoodParams(Models) -> list[str]:  # noqa: N802, N803
    """The metadata keys holding an int or float (not bool) in any run, in first-seen order.

    >>> GetGoodParams(MyModels)
    ['Width', 'Depth', 'HyperParamSet', 'Epochs', 'TotalEpochs', 'Ele_AUC', ...]
    """
    keys: dict[str, None] = {}
    for m in _as_models(Models):
        for key, value in m.metadata.items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                keys.setdefault(key)
    return list(keys)


def GetEpochs(Models) -> list[int | None]:  # noqa: N802, N803
    """Epochs trained per run, summed over resumes; also stored as ``metadata["TotalEpochs"]``.

    >>> GetEpochs(MyModels)
    [12, 30, None]
    """
    out = []
    for m in _as_models(Models):
        epochs = m.epochs
        if epochs is not None:
            m.metadata["TotalEpochs"] = epochs
        out.append(epochs)
    return out


def GetHistorical(Models, Params: Sequence | None = None) -> list[str]:  # noqa: N802, N803
    """Add values over all resumes of each run to its metadata; returns the new keys, sorted.

    Every history metric becomes ``All_History.<metric>`` (the chained history, earlier runs first).
    Each of ``Params`` (default: :func:`GetGoodParams`) becomes ``All_<key>``: the key's value in each
    run of the chain; a list path such as ``["History", "loss"]`` concatenates list values into
    ``All_History.loss``.

    >>> GetHistorical(MyModels)
    ['All_Depth', 'All_History.loss', 'All_History.val_loss', 'All_Width', ...]
    >>> PlotMetaDataMany(MyModels, 4, ["All_History.val_loss"])
    """
    models = _as_models(Models)
    params = list(GetGoodParams(models) if Params is None else Params)
    new: set[str] = set()
    for m in models:
        if not m.metadata:
            continue
        for metric, values in m.history.items():
            m.metadata[f"All_History.{metric}"] = list(values)
            new.add(f"All_History.{metric}")
        earlier = m.metadata.get("InputMetaData")
        chain = [r for r in earlier if isinstance(r, Mapping)] if isinstance(earlier, list) else []
        chain.append(m.metadata)
        for p in params:
            if isinstance(p, (list, tuple)):
                name = "All_" + ".".join(map(str, p))
                if tuple(p) == ("History",) or (len(p) == 2 and p[0] == "History"):
                    continue  # the chained history above already holds it
                values: list = []
                for run in chain:
                    v = _walk(run, p)
                    if isinstance(v, list):
                        values += v
                    elif v is not _MISSING:
                        values.append(v)
            else:
                name = f"All_{p}"
                values = [run.get(p) for run in chain]
            m.metadata[name] = values
            new.add(name)
    return sorted(new)


def ResetNames(Models, Params: Sequence[str],
               Func: Callable | None = None) -> list[ScanModel]:  # noqa: N802, N803
    """Rename runs for tables and legends: ``"Width=32 Depth=1"`` from ``Params``, or ``Func(model)``.

    A run missing one of the parameters keeps its name. Returns the models.

    >>> ResetNames(MyModels, ["Width", "Depth"])
    >>> ResetNames(MyModels, [], Func=lambda m: f"{m['Width']}x{m['Depth']}")
    """
    models = _as_models(Models)
    for m in models:
        if Func is not None:
            try:
                m.name = str(Func(m))
            except (KeyError, TypeError, ValueError, IndexError):
                log.debug("ResetNames: %s keeps its name", m.path)
            continue
        values = [column_value(m, p) for p in Params]
        if all(v is not None for v in values):
            m.name = " ".join(f"{p}={v}" for p, v in zip(Params, values))
    return models


def SelectModels(Models, func: Callable) -> list[ScanModel]:  # noqa: N802, N803
    """The runs for which ``func(model)`` is true; runs where it raises a KeyError, TypeError,
    ValueError, IndexError or AttributeError (e.g. a key absent in a flagged run) are left out.

    ``model`` is a :class:`ScanModel`: it reads as the metadata dict and also has ``.status``,
    ``.MetaData``, ``.name``.

    >>> Adam = SelectModels(MyModels, lambda m: m["Optimizer"] == "Adam" and m["lr"] == 0.01)
    >>> good = SelectModels(MyModels, lambda m: m.status in ("ok", "stopped"))
    """
    out = []
    for m in _as_models(Models):
        try:
            keep = bool(func(m))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            log.debug("SelectModels: %s left out (%s: %s)", m.path, type(exc).__name__, exc)
            keep = False
        if keep:
            out.append(m)
    return out


def _values_for(models: list[ScanModel], keys) -> list:
    if isinstance(keys, (list, tuple)) and len(keys) == 1:
        keys = keys[0]
    return [column_value(m, keys) for m in models]


def _loss_name(models: list[ScanModel]) -> str | None:
    """The runs' common ``Loss`` entry (for axis labels), or None where they differ."""
    names = {m.metadata.get("Loss") for m in models if isinstance(m.metadata.get("Loss"), str)}
    return names.pop() if len(names) == 1 else None


def _key_label(keys) -> str:
    return ".".join(map(str, keys)) if isinstance(keys, (list, tuple)) else str(keys)


def PlotMetaData(Models, keys, mode: str = "epoch", loc: str | None = None, label: str = "", ax=None,
                 **kwargs) -> Figure:  # noqa: N802, N803
    """Plot one metadata entry for several runs: lines for list values, a bar chart for scalars.

    Parameters
    ----------
    keys
        A column expression (``"All_History.val_loss"``, ``"Epochs"``, ``"Ele_AUC"``) or DLKit's key path
        ``["History", "val_loss"]``.
    mode
        For list values: ``"epoch"`` (value vs epoch, one line per run) or ``"hist"`` (a histogram of
        each run's values).
    loc, label
        Legend location (by default ``best`` for a few runs, right of the axes for many) and a suffix for
        each run's legend label.
    ax
        Draw into this Axes instead of a new Figure.
    kwargs
        Passed to ``Axes.plot`` / ``hist`` / ``bar``.

    Returns the Figure. Runs without the entry are skipped. The bars of a fraction (AUC, accuracy,
    efficiency) start at 0, so that their heights compare honestly.

    >>> fig = PlotMetaData(MyModels, "All_History.val_loss")
    >>> fig = PlotMetaData(MyModels, ["Epochs"])
    """
    if mode not in ("epoch", "hist"):
        raise ValueError(f"mode must be 'epoch' or 'hist', got {mode!r}")
    models = _as_models(Models)
    if ax is None:
        _, ax = style.figure((8, 4.8))
    values = _values_for(models, keys)
    lists = [(m, v) for m, v in zip(models, values) if isinstance(v, list)]
    scalars = [(m, v) for m, v in zip(models, values)
               if isinstance(v, numbers.Real) and not isinstance(v, bool) and not _missing(v)]
    name = _key_label(keys)
    if lists:
        for m, v in lists:
            y = np.array([np.nan if x is None else x for x in v], dtype=float)
            if mode == "epoch":
                ax.plot(np.arange(1, len(y) + 1), y, label=m.name + label, **kwargs)
            else:
                ax.hist(y[np.isfinite(y)], label=m.name + label, histtype="step", **kwargs)
        quantity = (style.metric_axis_label([name], _loss_name(models)) if "History" in name else name)
        if mode == "epoch":
            style.epoch_axis(ax)
            ax.set_ylabel(quantity)
        else:
            ax.set(xlabel=quantity, ylabel="entries")
        style.legend(ax, **({"loc": loc} if loc else {}))
    elif scalars:
        y = np.array([float(v) for _, v in scalars])
        x = np.arange(len(scalars))
        ax.bar(x, y, **kwargs)
        ax.set_xticks(x, [m.name for m, _ in scalars], rotation="vertical", fontsize=8)
        if style.is_fraction(name):
            style.fraction_axis(ax)
        else:
            span = float(y.max() - y.min()) or abs(float(y.max())) * 0.1 or 1.0
            ax.set_ylim(min(0.0, y.min()) if y.min() >= 0 and y.min() < 0.2 * span else y.min() - 0.2 * span,
                        y.max() + 0.2 * span)
        ax.grid(False, axis="x")
        ax.set_ylabel(name + label)
    else:
        log.warning("PlotMetaData: no run has a plottable %r", name)
        ax.text(0.5, 0.5, f"no values for {name}", ha="center", va="center", transform=ax.transAxes)
    return ax.figure


def _chunks(models: list[ScanModel], n: int, switch: Sequence | None) -> list[list[ScanModel]]:
    if not switch:
        return [models[i:i + n] for i in range(0, len(models), n)]
    partitions: dict[tuple, list[ScanModel]] = {}
    for m in models:
        key = tuple(repr(column_value(m, s)) for s in switch)
        partitions.setdefault(key, []).append(m)
    return [part[i:i + n] for part in partitions.values() for i in range(0, len(part), n)]


def PlotMetaDataMany(Models, N: int, keys, select: Callable | None = None, sort=None,
                     switch: Sequence | None = None, reverse: bool = False, max_plots: int | None = None,
                     **kwargs) -> Figure:  # noqa: N802, N803
    """:func:`PlotMetaData` for many runs, ``N`` runs per panel, all panels in one Figure.

    Parameters
    ----------
    N
        Runs per panel.
    keys
        One key, or a list of keys drawn in the same panels (each a column expression or a key path).
    select
        ``callable(model) -> bool`` (see :func:`SelectModels`).
    sort, reverse
        Order of the runs (see :func:`ScanTable`), e.g. ``sort="-Ele_AUC"`` to put the best first.
    switch
        Keys whose values must be equal within a panel (DLKit's ``switch``), e.g. ``["Depth"]``.
    max_plots
        At most this many panels; ``max_plots=1`` plots the top ``N`` runs only.
    kwargs
        Passed to :func:`PlotMetaData` (``mode``, ``loc``, line styles).

    >>> GetHistorical(MyModels)
    >>> fig = PlotMetaDataMany(MyModels, 4, ["All_History.val_loss"], sort="-Ele_AUC", max_plots=3)
    """
    if N < 1:
        raise ValueError(f"N must be >= 1, got {N}")
    models = _as_models(Models)
    if select is not None:
        models = SelectModels(models, select)
    models = _sort_models(models, sort, [], reverse) if sort is not None else models
    groups = _chunks(models, N, switch)[:max_plots] if max_plots else _chunks(models, N, switch)
    key_list = [keys] if isinstance(keys, str) else list(keys)
    fig, axes = style.figure((8, 3.6 * max(len(groups), 1)), nrows=max(len(groups), 1))
    axes = np.atleast_1d(axes)
    for ax, group in zip(axes, groups):
        for k in key_list:
            PlotMetaData(group, k, ax=ax, label=f" {_key_label(k)}" if len(key_list) > 1 else "", **kwargs)
        if len(key_list) > 1 and ax.get_lines():
            ax.set_ylabel(", ".join(_key_label(k) for k in key_list))
    if not groups:
        axes[0].text(0.5, 0.5, "no runs selected", ha="center", va="center", transform=axes[0].transAxes)
    return fig


# PEP 8 aliases of the DLKit names.
load_models = LoadModels
scan_table = ScanTable
get_good_params = GetGoodParams
get_historical = GetHistorical
get_epochs = GetEpochs
reset_names = ResetNames
select_models = SelectModels
plot_metadata = PlotMetaData
plot_metadata_many = PlotMetaDataMany
