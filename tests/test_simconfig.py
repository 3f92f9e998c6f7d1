"""dlkit.simconfig: documented frozen simulator configs, JSON round trips, --set parsing."""

import dataclasses

import pytest

from dlkit.simconfig import SimConfig, documented


@dataclasses.dataclass(frozen=True)
class Cfg(SimConfig):
    noise: float = documented(0.5, "noise RMS [mV]")
    cells: int = documented(25, "cells per side")
    shape: tuple = documented((25, 25, 60), "cells (x, y, z)")
    window: tuple = documented((0.5, 2.0), "window [ns]")
    names: tuple = documented(("pi", "K"), "particles")
    raw: bool = documented(False, "raw energies")


def test_json_round_trip_and_unknown_fields():
    cfg = Cfg(noise=1.0, shape=(5, 5, 5))
    assert Cfg.from_json(cfg.to_json()) == cfg
    assert cfg.to_dict()["shape"] == [5, 5, 5]
    assert cfg.replace(cells=3).cells == 3
    with pytest.raises(ValueError, match="unknown Cfg fields: \\['nosie'\\]"):
        Cfg.from_dict({"nosie": 1.0})


def test_describe_lists_every_field_with_its_doc():
    text = Cfg.describe()
    assert "  noise = 0.5: noise RMS [mV]" in text.splitlines()
    assert len(text.splitlines()) == len(dataclasses.fields(Cfg))


def test_parse_overrides_types_by_default():
    out = Cfg.parse_overrides(["noise=2", "cells=7", "shape=51,51,25", "window=(1, 3.5)", "names=e,mu",
                               "raw=true"])
    assert out == {"noise": 2.0, "cells": 7, "shape": (51, 51, 25), "window": (1.0, 3.5), "names": ("e", "mu"),
                   "raw": True}
    assert type(out["noise"]) is float and type(out["shape"][0]) is int
    assert Cfg.parse_overrides(["raw=0"]) == {"raw": False}


@pytest.mark.parametrize("item, match", [("noise", "FIELD=VALUE"), ("nosie=1", "nosie=1"),
                                         ("cells=2.5", "--set cells: bad value '2.5'"),
                                         ("raw=maybe", "expected true or false"),
                                         ("shape=a,b", "--set shape")])
def test_parse_overrides_errors_name_the_field(item, match):
    with pytest.raises(ValueError, match=match):
        Cfg.parse_overrides([item])


def test_cli_parser_and_from_cli(capsys):
    parser = Cfg.cli_parser("python -m x.simulate", "Simulate x.", "--set noise=2")
    parser.add_argument("--cells-flag", type=int, default=None)
    assert "noise = 0.5: noise RMS [mV]" in parser.format_help()
    args = parser.parse_args(["--set", "noise=2", "--set", "raw=yes", "--workers", "3", "--cells-flag", "9"])
    cfg = Cfg.from_cli(parser, args, cells=args.cells_flag, names=None)
    assert cfg == Cfg(noise=2.0, cells=9, raw=True) and args.workers == 3 and not args.no_progress
    with pytest.raises(SystemExit) as exc:
        Cfg.from_cli(parser, parser.parse_args(["--set", "nosie=1"]))
    assert exc.value.code == 2 and "nosie=1" in capsys.readouterr().err
