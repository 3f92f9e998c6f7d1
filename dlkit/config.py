"""Experiment configuration: plain Python config files, layered and validated.

A config file is ordinary Python that defines a dict ``Config`` and, optionally, the scan grid
``Params`` (a dict of lists)::

    # my_scan.py
    Config = {"Epochs": 10, "optimizer": "SGD", "lr": 0.01}
    Params = {"Width": [32, 64], "Depth": [1, 2]}

Values are real Python values (``"optimizer": "SGD"``, not DLKit's ``"'SGD'"``). The file runs in a
namespace of its own (:func:`runpy.run_path`); nothing is exec'd into the caller's globals and no
string is ever eval'd.

The configuration a model is built from is resolved in layers, each overriding the previous::

    experiment defaults < config file < command-line flags < selected scan point

:func:`resolve_config` does that and validates every layer against the defaults: an unknown key is an
error naming the key, where it came from and the closest valid names; a value of the wrong type is an
error naming key, value and expected type; a number out of its range (:data:`RANGES`, or the experiment's
own) is an error naming key, value, where it came from and the range.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import runpy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ConfigError", "load_config", "run_config_file", "resolve_config", "check_value", "unknown_key_error",
           "Range", "RANGES", "at_least", "above", "FRACTION", "check_range"]


class ConfigError(ValueError):
    """A configuration file, entry or flag is invalid; the message names which and why."""


def load_config(path: str | os.PathLike) -> tuple[dict, dict | None]:
    """Run a config file in its own namespace and return ``(Config, Params)``.

    ``Params`` is None when the file defines no scan grid. Errors name the file.
    """
    path = os.fspath(path)
    namespace = run_config_file(path)
    if "Config" not in namespace:
        raise ConfigError(f"config file {path!r} defines no 'Config' dict")
    config = namespace["Config"]
    if not isinstance(config, Mapping):
        raise ConfigError(f"config file {path!r}: 'Config' must be a dict, got {type(config).__name__}")
    for key in config:
        if not isinstance(key, str):
            raise ConfigError(f"config file {path!r}: Config key {key!r} is not a string")
    params = namespace.get("Params")
    if params is not None:
        params = _check_params(params, f"config file {path!r}")
    return dict(config), params


def run_config_file(path: str | os.PathLike) -> dict:
    """The namespace a config file defines (run in a namespace of its own); errors name the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        return runpy.run_path(path, run_name="__dlkit_config__")
    except Exception as exc:  # the user's file raised: say which file, keep the cause chained
        raise ConfigError(f"config file {path!r} failed to load: {type(exc).__name__}: {exc}") from exc


def _check_params(params: Any, where: str) -> dict:
    if not isinstance(params, Mapping):
        raise ConfigError(f"{where}: 'Params' must be a dict of lists, got {type(params).__name__}")
    checked = {}
    for key, values in params.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: Params key {key!r} is not a string")
        if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, range)):
            raise ConfigError(
                f"{where}: Params[{key!r}] must be a list of values to scan, got {type(values).__name__} "
                f"{values!r}"
            )
        values = list(values)
        if not values:
            raise ConfigError(f"{where}: Params[{key!r}] is empty; a scanned parameter needs >= 1 value")
        checked[key] = values
    return checked


def _type_name(expected) -> str:
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return expected.__name__


def check_value(key: str, value: Any, default: Any, expected: type | tuple | None = None,
                where: str = "config") -> Any:
    """Validate ``value`` for ``key`` against the type of ``default`` (or ``expected``).

    Returns the value, with ints promoted to float where a float is expected and lists accepted where
    a tuple is expected (JSON round trips turn tuples into lists). ``None`` is always accepted for
    entries whose default is None or that declare ``expected`` (declaring the type is how an entry with a
    value by default says None switches it off); an entry whose default is None and that declares no type
    accepts anything.
    """
    declared = expected is not None
    if expected is None:
        if default is None:
            return value
        expected = type(default)
    if value is None and (default is None or declared):
        return None
    types = expected if isinstance(expected, tuple) else (expected,)

    def fail():
        raise ConfigError(
            f"{where}: entry {key!r} = {value!r} has type {type(value).__name__}; expected {_type_name(expected)}"
        )

    if isinstance(value, bool):  # bool is an int subclass; never accept it for a number
        if bool in types:
            return value
        fail()
    if int in types and isinstance(value, numbers.Integral):
        return int(value)
    if float in types and isinstance(value, numbers.Real):
        return float(value)
    if (tuple in types or list in types) and isinstance(value, (list, tuple)):
        return tuple(value) if tuple in types and list not in types else list(value)
    # Anything else (str, dict, collections.abc.Callable, ...) by isinstance.
    if any(t not in (int, float, bool, tuple, list) and isinstance(value, t) for t in types):
        return value
    fail()


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric config entry: ``low``/``high`` (None: unbounded), each closed unless
    ``low_open``/``high_open``. ``None`` as a value is left to the type check (an entry whose default is None)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}" if self.low is not None else "a finite number"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def at_least(low: float) -> Range:
    return Range(low=low)


def above(low: float) -> Range:
    return Range(low=low, low_open=True)


#: A fraction of the events: 0 <= x < 1.
FRACTION = Range(0.0, 1.0, high_open=True)

#: The ranges of the numeric entries that dlkit's experiments share, checked wherever an experiment has the
#: entry; an experiment adds its own through ``resolve_config(ranges=...)``. A numeric entry with no range here
#: or there must still be finite (no nan, no inf).
RANGES: dict[str, Range] = {
    "Epochs": at_least(1), "BatchSize": at_least(1), "lr": above(0), "decay": at_least(0),
    "momentum": Range(0.0, 1.0), "Dropout": FRACTION, "ValidationFraction": FRACTION, "TestFraction": FRACTION,
    "MaxEvents": at_least(0), "Workers": at_least(0), "RunningTime": above(0), "CheckpointEvery": at_least(0),
    "Seed": at_least(0),
    "EarlyStopping_patience": at_least(0), "EarlyStopping_min_delta": at_least(0), "Width": at_least(1),
    "Depth": at_least(1), "Filters": at_least(1), "SimEventsPerClass": at_least(1), "SimEventsPerFile": at_least(1),
    "SimSeed": at_least(0),
}


def check_range(key: str, value: Any, allowed: Range | None, where: str) -> None:
    """Raise :class:`ConfigError` naming ``key``, ``value``, ``where`` it came from and the range when a
    number is outside ``allowed`` (or, without a range, not finite)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return
    if value not in (allowed or Range()):
        raise ConfigError(f"{where}: entry {key!r} = {value!r} is out of range; expected {allowed or Range()}")


def unknown_key_error(key: str, valid: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    if not close:  # also try case-insensitively: 'width' -> 'Width'
        lowered = {k.lower(): k for k in valid}
        close = [lowered[k] for k in difflib.get_close_matches(key.lower(), list(lowered), n=3, cutoff=0.6)]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint} (valid keys: {', '.join(sorted(valid))})")


def resolve_config(
    defaults: Mapping[str, Any],
    *layers: tuple[str, Mapping[str, Any] | None],
    types: Mapping[str, type | tuple] | None = None,
    ranges: Mapping[str, Range] | None = None,
) -> dict:
    """Merge ``layers`` over ``defaults``, validating keys and types, and return the resolved dict.

    Parameters
    ----------
    defaults
        The experiment's defaults: every valid key with its default value; the value's type is the
        expected type unless ``types`` says otherwise.
    layers
        ``(source, mapping)`` pairs applied in order, later ones winning, e.g.
        ``("config file scan.py", Config), ("command line", flags), ("scan point 12", point)``.
        A ``None`` mapping is skipped. ``source`` appears in error messages.
    types
        Expected types for keys whose default is None (or to widen a type, e.g. ``(int, float)``).
    ranges
        Allowed values of numeric keys, over :data:`RANGES` (e.g. ``{"TimeBins": at_least(16)}``); checked on
        the resolved values, so an error names the layer the value came from.

    Examples
    --------
    >>> resolve_config({"lr": 0.1, "optimizer": "SGD"}, ("config", {"lr": 1}))
    {'lr': 1.0, 'optimizer': 'SGD'}
    """
    types = dict(types or {})
    valid = list(defaults)
    for key in types:
        if key not in defaults:
            raise ConfigError(f"types: key {key!r} has no default")
    resolved = {key: value for key, value in defaults.items()}
    source_of = dict.fromkeys(defaults, "experiment defaults")
    for source, layer in layers:
        if layer is None:
            continue
        if not isinstance(layer, Mapping):
            raise ConfigError(f"{source}: expected a dict of settings, got {type(layer).__name__}")
        for key, value in layer.items():
            if key not in defaults:
                raise unknown_key_error(str(key), valid, source)
            resolved[key] = check_value(key, value, defaults[key], types.get(key), where=source)
            source_of[key] = source
    ranges = {**RANGES, **(ranges or {})}
    for key, value in resolved.items():
        check_range(key, value, ranges.get(key), source_of[key])
    return resolved
