"""An hls4ml project (FPGA firmware in C++) from a run's dense model, with its C simulation for checks.

``dlkit-export RUN_DIR --format hls4ml --precision 'ap_fixed<24,10>'`` writes ``<run>/hls4ml/``: hls4ml's
project (Vivado backend, ``io_parallel``) plus ``dlkit_hls4ml.json`` saying what the firmware takes and gives.
Synthesis needs the vendor's tools; the C simulation needs only g++: :meth:`HLSExport.compile` builds it
and :meth:`HLSExport.predict` runs it (hls4ml's ``compile()``/``predict()``).

The firmware model is the Keras model with two changes hls4ml needs:

- it may start at an inner layer (``input_layer``, by default the recipe's ``firmware_input``): calodnn's
  layer-sum calibration MLP starts at its per-layer energy sums, which a trigger adds up upstream of the
  network; :attr:`HLSExport.upstream` is the Keras model that makes them from the run's inputs;
- a ``Rescaling`` of a flat tensor (hls4ml has none) becomes a ``Dense`` with the scale on its diagonal and
  the offset as its bias: the same arithmetic.

Every layer computes in the chosen ``ap_fixed<W,I>`` (``precision``; W bits, I of them integer bits with the
sign), except a softmax, whose tables are sized for it (:func:`_softmax_tables`; hls4ml's defaults gave every
class 0.25 on dlkit's classifier); other lookup tables (sigmoid, tanh) keep hls4ml's defaults.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlkit.export.run import ExportError, load_run

log = logging.getLogger(__name__)

__all__ = ["HLSExport", "export_hls4ml", "firmware_model", "HLS_DIR", "DEFAULT_PRECISION"]

#: The project's directory in a run directory.
HLS_DIR = "hls4ml"
#: The fixed-point type of every layer unless told otherwise.
DEFAULT_PRECISION = "ap_fixed<24,10>"


@dataclass
class HLSExport:
    """An hls4ml project: its directory, hls4ml's model, the Keras model it implements (``firmware``) and
    the Keras model of what comes before it (``upstream``; None when it takes the run's inputs)."""

    path: Path
    hls_model: object
    firmware: object
    upstream: object = None

    def firmware_inputs(self, x):
        """The firmware's inputs for the run's model inputs ``x`` (through :attr:`upstream` if any)."""
        if self.upstream is None:
            return x
        return self.upstream.predict(x, verbose=0, batch_size=1024)

    def compile(self) -> HLSExport:
        """Build the C simulation (hls4ml's ``compile()``, the system's g++)."""
        from dlkit.quiet import filtered_stderr

        with filtered_stderr():
            self.hls_model.compile()
        return self

    def predict(self, x) -> np.ndarray:
        """The C simulation's outputs for the run's model inputs ``x`` (compile first)."""
        fx = self.firmware_inputs(x)
        fx = [np.ascontiguousarray(a, np.float64) for a in fx] if isinstance(fx, (list, tuple)) else \
            np.ascontiguousarray(fx, np.float64)
        return np.asarray(self.hls_model.predict(fx))


def _history(tensor):
    history = tensor._keras_history
    return history[0], history[1]


def firmware_model(model, input_layer: str | None = None):
    """``(firmware, upstream)``: the Keras model from ``input_layer``'s output (default: the inputs) to the
    outputs with each flat ``Rescaling`` as a diagonal ``Dense``; ``upstream`` the model up to that layer."""
    import keras

    if input_layer is None:
        starts, upstream = list(model.inputs), None
        new_inputs = [keras.Input(shape=t.shape[1:], name=t.name) for t in starts]
    else:
        try:
            start = model.get_layer(input_layer).output
        except ValueError:
            raise ExportError(f"input layer {input_layer!r}: no such layer in the model") from None
        starts, upstream = [start], keras.Model(model.inputs, start, name="upstream")
        new_inputs = [keras.Input(shape=start.shape[1:], name=input_layer)]
    built = {id(t): n for t, n in zip(starts, new_inputs)}

    def rebuild(tensor):
        if id(tensor) in built:
            return built[id(tensor)]
        layer, node_index = _history(tensor)
        node = layer._inbound_nodes[node_index]
        if not node.input_tensors:
            raise ExportError(f"the firmware needs input {tensor.name!r}, which is upstream of {input_layer!r}")
        args = [rebuild(t) for t in node.input_tensors]
        built[id(tensor)] = out = _apply(layer, args)
        return out

    outputs = [rebuild(t) for t in model.outputs]
    return keras.Model(new_inputs, outputs if len(outputs) > 1 else outputs[0], name="firmware"), upstream


def _apply(layer, args):
    """Call ``layer`` on the rebuilt inputs; a flat ``Rescaling`` as the equivalent diagonal ``Dense``."""
    import keras

    if isinstance(layer, keras.layers.Rescaling):
        if len(args[0].shape) != 2:
            raise ExportError(f"layer {layer.name!r} (Rescaling) of a {len(args[0].shape) - 1}-d tensor has no "
                              "hls4ml equivalent; start the firmware after it (input_layer)")
        k = int(args[0].shape[-1])
        dense = keras.layers.Dense(k, name=layer.name)
        out = dense(args[0])
        scale = np.broadcast_to(np.asarray(layer.scale, np.float32), (k,))
        offset = np.broadcast_to(np.asarray(layer.offset, np.float32), (k,))
        dense.set_weights([np.diag(scale).astype(np.float32), offset.astype(np.float32)])
        return out
    return layer(args if len(args) > 1 else args[0])


def _width(precision: str, default: int = 18) -> int:
    match = re.match(r"\s*ap_u?fixed<\s*(\d+)", precision)
    return int(match.group(1)) if match else default


def _softmax_tables(config: dict, firmware, precision: str) -> None:
    """A softmax's tables sized for its job (hls4ml's defaults gave every class 0.25 here: its table index is
    the top bits of the input type, which the preceding layer's automatic precision makes 20 integer bits
    wide): the input saturated at +-128 (``ap_fixed<W,8>``), max-normalised ("stable") tables of 8192 entries,
    unsigned exp and inverse tables in [0, 1]. Measured on the calodnn classifier: scores within 0.03 of Keras'."""
    layers = config.get("LayerName", {})
    width = _width(precision)
    keras_layers = {layer.name: layer for layer in firmware.layers}
    for name, entry in layers.items():
        if "exp_table" not in entry.get("Precision", {}):
            continue
        if name.endswith("_softmax") and name[: -len("_softmax")] in keras_layers:  # Dense(activation="softmax")
            source = name[: -len("_softmax")]
            n = int(keras_layers[source].output.shape[-1])
        else:  # an Activation("softmax") layer: its input comes from the layer before
            source = None
            with contextlib.suppress(KeyError, IndexError, AttributeError):
                source = keras_layers[name]._inbound_nodes[0].input_tensors[0]._keras_history[0].name
            n = int(keras_layers[name].output.shape[-1]) if name in keras_layers else 8
        sum_bits = max(1, math.ceil(math.log2(max(n, 2)))) + 1
        if source in layers:
            layers[source].setdefault("Precision", {})["result"] = f"ap_fixed<{width},8,RND,SAT>"
        entry["TableSize"] = 8192
        entry["Implementation"] = "stable"
        entry["Precision"].update(exp_table="ap_ufixed<18,1,RND,SAT>", inv_table="ap_ufixed<18,1,RND,SAT>",
                                  inv_inp=f"ap_ufixed<18,{sum_bits},RND,SAT>",
                                  accum=f"ap_ufixed<24,{sum_bits},RND,SAT>", result=f"ap_ufixed<{width},1,RND,SAT>")


def _convert(firmware, out: Path, precision: str, reuse_factor: int, io_type: str, backend: str, part):
    import hls4ml

    from dlkit.quiet import filtered_stderr

    try:
        with filtered_stderr():
            config = hls4ml.utils.config_from_keras_model(firmware, granularity="name", backend=backend,
                                                          default_precision=precision,
                                                          default_reuse_factor=reuse_factor)
            _softmax_tables(config, firmware, precision)
            options = {"part": part} if part else {}
            hls_model = hls4ml.converters.convert_from_keras_model(
                firmware, hls_config=config, output_dir=str(out), backend=backend, io_type=io_type, **options)
            hls_model.write()
    except (ValueError, KeyError, NotImplementedError) as exc:
        text = " ".join(str(exc).split())[:300]
        raise ExportError(f"hls4ml cannot convert the model: {text}") from None
    return hls_model


def export_hls4ml(run_dir, out=None, *, precision: str = DEFAULT_PRECISION, input_layer: str | None = None,
                  reuse_factor: int = 1, io_type: str = "io_parallel", backend: str = "Vivado",
                  part: str | None = None, experiment: str | None = None) -> HLSExport:
    """Write the run's hls4ml project (default ``<run_dir>/hls4ml``, replaced if there) and return it.

    ``precision``: every layer's ``ap_fixed<W,I>``; ``input_layer``: where the firmware starts (default: the
    recipe's ``firmware_input``, else the model's inputs); ``reuse_factor``, ``io_type``, ``backend``,
    ``part``: hls4ml's. Needs ``pip install 'dlkit[export]'`` (hls4ml).
    """
    try:
        import hls4ml  # noqa: F401
    except ImportError:
        raise ExportError("hls4ml is not installed: pip install 'dlkit[export]'") from None
    from dlkit.quiet import import_keras
    from dlkit.saving import load_model

    run = load_run(run_dir, experiment)
    import_keras()
    out = Path(out) if out is not None else run.directory / HLS_DIR
    if input_layer is None and run.recipe is not None:
        input_layer = run.recipe.firmware_input
    model = load_model(run.model_path, compile=False)
    firmware, upstream = firmware_model(model, input_layer)
    if out.exists():
        shutil.rmtree(out)
    hls_model = _convert(firmware, out, precision, reuse_factor, io_type, backend, part)
    info = _describe(run, model, firmware, input_layer, precision, reuse_factor, io_type, backend)
    (out / "dlkit_hls4ml.json").write_text(json.dumps(info, indent=1))
    log.info("%s: wrote the hls4ml project %s", run.name, out)
    return HLSExport(path=out, hls_model=hls_model, firmware=firmware, upstream=upstream)


def _describe(run, model, firmware, input_layer, precision, reuse_factor, io_type, backend) -> dict:
    from dlkit.export.recipes import model_io

    info = run.describe(model)
    fw_inputs, _ = model_io(firmware)
    info.update(format="hls4ml", precision=precision, reuse_factor=reuse_factor, io_type=io_type, backend=backend,
                firmware_inputs=fw_inputs,
                upstream=(None if input_layer is None else
                          f"the output of layer {input_layer!r}, computed from the model's inputs before the "
                          "firmware (dlkit.export.HLSExport.upstream)"))
    return info
