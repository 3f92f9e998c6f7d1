"""Per-event scores: a trained run (its Keras model or its ONNX export) over a dataset, one row per event.

    dlkit-predict RUN_DIR --data DIR --out scores.root      # or .parquet, .h5 (the extension picks the format)
    dlkit-predict RUN_DIR --data DIR --out scores.h5 --onnx # onnxruntime on <run>/model.onnx instead of Keras

The events are read through :class:`dlkit.generators.MultiClassGenerator` unshuffled, as one stream (class
directories in the run's class order, files in natural order, events in file order: :func:`event_reader`),
pre-processed in its reader processes exactly as in training (the run's recipe and fitted standardization,
:meth:`dlkit.export.run.Run.preprocess`), batch by batch: memory stays that of a few batches however large the
dataset. Each batch's rows are written through :class:`dlkit.jagged.EventWriter` (ROOT TTree ``events``,
parquet or HDF5), which writes under a hidden temporary name and renames the file into place only when every
event is in: an interrupted prediction leaves no file that looks complete.

Columns: the outputs (``score_<class>`` per class of a classifier, ``<target>_pred`` of a regression: the
recipe's ``columns``), the truth where the files have it (``true_class``: the class index of the event's
class directory, in the run's class order; ``true_energy``, ...), and provenance: ``source_file`` (an index
into the file metadata's ``source_files``) and ``event`` (the event's index in that file). The file's
metadata (:func:`dlkit.jagged.read_metadata`) holds the run, the model file, the classes and what each
column means.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlkit.export.run import ExportError, Run, load_run

log = logging.getLogger(__name__)

__all__ = ["predict", "Prediction", "event_reader", "read_events_of", "SPLITS"]

#: ``split``: the run's own train/validation/test events of its data directory (the experiments' split).
SPLITS = ("train", "validation", "test")


@dataclass
class Prediction:
    """What :func:`predict` wrote: the file, its events and columns, and how long it took."""

    path: Path
    events: int
    seconds: float
    columns: list = field(default_factory=list)


def _has_key(sample, key: str) -> bool:
    """Whether the sample's file has ``key`` (a truth array may be missing in real data)."""
    import dataclasses

    from dlkit.generators.errors import DataError
    from dlkit.generators.sources import format_of, module

    mod = module(format_of(sample.file))
    probe = dataclasses.replace(sample, keys=((key, key),), filter=None)
    try:
        with mod.open_file(sample.file, sample.tree, consumer=True) as f:
            mod.describe(f, probe, os.stat(sample.file).st_size)
        return True
    except (DataError, KeyError, OSError):
        return False


def _layout(run: Run, data: Path):
    """``(keys, classes, pattern)``: what to read, the class sub-directories present (None: flat), file names."""
    recipe = run.recipe
    pattern = recipe.pattern if recipe is not None else "*.h5"
    keys = dict(recipe.keys) if recipe is not None else {}
    if recipe is None:
        from dlkit.export.recipes import model_io
        from dlkit.saving import load_model

        keys = {spec["name"]: spec["name"] for spec in model_io(load_model(run.model_path, compile=False))[0]}
    classes = [c for c in (recipe.classes or [] if recipe is not None else []) if (data / c).is_dir()]
    return keys, classes or None, pattern


def _samples(run: Run, data: Path, split: str | None):
    """The sample specification of ``data`` (class sub-directories or flat), truth keys the files lack left out;
    with ``split`` only that part of the run's split."""
    from dlkit.generators import make_samples_from_dirs, make_samples_from_globs, split_fractions, split_samples

    if not data.is_dir():
        raise ExportError(f"--data {data}: no such directory")
    keys, classes, pattern = _layout(run, data)
    optional = set(run.recipe.truth.values()) if run.recipe is not None else set()
    if classes:
        samples = make_samples_from_dirs(data, keys, classes=classes, pattern=pattern)
    elif not list(data.glob(pattern)):
        expected = f" nor the run's class directories {run.recipe.classes}" if run.recipe and run.recipe.classes else ""
        raise ExportError(f"--data {data}: no {pattern} files in it{expected}")
    else:  # the experiment's name for a flat directory's class: its split is seeded with it
        flat = run.recipe.flat_class if run.recipe is not None else "events"
        samples = make_samples_from_globs({flat: str(data / pattern)}, keys)
    missing = [k for k in keys if k in optional and not _has_key(samples[0], keys[k])]
    if missing:
        import dataclasses

        kept = tuple((k, v) for k, v in samples[0].keys if k not in missing)
        samples = [dataclasses.replace(s, keys=kept) for s in samples]
    if split is not None:
        if split not in SPLITS:
            raise ExportError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
        config = run.config
        parts = split_samples(samples, split_fractions(config, samples), seed=config.get("Seed", 0),
                              allow_empty_classes=True)
        samples = parts[SPLITS.index(split)]
    return samples, classes


@contextlib.contextmanager
def event_reader(run: Run, data, *, split: str | None = None, batch_size: int = 256, n_workers: int | None = None,
                 max_events: int | None = None):
    """A :class:`~dlkit.generators.MultiClassGenerator` over ``data`` in canonical order - class directories
    in the run's class order, files in natural order, events in file order - pre-processed as the run was, with
    provenance; yields ``(generator, samples, entry_class)``: ``entry_class[_entry]`` is an event's true class
    index (None for a flat directory). The generator sees one class (the classes are not interleaved)."""
    import dataclasses

    from dlkit.generators import MultiClassGenerator
    from dlkit.quiet import import_keras

    import_keras()  # the generator is a Keras PyDataset: imported without TensorFlow's start-up noise
    samples, classes = _samples(run, Path(data), split)
    if not samples:
        raise ExportError(f"--data {data}: no events" + (f" in the {split} split" if split else ""))
    entry_class = None
    if classes:
        index = {c: i for i, c in enumerate(run.recipe.classes)}
        entry_class = np.array([index[s.class_name] for s in samples], np.int32)
    one_stream = [dataclasses.replace(s, class_name="events", rate=None) for s in samples]
    with MultiClassGenerator(one_stream, batch_size, onehot=False, class_index=False, provenance=True, shuffle=False,
                             preprocess=run.preprocess(), cache=False, n_workers=n_workers, max_events=max_events,
                             allow_empty_classes=True) as gen:
        yield gen, samples, entry_class


def read_events_of(run_dir, data, *, split: str | None = None, experiment: str | None = None,
                   n_workers: int | None = None) -> dict:
    """Every event of ``data`` (or of its ``split``) in memory, pre-processed as the run's inputs, in
    :func:`predict`'s order: the arrays of :meth:`MultiClassGenerator.read_all` (``_entry``/``_event``
    included) and ``class_index``, the true class, where the data has class directories."""
    run = load_run(run_dir, experiment, need_model=False)
    with event_reader(run, data, split=split, n_workers=n_workers) as (gen, _, entry_class):
        out = gen.read_all()
    if entry_class is not None:
        out["class_index"] = entry_class[out["_entry"]]
    return out


def _keras_runner(run: Run):
    """``(run_batch, model file, model)``: ``run_batch(batch)`` feeds the model's inputs by name."""
    from dlkit.quiet import import_keras
    from dlkit.saving import load_model

    import_keras()
    model = load_model(run.model_path, compile=False)
    names = [t.name for t in model.inputs]
    structure = getattr(model, "_inputs_struct", None)  # a model built on a dict of inputs takes a dict

    def run_batch(batch):
        if isinstance(structure, dict):
            y = model.predict_on_batch({k: batch[k] for k in structure})
        else:
            x = [batch[n] for n in names]
            y = model.predict_on_batch(x if len(x) > 1 else x[0])
        if isinstance(y, dict):  # named outputs, in the model's order (as its recipe describes them)
            order = [k for k in getattr(model, "output_names", None) or [] if k in y] or list(y)
            y = [y[k] for k in order]
        return [np.asarray(a) for a in (y if isinstance(y, (list, tuple)) else [y])]

    return run_batch, str(run.model_path), model


def _onnx_runner(path: Path, threads: int | None):
    """``(run_batch, model file, None)``: onnxruntime on ``path``, its inputs fed by name as float32."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("--onnx needs onnxruntime: pip install 'dlkit[export]'") from None
    if not path.is_file():
        raise ExportError(f"{path}: no ONNX model; run dlkit-export {path.parent} first")
    options = ort.SessionOptions()
    # no busy-waiting threads between batches: they would starve the generator's (niced) reader processes
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run_batch(batch):
        return session.run(None, {n: np.ascontiguousarray(batch[n], np.float32) for n in names})

    return run_batch, str(path), None


def _output_specs(run: Run, model, onnx_path: Path | None):
    """The outputs' descriptions (names, shapes, meaning, columns): from the ONNX file's metadata or the model."""
    if model is None:
        from dlkit.export.onnx_export import read_onnx_metadata

        return read_onnx_metadata(onnx_path).get("outputs") or []
    return run.describe(model)["outputs"]


def _columns(batch, outputs, specs, entry_class, truth, file_of_entry) -> dict:
    """One batch's columns (copies: the batch's arrays are views on the generator's shared memory)."""
    cols = {}
    for y, spec in zip(outputs, specs):
        y = np.asarray(y).reshape(len(y), -1)
        names = spec.get("columns") or [spec["name"]]
        if len(names) != y.shape[1]:
            names = [f"{spec['name']}_{i}" for i in range(y.shape[1])]
        for i, name in enumerate(names):
            cols[name] = y[:, i].astype(np.float32)
    entry = np.asarray(batch["_entry"])
    if entry_class is not None:
        cols["true_class"] = entry_class[entry]
    for column, key in truth.items():
        if key in batch:
            value = np.array(batch[key])
            cols[column] = value.reshape(len(value), -1)[:, 0] if value.ndim > 1 and value[0].size == 1 else value
    cols["source_file"] = file_of_entry[entry].astype(np.int32)
    cols["event"] = np.array(batch["_event"], np.int64)
    return cols


def _file_metadata(run: Run, data, split, model_file, files, specs, classes: bool) -> dict:
    from dlkit.export.run import config_sha256

    import dlkit

    return {"dlkit_version": dlkit.__version__, "run_name": run.name, "run_dir": str(run.directory),
            "experiment": run.experiment or "", "config_sha256": config_sha256(run.metadata.get("Configuration")),
            "model": model_file, "data": str(data), "split": split or "",
            "source_files": json.dumps(files), "class_names": json.dumps(list(run.recipe.classes) if classes else []),
            "outputs": json.dumps(specs), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def predict(run_dir, data, out, *, onnx: bool = False, onnx_path=None, batch_size: int = 256,
            split: str | None = None, experiment: str | None = None, n_workers: int | None = None,
            threads: int | None = None, max_events: int | None = None, format: str | None = None) -> Prediction:
    """Write one row per event of ``data`` to ``out`` (``.root``, ``.parquet``, ``.h5``; see the module docstring).

    ``onnx``: run ``onnx_path`` (default ``<run_dir>/model.onnx``) with onnxruntime (``threads`` intra-op
    threads) instead of the Keras model; ``split``: only the run's ``"train"``, ``"validation"`` or ``"test"``
    events of ``data`` (its own data directory: the experiments' split); ``n_workers``: reader processes;
    ``max_events``: the first events only; ``format``: :data:`dlkit.jagged.FORMATS` (default: the extension).
    """
    from dlkit.jagged import EventWriter, format_of

    out = Path(out)
    if format is None:
        try:
            format_of(out)
        except ValueError as exc:
            raise ExportError(f"--out {out}: {exc}") from None
    run = load_run(run_dir, experiment, need_model=not onnx)
    onnx_file = Path(onnx_path) if onnx_path is not None else run.directory / "model.onnx"
    runner, model_file, model = _onnx_runner(onnx_file, threads) if onnx else _keras_runner(run)
    specs = _output_specs(run, model, onnx_file if onnx else None)
    truth = run.recipe.truth if run.recipe is not None else {}
    with event_reader(run, data, split=split, batch_size=batch_size, n_workers=n_workers,
                      max_events=max_events) as (gen, samples, entry_class):
        started = time.perf_counter()  # the rate: from the generator's first batch to the file in place
        files = list(dict.fromkeys(s.file for s in samples))
        file_of_entry = np.array([files.index(s.file) for s in samples], np.int32)
        meta = _file_metadata(run, data, split, model_file, files, specs, entry_class is not None)
        with EventWriter(out, format=format, metadata=meta, n_events=gen.events_per_epoch) as writer:
            columns = []
            for batch in gen:
                cols = _columns(batch, runner(batch), specs, entry_class, truth, file_of_entry)
                columns = columns or list(cols)
                writer.write(cols)
    seconds = time.perf_counter() - started
    log.info("%s: %d events -> %s in %.1f s", run.name, writer.written, out, seconds)
    return Prediction(path=out, events=writer.written, seconds=seconds, columns=columns)
