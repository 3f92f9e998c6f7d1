"""calodnn data: LCD-layout files -> train/validation generators and the test set.

One directory per particle (``<DataDir>/<Particle>/*.h5`` with ``ECAL``, ``HCAL``, ``energy``); with no
``DataDir`` the simulated default dataset is made on first use (:func:`calodnn.simulate.default_dataset`).
Events are split reproducibly by events per class (train / validation / test). Two ways to mix classes:

- premix (DLKit's default): each split's events are mixed and shuffled once into one file (kept in the
  cache directory, reused by every later run on the same data) which the generator then reads;
- on the fly (``--nopremix``): the generator mixes the per-particle files in every batch.

ECAL/HCAL normalisation runs in the generator's reader processes (:func:`calo_normalize`), so this module
must stay importable without Keras.

Point models (config ``Model`` = ``DeepSets``, ``ParticleNet`` or ``Transformer``, :mod:`dlkit.models`) read the
same events as hit lists instead (:func:`calodnn.simulate.hits_from_images`; files of the format ``Hits``): the
collection ``hits`` of :data:`HIT_FIELDS`, the ``MaxPoints`` most energetic hits of each event, scaled in the
readers by :class:`HitFeatures`; premixed like the images (the premixed file holds them padded).

Fitted on the training split (config entries ``Standardize`` and ``Reweight``, :mod:`dlkit.generators.fitting`):
with either set, the generators are built by :meth:`CaloData.fit_transforms` (the run calls it once the model is
built or loaded) with the constants fitted then - or stored by the run it continues. ``Standardize`` may name
the inputs (``ECAL``, ``HCAL``; one center/scale per array, after ``ECALNorm``/``HCALNorm``); ``Reweight``
flattens ``energy`` per particle in the training batches (sample weights; validation stays unweighted), from
premixed files too; its ``"resample"`` method filters the per-particle files, so it needs ``Premix=False``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlkit.config import ConfigError
from dlkit.datasets import atomic_file
from dlkit.experiment import RunData
from dlkit.generators.preprocess import Normalize

log = logging.getLogger(__name__)

__all__ = ["Normalize", "calo_normalize", "OneHotSelect", "CaloData", "setup_data", "premix", "premix_location",
           "HIT_FIELDS", "HIT_SUMS", "HitFeatures", "uses_hits", "model_feed", "feed", "data_arrays", "sample_keys",
           "dataset_dir"]

#: The per-hit features of the point models, in order (the hit files' columns, :data:`calodnn.simulate.HIT_COLUMNS`).
HIT_FIELDS = ("hit_x", "hit_y", "hit_z", "hit_e", "hit_det")
#: The name of the hit collection in a batch (its mask: ``hits_mask``) and of the point models' input.
HITS = "hits"
#: Per event, the energy of all hits of each calorimeter (GeV; the hit files' scalars): the point models' global
#: inputs, and the start of their energy head (the clipped hit list misses the least energetic hits' share).
HIT_SUMS = ("ECAL_E", "HCAL_E")


class HitFeatures:
    """Reader pre-process of the hit collection: x, y from the event's energy-weighted centroid (of the kept
    hits) in units of 10 mm, depth z in units of 250 mm, the energy as log10(E / GeV) (only on real hits: padded
    rows stay 0), the detector flag (0 ECAL, 1 HCAL) as it is.

    Centred, the transverse positions describe the shower's shape, not where it hit (what a CNN gets from its
    translation equivariance; ParticleNet's and ParT's inputs are relative to the jet axis likewise). The scales
    bring the features to order 1: ECAL cells are ~5 mm wide, the ECAL ~250 mm deep, cell energies span 3 MeV to
    tens of GeV. The per-calorimeter sums (:data:`HIT_SUMS`) stay in GeV.
    """

    SCALES = (10.0, 10.0, 250.0)   # mm: x, y, z

    def __init__(self, key: str = HITS):
        self.key = key

    def __call__(self, arrays):
        x, mask = arrays[self.key], arrays[f"{self.key}_mask"]
        w = np.where(mask, x[..., 3], np.float32(0))
        total = np.maximum(w.sum(axis=1), np.float32(1e-12))
        for i in (0, 1):  # transverse positions from the event's energy-weighted centroid: the shower's shape
            centre = (w * x[..., i]).sum(axis=1) / total
            x[..., i] -= centre[:, None]
            x[..., i] *= mask
        for i, scale in enumerate(self.SCALES):
            x[..., i] /= np.float32(scale)
        e = x[..., 3]
        np.log10(np.maximum(e, np.float32(1e-6)), out=e, where=mask)
        return arrays

    def __repr__(self):
        return f"HitFeatures({self.key!r})"


def uses_hits(config: dict) -> bool:
    """Whether the run trains a point model (config ``Model``), which reads hit lists instead of images."""
    from dlkit.models.config import point_model_kind

    return point_model_kind(config["Model"]) is not None


def data_arrays(inputs) -> list[str]:
    """The batch arrays the inputs need: ``hits`` comes with its mask and the calorimeters' sums."""
    return [a for k in inputs for a in ((k, f"{k}_mask", *HIT_SUMS) if k == HITS else (k,))]


def model_feed(inputs):
    """What :class:`dlkit.generators.Select` gives the model: the images as a tuple, or the point models'
    named inputs (``{"hits": ..., "hits_mask": ...}``)."""
    return {a: a for a in data_arrays(inputs)} if HITS in inputs else tuple(inputs)


def feed(arrays, inputs):
    """The model's input from a dict of arrays (a tuple of images, or the point models' dict)."""
    names = model_feed(inputs)
    return {k: arrays[v] for k, v in names.items()} if isinstance(names, dict) else tuple(arrays[k] for k in names)


def sample_keys(config: dict, inputs) -> dict:
    """The sample keys of a run: the image datasets by name, or the hit collection and the calorimeters' sums;
    and ``energy``."""
    from dlkit.generators import Collection

    if HITS in inputs:
        return {HITS: Collection(HIT_FIELDS, max_points=int(config["MaxPoints"]), sort_by="hit_e"),
                **{k: k for k in HIT_SUMS}, "energy": "energy"}
    return {**{k: k for k in inputs}, "energy": "energy"}


def run_inputs(config: dict) -> list[str]:
    """The model's inputs: ``["hits"]`` for a point model, else the images the ECAL/HCAL entries switch on."""
    if uses_hits(config):
        if not (config["ECAL"] and config["HCAL"]):
            raise ConfigError(f"config entries 'ECAL'/'HCAL' pick images; the point model {config['Model']!r} "
                              "reads every hit (hit_det tells the calorimeters apart): leave both True")
        return [HITS]
    inputs = [k for k in ("ECAL", "HCAL") if config[k]]
    if not inputs:
        raise ConfigError("config entries 'ECAL' and 'HCAL' are both False: the model needs an input")
    return inputs


def dataset_dir(config: dict, inputs, sim_config=None) -> tuple[Path, str]:
    """The data directory and its files' glob: ``DataDir``, or the simulated default dataset (as images, or
    as hit files of the format ``Hits``), made on first use."""
    from dlkit.jagged import EXTENSIONS

    hits = config["Hits"] if HITS in inputs else None
    if hits is not None and hits not in EXTENSIONS:
        raise ConfigError(f"config entry 'Hits' = {hits!r}; expected one of {', '.join(EXTENSIONS)}")
    pattern = "*.h5" if hits is None else f"*{EXTENSIONS[hits]}"
    if config["DataDir"]:
        return Path(config["DataDir"]), pattern
    from calodnn.simulate import default_dataset

    return default_dataset(events_per_class=config["SimEventsPerClass"], config=sim_config, hits=hits), pattern


def _check_norm(key, norm):
    if norm is None:
        return None
    if isinstance(norm, str):
        if norm.lower() != "nonlinear":
            raise ConfigError(f"config entry {key!r} = {norm!r}; expected 'NonLinear', a positive number or None")
        return "nonlinear"
    if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not norm > 0:
        # DLKit silently dropped a tensor for a norm of 0 and ignored integer norms
        raise ConfigError(f"config entry {key!r} = {norm!r}; expected 'NonLinear', a positive number or None")
    return float(norm)


def calo_normalize(config: dict) -> Normalize:
    """The readers' ECAL/HCAL normalisation from ``ECALNorm``/``HCALNorm``, for the inputs the run reads
    (config entries ``ECAL``/``HCAL``); a bad value is an error naming its config entry."""
    return Normalize({k: _check_norm(f"{k}Norm", config[f"{k}Norm"]) for k in ("ECAL", "HCAL") if config.get(k, True)})


class OneHotSelect:
    """Consumer post-process for premixed files: inputs by name (:func:`feed`), one-hot targets from a stored
    label (and the array ``weight`` as Keras' sample weights, if given). With ``energy`` (a multi-task
    network) the targets are ``{"classes": one-hot, "energy": energy}``."""

    def __init__(self, inputs, n_classes: int, label: str = "label", weight: str | None = None,
                 energy: str | None = None):
        self.inputs, self.n_classes, self.label, self.weight = tuple(inputs), n_classes, label, weight
        self.energy = energy

    def __call__(self, arrays):
        labels = np.asarray(arrays[self.label]).astype(np.int64).reshape(-1)
        x, y = feed(arrays, self.inputs), np.eye(self.n_classes, dtype=np.float32)[labels]
        if self.energy is not None:
            y = {"classes": y, "energy": arrays[self.energy]}
        return (x, y) if self.weight is None else (x, y, arrays[self.weight])


def _samples_identity(samples) -> str:
    """A hash of which events of which files (with their sizes and times) a split holds."""
    items = []
    for s in samples:
        st = os.stat(s.file)
        items.append([os.path.abspath(s.file), st.st_size, st.st_mtime_ns, s.start, s.stop, s.class_name,
                      [p if isinstance(p, str) else repr(p) for _, p in s.keys]])  # a Collection: its clipping
    return hashlib.sha1(json.dumps(items).encode()).hexdigest()[:16]


def premix_location():
    """Where premixed files are read and written: ``calodnn-premix`` in the cache location
    (:func:`dlkit.cachedir.cache_location`: the user's private directory, or ``$DLKIT_CACHE_DIR``)."""
    from dlkit.cachedir import cache_location

    return cache_location().sub("calodnn-premix")


def premix(samples, keys, class_names, out_dir, seed: int = 0, batch_size: int = 1024, n_workers=None) -> Path:
    """Mix and shuffle ``samples`` once into ``premix-<hash>.h5``; reuse it if it exists and may be read.

    ``out_dir``: a :class:`dlkit.cachedir.CacheLocation` (see :func:`premix_location`) or a directory. A
    file there is reused only if it is this user's (or the shared directory owner's) and no one else can
    write to it: the name is a hash of the inputs, not of the bytes. The file holds the datasets ``keys``
    plus ``label`` (class index in ``class_names`` order). It is written under a temporary name and renamed
    when complete, so a killed premix is never reused.
    """
    import h5py

    from dlkit.cachedir import CacheLocation, cache_location, seal
    from dlkit.generators import MultiClassGenerator

    location = out_dir if isinstance(out_dir, CacheLocation) else cache_location(out_dir)
    ident = hashlib.sha1(f"{_samples_identity(samples)}|{sorted(keys)}|{list(class_names)}".encode()).hexdigest()[:16]
    name = f"premix-{ident}-{seed}.h5"
    found = location.find(name)
    if found is not None:
        log.info("premixed file %s exists; reusing it", found)
        return found
    path = location.write / name
    class_map = {name: i for i, name in enumerate(class_names)}
    with atomic_file(path) as tmp:
        with MultiClassGenerator(samples, batch_size, class_index_map=class_map, onehot=False, shuffle=True,
                                 seed=seed, n_workers=n_workers) as gen, h5py.File(tmp, "w") as f:
            n = gen.events_per_epoch
            shapes, dtypes = gen.shapes, gen.dtypes
            for key in keys:
                f.create_dataset(key, shape=(n, *shapes[key][1:]), dtype=dtypes[key])
            f.create_dataset("label", shape=(n,), dtype="int32")
            f.attrs["class_names"] = json.dumps(list(class_names))
            pos = 0
            for batch in gen:  # one epoch: every event once, mixed and shuffled
                m = len(batch["class_index"])
                for key in keys:
                    f[key][pos:pos + m] = batch[key]
                f["label"][pos:pos + m] = batch["class_index"]
                pos += m
            if pos != n:
                raise RuntimeError(f"premix of {len(samples)} entries wrote {pos} of {n} events")
        seal(tmp)  # created 0666 & ~umask: group-writable under umask 002
    log.info("premixed %d events into %s", n, path)
    return path


@dataclass
class CaloData(RunData):
    """The generators and test-set access of one run. Close it (or use ``with``) to stop the readers."""

    train: object
    validation: object
    test_samples: list
    class_names: list[str]
    input_shapes: dict[str, tuple]
    inputs: list[str]
    normalize: Normalize
    data_dir: Path
    options: dict = field(default_factory=dict)
    train_samples: list = field(default_factory=list)
    #: ``build(fitted) -> (train, validation)``: the generators with the fitted transforms (None or a
    #: :class:`dlkit.generators.fitting.FittedTransforms`)
    build: Callable | None = None
    fitted: object = None

    fitted_entries = ("Standardize", "Reweight")

    def fit_transforms(self, metadata: dict, config: dict) -> None:
        """Standardize/Reweight fitted on ``train_samples`` (after the ECAL/HCAL norms, one pass over a bounded,
        seeded sample of them) or taken from ``metadata`` (a run resumed, loaded or analysed: never refitted);
        recorded in ``metadata["Fitted"]``; then the generators are built with them (rebuilt if they were
        built before, without them)."""
        from dlkit.generators import Chain
        from dlkit.generators.fitting import fit_transforms, resolve_fitted

        def fit(standardize, reweight):
            return fit_transforms(self.train_samples, standardize, reweight, preprocess=self.normalize,
                                  class_index_map={name: i for i, name in enumerate(self.class_names)},
                                  seed=config["Seed"], n_workers=self.options.get("n_workers"))

        fitted = resolve_fitted(metadata, config, fit, self.fitted_entries, "calodnn")
        _check_fitted(fitted, self.inputs, config["Premix"])
        if fitted is None and self.train is not None:
            return
        self.fitted = fitted
        if fitted is not None and fitted.standardize is not None:
            self.normalize = Chain(self.normalize, fitted.standardize)  # the analysis' test set too
        for gen in (self.train, self.validation):
            if gen is not None:
                gen.close()
        self.train, self.validation = self.build(fitted)

    def read_test(self):
        """The whole test set in memory: ``(model inputs, one-hot labels, true energy)``."""
        arrays = self.read_test_arrays(self.class_names, self.normalize)
        return feed(arrays, self.inputs), arrays["onehot"], np.asarray(arrays["energy"]).reshape(-1)


def _check_fitted_config(config: dict, inputs: list[str]) -> None:
    """What calodnn's data can do with the Standardize/Reweight entries (their form is checked by dlkit)."""
    from dlkit.generators.fitting import check_entries

    entries = check_entries(config)
    std, rw = entries["Standardize"], entries["Reweight"]
    if std is not None and HITS in inputs:
        raise ConfigError(f"config entry 'Standardize': the point model {config['Model']!r} gets its hit features "
                          "scaled in the readers (calodnn.data.HitFeatures); drop Standardize")
    if std is not None and set(std["arrays"]) - set(inputs):
        raise ConfigError(f"config entry 'Standardize': {sorted(set(std['arrays']) - set(inputs))} are not inputs of "
                          f"this run (its inputs: {', '.join(inputs)})")
    if std is not None and std["per_feature"]:
        raise ConfigError("config entry 'Standardize': 'per_feature' does not apply to calodnn's images (one "
                          "center and scale per array)")
    if rw is not None and rw["variable"] != "energy":
        raise ConfigError(f"config entry 'Reweight': variable {rw['variable']!r}; calodnn's one value per event "
                          "is 'energy'")
    if rw is not None and rw["method"] == "resample" and config["Premix"]:
        raise ConfigError("config entry 'Reweight': method 'resample' filters the per-particle files' events, "
                          "which a premixed file does not see; use --nopremix (config entry Premix=False)")


def _check_fitted(fitted, inputs, premixed: bool) -> None:
    """Fitted transforms a continued run stored must still fit this run's inputs and mixing."""
    std = None if fitted is None else fitted.standardize
    rw = None if fitted is None else fitted.reweight
    if std is not None and set(std.constants) - set(inputs):
        raise ConfigError(f"config entries 'ECAL'/'HCAL': the run continued here standardises "
                          f"{sorted(std.constants)}, but this run reads only {inputs}")
    if rw is not None and rw.method == "resample" and premixed:
        raise ConfigError("config entry 'Premix': the run continued here resamples its training events "
                          "(Reweight method 'resample'), which needs --nopremix (Premix=False)")


def _input_shapes(samples, inputs) -> dict[str, tuple]:
    """Per-event shapes of the inputs, from the first sample file (before any generator exists)."""
    import h5py

    from dlkit.generators import DataError

    s = samples[0]
    paths = dict(s.keys)
    try:
        with h5py.File(s.file, "r") as f:
            return {k: tuple(f[paths[k]].shape[1:]) for k in inputs}
    except (OSError, KeyError) as exc:
        raise DataError(f"cannot read the input shapes: {exc}", file=s.file) from None


def _postprocess(inputs, n_classes, rw, premixed: bool, multitask: bool):
    """A generator's consumer step: inputs, one-hot targets (with the energy for a multi-task network) and,
    with a flat Reweight (training only), weights."""
    from dlkit.generators import Chain, Select

    flat = rw is not None and rw.method == "flat"
    energy = "energy" if multitask else None
    if premixed:
        select = OneHotSelect(inputs, n_classes, weight="weight" if flat else None, energy=energy)
        return Chain(rw.replace(class_key="label"), select) if flat else select
    targets = {"classes": "onehot", "energy": "energy"} if multitask else "onehot"
    select = Select(model_feed(inputs), targets, "weight" if flat else None)
    return Chain(rw, select) if flat else select


def _resampled(samples, rw, class_map, seed):
    """``Reweight(method="resample")``: each training file keeps a seeded, flat-making subset of its events."""
    if rw is None or rw.method != "resample":
        return samples
    return [s.with_filter(rw.resample_filter(class_map[s.class_name], seed=seed, base=s.filter)) for s in samples]


def setup_data(config: dict) -> CaloData:
    """Build the run's data from the resolved configuration (see ClassificationExperiment.DEFAULTS).

    With ``Standardize`` or ``Reweight`` set the generators are built later, by :meth:`CaloData.fit_transforms`
    (``train``/``validation`` are None until then)."""
    from dlkit.generators import make_samples_from_dirs, split_fractions, split_samples

    inputs = run_inputs(config)
    _check_fitted_config(config, inputs)
    normalize = HitFeatures() if HITS in inputs else calo_normalize(config)
    data_dir, pattern = dataset_dir(config, inputs)
    particles = list(config["Particles"])
    samples = make_samples_from_dirs(data_dir, sample_keys(config, inputs), classes=particles, pattern=pattern)
    train_s, val_s, test_s = split_samples(samples, split_fractions(config, samples), seed=config["Seed"],
                                           allow_empty_classes=config["AllowEmptyClasses"])
    options = dict(n_workers=config["Workers"] or None)

    def build(fitted=None):
        return _generators(config, train_s, val_s, inputs, particles, normalize, fitted)

    data = CaloData(train=None, validation=None, test_samples=test_s, class_names=particles, input_shapes={},
                    inputs=inputs, normalize=normalize, data_dir=data_dir, options=options, train_samples=train_s,
                    build=build)
    if config.get("Standardize") is None and config.get("Reweight") is None:
        data.train, data.validation = build()
        data.input_shapes = {k: tuple(data.train.shapes[k][1:]) for k in inputs}
    elif HITS in inputs:
        data.input_shapes = {HITS: (int(config["MaxPoints"]), len(HIT_FIELDS))}
    else:
        data.input_shapes = _input_shapes(train_s, inputs)
    log.info("data %s: inputs %s", data_dir, data.input_shapes)
    return data


def _generators(config, train_s, val_s, inputs, particles, normalize, fitted=None):
    """The training and validation generators (with the fitted transforms, if any)."""
    from dlkit.generators import Chain, MultiClassGenerator, SampleSpec

    std = None if fitted is None else fitted.standardize
    rw = None if fitted is None else fitted.reweight
    pre = normalize if std is None else Chain(normalize, std)
    class_map = {name: i for i, name in enumerate(particles)}
    common = dict(seed=config["Seed"], preprocess=pre, cache=bool(config["Cache"]), preload=config["Preload"],
                  n_workers=config["Workers"] or None)
    batch = config["BatchSize"]
    multitask = bool(config.get("MultiTask"))
    arrays = data_arrays(inputs)
    if config["Premix"]:
        gens = []
        for part, name in ((train_s, "train"), (val_s, "validation")):
            path = premix(part, [*arrays, "energy"], particles, premix_location(), seed=config["Seed"],
                          n_workers=common["n_workers"])
            training = name == "train"
            extra = {rw.variable: rw.variable} if training and rw is not None else {}
            if multitask:
                extra["energy"] = "energy"
            spec = [SampleSpec(str(path), {**{k: k for k in arrays}, "label": "label", **extra}, "mixed")]
            post = _postprocess(inputs, len(particles), rw if training else None, True, multitask)
            gens.append(MultiClassGenerator(spec, batch, onehot=False, class_index=False, shuffle=training,
                                            postprocess=post, **common))
        train_gen, val_gen = gens
    else:
        rates = "balanced" if config["Balanced"] else None
        train_gen = MultiClassGenerator(_resampled(train_s, rw, class_map, config["Seed"]), batch,
                                        class_index_map=class_map, rates=rates,
                                        postprocess=_postprocess(inputs, len(particles), rw, False, multitask),
                                        **common)
        val_gen = MultiClassGenerator(val_s, batch, class_index_map=class_map, shuffle=False,
                                      postprocess=_postprocess(inputs, len(particles), None, False, multitask),
                                      **common)
    log.info("generators: %d train / %d validation batches of %d%s", len(train_gen), len(val_gen), batch,
             "" if fitted is None else f" ({fitted.standardize!r}, {fitted.reweight!r})")
    return train_gen, val_gen


def read_splits(data_dir, particles, keys, fractions=(0.6, 0.1, 0.3), seed: int = 0,
                events_per_class: int | None = None, names=("train", "validation", "test")) -> dict[str, dict]:
    """Whole splits in memory, for studies that need no generator (baselines, closed-form calibrations).

    The events are split exactly as the experiments split them (:func:`dlkit.generators.split_samples`, by
    events, seeded); with ``events_per_class`` only that many events per particle are used (the same
    fractions of them). Returns ``{split: {key: array, ..., "particle": index into particles}}``. Missing files
    or keys raise :class:`dlkit.generators.DataError` naming them.
    """
    import h5py

    from dlkit.generators import DataError, count_events, make_samples_from_dirs, split_samples

    particles = list(particles)
    keys = list(keys)
    samples = make_samples_from_dirs(data_dir, keys, classes=particles)
    fractions = [float(f) for f in fractions]
    if events_per_class:
        per_class: dict[str, int] = {}
        for s in samples:
            per_class[s.class_name] = per_class.get(s.class_name, 0) + count_events(s)
        scale = min(1.0, events_per_class / max(1, min(per_class.values())))
        fractions = [f * scale for f in fractions]
    out = {}
    for name, part in zip(names, split_samples(samples, fractions, seed=seed)):
        arrays: dict[str, list] = {k: [] for k in keys}
        index = []
        for s in part:
            stop = s.stop if s.stop is not None else s.start + count_events(s)
            try:
                with h5py.File(s.file, "r") as f:
                    for k in keys:
                        if k not in f:
                            raise DataError(f"dataset not found (file has {sorted(f.keys())})", file=s.file, key=k)
                        arrays[k].append(np.asarray(f[k][s.start:stop]))
            except OSError as exc:
                raise DataError(f"cannot read as HDF5: {exc}", file=s.file) from None
            index.append(np.full(stop - s.start, particles.index(s.class_name), np.int32))
        split = {k: np.concatenate(v) for k, v in arrays.items() if v}
        split["particle"] = np.concatenate(index) if index else np.zeros(0, np.int32)
        out[name] = split
    return out


def prediction_recipe(config: dict, metadata: dict, regression: bool):
    """:mod:`dlkit.export`'s recipe of a calodnn run (the experiments' ``prediction_inputs`` hook): dlkit's
    built-in one for the image models; for a point model the hit files of each particle directory, read as the
    run read them (:func:`sample_keys`, :class:`HitFeatures`), and its heads' meaning (a multi-task network: the
    classes, then the energy)."""
    from dlkit.export.recipes import BUILTIN, Recipe

    module = "calodnn.RegressionExperiment" if regression else "calodnn.ClassificationExperiment"
    if not uses_hits(config):
        return BUILTIN[module](config, metadata)
    from dlkit.jagged import EXTENSIONS

    particles = [str(p) for p in config["Particles"]]
    energy = {"kind": "regression", "target": "energy", "unit": "GeV", "columns": ["energy_pred"]}
    if int(metadata.get("N_outputs") or 1) == 2:
        energy.update(columns=["energy_pred", "energy_log_var"], units=["GeV", "log(GeV^2)"])
    outputs = [{"kind": "classification", "classes": particles}] if not regression else []
    if regression or config.get("MultiTask"):
        outputs.append(energy)
    sources = {HITS: f"the {config['MaxPoints']} most energetic hits ({', '.join(HIT_FIELDS)}): x, y from their "
                     "energy-weighted centroid / 10 mm, z / 250 mm, log10(E / GeV), detector flag; zero-padded",
               f"{HITS}_mask": "True for the real hits", **{k: f"{k} of the file [GeV]" for k in HIT_SUMS}}
    return Recipe(inputs=data_arrays([HITS]), keys=sample_keys(config, [HITS]), preprocess=HitFeatures(),
                  classes=particles, pattern=f"*{EXTENSIONS[config['Hits']]}", truth={"true_energy": "energy"},
                  outputs=outputs, sources=sources)
