"""calodnn data: LCD-layout files -> train/validation generators and the test set.

One directory per particle (``<DataDir>/<Particle>/*.h5`` with ``ECAL``, ``HCAL``, ``energy``); with no
``DataDir`` the simulated default dataset is made on first use (:func:`calodnn.simulate.default_dataset`).
Events are split reproducibly by events per class (train / validation / test). Two ways to mix classes:

- premix (DLKit's default): each split's events are mixed and shuffled once into one file (kept in the
  cache directory, reused by every later run on the same data) which the generator then reads;
- on the fly (``--nopremix``): the generator mixes the per-particle files in every batch.

ECAL/HCAL normalisation runs in the generator's reader processes (:func:`calo_normalize`), so this module
must stay importable without Keras.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlkit.config import ConfigError
from dlkit.datasets import atomic_file
from dlkit.experiment import RunData
from dlkit.generators.preprocess import Normalize

log = logging.getLogger(__name__)

__all__ = ["Normalize", "calo_normalize", "OneHotSelect", "CaloData", "setup_data", "premix", "premix_location"]


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
    """Consumer post-process for premixed files: inputs by name, one-hot targets from a stored label."""

    def __init__(self, inputs, n_classes: int, label: str = "label"):
        self.inputs, self.n_classes, self.label = tuple(inputs), n_classes, label

    def __call__(self, arrays):
        labels = np.asarray(arrays[self.label]).astype(np.int64).reshape(-1)
        return tuple(arrays[k] for k in self.inputs), np.eye(self.n_classes, dtype=np.float32)[labels]


def _samples_identity(samples) -> str:
    """A hash of which events of which files (with their sizes and times) a split holds."""
    items = []
    for s in samples:
        st = os.stat(s.file)
        items.append([os.path.abspath(s.file), st.st_size, st.st_mtime_ns, s.start, s.stop, s.class_name,
                      list(s.paths)])
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

    def read_test(self):
        """The whole test set in memory: ``(inputs tuple, one-hot labels, true energy)``."""
        arrays = self.read_test_arrays(self.class_names, self.normalize)
        return tuple(arrays[k] for k in self.inputs), arrays["onehot"], np.asarray(arrays["energy"]).reshape(-1)


def setup_data(config: dict) -> CaloData:
    """Build the run's data from the resolved configuration (see ClassificationExperiment.DEFAULTS)."""
    from dlkit.generators import (
        MultiClassGenerator,
        make_samples_from_dirs,
        split_fractions,
        split_samples,
    )

    inputs = [k for k in ("ECAL", "HCAL") if config["ECAL" if k == "ECAL" else "HCAL"]]
    if not inputs:
        raise ConfigError("config entries 'ECAL' and 'HCAL' are both False: the model needs an input")
    normalize = calo_normalize(config)
    if config["DataDir"]:
        data_dir = Path(config["DataDir"])
    else:
        from calodnn.simulate import default_dataset

        data_dir = default_dataset(events_per_class=config["SimEventsPerClass"])
    particles = list(config["Particles"])
    keys = [*inputs, "energy"]
    samples = make_samples_from_dirs(data_dir, keys, classes=particles)
    train_s, val_s, test_s = split_samples(samples, split_fractions(config, samples), seed=config["Seed"],
                                           allow_empty_classes=config["AllowEmptyClasses"])
    class_map = {name: i for i, name in enumerate(particles)}
    workers = config["Workers"] or None
    cache = bool(config["Cache"])
    options = dict(n_workers=workers)
    batch = config["BatchSize"]
    if config["Premix"]:
        from dlkit.generators import SampleSpec

        premix_dir = premix_location()
        gens = []
        for part, name in ((train_s, "train"), (val_s, "validation")):
            path = premix(part, keys, particles, premix_dir, seed=config["Seed"], n_workers=workers)
            spec = [SampleSpec(str(path), {**{k: k for k in inputs}, "label": "label"}, "mixed")]
            gens.append(MultiClassGenerator(spec, batch, onehot=False, class_index=False, shuffle=name == "train",
                                            seed=config["Seed"], preprocess=normalize, cache=cache,
                                            preload=config["Preload"],
                                            postprocess=OneHotSelect(inputs, len(particles)), **options))
        train_gen, val_gen = gens
    else:
        from dlkit.generators import Select

        select = Select(tuple(inputs), "onehot")
        rates = "balanced" if config["Balanced"] else None
        train_gen = MultiClassGenerator(train_s, batch, class_index_map=class_map, rates=rates, seed=config["Seed"],
                                        preprocess=normalize, postprocess=select, cache=cache,
                                        preload=config["Preload"], **options)
        val_gen = MultiClassGenerator(val_s, batch, class_index_map=class_map, shuffle=False, seed=config["Seed"],
                                      preprocess=normalize, postprocess=select, cache=cache,
                                      preload=config["Preload"], **options)
    shapes = {k: tuple(train_gen.shapes[k][1:]) for k in inputs}
    log.info("data %s: %d train / %d validation batches of %d; inputs %s", data_dir, len(train_gen), len(val_gen),
             batch, shapes)
    return CaloData(train=train_gen, validation=val_gen, test_samples=test_s, class_names=particles,
                    input_shapes=shapes, inputs=inputs, normalize=normalize, data_dir=data_dir, options=options)


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
