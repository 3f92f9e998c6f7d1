"""A scan as one self-contained HTML file: ``python -m dlkit.ScanAnalysis TrainedModels/ --html report.html``.

The file needs nothing but a browser (no CDN, no server: the machines it is read on often reach nothing
outside). It holds

- the scan table (:func:`~dlkit.analysis.ScanTable`'s columns), sortable by a click on a header and
  filterable by text (``Dense``), by condition (``Width>=64 lr<0.01``) and by status;
- the metric vs each scanned parameter and a parallel-coordinates view of all runs
  (:func:`~dlkit.analysis.plot_parameters`, :func:`~dlkit.analysis.plot_parallel_coordinates`);
- the best run's own plots (the PNGs in its directory);
- links to every run directory and its files, relative to the report, so the scan directory and the
  report can be copied together; a run left behind and taken over by a later one (``superseded``, see
  :func:`~dlkit.analysis.scan.mark_superseded`) is greyed, links to the run that went on, and is never
  judged (only ``ok`` runs are: the best run, the parameter plots).

Figures are PNGs inlined as base64; the sorting and filtering are a few lines of plain JavaScript written
for this file (no library).

>>> html = scan_report("TrainedModels/", metric="Ele_AUC")
>>> write_scan_report("report.html", "TrainedModels/")
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import logging
import math
import numbers
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from dlkit.analysis.plots import _better, plot_parallel_coordinates, plot_parameters
from dlkit.analysis.scan.runs import ScanModel, _as_models
from dlkit.analysis.scan.tables import (ScanTable, _missing, _sort_models, check_columns, default_columns,
                                        scanned_parameters)
from dlkit.cli import plural

log = logging.getLogger(__name__)

__all__ = ["scan_report", "write_scan_report", "default_metric"]

#: At most this many of the best run's PNGs are embedded (they are the analysis plots of one run).
MAX_BEST_PLOTS = 16
#: At most this many files are linked per run (a run directory holds about ten).
MAX_LINKED_FILES = 40


def default_metric(columns: Sequence) -> str | None:
    """The metric a scan is judged by: the first ``*_AUC`` column, else ``val_loss``, else ``loss``."""
    names = [str(c) for c in columns]
    for name in names:
        if name.endswith("_AUC"):
            return name
    return next((n for n in ("val_loss", "loss") if n in names), None)


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _href(target: Path, base: Path) -> str:
    return quote(Path(os.path.relpath(target, base)).as_posix())


def _cell(value, floatfmt: str) -> tuple[str, str]:
    """(sort key, shown text) of a table cell; missing values have an empty key and sort last."""
    if _missing(value):
        return "", "N/A"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
        if isinstance(value, numbers.Integral):
            return repr(int(value)), str(int(value))
        return repr(number), format(number, floatfmt) if math.isfinite(number) else str(number)
    text = str(value)
    return text, text


def _files(model: ScanModel, base: Path) -> str:
    try:
        files = sorted(p for p in model.path.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError:
        return ""
    links = " ".join(f'<a href="{_href(p, base)}">{html.escape(p.name)}</a>' for p in files[:MAX_LINKED_FILES])
    more = f" (+{len(files) - MAX_LINKED_FILES} more)" if len(files) > MAX_LINKED_FILES else ""
    return f"<details><summary>{len(files)} file{'' if len(files) == 1 else 's'}</summary>{links}{more}</details>"


def _table(frame: pd.DataFrame, models: list[ScanModel], base: Path, floatfmt: str, best: int | None) -> str:
    head = "".join(f'<th aria-sort="none" title="click to sort">{html.escape(str(c))}</th>' for c in frame.columns)
    rows = []
    for i, (model, values) in enumerate(zip(models, frame.itertuples(index=False, name=None))):
        cells = []
        for column, value in zip(frame.columns, values):
            key, text = _cell(value, floatfmt)
            text = html.escape(text)
            if column == "Model Name":
                text = f'<a href="{_href(model.path, base)}/">{text}</a>'
            if column == ("Status" if "Status" in frame.columns else "Model Name") and model.superseded_by:
                later = model.superseded_by
                text += (f' <span class="note" title="{html.escape(model.message)}">&rarr; '
                         f'<a class="continued" href="{_href(later, base)}/">{html.escape(later.name)}</a></span>')
            cells.append(f'<td data-v="{html.escape(key)}">{text}</td>')
        cells.append(f"<td>{_files(model, base)}</td>")
        classes = f"status-{re.sub(r'[^a-z]+', '-', model.status)}" + (" best" if i == best else "")
        rows.append(f'<tr class="{classes}" data-status="{html.escape(model.status)}">{"".join(cells)}</tr>')
    return (f'<table id="runs"><thead><tr>{head}<th class="nosort">files</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _best_plots(model: ScanModel) -> str:
    try:
        pngs = sorted(model.path.glob("*.png"))[:MAX_BEST_PLOTS]
    except OSError:
        return ""
    figures = []
    for png in pngs:
        try:
            data = base64.b64encode(png.read_bytes()).decode("ascii")
        except OSError as exc:
            log.warning("scan report: cannot read %s: %s", png, exc)
            continue
        figures.append(f'<figure><img alt="{html.escape(png.stem)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{html.escape(png.name)}</figcaption></figure>")
    return "".join(figures) or "<p>(the best run has no PNG plots)</p>"


def scan_report(Models, columns: Sequence | None = None, sort=None, reverse: bool = False,
                metric: str | None = None, maximize: bool | None = None, title: str | None = None,
                base: str | os.PathLike = ".", floatfmt: str = ".4f", tensorboard: str | None = None) -> str:
    """The HTML text of a scan report (see the module docstring).

    Parameters
    ----------
    Models
        :class:`~dlkit.analysis.scan.ScanModel` objects, or anything :func:`~dlkit.analysis.LoadModels` takes.
    columns, sort, reverse
        The table, as :func:`~dlkit.analysis.ScanTable` takes them (default columns, load order).
    metric, maximize
        The column the runs are judged by (default :func:`default_metric`) and whether larger is better
        (default: yes, except for losses, errors and resolutions).
    base
        The directory the report will be written to: run links are relative to it.
    tensorboard
        A ``tensorboard --logdir ...`` line to show (``ScanAnalysis`` passes it when runs have logs).
    """
    models = _as_models(Models)
    defaults = default_columns(models)
    columns = list(columns) if columns is not None else defaults
    columns = [defaults[c] if isinstance(c, int) and not isinstance(c, bool) else c for c in columns]
    models = _sort_models(models, sort, columns, reverse)
    frame = ScanTable(models, columns)
    metric = metric or default_metric(defaults)
    if metric:
        check_columns(models, [metric], "metric")
    parameters = scanned_parameters(models)
    judged = ScanTable(models, list(dict.fromkeys([*parameters, metric]))) if metric else None
    base = Path(base).resolve()

    best = None
    if judged is not None:
        ok = pd.Series([m.status == "ok" for m in models])
        values = pd.to_numeric(judged[metric], errors="coerce").where(ok)
        if values.notna().any():
            best = int(values.idxmax() if _better(metric, maximize) else values.idxmin())
        judged = judged[ok.to_numpy()]

    counts = Counter(m.status for m in models)
    summary = ", ".join(f"{n} {s}" for s, n in counts.most_common())
    title = title or f"Scan report: {plural(len(models), 'run')}"
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="meta">{html.escape(summary)} &middot; generated '
             f"{datetime.datetime.now().isoformat(timespec='seconds')}</p>"]
    if tensorboard:
        parts.append(f"<p class=\"meta\">TensorBoard: <code>{html.escape(tensorboard)}</code></p>")
    if best is not None:
        model = models[best]
        point = ", ".join(f"{p}={judged.loc[best, p]}" for p in parameters if p in judged.columns)
        parts.append(f'<p id="best">Best run by {html.escape(metric)}: <a href="{_href(model.path, base)}/">'
                     f"{html.escape(model.name)}</a> ({html.escape(metric)} = {judged.loc[best, metric]:.4g}"
                     + (f"; {html.escape(point)}" if point else "") + ")</p>")
    parts.append('<h2>Runs</h2><div class="controls"><input id="filter" type="search" size="40" '
                 'placeholder="filter: text, or conditions like Width>=64 lr<0.01"> '
                 '<select id="status"><option value="">every status</option>'
                 + "".join(f'<option value="{html.escape(s)}">{html.escape(s)}</option>' for s in counts)
                 + '</select> <span id="count"></span></div>')
    parts.append(_table(frame, models, base, floatfmt, best))
    if judged is not None and len(judged) and parameters:
        parts.append(f"<h2>Which parameters matter ({html.escape(metric)}, ok runs)</h2>")
        figure = plot_parameters(judged, parameters, metric, maximize)
        parts.append(f'<img class="wide" alt="metric vs parameters" src="{_png(figure)}">')
        parts.append(f'<img class="wide" alt="parallel coordinates" '
                     f'src="{_png(plot_parallel_coordinates(judged, parameters, metric, maximize))}">')
    if best is not None:
        parts.append(f"<h2>Best run: {html.escape(models[best].name)}</h2>"
                     f'<div class="plots">{_best_plots(models[best])}</div>')
    return _PAGE.format(title=html.escape(title), css=_CSS, body="\n".join(parts), script=_SCRIPT)


def write_scan_report(path: str | os.PathLike, Models, **kwargs) -> Path:
    """Write :func:`scan_report` to ``path`` (atomically: a reader never sees half a report)."""
    from dlkit.metadata import atomic_write

    path = Path(path)
    text = scan_report(Models, base=path.parent, **kwargs)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{css}</style></head>
<body>
{body}
<script>{script}</script>
</body></html>
"""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.meta { color: #555; margin: 0.2em 0; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
td:first-child, th:first-child { text-align: left; }
th { background: #f3f3f3; position: sticky; top: 0; cursor: pointer; user-select: none; }
th.nosort { cursor: default; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
tr.best td { background: #fff4d6; font-weight: 600; }
tr.status-failed td, tr.status-corrupt td, tr.status-running-killed td { color: #b00; }
tr.status-superseded td { color: #888; font-style: italic; } .note { font-size: 0.9em; }
details summary { cursor: pointer; color: #06c; } details a { display: inline-block; margin-right: 0.6em; }
.controls { margin: 0.5em 0; } #count { color: #555; margin-left: 1em; }
img.wide { max-width: 100%; display: block; margin: 0.8em 0; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots figure { margin: 0; } .plots img { max-width: 480px; }
figcaption { font-size: 0.8em; color: #555; text-align: center; }
"""

# Sorting and filtering of the runs table (a click on a header toggles ascending/descending; numbers sort
# as numbers; N/A sorts last either way). Filter terms are ANDed: "name>=x" style conditions on a column,
# anything else a case-insensitive substring of the row.
_SCRIPT = r"""
(function () {
  const table = document.getElementById("runs");
  const body = table.tBodies[0];
  const headers = Array.from(table.tHead.rows[0].cells);
  const names = headers.map(h => h.textContent);
  const rows = Array.from(body.rows);
  const value = (row, i) => row.cells[i].dataset.v;
  const isNumber = s => s !== "" && !isNaN(Number(s));
  headers.forEach((th, i) => {
    if (th.classList.contains("nosort")) return;
    th.addEventListener("click", () => {
      const ascending = th.getAttribute("aria-sort") !== "ascending";
      headers.forEach(h => { if (!h.classList.contains("nosort")) h.setAttribute("aria-sort", "none"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      const numeric = rows.every(r => value(r, i) === "" || isNumber(value(r, i)));
      const sign = ascending ? 1 : -1;
      const sorted = rows.slice().sort((a, b) => {
        const x = value(a, i), y = value(b, i);
        if (x === "" || y === "") return (x === "") - (y === "");
        return sign * (numeric ? Number(x) - Number(y) : x.localeCompare(y, undefined, {numeric: true}));
      });
      body.append(...sorted);
    });
  });
  const filter = document.getElementById("filter");
  const status = document.getElementById("status");
  const count = document.getElementById("count");
  const condition = /^(.+?)(<=|>=|!=|==|=|<|>)(.+)$/;
  function test(row, term) {
    const m = term.match(condition);
    const column = m ? names.indexOf(m[1]) : -1;
    if (column < 0) return row.textContent.toLowerCase().includes(term.toLowerCase());
    const cell = value(row, column), want = m[3];
    const both = isNumber(cell) && isNumber(want);
    const a = both ? Number(cell) : cell, b = both ? Number(want) : want;
    switch (m[2]) {
      case "<": return cell !== "" && a < b;
      case ">": return cell !== "" && a > b;
      case "<=": return cell !== "" && a <= b;
      case ">=": return cell !== "" && a >= b;
      case "!=": return a !== b;
      default: return a === b;
    }
  }
  function apply() {
    const terms = filter.value.trim().split(/\s+/).filter(t => t);
    let shown = 0;
    rows.forEach(row => {
      const keep = (!status.value || row.dataset.status === status.value) && terms.every(t => test(row, t));
      row.hidden = !keep;
      shown += keep;
    });
    count.textContent = shown + " of " + rows.length + " runs";
  }
  filter.addEventListener("input", apply);
  status.addEventListener("change", apply);
  apply();
})();
"""
