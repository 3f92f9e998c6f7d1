"""MultiClassGenerator: DLKit's DLMultiClassGenerator as a ``keras.utils.PyDataset``.

>>> from dlkit.generators import (MultiClassGenerator, Normalize, Select, make_samples_from_dirs,
...                               split_samples)
>>> samples = make_samples_from_dirs("/data/LCD", ["ECAL", "HCAL", "energy"],
...                                  classes=["Ele", "Gamma", "Pi0", "ChPi"])           # doctest: +SKIP
>>> train, val, test = split_samples(samples, [0.8, 0.1, 0.1], seed=1)                # doctest: +SKIP
>>> norm = Normalize({"ECAL": 480.4, "HCAL": 1235.5})   # in the readers, before the cache
>>> to_keras = Select(["ECAL", "HCAL"], "onehot")        # in the consumer: ((ECAL, HCAL), onehot)
>>> with MultiClassGenerator(train, 1024, preprocess=norm, postprocess=to_keras, cache=True) as tgen, \
...         MultiClassGenerator(val, 1024, preprocess=norm, postprocess=to_keras, cache=True) as vgen:
...     model.fit(tgen, validation_data=vgen, epochs=10)                                 # doctest: +SKIP
>>> with MultiClassGenerator(test, 1024, preprocess=norm) as g:                         # doctest: +SKIP
...     data = g.read_all()          # ECAL, HCAL, energy, class_index, onehot: every test event

Batches are dicts of numpy arrays (dataset arrays with their file dtypes, plus ``class_index`` (int32),
``onehot`` (float32), ``weight`` if any entry has one, ``_entry``/``_event`` with ``provenance=True``),
or whatever ``postprocess`` makes of them.

The batch contract: the arrays of a batch are views on shared memory. They stay valid until the
consumer asks for the next batch, and after that for as long as anything still references them
(TensorFlow's zero-copy tensors included): a slot is reused only when both hold. Keep a copy
(``np.array(x)``) of batches you store; if too many are held the generator fails with a clear error
instead of overwriting them.

Keras: ``__getitem__(i)`` serves the *next* batch of the epoch whatever ``i`` is (batches are already
shuffled, Keras' index shuffling adds nothing), so ``fit(shuffle=True)`` is fine. Every epoch starts at
an epoch boundary of the generator, so every Keras epoch holds each selected event exactly once, on every
backend, however many batches the trainer fetched before it: an epoch that ends before its last batch (the
JAX and torch trainers' one-batch symbolic build, which ``reset()`` ends; a ``break``; a stopped fit) is
served again from its first batch by the next one, and batches requested outside an epoch by the thread
that then starts one (TensorFlow's two signature probes, a look at ``gen[0]``) are served again when the
epoch begins. Hence ``fit(steps_per_epoch=k)`` with k below ``len(gen)`` repeats the same k batches: make
shorter epochs with ``max_events`` instead.
The generator runs its own processes: Keras must iterate it single-threaded (the PyDataset defaults
``workers=1, use_multiprocessing=False``; do not change them).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import sys
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dlkit.generators._pool import ReaderPool
from dlkit.generators._layout import ArraySpec
from dlkit.generators._plan import Planner
from dlkit.generators.sources import inspect_entries, read_events
from dlkit.cachedir import cache_location
from dlkit.generators.cache import cache_key, cache_path
from dlkit.generators.errors import DataError
from dlkit.generators.samples import as_samples

logger = logging.getLogger(__name__)

__all__ = ["MultiClassGenerator", "Select", "default_workers"]

LABEL_KEYS = ("class_index", "onehot", "weight", "_entry", "_event")


def default_workers() -> int:
    """Reader processes by default: the CPUs this process may use (at most 8)."""
    from dlkit.datasets import available_cores

    return max(1, min(available_cores(), 8))


class Select:
    """Picklable post-process: a batch dict -> ``(inputs, targets[, weights])`` for Keras.

    ``Select(["ECAL", "HCAL"], "onehot")`` gives ``((ECAL, HCAL), onehot)`` (a tuple: tf.data rejects lists);
    a single name gives the array itself; ``targets=None`` gives inputs only.
    """

    def __init__(self, inputs, targets=None, weights=None):
        self.inputs, self.targets, self.weights = inputs, targets, weights

    @staticmethod
    def _pick(arrays, names):
        if names is None:
            return None
        if isinstance(names, str):
            return arrays[names]
        if isinstance(names, Mapping):
            return {k: arrays[v] for k, v in names.items()}
        return tuple(arrays[n] for n in names)

    def __call__(self, arrays):
        x = self._pick(arrays, self.inputs)
        if self.targets is None:
            return (x,)
        y = self._pick(arrays, self.targets)
        if self.weights is None:
            return x, y
        return x, y, self._pick(arrays, self.weights)

    def __repr__(self):
        return f"Select({self.inputs!r}, {self.targets!r}, {self.weights!r})"


def _class_map(specs, class_index_map):
    if class_index_map is None:
        cmap = {}
        for s in specs:
            cmap.setdefault(s.class_name, len(cmap))
        return cmap
    cmap = {str(k): int(v) for k, v in dict(class_index_map).items()}
    missing = sorted({s.class_name for s in specs} - set(cmap))
    if missing:
        raise ValueError(f"classes {missing} are not in class_index_map {cmap}")
    if sorted(set(cmap.values())) != list(range(len(set(cmap.values())))) or len(set(cmap.values())) != len(
        cmap
    ):
        raise ValueError(f"class_index_map must map classes to 0..K-1 without repeats, got {cmap}")
    return cmap


def _rates(specs, rates, cmap):
    K = len(cmap)
    if rates is None:
        per = {}
        for s in specs:
            if s.rate is not None:
                if s.class_name in per and per[s.class_name] != float(s.rate):
                    raise ValueError(f"entries of class {s.class_name!r} disagree on the rate")
                per[s.class_name] = float(s.rate)
        if not per:
            return None
        present = {s.class_name for s in specs}
        if present - set(per):
            raise ValueError(f"rates given for {sorted(per)} but not for {sorted(present - set(per))}")
        rates = per
    if isinstance(rates, str):
        if rates != "balanced":
            raise ValueError(f"rates must be None, 'balanced', a mapping or a sequence, got {rates!r}")
        present = {s.class_name for s in specs}
        return np.array([1.0 if name in present else 0.0 for name in sorted(cmap, key=cmap.get)])
    if isinstance(rates, Mapping):
        unknown = set(rates) - set(cmap)
        if unknown:
            raise ValueError(f"rates for unknown classes {sorted(unknown)}")
        return np.array([float(rates.get(name, 0.0)) for name in sorted(cmap, key=cmap.get)])
    r = np.asarray(rates, dtype=np.float64)
    if r.shape != (K,):
        raise ValueError(f"rates must have one value per class ({K}), got {rates!r}")
    return r


def _probe(entries, inputs, preprocess):
    """Output arrays of the pre-process, from running it on two events in this process."""
    if preprocess is None:
        return list(inputs)
    e = next((e for e in entries if e.n > 0), None)
    if e is None:
        raise ValueError("no events selected")
    rows = e.rows(0, min(2, e.n))
    arrays = read_events(e, inputs, rows)
    n = len(rows)
    out = preprocess(arrays)
    if out is None:
        out = arrays
    if not isinstance(out, Mapping):
        raise TypeError(f"preprocess must return a dict of arrays (or None), got {type(out).__name__}")
    specs = []
    for name, x in out.items():
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] != n:
            raise ValueError(
                f"preprocess output {name!r} has shape {x.shape}; the first axis must be the events"
            )
        if x.dtype.kind not in "biufc":
            raise TypeError(f"preprocess output {name!r} has unsupported dtype {x.dtype}")
        if name in LABEL_KEYS:
            raise ValueError(f"preprocess output name {name!r} is reserved")
        specs.append(ArraySpec(str(name), x.dtype.newbyteorder("=").str, tuple(x.shape[1:])))
    return specs


_PYDATASET_CLASSES: dict[type, type] = {}


def _with_pydataset(cls: type) -> type:
    """``cls`` mixed with ``keras.utils.PyDataset``, made on first instantiation.

    Keras is imported here, not when this module is imported: a module that imports
    MultiClassGenerator and defines the pre-process (which readers unpickle, hence import) must not pull
    TensorFlow into every reader process.
    """
    import keras

    if issubclass(cls, keras.utils.PyDataset):
        return cls
    made = _PYDATASET_CLASSES.get(cls)
    if made is None:
        made = type(
            cls.__name__,
            (cls, keras.utils.PyDataset),
            {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__},
        )
        _PYDATASET_CLASSES[cls] = made
    return made


def _check_no_empty_class(entries, class_names) -> None:
    """A class of the generator without a single event is a mistake (a wrong directory, a filter that selects
    nothing): say which, and where it was looked for."""
    events = [0] * len(class_names)
    files: list[list[str]] = [[] for _ in class_names]
    for e in entries:
        events[e.class_index] += e.n
        files[e.class_index].append(e.path)
    for name, n, paths in zip(class_names, events, files):
        if n == 0:
            where = f"in its file(s) {', '.join(sorted(set(paths))[:3])}" if paths else "(no file of it is given)"
            raise DataError(f"class {name!r} has no events {where}; pass allow_empty_classes=True (config entry "
                            "AllowEmptyClasses) to go on without it")


def _check_arguments(batch_size, start_method: str, preprocess) -> None:
    """Arguments that would only fail later, in a reader process: refused at construction, naming them."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if start_method not in ("spawn", "forkserver", "fork"):
        raise ValueError(f"start_method must be 'spawn', 'forkserver' or 'fork', got {start_method!r}")
    if preprocess is not None:
        try:
            pickle.dumps(preprocess)
        except Exception as exc:
            raise TypeError(
                f"preprocess {preprocess!r} must be picklable to run in the reader processes: define "
                "it at module level (in a module that does not import Keras), or use "
                f"functools.partial or a callable class ({exc})"
            ) from None


class MultiClassGenerator:
    """Parallel multi-class HDF5 batch generator with shared memory and an on-disk cache.

    Instances are ``keras.utils.PyDataset`` objects (the base is added when the first one is made).

    Parameters
    ----------
    samples : sample specification (list of :class:`SampleSpec` or DLKit tuples).
    batch_size : events per batch.
    rates : None (natural proportions), ``"balanced"``, ``{class: rate}`` or one rate per class index.
        With rates other than natural, an epoch ends when the first class runs out; other classes use a
        different subset every epoch (when shuffled).
    class_index_map : ``{class_name: index}``; default: order of first appearance.
    onehot, class_index : add ``onehot`` (float32) / ``class_index`` (int32) arrays.
    weights : add ``weight`` (float32, from the entries' ``weight``); default: if any entry has one.
    provenance : add ``_entry`` (int32, index into ``samples``) and ``_event`` (int64, event number).
    shuffle : shuffle file order, chunk order and rows within each batch (seeded). Off: canonical order.
    seed : everything random derives from it; same seed, same batches (whatever ``n_workers``).
    chunk_size : events read contiguously from a file (the unit of shuffling across files).
    shuffle_window : None shuffles chunks across the whole epoch; an integer W only within windows of W
        batches of the (file-order-shuffled) stream, which keeps reads local on slow disks.
    last_batch : ``"keep"`` a final smaller batch, or ``"drop"`` it (different events each epoch).
    max_events : cap on events per epoch (classes keep their proportions).
    preprocess : ``f(dict of arrays) -> dict or None`` run in the readers on each batch before caching;
        must be picklable (module-level function, functools.partial or callable object). ``np.random`` is
        seeded per batch in the reader, so augmentation is deterministic.
    postprocess : ``f(dict) -> batch`` run in the consumer, e.g. ``Select(["ECAL", "HCAL"], "onehot")``.
    n_workers : reader processes (default :func:`default_workers`); queue_depth : tasks per reader.
    cache : False, True (``$DLKIT_CACHE_DIR``, else the private ``<tmp>/dlkit-cache-<uid>``) or a directory;
        another user's directory is read-only (a shared cache). See :mod:`.cache` and :mod:`dlkit.cachedir`.
    cache_tag : extra text for the cache key (bump it when the pre-process changes in a way its code
        does not show).
    preload : keep every selected, pre-processed event in RAM after the first pass (DLKit's --preload).
    start_method : ``"spawn"`` (default, safe with TensorFlow loaded), ``"forkserver"`` or ``"fork"``.
    nice : CPU priority offset of the readers (default 19, the lowest): they use the cycles the training
        process leaves idle instead of pre-empting its threads, which made CPU training ~10 % faster
        (BENCHMARKS.md); pass 0 when the readers must compete equally with other busy processes.
    timeout : seconds without any reader progress before raising.
    allow_empty_classes : a class without events is a :class:`DataError` naming it and its files unless True.
    """

    def __init__(
        self, samples, batch_size: int = 1024, *, rates=None, class_index_map=None, onehot: bool = True,
        class_index: bool = True, weights: bool | None = None, provenance: bool = False, shuffle: bool = True,
        seed: int = 0, chunk_size: int = 256, shuffle_window: int | None = None, last_batch: str = "keep",
        max_events: int | None = None, preprocess=None, postprocess=None, n_workers: int | None = None,
        queue_depth: int = 2, cache=False, cache_tag: str | None = None, preload: bool = False,
        start_method: str = "spawn", nice: int = 19, timeout: float = 300.0, allow_empty_classes: bool = False,
    ):
        import keras

        keras.utils.PyDataset.__init__(self, workers=1, use_multiprocessing=False)
        self._closed = False
        self._lock = threading.RLock()
        _check_arguments(batch_size, start_method, preprocess)
        self.samples = as_samples(samples)
        self.batch_size = int(batch_size)
        self.preprocess = preprocess
        self.postprocess = postprocess
        self.seed = int(seed)
        # 1. the classes and the files: what each entry holds, checked before any reader starts
        rate_array = self._inspect(class_index_map, rates, allow_empty_classes)
        # 2. the plan: which events of which entry make each batch, epoch by epoch
        self._planner = Planner(
            [e.class_index for e in self._entries], [e.n for e in self._entries], self.n_classes,
            self.batch_size, rates=rate_array, max_events=max_events, last_batch=last_batch, shuffle=shuffle,
            chunk_size=chunk_size, shuffle_window=shuffle_window, seed=self.seed,
        )
        # 3. the arrays of a batch: the inputs (after preprocess) and the labels
        labels = self._label_arrays(class_index, onehot, weights, provenance)
        # 4. the cache: where this user builds it (their own directory) and the key of its content
        self._cache_setup(cache, cache_tag)
        # 5. the reader pool: reader processes, shared-memory slots, the cache (started on first use)
        self._pool = ReaderPool(
            entries=self._entries, inputs=self._inputs, outputs=self._outputs,
            slot_arrays=list(self._outputs) + labels, planner=self._planner, preprocess=preprocess,
            n_workers=default_workers() if n_workers is None else n_workers, queue_depth=queue_depth,
            start_method=start_method, timeout=timeout, cache_location=self.cache_location,
            cache_key=self._cache_key, preload=preload, seed=self.seed, meta=self._cache_meta(), nice=nice,
        )
        self._finalizer = weakref.finalize(self, self._pool.res.cleanup)
        self._pos = 0
        self._start = 0  # where the epoch being served starts: an epoch boundary, or where seek() put it
        self._in_epoch = False
        self._peek_thread = None  # thread of the out-of-epoch calls since the last epoch boundary
        self._peeks_only = True
        logger.info(
            "MultiClassGenerator: %d entries, %d classes %s, %d events/epoch in %d batches of %d",
            len(self._entries), self.n_classes, self.class_names, self._planner.events_per_epoch, len(self),
            self.batch_size,
        )

    def _inspect(self, class_index_map, rates, allow_empty_classes):
        """The classes, every entry's files checked and described, and the arrays the pre-process makes;
        returns the rate of each class (None: natural proportions)."""
        self.class_index_map = _class_map(self.samples, class_index_map)
        self.class_names = sorted(self.class_index_map, key=self.class_index_map.get)
        self.n_classes = len(self.class_names)
        rate_array = _rates(self.samples, rates, self.class_index_map)
        self._entries, self._inputs = inspect_entries(self.samples, self.class_index_map)
        if not allow_empty_classes:
            _check_no_empty_class(self._entries, self.class_names)
        self._outputs = _probe(self._entries, self._inputs, self.preprocess)
        return rate_array

    def _cache_setup(self, cache, cache_tag) -> None:
        """Where this user builds the cache (their own directory) and the key of its content; None without."""
        self.cache_location = None if cache is False or cache is None else cache_location(
            None if cache is True else cache)
        self.cache_dir = None if self.cache_location is None else self.cache_location.write
        self._cache_key = None if self.cache_dir is None else cache_key(
            self._entries, self._inputs, self._outputs, self.preprocess, cache_tag)

    def _label_arrays(self, class_index, onehot, weights, provenance) -> list[ArraySpec]:
        """The label arrays of a batch (``weights=None``: if any entry has a weight), kept as ``_label_flags``
        for ``read_all``; a name clash with an input is an error."""
        if weights is None:
            weights = any(s.weight is not None for s in self.samples)
        flags = self._label_flags = {"class_index": class_index, "onehot": onehot, "weight": bool(weights),
                                     "provenance": bool(provenance)}
        labels = []
        if flags["class_index"]:
            labels.append(ArraySpec("class_index", np.dtype(np.int32).str, ()))
        if flags["onehot"]:
            labels.append(ArraySpec("onehot", np.dtype(np.float32).str, (self.n_classes,)))
        if flags["weight"]:
            labels.append(ArraySpec("weight", np.dtype(np.float32).str, ()))
        if flags["provenance"]:
            labels += [ArraySpec("_entry", np.dtype(np.int32).str, ()), ArraySpec("_event", np.dtype(np.int64).str, ())]
        clash = {a.name for a in self._outputs} & {a.name for a in labels}
        if clash:
            raise ValueError(f"array names {sorted(clash)} clash with label arrays; rename with keys={{name: path}}")
        return labels

    def _cache_meta(self) -> dict:
        """What the cache records about its source (``python -m dlkit.cache list`` shows it)."""
        entries = [{"file": e.path, "class": self.class_names[e.class_index], "n": e.n, "start": e.start,
                    "stop": e.stop, "filtered": e.selection is not None} for e in self._entries]
        return {"classes": self.class_names, "entries": entries}

    def __new__(cls, *args, **kwargs):
        return object.__new__(_with_pydataset(cls))

    # ------------------------------------------------------------------ description
    def __len__(self) -> int:
        return int(self._planner.n_batches)

    @property
    def steps_per_epoch(self) -> int:
        return len(self)

    @property
    def events_per_epoch(self) -> int:
        return self._planner.events_per_epoch

    @property
    def n_events(self) -> int:
        """Selected events (every entry, after filters), what ``read_all`` returns."""
        return self._planner.n_canonical

    @property
    def batch_class_counts(self) -> np.ndarray:
        """(n_batches, n_classes) events of each class in each batch, the same every epoch."""
        return self._planner.batch_counts.copy()

    @property
    def events_per_class(self) -> dict[str, int]:
        return {name: int(self._planner.used[i]) for i, name in enumerate(self.class_names)}

    @property
    def shapes(self) -> dict[str, tuple]:
        """Per-array batch shapes, ``(None,) + event shape``, as delivered before ``postprocess``."""
        return {a.name: (None,) + tuple(a.shape) for a in self._pool.slot_layout.arrays}

    @property
    def dtypes(self) -> dict[str, np.dtype]:
        return {a.name: a.np_dtype for a in self._pool.slot_layout.arrays}

    @property
    def cache_path(self) -> Path | None:
        """Where the cache file is (a shared one being read, or this user's, once complete); None without."""
        if self.cache_dir is None:
            return None
        return self._pool.disk_path or cache_path(self.cache_dir, self._cache_key)

    @property
    def epoch(self) -> int:
        return self._pos // len(self)

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._pool.workers]

    @property
    def startup_seconds(self) -> float | None:
        return self._pool.startup_seconds

    @property
    def stats(self) -> dict:
        """Seconds the readers spent reading, pre-processing and writing the cache, and tasks done."""
        return dict(self._pool.stats)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> MultiClassGenerator:
        """Start the readers now (otherwise at the first batch) to overlap their start-up with other work."""
        with self._lock:
            self._pool.check_usable()
            self._pool.start()
        return self

    def close(self) -> None:
        """Stop the readers and free shared memory; idempotent. Also runs at garbage collection and exit."""
        self._closed = True
        self._pool.close()
        self._finalizer.detach()

    @property
    def closed(self) -> bool:
        return self._closed or self._pool.res.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        raise TypeError(
            "MultiClassGenerator owns processes and shared memory and cannot be pickled; "
            "iterate it with workers=1, use_multiprocessing=False"
        )

    # ------------------------------------------------------------------ iteration
    def __getitem__(self, index):
        n = len(self)
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"batch index must be an integer, got {type(index).__name__}")
        if not -n <= int(index) < n:
            raise IndexError(f"batch index {index} out of range for {n} batches")
        with self._lock:
            s = self._pos
            if s == self._start or s % n == 0:
                self._peeks_only, self._peek_thread = True, None
            if self._in_epoch:
                self._peeks_only = False
            elif self._peeks_only:
                me = threading.get_ident()
                if self._peek_thread is None:
                    self._peek_thread = me
                elif self._peek_thread != me:
                    self._peeks_only = False
            arrays = self._pool.fetch(s)
            self._pos = s + 1
        if self.postprocess is not None:
            return self.postprocess(arrays)
        return arrays

    @property
    def position(self) -> int:
        """The stream index of the next batch served: ``epoch * len(self) + batch``."""
        return self._pos

    def seek(self, position: int) -> None:
        """Serve from stream index ``position`` (``epoch * len(self) + batch``) on: a resumed training picks up
        the batch after the last one it trained (batches are the same whenever they are served)."""
        position = int(position)
        if position < 0:
            raise ValueError(f"seek: position must be >= 0, got {position}")
        with self._lock:
            self._pos = self._start = position
            self._peeks_only, self._peek_thread = True, None
            self._pool.rewind(position)

    def __iter__(self):
        """One epoch of batches."""
        self.on_epoch_begin()
        try:
            for i in range(len(self)):
                yield self[i]
        finally:
            self.on_epoch_end()

    def on_epoch_begin(self):
        with self._lock:
            offset = self._pos - self._start
            if (
                offset
                and self._peeks_only
                and not self._in_epoch
                and self._peek_thread in (None, threading.get_ident())
            ):
                logger.debug("rewinding %d batch(es) served before the epoch began", offset)
                self._pos = self._start
                self._pool.rewind(self._pos)
            self._in_epoch = True

    def on_epoch_end(self):
        """An epoch that ended early is served again from its first batch: the trainers' probes and a
        stopped epoch never shift the next one."""
        with self._lock:
            self._in_epoch = False
            n = len(self)
            end = (self._start // n + 1) * n  # where the epoch being served ends
            if self._start < self._pos < end:
                logger.debug("epoch ended after %d of %d batches: its first batch is served next",
                             self._pos - self._start, end - self._start)
                self._pos = self._start
                self._pool.rewind(self._pos)
            elif self._pos % n:  # batches of the next epoch served ahead (a trainer's prefetch): served again
                self._pos -= self._pos % n
                self._pool.rewind(self._pos)
            self._start = self._pos

    # ------------------------------------------------------------------ whole dataset
    def build_cache(self, progress: bool | None = None) -> Path | None:
        """Complete the cache now (and the RAM copy with ``preload``): read, pre-process and store every
        selected event the generator has not stored yet; returns the cache file (None without one).

        Training fills the cache during its first epoch anyway; this is for preparing it ahead, e.g. once
        before the points of a scan start, or to finish it after a partial first epoch. ``progress``: a
        tqdm bar of the events stored (default: when stderr is a terminal).
        """
        if progress is None:
            progress = sys.stderr.isatty()
        with self._lock, contextlib.ExitStack() as stack:
            update = None
            if progress:
                from tqdm.auto import tqdm

                bar = stack.enter_context(tqdm(total=self._pool.n_canonical, unit="ev", desc="dlkit cache"))

                def update(done, total):
                    bar.update(done - bar.n)

            self._pool.complete_stores(update)
        path = self.cache_path
        return path if path is not None and path.exists() else None

    def read_all(self, apply_postprocess: bool = False, provenance: bool | None = None):
        """Every selected event once, canonical order (specification order, events in file order).

        Returns a dict of arrays (pre-processed datasets plus the label arrays), e.g. the test set for the
        analysis; rates, ``max_events`` and shuffling do not apply. The arrays own their memory (they
        outlive the generator). Reads the cache if there is one, and completes it if it is being built.
        """
        with self._lock:
            out = dict(self._pool.read_canonical())
        e = self._entries
        ent = np.repeat(np.arange(len(e), dtype=np.int32), [x.n for x in e])
        cls = np.array([x.class_index for x in e], np.int32)[ent]
        flags = self._label_flags
        if flags["class_index"]:
            out["class_index"] = cls
        if flags["onehot"]:
            oh = np.zeros((len(cls), self.n_classes), np.float32)
            oh[np.arange(len(cls)), cls] = 1
            out["onehot"] = oh
        if flags["weight"]:
            out["weight"] = np.array([x.weight for x in e], np.float32)[ent]
        if flags["provenance"] if provenance is None else provenance:
            out["_entry"] = ent
            out["_event"] = np.concatenate([x.rows(0, x.n) for x in e]) if len(e) else np.zeros(0, np.int64)
        if apply_postprocess and self.postprocess is not None:
            return self.postprocess(out)
        return out

    def __repr__(self):
        return (
            f"MultiClassGenerator({len(self._entries)} entries, classes={self.class_names}, "
            f"batch_size={self.batch_size}, batches={len(self)}, events/epoch={self.events_per_epoch})"
        )
