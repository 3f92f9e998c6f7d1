"""python -m dlkit.ScanAnalysis --html: the self-contained scan report, read as HTML and in a real Chromium.

The browser test drives Debian's Chromium (``.ci/install-chromium`` installs it; ``DLKIT_CHROMIUM`` names
another) with Playwright: it loads the file, counts the rows, sorts by a click, filters and takes the
screenshot shown in the README (``DLKIT_UPDATE_SCREENSHOT=1`` writes it to docs/scan_report.png).
"""

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from dlkit.analysis import plot_history, save_figure
from dlkit.analysis.report import scan_report
from dlkit.ScanAnalysis import main

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def auc_of(width, depth, lr):
    """The fake scan's metric: known, so the best run and every order are computed independently."""
    return round(0.80 + 0.01 * width / 32 + 0.02 * depth - 0.01 * abs(lr - 0.01) * 100, 4)


def write_run(base, width, depth, lr, status="completed"):
    name = f"Dense_{width}_{depth}_{lr}"
    directory = base / name
    directory.mkdir(parents=True)
    md = {"Name": name, "Status": status, "History": {"loss": [0.9, 0.6, 0.5], "val_loss": [1.0, 0.7, 0.65]},
          "Epochs": 3, "ScanPoint": {"Width": width, "Depth": depth, "lr": lr}, "Width": width, "Depth": depth,
          "lr": lr, "Loss": "binary_crossentropy", "Ele_AUC": auc_of(width, depth, lr),
          "StartTime": "2026-01-01T00:00:00", "EndTime": "2026-01-01T01:00:00",
          "StopReason": "ValueError: bad batch" if status == "failed" else "completed 3 epochs"}
    (directory / "MetaData.json").write_text(json.dumps(md))
    return directory


@pytest.fixture
def scan(tmp_path):
    base = tmp_path / "TrainedModels"
    for width in (32, 64, 128):
        for depth in (1, 2):
            for lr in (0.01, 0.001):
                write_run(base, width, depth, lr)
    write_run(base, 256, 2, 0.01, status="failed")  # the highest AUC, but failed: not the best
    (base / "Dense_512_1_0.01").mkdir()  # killed before its metadata was written
    best = base / "Dense_128_2_0.01"
    save_figure(plot_history(json.loads((best / "MetaData.json").read_text())["History"],
                             loss_name="binary_crossentropy", title=best.name), best, "History", formats=("png",))
    return base


def runs(base):
    """Every run directory's metadata as written (the independent reference), {} for the bare one."""
    out = {}
    for d in sorted(base.iterdir()):
        path = d / "MetaData.json"
        out[d.name] = json.loads(path.read_text()) if path.exists() else {}
    return out


class Page(HTMLParser):
    """The parts of the report the tests check: table rows, links, image sources, script sources."""

    def __init__(self):
        super().__init__()
        self.rows, self.hrefs, self.srcs, self.in_body = [], [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tbody":
            self.in_body = True
        elif tag == "tr" and self.in_body:
            self.rows.append(attrs)
        elif tag == "a":
            self.hrefs.append(attrs.get("href"))
        elif tag in ("img", "script", "link"):
            self.srcs.append(attrs.get("src") or attrs.get("href"))


def test_report_has_every_run_links_that_resolve_and_nothing_from_outside(scan, tmp_path, capsys):
    out = tmp_path / "report" / "scan.html"
    out.parent.mkdir()
    assert main([str(scan), "--html", str(out)]) == 0
    assert f"report: {out}" in capsys.readouterr().err
    text = out.read_text()
    page = Page()
    page.feed(text)
    assert len(page.rows) == len(runs(scan)) == 14
    assert [r["data-status"] for r in page.rows].count("failed") == 1
    assert not re.search(r"(src|href)=\"(https?:)?//", text), "the report must not load anything from outside"
    assert all(s is None or s.startswith("data:image/png;base64,") for s in page.srcs)
    for href in page.hrefs:  # relative to the report's directory, so the scan can be copied with it
        assert (out.parent / unquote(href)).exists(), href
    run_links = {Path(unquote(h)).name for h in page.hrefs if h.endswith("/")}
    assert run_links == set(runs(scan))
    ok = {n: md["Ele_AUC"] for n, md in runs(scan).items() if md and md["Status"] == "completed"}
    best = max(ok, key=ok.get)
    assert re.search(rf'id="best">Best run by Ele_AUC: <a href="[^"]*{best}/">{best}</a>', text)
    assert text.count(' best"') == 1 and re.search(rf'<tr class="status-ok best"[^>]*><td data-v="{best}">', text)
    assert 'alt="History"' in text  # the best run's own plot, embedded
    assert 'alt="metric vs parameters"' in text and 'alt="parallel coordinates"' in text


def test_report_metric_and_direction(scan):
    text = scan_report(scan, metric="val_loss")  # a loss: the smallest is best; all equal here -> first ok run
    assert "Best run by val_loss" in text
    narrow = scan_report(scan, columns=["Model Name", "Status"])  # the metric need not be a shown column
    assert re.search(r'Best run by Ele_AUC: <a [^>]*>Dense_128_2_0.01</a> \(Ele_AUC = 0.88;', narrow)
    with pytest.raises(LookupError, match="Ele_AUCC.*Ele_AUC"):
        scan_report(scan, metric="Ele_AUCC")


def test_cli_unknown_metric_is_a_usage_error(scan, tmp_path, capsys):
    assert main([str(scan), "--html", str(tmp_path / "r.html"), "--metric", "Gamma_AUC"]) == 2
    assert "Gamma_AUC" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def chromium() -> str | None:
    for candidate in (os.environ.get("DLKIT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


@pytest.fixture
def browser():
    playwright = pytest.importorskip("playwright.sync_api",
                                     reason="playwright is not installed (pip install '.[test]')")
    executable = chromium()
    if executable is None:
        pytest.skip("no Chromium found: run .ci/install-chromium (Debian's chromium) or set DLKIT_CHROMIUM")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def column(page, name):
    """The sort keys of one column, in the order the rows are shown."""
    return page.evaluate("""name => {
        const names = Array.from(document.querySelectorAll('#runs thead th')).map(h => h.textContent);
        const i = names.indexOf(name);
        return Array.from(document.querySelectorAll('#runs tbody tr')).filter(r => !r.hidden)
                    .map(r => r.cells[i].dataset.v);
    }""", name)


def test_report_in_chromium_sorts_filters_and_shows_its_plots(scan, tmp_path, browser):
    out = tmp_path / "scan.html"
    assert main([str(scan), "--html", str(out)]) == 0
    reference = runs(scan)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(out.as_uri())
    page.wait_for_load_state("load")

    assert page.locator("#runs tbody tr").count() == len(reference)
    assert page.locator("#count").text_content() == f"{len(reference)} of {len(reference)} runs"

    aucs = [md["Ele_AUC"] for md in reference.values() if "Ele_AUC" in md]
    header = page.locator("#runs thead th", has_text="Ele_AUC")
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    shown = column(page, "Ele_AUC")
    assert [float(v) for v in shown if v] == sorted(aucs) and shown[-1] == ""  # the bare run last
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    shown = column(page, "Ele_AUC")
    assert [float(v) for v in shown if v] == sorted(aucs, reverse=True) and shown[-1] == ""
    page.locator("#runs thead th", has_text="Model Name").click()
    assert column(page, "Model Name") == sorted(reference, key=_natural)

    page.fill("#filter", "Width>=64 lr<0.005")
    wide = [n for n, md in reference.items() if md and md["Width"] >= 64 and md["lr"] < 0.005]
    assert sorted(column(page, "Model Name")) == sorted(wide)
    assert page.locator("#count").text_content() == f"{len(wide)} of {len(reference)} runs"
    page.fill("#filter", "dense_32_")
    assert sorted(column(page, "Model Name")) == sorted(n for n in reference if n.startswith("Dense_32_"))
    page.fill("#filter", "")
    page.select_option("#status", "failed")
    assert column(page, "Model Name") == ["Dense_256_2_0.01"]
    page.select_option("#status", "")

    images = page.locator("img")
    assert images.count() == 3  # metric vs parameters, parallel coordinates, the best run's History.png
    assert all(w > 100 for w in images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)"))
    assert not errors, errors
    assert all(urlparse(u).scheme in ("file", "data") for u in requests), requests

    shot = tmp_path / "scan_report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("DLKIT_UPDATE_SCREENSHOT"):
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / "scan_report.png")


def _natural(name):
    """Chromium's localeCompare with numeric: true, for these names (digits compared as numbers)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]
