"""Tables of the runs of a scan: column values (:func:`column_value`, nested keys, no eval), the default
columns, sorting with missing values last, :func:`ScanTable` and :func:`format_table`.

Part of :mod:`dlkit.analysis.scan` (its docstring describes the column names); import from there.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dlkit.analysis.scan.runs import ScanModel, SelectModels, _as_models

__all__ = ["ScanTable", "format_table", "default_columns", "column_value", "check_columns", "UnknownColumnError",
           "scanned_parameters", "COMPUTED_COLUMNS"]

#: The columns computed from the model rather than read from its metadata.
COMPUTED_COLUMNS = ("Model Name", "Status", "Message", "Path", "Epochs")

_MISSING = object()
_INDEX = re.compile(r"\[(-?\d+)\]")


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


