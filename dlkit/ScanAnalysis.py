"""Print the table of a scan's runs: ``python -m dlkit.ScanAnalysis TrainedModels/``.

A thin shell over :mod:`dlkit.analysis.scan`::

    python -m dlkit.ScanAnalysis TrainedModels/                       # default columns, load order
    python -m dlkit.ScanAnalysis TrainedModels/ -s Width,Depth        # sort by columns (names)
    python -m dlkit.ScanAnalysis TrainedModels/ -c "0,2,3" -s "1,2,0"  # DLKit's indices
    python -m dlkit.ScanAnalysis "TrainedModels/Dense_*" -c "Model Name,Width,Ele_AUC,History.val_loss[-1]"
    python -m dlkit.ScanAnalysis TrainedModels/ --sort=-Ele_AUC --select-status ok --csv scan.csv
    python -m dlkit.ScanAnalysis TrainedModels/ --per-point    # one row per scan point, missing/failed ones too
    python -m dlkit.ScanAnalysis TrainedModels/ --html report.html     # the scan as one HTML file

Failed, interrupted, killed and corrupt runs are rows with their flag in the Status column (reasons
listed on stderr); one of those that a later run of the same name continued or redid (``Name.1`` after a
``-p`` resume or a scan's retry) is ``superseded``, with the later run named. Exit status: 0 (also with
flagged rows); 2 for a path that does not exist, holds no model directories, or a bad column or sort argument.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections import Counter

from dlkit.cli import plural, prog
from dlkit.protocol import EXIT_OK, EXIT_USER_ERROR

_STATUS_ALIASES = {"killed": "running/killed", "running": "running/killed", "completed": "ok",
                   "nometadata": "no metadata", "no-metadata": "no metadata", "model-error": "model error",
                   "pending": "missing"}


def _tokens(text: str | None) -> list:
    """Split a comma list; integers (DLKit's column indices) become ints."""
    if not text:
        return []
    out = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        try:
            out.append(int(token))
        except ValueError:
            out.append(token)
    return out


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog("dlkit.ScanAnalysis"),
        description="Print the table of a scan's runs (model directories with MetaData.json).")
    p.add_argument("paths", nargs="+", metavar="DIR_OR_GLOB",
                   help="a TrainedModels/ directory (its sub-directories are the runs), model directories "
                        "or globs")
    p.add_argument("-s", "--sort", default=None, metavar="COLUMNS",
                   help="comma list of columns to sort by: indices of the displayed columns (DLKit's "
                        "'1,2,0') or names; a leading '-' sorts a name descending (write --sort=-NAME)")
    p.add_argument("-c", "--columns", default=None, metavar="COLUMNS",
                   help="comma list of columns: names (e.g. 'Model Name,Width,Ele_AUC,History.val_loss[-1],"
                        "Configuration.lr') or indices into the default columns")
    p.add_argument("-a", "--add", default=None, metavar="COLUMNS",
                   help="columns appended to the selected ones")
    p.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV")
    p.add_argument("--html", default=None, metavar="FILE",
                   help="also write a self-contained HTML report: the sortable, filterable table, the metric vs "
                        "each scanned parameter, parallel coordinates, the best run's plots, links to every run")
    p.add_argument("--metric", default=None, metavar="NAME",
                   help="the column the report judges runs by (default: the first *_AUC, else val_loss, else loss)")
    p.add_argument("--minimize", action="store_true",
                   help="smaller --metric is better (default: larger, except for losses, errors, resolutions)")
    p.add_argument("--select-status", default=None, metavar="FLAGS",
                   help="keep only runs with these flags: ok, stopped, interrupted, failed, running/killed "
                        "(or killed), superseded (left behind, taken over by a later run of the name), corrupt, "
                        "'no metadata'")
    p.add_argument("--per-point", action="store_true",
                   help="one row per scan point: its newest complete run; with a dlkit.scan ledger also the points "
                        "still missing, failed or stuck")
    p.add_argument("--reverse", action="store_true", help="sort descending")
    p.add_argument("--tablefmt", default="simple", help="tabulate format: simple, github, grid, latex, ...")
    p.add_argument("--floatfmt", default=".4f", help="number format of floats (default .4f)")
    p.add_argument("--list-keys", action="store_true",
                   help="list the numeric metadata keys (GetGoodParams) and the default columns, then exit")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return p


def _fail(message: str) -> int:
    print(f"ScanAnalysis: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def main(argv=None) -> int:
    """Run the CLI; returns the exit status."""
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # only MetaDataOnly=False loads imports Keras

    from dlkit.experiment import TENSORBOARD_DIR
    from dlkit.analysis.scan import (GetGoodParams, LoadModels, PointModels, ScanTable, UnknownColumnError,
                                     check_columns, default_columns, format_table)

    try:
        if args.per_point:
            models = [m for path in args.paths for m in PointModels(path)]
        else:
            models = LoadModels(args.paths, MetaDataOnly=True)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        return _fail(str(exc))
    if not models:
        return _fail(f"{', '.join(args.paths)}: holds no model directories")

    if args.select_status:
        requested = [s.strip().lower() for s in args.select_status.split(",")]
        wanted = {_STATUS_ALIASES.get(s, s) for s in requested}
        counts = Counter(m.status for m in models)
        models = [m for m in models if m.status in wanted]
        if not models:
            found = ", ".join(f"{n} {s}" for s, n in counts.items())
            print(f"ScanAnalysis: no runs with status {', '.join(sorted(wanted))} (found: {found})",
                  file=sys.stderr)
            return EXIT_OK

    defaults = default_columns(models)
    if args.per_point:
        defaults.insert(1, "HyperParamSet")
    if args.list_keys:
        print("default columns:", ", ".join(f"{i}:{c}" for i, c in enumerate(defaults)))
        print("numeric metadata keys:", ", ".join(GetGoodParams(models)))
        return EXIT_OK
    columns = _tokens(args.columns) or list(defaults)
    columns += _tokens(args.add)
    for i, c in enumerate(columns):
        if isinstance(c, int):
            if not -len(defaults) <= c < len(defaults):
                return _fail(f"column index {c} out of range; default columns: "
                             + ", ".join(f"{j}:{d}" for j, d in enumerate(defaults)))
            columns[i] = defaults[c]
    sort = _tokens(args.sort) or None
    try:
        frame = ScanTable(models, columns, sort=sort, reverse=args.reverse)
        if args.metric:
            check_columns(models, [args.metric], "metric")
    except (IndexError, UnknownColumnError) as exc:
        return _fail(str(exc))
    print(format_table(frame, tablefmt=args.tablefmt, floatfmt=args.floatfmt))

    flagged = [m for m in models if m.status != "ok"]
    for m in flagged:
        print(f"  {m.name}: {m.status}" + (f": {m.message}" if m.message else ""), file=sys.stderr)
    counts = Counter(m.status for m in models)
    print(f"{plural(len(models), 'run')}: " + ", ".join(f"{n} {s}" for s, n in counts.most_common()), file=sys.stderr)
    logged = [m for m in models if (m.path / TENSORBOARD_DIR).is_dir()]
    tensorboard = None
    if logged:  # TensorBoard finds every run's logs below the directory it is given
        roots = sorted({str(m.path.parent) for m in logged})
        where = (f"--logdir {shlex.quote(roots[0])}" if len(roots) == 1 else
                 "--logdir_spec " + shlex.quote(",".join(f"{os.path.basename(r)}:{r}" for r in roots)))
        tensorboard = f"tensorboard {where}"
        print(f"TensorBoard ({plural(len(logged), 'run')} with logs): {tensorboard}")
    if args.csv:
        try:
            frame.to_csv(args.csv, index=False)
        except OSError as exc:
            return _fail(f"cannot write {args.csv}: {exc}")
    if args.html:
        from dlkit.analysis.report import write_scan_report

        try:
            path = write_scan_report(args.html, models, columns=columns, sort=sort, reverse=args.reverse,
                                     metric=args.metric, maximize=False if args.minimize else None,
                                     floatfmt=args.floatfmt, tensorboard=tensorboard)
        except OSError as exc:
            return _fail(f"cannot write {args.html}: {exc}")
        print(f"report: {path}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
