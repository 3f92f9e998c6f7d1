"""Simulator configurations: frozen dataclasses whose fields carry their documentation.

Every experiment package's simulator keeps all its geometry and physics parameters in one frozen dataclass
(hashable, so derived quantities can be cached; JSON in each file's attributes and in the dataset key).
This module holds what they share: the documented field, JSON round trips that reject unknown names,
``--help`` text, the typed ``--set FIELD=VALUE`` parsing and the options every simulator CLI shares (no eval).

Example::

    @dataclasses.dataclass(frozen=True)
    class MySimConfig(SimConfig):
        noise_mv: float = documented(0.5, "electronics noise RMS [mV]")
        shape: tuple = documented((25, 25), "cells (x, y)")

    cfg = MySimConfig.from_dict({"noise_mv": 1.0})
    MySimConfig.parse_overrides(["shape=51,51"])    # {"shape": (51, 51)}

    parser = MySimConfig.cli_parser("python -m mypkg.simulate", "Simulate ...", "--set noise_mv=1")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    cfg = MySimConfig.from_cli(parser, args)          # logging set up, --set applied, errors exit 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import typing

__all__ = ["documented", "SimConfig"]


def documented(default, doc: str):
    """A dataclass field whose documentation travels with it (``--help``, :meth:`SimConfig.describe`)."""
    return dataclasses.field(default=default, metadata={"doc": doc})


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _parse_value(default, text: str):
    """``text`` as the type of ``default``: bool, int, float, str or a comma-separated tuple of those."""
    text = text.strip()
    if isinstance(default, tuple):
        parts = [p.strip() for p in text.strip("()[]").split(",") if p.strip()]
        if all(isinstance(d, int) and not isinstance(d, bool) for d in default):
            return tuple(int(p) for p in parts)
        if all(isinstance(d, (int, float)) and not isinstance(d, bool) for d in default):
            return tuple(float(p) for p in parts)
        return tuple(parts)
    if isinstance(default, bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


class SimConfig:
    """Mixin for a simulator's frozen config dataclass: JSON, ``--help`` text and ``--set`` parsing."""

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: typing.Mapping):
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo must not pass silently)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def describe(cls) -> str:
        """One line per field: name, default, documentation (used by ``--help``)."""
        return "\n".join(f"  {f.name} = {f.default!r}: {f.metadata.get('doc', '')}"
                         for f in dataclasses.fields(cls))

    @classmethod
    def parse_overrides(cls, items) -> dict:
        """``FIELD=VALUE`` strings (a CLI's repeated ``--set``) as ``{field: value}``, typed by the field's
        default; an unknown field or a bad value is a ValueError naming it."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        out = {}
        for item in items or ():
            key, sep, text = item.partition("=")
            key = key.strip()
            if not sep or key not in fields:
                raise ValueError(f"--set expects FIELD=VALUE with FIELD one of the {cls.__name__} fields, "
                                 f"got {item!r}")
            try:
                out[key] = _parse_value(fields[key].default, text)
            except ValueError as exc:
                raise ValueError(f"--set {key}: bad value {text!r} ({exc})") from None
        return out

    @classmethod
    def cli_parser(cls, prog: str, description: str, set_example: str) -> argparse.ArgumentParser:
        """A simulator CLI's parser with the options they all share: ``--set`` (every field listed in
        ``--help``), ``--workers``, ``--no-progress`` and ``--log-level``; the CLI adds its own."""
        parser = argparse.ArgumentParser(
            prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="Config fields for --set (name = default: meaning):\n" + cls.describe())
        parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                            help=f"override a config field, e.g. {set_example} (repeatable; fields listed below)")
        parser.add_argument("--workers", type=int, default=None,
                            help="processes writing files in parallel (default: cores, 1 for small runs)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        parser.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
        return parser

    @classmethod
    def from_cli(cls, parser: argparse.ArgumentParser, args: argparse.Namespace, **fields):
        """Set up logging from ``--log-level`` and return the config of ``--set`` plus ``fields`` (the CLI's
        own options; None means not given). A bad value exits through ``parser.error`` (status 2)."""
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
        try:
            changes = cls.parse_overrides(args.set)
            changes.update({k: v for k, v in fields.items() if v is not None})
            return cls(**changes)
        except (ValueError, TypeError) as exc:
            parser.error(str(exc))  # exits
