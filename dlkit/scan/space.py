"""Search spaces for ``dlkit.scan search``: the ``Search`` block of a config file, next to ``Params``.

::

    # my_search.py
    from dlkit.scan.space import choice, int_range, loguniform

    Config = {"Epochs": 10}
    Params = {"optimizer": ["SGD", "Adam"]}          # optional: the outer grid, a search per grid point
    Search = {"lr": loguniform(1e-4, 1e-1), "Width": choice([32, 64, 128]), "Depth": int_range(1, 5)}

The spaces are plain values (JSON in the scan's manifest); nothing here imports Optuna until a search samples
(:meth:`Space.distribution`). Each key must be a config entry of the experiment, not also in ``Params``, and its
values must have the entry's type: :func:`check_search` says which key is wrong and why.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dlkit.config import RANGES, ConfigError, check_range, check_value, run_config_file, unknown_key_error

__all__ = ["Space", "uniform", "loguniform", "int_range", "choice", "check_search", "load_search", "from_json"]


@dataclass(frozen=True)
class Space:
    """One hyperparameter's space: ``kind`` (uniform, loguniform, int, choice) and its bounds or choices."""

    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: int | None = None
    log: bool = False
    choices: tuple = ()

    def to_json(self) -> dict:
        if self.kind == "choice":
            return {"kind": "choice", "choices": list(self.choices)}
        out: dict[str, Any] = {"kind": self.kind, "low": self.low, "high": self.high}
        if self.kind == "int":
            out.update(step=self.step, log=self.log)
        return out

    def distribution(self):
        """The Optuna distribution (imports Optuna)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.kind == "loguniform")

    def __repr__(self) -> str:
        if self.kind == "choice":
            return f"choice({list(self.choices)!r})"
        if self.kind == "int":
            extra = (f", step={self.step}" if self.step not in (None, 1) else "") + (", log=True" if self.log else "")
            return f"int_range({self.low}, {self.high}{extra})"
        return f"{self.kind}({self.low}, {self.high})"


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{what}: expected a finite number, got {value!r}")
    return value


def uniform(low: float, high: float) -> Space:
    """A float drawn uniformly in [low, high]."""
    low, high = _number(low, "uniform(low, ...)"), _number(high, "uniform(..., high)")
    if not low < high:
        raise ConfigError(f"uniform({low}, {high}): low must be below high")
    return Space("uniform", float(low), float(high))


def loguniform(low: float, high: float) -> Space:
    """A float whose logarithm is uniform in [log low, log high] (learning rates); 0 < low < high."""
    low, high = _number(low, "loguniform(low, ...)"), _number(high, "loguniform(..., high)")
    if not 0 < low < high:
        raise ConfigError(f"loguniform({low}, {high}): needs 0 < low < high")
    return Space("loguniform", float(low), float(high))


def int_range(low: int, high: int, step: int = 1, log: bool = False) -> Space:
    """An integer in [low, high] (both included), every ``step``; ``log`` samples its logarithm uniformly."""
    for value, what in ((low, "low"), (high, "high"), (step, "step")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"int_range({low}, {high}, step={step}): {what} must be an integer, got {value!r}")
    if not low <= high or step < 1:
        raise ConfigError(f"int_range({low}, {high}, step={step}): needs low <= high and step >= 1")
    if log and (low < 1 or step != 1):
        raise ConfigError(f"int_range({low}, {high}, log=True): needs low >= 1 and step 1")
    return Space("int", low, high, step, bool(log))


def choice(values: Sequence) -> Space:
    """One of ``values`` (numbers, strings, booleans or None)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f"choice({values!r}): expected a non-empty list of values")
    for value in values:
        if not (value is None or isinstance(value, (bool, int, float, str))):
            raise ConfigError(f"choice({values!r}): {value!r} is not a number, string, boolean or None "
                              "(Optuna stores only those)")
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"choice({values!r}): values repeat")
    return Space("choice", choices=tuple(values))


def from_json(data: Mapping) -> Space:
    """The :class:`Space` of a manifest entry (:meth:`Space.to_json`)."""
    kind = data.get("kind")
    if kind == "choice":
        return choice(data["choices"])
    if kind == "int":
        return int_range(data["low"], data["high"], data.get("step") or 1, bool(data.get("log")))
    if kind == "uniform":
        return uniform(data["low"], data["high"])
    if kind == "loguniform":
        return loguniform(data["low"], data["high"])
    raise ConfigError(f"search space entry {dict(data)!r}: unknown kind {kind!r}")


def check_search(search: Any, where: str, defaults: Mapping | None = None, grid: Mapping | None = None,
                 types: Mapping | None = None, ranges: Mapping | None = None) -> dict[str, Space]:
    """Validate a ``Search`` block: a dict of :class:`Space`, each key a config entry of the experiment
    (``defaults``) that is not also scanned in ``Params`` (``grid``), with values of that entry's type and
    within its range (:data:`dlkit.config.RANGES` and the experiment's ``ranges``)."""
    ranges = {**RANGES, **(ranges or {})}
    if not isinstance(search, Mapping) or not search:
        raise ConfigError(f"{where}: 'Search' must be a non-empty dict of spaces (uniform, loguniform, int_range, "
                          f"choice from dlkit.scan.space), got {search!r}")
    out = {}
    for key, space in search.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: Search key {key!r} is not a string")
        if not isinstance(space, Space):
            raise ConfigError(f"{where}: Search[{key!r}] = {space!r} is not a space; use uniform(), loguniform(), "
                              "int_range() or choice() from dlkit.scan.space")
        if grid and key in grid:
            raise ConfigError(f"{where}: {key!r} is both in Params (the grid) and in Search; keep it in one")
        if defaults is not None:
            if key not in defaults:
                raise unknown_key_error(key, list(defaults), f"{where}: Search")
            values = list(space.choices) if space.kind == "choice" else [space.low, space.high]
            for value in values:
                check_value(key, value, defaults[key], (types or {}).get(key), where=f"{where}: Search")
                check_range(key, value, ranges.get(key), f"{where}: Search")
        out[key] = space
    return out


def load_search(path: str | os.PathLike) -> dict[str, Space] | None:
    """The ``Search`` block of a config file (None if it has none); run in a namespace of its own."""
    search = run_config_file(path).get("Search")
    return None if search is None else check_search(search, f"config file {os.fspath(path)!r}")
