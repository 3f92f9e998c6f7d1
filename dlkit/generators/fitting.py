"""Transforms fitted on the training set, for experiments: the ``Standardize`` and ``Reweight`` config entries.

A run fits them once, at the start of training, on a bounded, seeded sample of its *training* events, stores
them in its ``MetaData.json`` (key :data:`FITTED_KEY`, plain JSON) and never refits them: a run resumed with
``-p``, continued with ``-L`` or analysed takes them from there (:func:`resolve_fitted`). The entries (plain
Python values; :func:`check_entries` says what is wrong, naming the entry)::

    Standardize = {"arrays": ["hits"], "method": "standard",   # or "robust" (median, IQR / 1.349)
                   "events": 100000, "seed": None,               # training events fitted on; None: the run's Seed
                   "per_feature": [], "max_values": 5000000}     # fixed arrays with a constant per last-axis entry
    Reweight = {"variable": "energy", "bins": {"n": 20, "low": 10, "high": 510},   # or a list of edges
                "method": "flat", "class_balance": False,        # "resample": an event filter instead of weights
                "outside": "drop", "events": 100000, "seed": None}  # "clip": outside events in the edge bins

``Standardize = ["ECAL"]`` is short for ``{"arrays": ["ECAL"]}``. An experiment supports them through its
:class:`~dlkit.experiment.RunData` (``fitted_entries`` and ``fit_transforms``; calodnn's ``CaloData`` does),
doing the fit with :func:`fit_transforms`. Without an experiment::

    fitted = fit_transforms(train, {"arrays": ["hits"]}, {"variable": "energy", "bins": [10, 50, 100, 500]},
                            preprocess=norm)           # one pass over 100000 seeded training events
    pre = Chain(norm, fitted.standardize)              # the readers' pre-process
    post = Chain(fitted.reweight, Select(["hits", "hits_mask"], "onehot", "weight"))
    json.dumps(fitted.to_json())                       # what MetaData.json holds
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from dlkit.config import ConfigError
from dlkit.generators.reweight import METHODS as REWEIGHT_METHODS
from dlkit.generators.reweight import OUTSIDE, Reweight, fit_reweight, parse_bins
from dlkit.generators.standardize import METHODS as STANDARDIZE_METHODS
from dlkit.generators.standardize import Standardize, fit_standardize

log = logging.getLogger(__name__)

__all__ = ["FITTED_KEY", "ENTRIES", "FittedTransforms", "check_entries", "check_standardize_entry",
           "check_reweight_entry", "sample_batches", "fit_transforms", "resolve_fitted"]

#: The MetaData.json key of the fitted transforms.
FITTED_KEY = "Fitted"
#: The config entries, in the order they are fitted.
ENTRIES = ("Standardize", "Reweight")
_STANDARDIZE = {"arrays": None, "method": "standard", "events": 100_000, "seed": None, "per_feature": [],
                "max_values": 5_000_000}
_REWEIGHT = {"variable": "energy", "bins": None, "method": "flat", "class_balance": False, "outside": "drop",
             "events": 100_000, "seed": None}


def _fail(entry: str, what: str):
    raise ConfigError(f"config entry {entry!r}: {what}")


def _int_at_least(entry, key, value, low, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        _fail(entry, f"{key!r} = {value!r}; expected an integer >= {low}" + (" or None" if allow_none else ""))
    return int(value)


def _names(entry, key, value, allow_empty=False) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value) or (
            not value and not allow_empty):
        _fail(entry, f"{key!r} = {value!r}; expected a {'' if allow_empty else 'non-empty '}list of array names")
    if len(set(value)) != len(value):
        _fail(entry, f"{key!r} = {value!r} names an array twice")
    return list(value)


def _with_defaults(entry, value, defaults) -> dict:
    if not isinstance(value, Mapping):
        _fail(entry, f"expected None or a dict, got {type(value).__name__} {value!r}")
    unknown = sorted(set(value) - set(defaults))
    if unknown:
        _fail(entry, f"unknown key(s) {unknown}; valid: {sorted(defaults)}")
    missing = sorted(k for k, d in defaults.items() if d is None and k not in value and k != "seed")
    if missing:
        _fail(entry, f"missing {missing}")
    return {**defaults, **value}


def check_standardize_entry(value, entry: str = "Standardize") -> dict | None:
    """The ``Standardize`` entry with its defaults filled in (None: off); a :class:`ConfigError` naming it."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, str)):
        value = {"arrays": value}
    out = _with_defaults(entry, value, _STANDARDIZE)
    out["arrays"] = _names(entry, "arrays", out["arrays"])
    out["per_feature"] = _names(entry, "per_feature", out["per_feature"], allow_empty=True)
    if set(out["per_feature"]) - set(out["arrays"]):
        _fail(entry, f"'per_feature' {sorted(set(out['per_feature']) - set(out['arrays']))} are not in 'arrays'")
    if out["method"] not in STANDARDIZE_METHODS:
        _fail(entry, f"'method' = {out['method']!r}; expected one of {list(STANDARDIZE_METHODS)}")
    out["events"] = _int_at_least(entry, "events", out["events"], 1)
    out["max_values"] = _int_at_least(entry, "max_values", out["max_values"], 1)
    out["seed"] = _int_at_least(entry, "seed", out["seed"], 0, allow_none=True)
    return out


def check_reweight_entry(value, entry: str = "Reweight") -> dict | None:
    """The ``Reweight`` entry with its defaults filled in (None: off); a :class:`ConfigError` naming it."""
    if value is None:
        return None
    out = _with_defaults(entry, value, _REWEIGHT)
    if not isinstance(out["variable"], str) or not out["variable"]:
        _fail(entry, f"'variable' = {out['variable']!r}; expected an array name")
    bins = out["bins"]
    if isinstance(bins, tuple) and len(bins) == 3 and isinstance(bins[0], numbers.Integral):  # (n, low, high)
        bins = {"n": bins[0], "low": bins[1], "high": bins[2]}
    try:
        parse_bins(bins)
    except ValueError as exc:
        _fail(entry, f"'bins': {exc}")
    out["bins"] = dict(bins) if isinstance(bins, Mapping) else [float(b) for b in bins]
    if out["method"] not in REWEIGHT_METHODS:
        _fail(entry, f"'method' = {out['method']!r}; expected one of {list(REWEIGHT_METHODS)}")
    if out["outside"] not in OUTSIDE:
        _fail(entry, f"'outside' = {out['outside']!r}; expected one of {list(OUTSIDE)}")
    if not isinstance(out["class_balance"], bool):
        _fail(entry, f"'class_balance' = {out['class_balance']!r}; expected true or false")
    out["events"] = _int_at_least(entry, "events", out["events"], 1)
    out["seed"] = _int_at_least(entry, "seed", out["seed"], 0, allow_none=True)
    return out


def check_entries(config: Mapping, supported=ENTRIES, experiment: str = "this experiment") -> dict:
    """``{"Standardize": checked entry or None, "Reweight": ...}`` of a resolved config; an entry that is set
    but not in ``supported`` is a :class:`ConfigError` saying so."""
    checked = {"Standardize": check_standardize_entry(config.get("Standardize")),
               "Reweight": check_reweight_entry(config.get("Reweight"))}
    for name, value in checked.items():
        if value is not None and name not in supported:
            _fail(name, f"{experiment} does not support it (its data setup fits {list(supported) or 'nothing'})")
    return checked


def sample_batches(samples, *, events: int | None = 100_000, seed: int = 0, preprocess=None, batch_size: int = 512,
                   class_index_map=None, n_workers: int | None = None, provenance: bool = False, **options):
    """Batches (dicts of arrays, as the generator delivers them: views valid until the next one) of a bounded,
    seeded random sample of ``samples``: one shuffled epoch of a :class:`~dlkit.generators.MultiClassGenerator`
    with ``max_events=events`` (classes in their natural proportions), without cache, with ``class_index``.
    ``preprocess`` runs in the readers as in training (Keras stays out of them); ``provenance`` adds
    ``_entry``/``_event``: which events were drawn."""
    from dlkit.generators.generator import MultiClassGenerator

    with MultiClassGenerator(samples, batch_size, class_index_map=class_index_map, onehot=False, shuffle=True,
                             seed=seed, max_events=events, preprocess=preprocess, provenance=provenance,
                             n_workers=n_workers, cache=False, **options) as gen:
        yield from gen


@dataclass
class FittedTransforms:
    """What a run fitted: a :class:`Standardize` (readers), a :class:`Reweight` (consumer), and ``info`` on the
    fit (events, seed, the entries as fitted, the run directory that fitted them)."""

    standardize: Standardize | None = None
    reweight: Reweight | None = None
    info: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"Standardize": None if self.standardize is None else self.standardize.to_json(),
                "Reweight": None if self.reweight is None else self.reweight.to_json(), "Info": dict(self.info)}

    @classmethod
    def from_json(cls, data: Mapping | None) -> FittedTransforms:
        data = dict(data or {})
        std, rw = data.get("Standardize"), data.get("Reweight")
        return cls(None if std is None else Standardize.from_json(std), None if rw is None else Reweight.from_json(rw),
                   dict(data.get("Info") or {}))


def _fit_pass(batches, std: dict | None, rw: dict | None, seed: int, n_classes: int | None):
    """One pass over ``batches``: the Standardize fit streams, Reweight's variable and class are kept (small)."""
    kept, counted = [], [0]

    def tee(stream):
        for b in stream:
            counted[0] += len(b["class_index"])
            if rw is not None:
                kept.append({k: np.array(b[k]) for k in (rw["variable"], "class_index")})
            yield b

    standardize = reweight = None
    if std is not None:
        standardize = fit_standardize(tee(batches), std["arrays"], std["method"], per_feature=std["per_feature"],
                                      max_values=std["max_values"], seed=seed)
    else:
        for _ in tee(batches):
            pass
    if rw is not None:
        reweight = fit_reweight(kept, rw["variable"], rw["bins"], class_balance=rw["class_balance"],
                                outside=rw["outside"], method=rw["method"], n_classes=n_classes)
    return standardize, reweight, counted[0]


def fit_transforms(samples, standardize: dict | None = None, reweight: dict | None = None, *, preprocess=None,
                   class_index_map=None, seed: int = 0, n_workers: int | None = None,
                   batch_size: int = 512) -> FittedTransforms:
    """Fit the checked entries (:func:`check_standardize_entry`, :func:`check_reweight_entry`) on ``samples``
    (the training split): each on ``events`` events drawn with its ``seed`` (default ``seed``), in one pass
    when they agree. ``preprocess`` (the fixed pre-process, e.g. Normalize) runs first, as in training, so
    the fit sees what :class:`Standardize` will; Reweight's bins are in the units the batch carries."""
    started, out = time.monotonic(), FittedTransforms()
    entries = {"Standardize": standardize, "Reweight": reweight}
    passes: dict[tuple, list[str]] = {}
    for name, entry in entries.items():
        if entry is not None:
            passes.setdefault((entry["events"], seed if entry["seed"] is None else entry["seed"]), []).append(name)
    n_classes = None if class_index_map is None else len(set(dict(class_index_map).values()))
    for (events, pass_seed), names in passes.items():
        batches = sample_batches(samples, events=events, seed=pass_seed, preprocess=preprocess,
                                 batch_size=batch_size, class_index_map=class_index_map, n_workers=n_workers)
        std, rw, n = _fit_pass(batches, entries["Standardize"] if "Standardize" in names else None,
                               entries["Reweight"] if "Reweight" in names else None, pass_seed, n_classes)
        out.standardize = std if std is not None else out.standardize
        out.reweight = rw if rw is not None else out.reweight
        for name in names:
            out.info[name] = {"entry": entries[name], "events": n, "seed": pass_seed}
        log.info("fitted %s on %d training events (seed %d)", " and ".join(names), n, pass_seed)
    out.info["seconds"] = round(time.monotonic() - started, 3)
    return out


def resolve_fitted(metadata: dict, config: Mapping, fit: Callable[[dict | None, dict | None], FittedTransforms],
                   supported=ENTRIES, experiment: str = "this experiment") -> FittedTransforms | None:
    """The run's fitted transforms: those stored in ``metadata`` (a run resumed with ``-p``, continued with
    ``-L`` or analysed: its loaded MetaData) are reused, never refitted; an entry configured and not stored is
    fitted now by ``fit(standardize_entry, reweight_entry)`` (only Reweight for a loaded model trained without
    Standardize: its inputs cannot change under it). The result is recorded in ``metadata[FITTED_KEY]``."""
    entries = check_entries(config, supported, experiment)
    stored = FittedTransforms.from_json(metadata.get(FITTED_KEY))
    loaded_from = metadata.get("InputDir")
    std_cfg = None if stored.standardize is not None else entries["Standardize"]
    rw_cfg = None if stored.reweight is not None else entries["Reweight"]
    if std_cfg is not None and loaded_from:
        _fail("Standardize", f"the model loaded from {loaded_from} was trained without it; set it to None to go "
                             "on with that model, or train a new one")
    for name, have in (("Standardize", stored.standardize), ("Reweight", stored.reweight)):
        if have is None:
            continue
        fitted_as = (stored.info.get(name) or {}).get("entry")
        if entries[name] != fitted_as:
            log.warning("config entry %r is %r, but this run continues one fitted with %r: the stored fit is used",
                        name, entries[name], fitted_as)
        log.info("%s: reusing the fit stored in MetaData.json (fitted by %s); not refitting", name,
                 stored.info.get("FittedIn", "an earlier run"))
    if std_cfg is not None or rw_cfg is not None:
        new = fit(std_cfg, rw_cfg)
        if stored.standardize is None:
            stored.standardize = new.standardize
        if stored.reweight is None:
            stored.reweight = new.reweight
        stored.info.update({k: v for k, v in new.info.items() if k in ENTRIES})
        stored.info.setdefault("FittedIn", metadata.get("OutDir"))
        stored.info["Fits"] = int(stored.info.get("Fits", 0)) + 1
    if stored.standardize is None and stored.reweight is None:
        return None
    metadata[FITTED_KEY] = stored.to_json()
    return stored
