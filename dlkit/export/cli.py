"""The command lines of :mod:`dlkit.export`: ``dlkit-export`` and ``dlkit-predict`` (thin shells).

    dlkit-export RUN_DIR                                   # RUN_DIR/model.onnx
    dlkit-export RUN_DIR --format hls4ml --precision 'ap_fixed<16,6>' --compile   # RUN_DIR/hls4ml/
    dlkit-predict RUN_DIR --data DIR --out scores.root [--onnx] [--split test]

Exit codes (:mod:`dlkit.protocol`): 0 done; 2 a user error (one line on stderr: no such run, a layer without
an ONNX conversion, a data problem); 75 stopped by a signal (nothing written). ``--help`` imports no Keras.
"""

from __future__ import annotations

import argparse
import logging

from dlkit.cli import prog

__all__ = ["export_main", "predict_main", "export_parser", "predict_parser"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a trained run's directory (model.keras, MetaData.json)")
    p.add_argument("--experiment", default=None, metavar="MODULE",
                   help="the experiment that trained it (e.g. calodnn.ClassificationExperiment), when the run's "
                        "metadata does not tell")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog("dlkit.export"), description=(
        "Export a trained run: ONNX (model.onnx, with the run's inputs, outputs, pre-processing and fitted "
        "constants in its metadata) or an hls4ml project for FPGA firmware."))
    _common(p)
    p.add_argument("--format", choices=("onnx", "hls4ml"), default="onnx", help="what to write (default: onnx)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="where (default: RUN_DIR/model.onnx, RUN_DIR/hls4ml)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: tf2onnx's)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="do not compare onnxruntime with Keras on random events")
    p.add_argument("--precision", default=None, metavar="TYPE",
                   help="hls4ml: fixed-point type of every layer (default: ap_fixed<24,10>)")
    p.add_argument("--input-layer", default=None, metavar="LAYER",
                   help="hls4ml: the layer whose output the firmware takes (default: the experiment's choice, e.g. "
                        "calodnn's per-layer sums, else the model's inputs)")
    p.add_argument("--reuse-factor", type=int, default=1, help="hls4ml: the reuse factor (default 1)")
    p.add_argument("--compile", action="store_true", help="hls4ml: also build the C simulation (g++)")
    return p


def predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog("dlkit.export.cli"), description=(
        "Run a trained model (or its ONNX export) over a dataset and write one row per event - scores or "
        "regressed values, the truth where the data has it, source file and event index - to ROOT, parquet "
        "or HDF5 (by the extension of --out)."))
    _common(p)
    p.add_argument("--data", required=True, metavar="DIR",
                   help="the dataset: one sub-directory per class as the experiment reads it, or the files")
    p.add_argument("--out", required=True, metavar="FILE", help="scores file: .root, .parquet or .h5")
    p.add_argument("--onnx", action="store_true", help="run RUN_DIR/model.onnx with onnxruntime instead of Keras")
    p.add_argument("--onnx-file", default=None, metavar="PATH", help="with --onnx: this ONNX file instead")
    p.add_argument("--split", choices=("train", "validation", "test"), default=None,
                   help="only the run's own split of DIR (its data directory): e.g. its held-out test events")
    p.add_argument("--batch-size", type=int, default=256, help="events per batch (default 256)")
    p.add_argument("--workers", type=int, default=None, help="reader processes (default: from the CPU count)")
    p.add_argument("--threads", type=int, default=None, help="with --onnx: onnxruntime's threads")
    p.add_argument("--max-events", type=int, default=None, help="only the first N events")
    return p


def _logging(args) -> None:
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose + 1, 2),
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")


def _export(argv) -> int:
    from dlkit.protocol import EXIT_OK

    args = export_parser().parse_args(argv)
    _logging(args)
    if args.format == "onnx":
        from dlkit.export.onnx_export import export_onnx

        print(export_onnx(args.run_dir, args.out, experiment=args.experiment, opset=args.opset, check=args.check))
        return EXIT_OK
    from dlkit.export.hls import DEFAULT_PRECISION, export_hls4ml

    result = export_hls4ml(args.run_dir, args.out, precision=args.precision or DEFAULT_PRECISION,
                           input_layer=args.input_layer, reuse_factor=args.reuse_factor, experiment=args.experiment)
    if args.compile:
        result.compile()
    print(result.path)
    return EXIT_OK


def _predict(argv) -> int:
    from dlkit.protocol import EXIT_OK

    args = predict_parser().parse_args(argv)
    _logging(args)
    from dlkit.export.prediction import predict

    result = predict(args.run_dir, args.data, args.out, onnx=args.onnx, onnx_path=args.onnx_file,
                     batch_size=args.batch_size, split=args.split, experiment=args.experiment,
                     n_workers=args.workers, threads=args.threads, max_events=args.max_events)
    rate = result.events / result.seconds if result.seconds > 0 else float("nan")
    print(f"{result.path}: {result.events} events, columns {', '.join(result.columns)} ({rate:.0f} events/s)")
    return EXIT_OK


def export_main(argv: list[str] | None = None) -> int:
    """``dlkit-export``: returns the exit code (the console script exits with it)."""
    from dlkit.experiment import run_main

    return run_main(_export, argv)


def predict_main(argv: list[str] | None = None) -> int:
    """``dlkit-predict``."""
    from dlkit.experiment import run_main

    return run_main(_predict, argv)


if __name__ == "__main__":  # python -m dlkit.export.cli ...: dlkit-predict (python -m dlkit.export: dlkit-export)
    import sys

    sys.exit(predict_main())
