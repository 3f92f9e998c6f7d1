"""The runs of a scan as :class:`ScanModel` objects: finding model directories, reading their metadata and
status (:func:`LoadModels`), one run per scan point (:func:`PointModels`), selecting runs (:func:`SelectModels`).

Part of :mod:`dlkit.analysis.scan` (its docstring has the whole notebook API); import from there.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("dlkit.analysis.scan")

__all__ = ["ScanModel", "LoadModels", "PointModels", "SelectModels", "find_model_dirs", "mark_superseded", "FLAGS"]

#: The status flags of a :class:`ScanModel`.
FLAGS = ("ok", "stopped", "interrupted", "pruned", "failed", "running/killed", "superseded", "corrupt", "invalid",
         "no metadata", "model error", "missing", "stuck")

#: The flags of a run that a later run of its name may have continued or redone (then it is ``superseded``).
_LEFT_BEHIND = ("running/killed", "interrupted", "failed", "no metadata")

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
    ``superseded``
        a run left behind (killed, interrupted or failed) that a later run of the same name in the same
        directory took over: it continued this one's save (its ``InputDir``, ``-p``/``-L``), or started
        afresh after this one never saved a model. ``superseded_by`` is that run's directory; ``message``
        says what this run was and where it went on. Never among the ok runs a report judges;
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
        self.superseded_by: Path | None = None  # the run that took this one over (status "superseded")
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


def _run_number(path: Path, name: str) -> int | None:
    """``n`` of a run directory ``name.<n>`` (0 for ``name`` itself), None if it is not one of ``name``."""
    if path.name == name:
        return 0
    head, _, tail = path.name.rpartition(".")
    return int(tail) if head == name and tail.isdigit() else None


def _later_runs(model: ScanModel) -> list[Path]:
    """The directories of the same run name beside ``model``'s with a higher number, in order."""
    names = [model.metadata["Name"]] if isinstance(model.metadata.get("Name"), str) else []
    head, _, tail = model.path.name.rpartition(".")
    names += [model.path.name] + ([head] if head and tail.isdigit() else [])  # no metadata: from the directory
    for name in names:
        number = _run_number(model.path, name)
        if number is not None:
            return [d for n, d in _mw().run_dirs(model.path.parent, name) if n > number]
    return []


def _successor(model: ScanModel, read: Callable[[Path], Mapping]) -> tuple[Path, str] | None:
    """The later run that took ``model`` over and how: ``continued`` its save or ``ran again`` from scratch."""
    saved = (model.path / _mw().MODEL_FILE).is_file()
    started = str(model.metadata.get("StartTime") or "")
    for later in _later_runs(model):
        metadata = read(later)
        input_dir = metadata.get("InputDir")
        if isinstance(input_dir, str) and Path(input_dir).name == model.path.name:
            return later, "continued"
        if not saved and metadata and str(metadata.get("StartTime") or "") >= started:
            return later, "ran again"
    return None


def mark_superseded(models: Iterable[ScanModel]) -> list[ScanModel]:
    """Flag ``superseded`` each run left behind (killed, interrupted, failed) that a later run took over.

    The later run's own record decides (its ``InputDir``, or its start after a run that never saved a
    model), so nothing has to be written into the old directory; the later run is looked up beside it
    on disk, whether or not it is among ``models``. Returns the runs flagged.
    """
    models = list(models)
    known = {m.path.resolve(): m.metadata for m in models}
    cache: dict[Path, Mapping] = {}

    def read(path: Path) -> Mapping:
        key = path.resolve()
        if key not in known and key not in cache:
            try:
                cache[key] = _mw().read_metadata(path)
            except (_mw().MetaDataError, OSError):
                cache[key] = {}
        return known.get(key, cache.get(key, {}))

    flagged = []
    for m in models:
        if m.status not in _LEFT_BEHIND:
            continue
        found = _successor(m, read)
        if found is None:
            continue
        later, how = found
        was = m.status + (f" ({m.message})" if m.message else "")
        m.status, m.superseded_by = "superseded", later
        m.message = f"{was}; {how} in {later.name}"
        flagged.append(m)
        log.info("%s: superseded by %s", m.path, later)
    return flagged


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
    mark_superseded(loaded)
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


