"""``model.onnx`` from a run directory: Keras' own ONNX export (tf2onnx on TensorFlow), checked and described.

Keras 3's ``Model.export(format="onnx")`` works on TensorFlow (measured in issue 29: onnxruntime within 6e-8
of Keras); on JAX it refuses a loaded model ("has never called") and on torch it fails in a Conv3D kernel
transpose. So a model trained on any backend is loaded on TensorFlow (:func:`dlkit.saving.load_model` reads
every backend's files) and exported there: in this process when Keras runs on TensorFlow, else in a
TensorFlow subprocess (``python -m dlkit.export``). Then:

- every node must be a standard ONNX operator: tf2onnx leaves an op it cannot convert in the graph and only
  logs it; here it is an :class:`~dlkit.export.run.ExportError` of one line naming the Keras layer it came from;
- the outputs get their layers' names (``classes``, ``energy``, ...) instead of ``Identity:0``, the batch
  dimension the name ``batch``;
- the run's description (:meth:`dlkit.export.run.Run.describe`: inputs, what each output is, the
  pre-processing with its fitted constants, dlkit's version, the run's name and config hash) goes into the
  ONNX ``metadata_props`` (JSON text for values that are not strings; :func:`read_onnx_metadata` reads it back);
- onnxruntime's outputs on random inputs are compared with Keras' (recorded as ``check``);
- the file is written atomically (:func:`dlkit.datasets.atomic_file`).

The pre-processing is recorded, not folded into the graph: it runs in the readers on the files' arrays (for
lartpcdnn a crop around the most charge), and :func:`dlkit.export.predict` applies it before onnxruntime.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dlkit.export.run import ExportError, Run, load_run

log = logging.getLogger(__name__)

__all__ = ["export_onnx", "read_onnx_metadata", "ONNX_FILE", "STANDARD_DOMAINS"]

#: The file name of the exported model in a run directory.
ONNX_FILE = "model.onnx"
#: Operator domains onnxruntime runs without extensions.
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
_JSON_KEYS = "json_keys"


def export_onnx(run_dir, out=None, *, experiment: str | None = None, opset: int | None = None,
                check: bool = True) -> Path:
    """Write the run's ONNX model (default ``<run_dir>/model.onnx``); returns its path.

    ``experiment``: the experiment module, when the run does not say (see :mod:`dlkit.export.run`);
    ``opset``: the ONNX opset (default: tf2onnx's); ``check``: compare onnxruntime with Keras on 16 random
    events and record the largest difference. A layer without an ONNX conversion is an
    :class:`~dlkit.export.run.ExportError` naming it.
    """
    from dlkit.quiet import import_keras

    run = load_run(run_dir, experiment)
    out = Path(out) if out is not None else run.directory / ONNX_FILE
    keras = import_keras()
    if keras.backend.backend() != "tensorflow":
        return _export_in_tensorflow(run, out, opset, check)
    from dlkit.saving import load_model

    model = _float32(load_model(run.model_path, compile=False))
    _call_once(model)
    proto = _convert(model, opset)
    _check_operators(proto, model)
    info = run.describe(model)
    _rename(proto, [spec["name"] for spec in info["outputs"]])
    if check:
        info["check"] = _compare(proto, model)
    info.update(exporter=_exporter(keras, proto), exported_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _set_metadata(proto, info)
    _save(proto, out)
    log.info("%s: wrote %s", run.name, out)
    return out


def _exporter(keras, proto) -> str:
    import tf2onnx

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return f"keras {keras.__version__} Model.export(format='onnx') via tf2onnx {tf2onnx.__version__}, opset {opset}"


def _export_in_tensorflow(run: Run, out: Path, opset, check) -> Path:
    """The export in a TensorFlow subprocess (Keras here runs on JAX or torch)."""
    import importlib.util

    from dlkit.protocol import EXIT_OK

    if importlib.util.find_spec("tensorflow") is None:
        raise ExportError("ONNX export runs on TensorFlow (Keras' export through tf2onnx), which is not installed "
                          "here: pip install tensorflow 'dlkit[export]'")
    cmd = [sys.executable, "-m", "dlkit.export", str(run.directory), "--out", str(out)]
    if run.experiment:
        cmd += ["--experiment", run.experiment]
    if opset is not None:
        cmd += ["--opset", str(opset)]
    if not check:
        cmd.append("--no-check")
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    log.info("%s: exporting on TensorFlow (Keras here runs on another backend)", run.name)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != EXIT_OK:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        raise ExportError(last.removeprefix("error: "))
    return out


def _float32(model):
    """The model with float32 layers (ONNX export needs them; a mixed-precision run keeps float32 weights)."""
    policy = getattr(getattr(model, "dtype_policy", None), "name", "float32")
    if policy == "float32" and all(getattr(layer.dtype_policy, "name", "float32") == "float32"
                                   for layer in model.layers):
        return model
    import keras

    def plain(node):
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy":
                return {**node, "config": {**node.get("config", {}), "name": "float32"}}
            return {k: plain(v) for k, v in node.items()}
        if isinstance(node, list):
            return [plain(v) for v in node]
        return node

    clone = model.__class__.from_config(plain(model.get_config()))
    clone.set_weights(model.get_weights())
    log.info("the model computes in %s; exported in float32", policy)
    return clone


def _call_once(model) -> None:
    """Keras exports only a model that has been called (a loaded one has not)."""
    import keras

    flat = [np.zeros((1, *[int(d) for d in t.shape[1:]]), "float32") for t in model.inputs]
    structure = getattr(model, "_inputs_struct", None)  # a list of one input, or the input itself
    model(keras.tree.pack_sequence_as(structure, flat) if structure is not None else
          flat if len(flat) > 1 else flat[0])


@contextlib.contextmanager
def _quiet_converter():
    """tf2onnx logs every op it does not support (and more) at ERROR/WARNING: this module reports instead."""
    loggers = [logging.getLogger(n) for n in ("tf2onnx", "tensorflow")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), _warnings_off():
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _convert(model, opset):
    """Keras' export into a temporary file, loaded back as an ONNX ModelProto."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="dlkit-onnx-") as tmp:
        path = Path(tmp) / ONNX_FILE
        try:
            with _quiet_converter():
                model.export(str(path), format="onnx", verbose=False, opset_version=opset)
        except Exception as exc:  # noqa: BLE001 - the layer it happened in, in one line
            raise ExportError(_failure(exc, model)) from None
        return onnx.load(str(path))


def _all_layers(model) -> dict:
    """Every layer of the model, nested models' too, by name."""
    found = {}
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        found.setdefault(layer.name, layer)
        stack.extend(getattr(layer, "layers", []) or [])
    return found


def _failure(exc: BaseException, model) -> str:
    """One line: the innermost Keras layer (not a model) whose code raised, and the error."""
    import keras

    layer = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, keras.layers.Layer) and not isinstance(owner, keras.Model):
            layer = owner
        tb = tb.tb_next
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    if layer is not None:
        return f"layer {layer.name!r} ({type(layer).__name__}) cannot be exported to ONNX: {text}"
    return f"the model cannot be exported to ONNX: {type(exc).__name__}: {text}"


def _layer_of(node_name: str, layers: dict) -> str | None:
    """The Keras layer a TensorFlow op belongs to, from its name scope (``model/layer_1/Op``)."""
    parts = node_name.split("/")[:-1]
    for part in reversed(parts):
        for candidate in (part, re.sub(r"_\d+$", "", part)):
            if candidate in layers and not hasattr(layers[candidate], "layers"):
                return candidate
    return None


def _check_operators(proto, model) -> None:
    """Every node a standard ONNX operator; else one line naming the layer of the first that is not."""
    import onnx

    for node in proto.graph.node:
        standard = node.domain in STANDARD_DOMAINS
        if standard and onnx.defs.has(node.op_type, node.domain or ""):
            continue
        layers = _all_layers(model)
        name = _layer_of(node.name, layers)
        what = f"TensorFlow op {node.op_type} has no ONNX conversion in tf2onnx"
        if name is None:
            raise ExportError(f"the model cannot be exported to ONNX: {what} (node {node.name})")
        raise ExportError(f"layer {name!r} ({type(layers[name]).__name__}) cannot be exported to ONNX: {what}")


def _rename(proto, output_names) -> None:
    """Graph outputs named after their Keras layers; the first dimension of inputs and outputs ``batch``."""
    graph = proto.graph
    mapping = {o.name: new for o, new in zip(graph.output, output_names) if o.name != new}
    taken = {v.name for v in graph.input} | {t for n in graph.node for t in n.output}
    mapping = {old: new for old, new in mapping.items() if new not in taken}
    for node in graph.node:
        for i, name in enumerate(node.output):
            node.output[i] = mapping.get(name, name)
        for i, name in enumerate(node.input):
            node.input[i] = mapping.get(name, name)
    for value in [*graph.output, *graph.value_info]:
        value.name = mapping.get(value.name, value.name)
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def _compare(proto, model, events: int = 16) -> dict:
    """onnxruntime against Keras on ``events`` standard-normal events: the largest absolute difference, and
    that over the largest output (energies in GeV are large numbers)."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x = [rng.standard_normal((events, *[int(d) for d in t.shape[1:]])).astype(np.float32) for t in model.inputs]
    got = session.run(None, {i.name: a for i, a in zip(session.get_inputs(), x)})
    want = model.predict(x if len(x) > 1 else x[0], verbose=0)
    want = want if isinstance(want, (list, tuple)) else [want]
    diff = rel = 0.0
    for g, w in zip(got, want):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        d = float(np.max(np.abs(g - w)))
        diff, rel = max(diff, d), max(rel, d / max(float(np.max(np.abs(w))), 1e-30))
    if rel > 1e-4:
        log.warning("onnxruntime differs from Keras by %.3g (%.3g of the largest output) on random inputs", diff, rel)
    return {"events": events, "inputs": "standard normal", "max_abs_diff": diff, "max_rel_diff": rel}


def _set_metadata(proto, info: dict) -> None:
    """``info`` into ``metadata_props``: strings as they are, anything else as JSON (named in ``json_keys``)."""
    del proto.metadata_props[:]
    json_keys = []
    for key, value in info.items():
        if not isinstance(value, str):
            json_keys.append(key)
            value = json.dumps(value, sort_keys=True)
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    entry = proto.metadata_props.add()
    entry.key, entry.value = _JSON_KEYS, json.dumps(json_keys)
    classes = info.get("class_names")
    proto.doc_string = (f"dlkit run {info.get('run_name')} ({info.get('experiment') or 'experiment unknown'}); "
                        f"inputs {[i['name'] for i in info.get('inputs', [])]} after the pre-processing in "
                        f"metadata 'preprocessing'; outputs {[o['name'] for o in info.get('outputs', [])]}"
                        + (f"; classes {classes}" if classes else ""))


def read_onnx_metadata(path) -> dict:
    """The ``metadata_props`` of an ONNX file as written by :func:`export_onnx` (JSON values parsed back)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    json_keys = json.loads(props.pop(_JSON_KEYS, "[]"))
    return {k: json.loads(v) if k in json_keys else v for k, v in props.items()}


def _save(proto, out: Path) -> None:
    import onnx

    from dlkit.datasets import atomic_file

    onnx.checker.check_model(proto)
    with atomic_file(out) as tmp:
        onnx.save(proto, str(tmp))
