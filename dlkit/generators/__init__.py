"""dlkit.generators: the data pipeline - many HDF5, ROOT or parquet files, several classes, batches ready for
Keras; fixed-shape arrays (images, scalars) and lists of points per event (:class:`Collection`) side by side.

DLKit's design, rebuilt: a sample specification (:class:`SampleSpec`, built from a directory per class
with :func:`make_samples_from_dirs` and split by events with :func:`split_samples`) feeds a
:class:`MultiClassGenerator`, a ``keras.utils.PyDataset`` whose reader processes read contiguous runs of
events straight into shared memory (``preadv`` scattering rows into their shuffled places), label them,
run the pre-process in parallel, and write the first pass into a cache that later epochs and later runs
read instead (:mod:`dlkit.generators.cache`).

>>> from dlkit.generators import (MultiClassGenerator, Normalize, Select, make_samples_from_dirs,
...                               split_samples)
>>> samples = make_samples_from_dirs("/data/LCD", ["ECAL", "HCAL", "energy"],
...                                  classes=["Ele", "Gamma", "Pi0", "ChPi"])           # doctest: +SKIP
>>> train, val, test = split_samples(samples, [0.8, 0.1, 0.1], seed=1)                # doctest: +SKIP
>>> norm = Normalize({"ECAL": 480.4, "HCAL": 1235.5})   # runs in the readers, result cached
>>> to_keras = Select(["ECAL", "HCAL"], "onehot")        # runs in the consumer
>>> with MultiClassGenerator(train, 1024, preprocess=norm, postprocess=to_keras, cache=True) as tgen, \
...         MultiClassGenerator(val, 1024, preprocess=norm, postprocess=to_keras, cache=True) as vgen:
...     model.fit(tgen, validation_data=vgen, epochs=10)                                 # doctest: +SKIP
>>> with MultiClassGenerator(test, 1024, preprocess=norm) as g:                         # doctest: +SKIP
...     data = g.read_all()          # ECAL, HCAL, energy, class_index, onehot: every test event

Main pieces: :class:`SampleSpec`, :func:`make_samples_from_dirs`, :func:`make_samples_from_globs`,
:func:`split_samples`, :func:`split_fractions`, :class:`EnergyCut`, :class:`Collection` (samples);
:class:`MultiClassGenerator`,
:class:`Select` (generator); :class:`Normalize`, :class:`Chain` (pre-processes); :class:`Standardize`,
:func:`fit_standardize` (constants fitted on training events), :class:`Reweight`, :func:`fit_reweight` (per-event
weights flattening a variable per class), :func:`fit_transforms`, :func:`sample_batches` (the fits of a run's
``Standardize``/``Reweight`` config entries, :mod:`.fitting`); :func:`read_cache` (cache files);
:class:`DataError`, :class:`WorkerDiedError`, :class:`GeneratorTimeoutError`, :class:`GeneratorError`.

Only this package's light modules load eagerly; :class:`MultiClassGenerator` (which imports Keras) loads
on first use, and reader processes never import Keras or TensorFlow.
"""

import importlib

from dlkit.generators.errors import DataError, GeneratorError, GeneratorTimeoutError, WorkerDiedError

_LAZY = {
    "MultiClassGenerator": "dlkit.generators.generator",
    "Select": "dlkit.generators.generator",
    "default_workers": "dlkit.generators.generator",
    "SampleSpec": "dlkit.generators.samples",
    "Collection": "dlkit.generators.samples",
    "as_samples": "dlkit.generators.samples",
    "make_samples_from_dirs": "dlkit.generators.samples",
    "make_samples_from_globs": "dlkit.generators.samples",
    "split_samples": "dlkit.generators.samples",
    "split_fractions": "dlkit.generators.samples",
    "count_events": "dlkit.generators.samples",
    "EnergyCut": "dlkit.generators.samples",
    "Normalize": "dlkit.generators.preprocess",
    "Chain": "dlkit.generators.preprocess",
    "Standardize": "dlkit.generators.standardize",
    "fit_standardize": "dlkit.generators.standardize",
    "Reweight": "dlkit.generators.reweight",
    "fit_reweight": "dlkit.generators.reweight",
    "fit_transforms": "dlkit.generators.fitting",
    "sample_batches": "dlkit.generators.fitting",
    "read_cache": "dlkit.generators.cache",
    "default_cache_dir": "dlkit.generators.cache",
    "callable_identity": "dlkit.generators.cache",
}

__all__ = [
    "Chain",
    "Collection",
    "DataError",
    "EnergyCut",
    "GeneratorError",
    "GeneratorTimeoutError",
    "MultiClassGenerator",
    "Normalize",
    "Reweight",
    "SampleSpec",
    "Select",
    "Standardize",
    "WorkerDiedError",
    "as_samples",
    "callable_identity",
    "count_events",
    "default_cache_dir",
    "default_workers",
    "fit_reweight",
    "fit_standardize",
    "fit_transforms",
    "make_samples_from_dirs",
    "make_samples_from_globs",
    "read_cache",
    "sample_batches",
    "split_fractions",
    "split_samples",
]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'dlkit.generators' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
