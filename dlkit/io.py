"""Data import: text/CSV files and ROOT TTrees converted into HDF5 files the generators read.

Seed 000 (BHCal) starts from a text file with one row per event, the layer sums then the true energy, and
from ROOT TTrees. Both become an HDF5 file of contiguous datasets (fast raw reads in
:mod:`dlkit.generators`), written under a temporary name and renamed when complete, converted in chunks
with a progress bar so inputs larger than memory work (a first pass counts a CSV's rows, so the datasets are
created at their final, contiguous size)::

    convert_csv("bhcal.csv", "data/BHCal/bhcal_0.h5")              # datasets "layers" (N, L), "energy" (N,)
    convert_root("sim.root", "data/Pi/pi_0.h5", tree="events",
                 branches={"energy": "E_truth", "layers": "L*"})   # "L*": L0, L1, ... stacked as (N, L)

    python -m dlkit.io csv bhcal.csv data/BHCal/bhcal_0.h5
    python -m dlkit.io root sim.root data/Pi/pi_0.h5 --tree events --branch energy=E_truth --branch 'layers=L*'

Files of events with per-event lists (hits, deposits: :mod:`dlkit.jagged`) convert between ROOT (TTree or
RNTuple), parquet and HDF5, one file or a class-per-directory tree (``<dir>/<Class>/<file>``, the layout
kept, each file getting the format's extension)::

    python -m dlkit.io convert hits/Ele/Ele_0.root hits/Ele/Ele_0.parquet
    python -m dlkit.io convert hits-root/ hits-h5/ --format hdf5 --hdf5-layout vlen   # alias: convert-hits

Bad input is a :class:`dlkit.generators.DataError` naming the file and where: the line (and column) of a
CSV row that is not numbers, has the wrong number of columns or holds NaN/inf; the branch of a ROOT tree that
is missing or has a variable length per event. Floating-point values are stored as float32 by default.

CSV chunks are parsed by pandas' C parser (~150 k rows/s of 61 columns on one core, ~85 MB/s), lines checked
one by one only when a chunk fails, to name the bad line. Keras-free: imports numpy, h5py, pandas (uproot only
for ROOT files).
"""

from __future__ import annotations

import argparse
import fnmatch
import gzip
import io
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dlkit.datasets import atomic_file
from dlkit.generators.errors import DataError
from dlkit.protocol import EXIT_OK, EXIT_USER_ERROR

log = logging.getLogger(__name__)

__all__ = ["convert_csv", "read_csv_header", "convert_root", "main"]  # events with lists: dlkit.jagged


def _open_text(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _is_data(line: str, comment: str | None) -> bool:
    s = line.strip()
    return bool(s) and not (comment and s.startswith(comment))


def _split(line: str, delimiter: str | None) -> list[str]:
    if delimiter is None:
        return line.split()
    return [t.strip() for t in line.strip().split(delimiter)]


def _numbers(tokens) -> bool:
    try:
        [float(t) for t in tokens]
    except ValueError:
        return False
    return True


def read_csv_header(path, delimiter: str | None = "auto", comment: str | None = "#", header="auto"):
    """``(delimiter, column names or None, number of columns, data rows)`` of a CSV/text file.

    ``delimiter="auto"``: ``","`` if the first data line has one, else ``";"``, else whitespace. ``header``:
    True, False or ``"auto"`` (the first data line is a header if it is not all numbers).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=path)
    names, ncols, rows, first = None, None, 0, None
    with _open_text(path) as f:
        for line in f:
            if not _is_data(line, comment):
                continue
            if first is None:
                first = line
                if delimiter == "auto":
                    delimiter = "," if "," in line else (";" if ";" in line else None)
                tokens = _split(line, delimiter)
                is_header = (not _numbers(tokens)) if header == "auto" else bool(header)
                ncols = len(tokens)
                if is_header:
                    names = tokens
                    continue
            rows += 1
    if first is None:
        raise DataError("no data rows (empty, or only comments)", file=path)
    if delimiter == "auto":
        delimiter = None
    return delimiter, names, ncols, rows


def _bad_row(path, lineno: int, line: str, delimiter, ncols: int, allow_nan: bool) -> DataError | None:
    """The precise error of one line, or None if it is fine."""
    tokens = _split(line, delimiter)
    if len(tokens) != ncols:
        return DataError(f"line {lineno}: expected {ncols} columns, got {len(tokens)}: {line.strip()[:80]!r}",
                         file=path)
    for col, tok in enumerate(tokens, 1):
        try:
            value = float(tok)
        except ValueError:
            return DataError(f"line {lineno}, column {col}: {tok!r} is not a number", file=path)
        if not allow_nan and not np.isfinite(value):
            return DataError(f"line {lineno}, column {col}: {tok!r} is not finite (allow_nan=True keeps it)",
                             file=path)
    return None


def _parse_chunk(path, lines, linenos, delimiter, ncols, allow_nan) -> np.ndarray:
    """Fast path: pandas' C parser on the chunk; on any problem find and report the bad line."""
    import pandas as pd

    values = None
    try:
        frame = pd.read_csv(io.StringIO("".join(lines)), sep=r"\s+" if delimiter is None else delimiter, header=None,
                            dtype=np.float64, engine="c", comment=None, skip_blank_lines=False)
        values = frame.to_numpy(np.float64)
    except (ValueError, pd.errors.ParserError):
        pass
    if values is not None and values.shape == (len(lines), ncols):
        finite = np.isfinite(values)
        if finite.all():
            return values
        # Missing fields also become NaN: only a line-by-line check tells "nan" from "" or a short row.
    for lineno, line in zip(linenos, lines):
        err = _bad_row(path, lineno, line, delimiter, ncols, allow_nan)
        if err is not None:
            raise err
    if values is not None and values.shape == (len(lines), ncols):
        return values  # NaN/inf written as such, with allow_nan
    raise DataError(f"lines {linenos[0]}-{linenos[-1]}: could not parse", file=path)  # pragma: no cover


def _progress(total, desc, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="ev", desc=desc, disable=not enabled)


def convert_csv(src, dst, *, energy_column: int | None = -1, layers_key: str = "layers", energy_key: str = "energy",
                delimiter: str | None = "auto", header="auto", comment: str | None = "#",
                chunk_rows: int = 50_000, dtype="float32", allow_nan: bool = False, progress: bool = True) -> Path:
    """Convert a text/CSV file with one row per event into HDF5: ``layers_key`` (N, C-1) and ``energy_key`` (N,).

    Parameters
    ----------
    energy_column : the column holding the true energy (default the last; negative counts from the end);
        None: no energy dataset, all columns go to ``layers_key``.
    delimiter : ``","``, ``";"``, None (whitespace) or ``"auto"``.
    header : True, False or ``"auto"`` (a first data line that is not all numbers names the columns; the
        names are stored in the ``columns`` attribute).
    comment : lines starting with it (and blank lines) are skipped, but still counted for line numbers.
    chunk_rows : rows parsed and written per step (memory ~ chunk_rows x columns x 8 bytes).
    allow_nan : keep NaN/inf values instead of rejecting their row.

    Returns the path written. Errors (:class:`~dlkit.generators.DataError`) name the file and the line.
    """
    import h5py

    src, dst = Path(src), Path(dst)
    delimiter, names, ncols, rows = read_csv_header(src, delimiter, comment, header)
    if energy_column is not None:
        if not -ncols <= energy_column < ncols:
            raise DataError(f"energy_column {energy_column} is outside the {ncols} columns", file=src)
        energy_column %= ncols
        if ncols < 2:
            raise DataError("needs at least 2 columns (layer sums, then the energy)", file=src)
    layer_cols = [c for c in range(ncols) if c != energy_column]
    with atomic_file(dst) as tmp:
        with h5py.File(tmp, "w") as f, _open_text(src) as text, _progress(rows, f"csv {src.name}", progress) as bar:
            layers_ds = f.create_dataset(layers_key, shape=(rows, len(layer_cols)), dtype=dtype)
            energy_ds = f.create_dataset(energy_key, shape=(rows,), dtype=dtype) if energy_column is not None else None
            f.attrs["source"] = str(src)
            f.attrs["converter"] = "dlkit.io.convert_csv"
            if names is not None:
                f.attrs["columns"] = [str(n) for n in names]
            pos, header_seen = 0, names is None
            lines, linenos = [], []

            def flush():
                nonlocal pos
                if not lines:
                    return
                values = _parse_chunk(src, lines, linenos, delimiter, ncols, allow_nan)
                n = len(values)
                layers_ds[pos:pos + n] = values[:, layer_cols]
                if energy_ds is not None:
                    energy_ds[pos:pos + n] = values[:, energy_column]
                pos += n
                bar.update(n)
                lines.clear()
                linenos.clear()

            for lineno, line in enumerate(text, 1):
                if not _is_data(line, comment):
                    continue
                if not header_seen:
                    header_seen = True
                    continue
                lines.append(line)
                linenos.append(lineno)
                if len(lines) >= chunk_rows:
                    flush()
            flush()
            if pos != rows:
                raise DataError(f"read {pos} rows, expected {rows} (file changed while converting?)", file=src)
    log.info("converted %d rows of %s into %s", rows, src, dst)
    return dst


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _resolve_branches(branches, available: Sequence[str], src, tree_name) -> dict[str, list[str]]:
    """``{dataset: [branch, ...]}`` from names, a mapping, lists or glob patterns (natural order)."""
    if isinstance(branches, str):
        branches = [branches]
    spec = dict(branches) if isinstance(branches, Mapping) else {b: b for b in branches}
    if not spec:
        raise ValueError("convert_root: no branches requested")
    out = {}
    for name, value in spec.items():
        wanted = [value] if isinstance(value, str) else list(value)
        found = []
        for w in wanted:
            if any(ch in w for ch in "*?["):
                matched = sorted((b for b in available if fnmatch.fnmatchcase(b, w)), key=_natural)
                if not matched:
                    raise DataError(f"no branch of tree {tree_name!r} matches {w!r} (branches: "
                                    f"{', '.join(sorted(available)[:30])})", file=src, key=w)
                found += matched
            elif w not in available:
                raise DataError(f"branch not found in tree {tree_name!r} (branches: "
                                f"{', '.join(sorted(available)[:30])})", file=src, key=w)
            else:
                found.append(w)
        out[str(name)] = found
    return out


def convert_root(src, dst, tree: str | None = None, branches=None, *, step_size: int = 100_000, dtype="float32",
                 progress: bool = True) -> Path:
    """Convert branches of a ROOT TTree (or RNTuple; read with uproot) into HDF5 datasets, ``step_size``
    entries at a time.

    Parameters
    ----------
    tree : the TTree's name; None: the file's only TTree.
    branches : branch names (dataset = branch), or ``{dataset: branch | [branches] | "glob*"}``; several
        branches of one dataset are stacked along axis 1 (e.g. per-layer branches ``L0..L59`` -> (N, 60)),
        in natural order for a glob. Fixed-size array branches keep their shape.
    dtype : floating-point branches are stored as this (None keeps the file's type); integers are kept.

    Errors name the file and the tree or branch (missing, jagged, unreadable).
    """
    import h5py

    try:
        import uproot
    except ImportError as exc:  # pragma: no cover - uproot is an extra
        raise ImportError("convert_root needs uproot: pip install 'dlkit[root]'") from exc
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise DataError("file not found", file=src)
    try:
        rfile = uproot.open(src)
    except Exception as exc:
        raise DataError(f"cannot open as a ROOT file: {type(exc).__name__}: {exc}", file=src) from None
    with rfile:
        trees = [k.split(";")[0] for k, cls in rfile.classnames().items()
                 if cls.startswith("TTree") or cls == "ROOT::RNTuple"]
        if tree is None:
            if len(set(trees)) != 1:
                raise DataError(f"give the tree's name: the file has TTrees {sorted(set(trees))}", file=src)
            tree = trees[0]
        if tree not in set(trees):
            raise DataError(f"tree {tree!r} not found (TTrees in the file: {sorted(set(trees))})", file=src)
        ttree = rfile[tree]
        groups = _resolve_branches(branches if branches is not None else list(ttree.keys()), list(ttree.keys()),
                                   src, tree)
        needed = list(dict.fromkeys(b for bs in groups.values() for b in bs))
        n = int(ttree.num_entries)
        with atomic_file(dst) as tmp:
            with h5py.File(tmp, "w") as f, _progress(n, f"root {src.name}:{tree}", progress) as bar:
                f.attrs["source"] = str(src)
                f.attrs["tree"] = tree
                f.attrs["converter"] = "dlkit.io.convert_root"
                datasets, pos = {}, 0
                chunks = ttree.iterate(needed, step_size=step_size, library="np")
                while True:
                    try:
                        chunk = next(chunks)
                    except StopIteration:
                        break
                    except Exception as exc:
                        raise DataError(f"tree {tree!r}: cannot read entries from {pos}: {type(exc).__name__}: "
                                        f"{exc}", file=src) from None
                    m = None
                    for name, bs in groups.items():
                        parts = []
                        for b in bs:
                            a = chunk[b]
                            if a.dtype == object:
                                raise DataError(f"branch of tree {tree!r} has a variable number of values per "
                                                "event (jagged); only fixed-size branches convert", file=src, key=b)
                            parts.append(a)
                        arr = parts[0] if len(parts) == 1 else np.stack(parts, axis=1)
                        if dtype is not None and arr.dtype.kind == "f":
                            arr = arr.astype(dtype, copy=False)
                        if name not in datasets:
                            datasets[name] = f.create_dataset(name, shape=(n, *arr.shape[1:]), dtype=arr.dtype)
                            if len(bs) > 1 or bs[0] != name:
                                datasets[name].attrs["branches"] = list(bs)
                        elif arr.shape[1:] != datasets[name].shape[1:]:
                            raise DataError(f"branch shape changed from {datasets[name].shape[1:]} to "
                                            f"{arr.shape[1:]} at entry {pos}", file=src, key=",".join(bs))
                        datasets[name][pos:pos + len(arr)] = arr
                        m = len(arr)
                    pos += m or 0
                    bar.update(m or 0)
                if pos != n:
                    raise DataError(f"tree {tree!r}: read {pos} of {n} entries", file=src)
    log.info("converted %d entries of %s:%s (%s) into %s", n, src, tree, ", ".join(groups), dst)
    return dst


def _branch_arg(items) -> dict | None:
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep:
            out[name] = name
        else:
            parts = [p for p in spec.split(",") if p]
            out[name] = parts[0] if len(parts) == 1 else parts
    return out


def main(argv=None) -> int:
    """``python -m dlkit.io csv|root|convert SRC DST [options]``; exit 2 with one line for bad input."""
    parser = argparse.ArgumentParser(prog="python -m dlkit.io", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    c = sub.add_parser("csv", help="text/CSV: one row per event, layer sums then the true energy")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--delimiter", default="auto", help="',', ';', 'whitespace' or auto (default)")
    c.add_argument("--energy-column", type=int, default=-1, help="column of the true energy (default -1: last)")
    c.add_argument("--no-energy", action="store_true", help="no energy column: every column is a layer")
    c.add_argument("--layers-key", default="layers")
    c.add_argument("--energy-key", default="energy")
    c.add_argument("--header", choices=("auto", "yes", "no"), default="auto")
    c.add_argument("--chunk-rows", type=int, default=50_000)
    c.add_argument("--allow-nan", action="store_true")
    r = sub.add_parser("root", help="ROOT TTree branches (uproot)")
    r.add_argument("src")
    r.add_argument("dst")
    r.add_argument("--tree", default=None, help="TTree name (default: the only one)")
    r.add_argument("--branch", action="append", default=[], metavar="DATASET=BRANCH[,BRANCH...]|GLOB",
                   help="repeatable; e.g. energy=E_truth, 'layers=L*' (stacked); plain NAME keeps the name; "
                        "default: every branch")
    r.add_argument("--step-size", type=int, default=100_000)
    for p in (c, r):
        p.add_argument("--dtype", default="float32", help="type of floating-point data (default float32)")
        p.add_argument("--no-progress", action="store_true")
    _add_convert_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        if args.kind in ("convert", "convert-hits"):
            _convert_events(args)
        elif args.kind == "csv":
            delimiter = {"auto": "auto", "whitespace": None}.get(args.delimiter, args.delimiter)
            header = {"auto": "auto", "yes": True, "no": False}[args.header]
            convert_csv(args.src, args.dst, energy_column=None if args.no_energy else args.energy_column,
                        layers_key=args.layers_key, energy_key=args.energy_key, delimiter=delimiter, header=header,
                        chunk_rows=args.chunk_rows, dtype=args.dtype, allow_nan=args.allow_nan,
                        progress=not args.no_progress)
        else:
            convert_root(args.src, args.dst, args.tree, _branch_arg(args.branch), step_size=args.step_size,
                         dtype=args.dtype, progress=not args.no_progress)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return EXIT_OK


def _add_convert_parser(sub) -> None:
    from dlkit.jagged import FORMATS, HDF5_LAYOUTS

    v = sub.add_parser("convert", aliases=["convert-hits"],
                       help="files of events with per-event lists: ROOT TTree/RNTuple, parquet, HDF5 (dlkit.jagged)")
    v.add_argument("src", help="a file, or a directory tree of files (.root, .parquet, .pq, .h5, .hdf5)")
    v.add_argument("dst", help="the output file, or directory for a directory (created; the layout is kept)")
    v.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: from DST's extension; needed for a directory and for rntuple)")
    v.add_argument("--tree", default="events", help="output TTree/RNTuple name (default %(default)s)")
    v.add_argument("--src-tree", default=None, help="input TTree/RNTuple name (default: the file's only one)")
    v.add_argument("--hdf5-layout", choices=HDF5_LAYOUTS, default="csr",
                   help="HDF5 jagged columns: csr (group with values, offsets; default) or vlen")
    v.add_argument("--chunk-events", type=int, default=None,
                   help="events per ROOT basket / RNTuple cluster / parquet row group (default 100 for ROOT, "
                        "1000 for parquet and HDF5)")


def _convert_events(args) -> None:
    """``convert``: one file into another, or every file of a directory tree into ``args.format``."""
    from dlkit.jagged import EXTENSIONS, convert, convert_dir

    src, dst = Path(args.src), Path(args.dst)
    common = {"tree": args.tree, "hdf5_layout": args.hdf5_layout, "src_tree": args.src_tree,
              "chunk_events": args.chunk_events}
    if src.is_dir():
        if args.format is None:
            raise ValueError(f"{str(src)!r} is a directory: give the output --format")
        paths = convert_dir(src, dst, format=args.format, **common,
                            progress=lambda a, b: log.info("converted %s -> %s", a, b))
        log.info("converted %d files from %s into %s", len(paths), src, dst)
        return
    if dst.is_dir():
        if args.format is None:
            raise ValueError(f"{str(dst)!r} is a directory: give the output file's name or --format")
        dst = dst / (src.name.rsplit(".", 1)[0] + EXTENSIONS[args.format])
    convert(src, dst, format=args.format, **common)
    log.info("converted %s -> %s", src, dst)


if __name__ == "__main__":
    sys.exit(main())
