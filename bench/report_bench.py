"""The HTML scan report at 1000 runs: how long it takes to write, and to load, sort and filter in Chromium.

Writes a fake scan of N runs (MetaData.json as ModelWrapper writes it; a search-like space: Width and Depth
on a grid, lr log-uniform, Dropout uniform, the optimizer a category; 5 % failed), then, each repeat:

- ``python -m dlkit.ScanAnalysis <scan> --html report.html`` as a subprocess (wall time, start-up included);
- the report loaded in headless Chromium (Playwright, a new page each time): time to the load event, and
  the time of a header-click sort and of a filter, measured in the page;
- the peer: Optuna's own parallel-coordinate plot of the same N trials (optuna.visualization, Plotly),
  written as a self-contained HTML file (Plotly's JS inlined, as a report must be offline) and loaded the
  same way. Optuna's dashboard is a server, not a file, so this is the nearest like-for-like file.

    python bench/report_bench.py --runs 1000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def make_scan(base: Path, n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    png = None
    trials = []
    for i in range(n):
        p = {"Width": int(rng.choice([32, 64, 128, 256, 512])), "Depth": int(rng.integers(1, 6)),
             "lr": float(10 ** rng.uniform(-4, -1)), "Dropout": round(float(rng.uniform(0, 0.5)), 3),
             "Optimizer": str(rng.choice(["adam", "sgd", "rmsprop"]))}
        auc = (0.80 + 0.02 * np.log2(p["Width"] / 32) / 4 + 0.01 * p["Depth"] - 0.02 * abs(np.log10(p["lr"]) + 2.5)
               - 0.04 * p["Dropout"] + {"adam": 0.01, "sgd": -0.01, "rmsprop": 0.0}[p["Optimizer"]]
               + rng.normal(0, 0.005))
        status = "failed" if rng.random() < 0.05 else "completed"
        d = base / f"CaloDNN_{i:04d}"
        d.mkdir(parents=True)
        history = {"loss": list(np.linspace(0.9, 0.4, 10)), "val_loss": list(np.linspace(1.0, 0.5, 10))}
        md = {"Name": d.name, "Status": status, "History": history, "Epochs": 10, "ScanPoint": p, **p,
              "HyperParamSet": i, "Loss": "categorical_crossentropy", "Ele_AUC": float(auc),
              "Gamma_AUC": float(auc - 0.05), "StartTime": "2026-01-01T00:00:00", "EndTime": "2026-01-01T00:10:00",
              "StopReason": "ValueError: bad batch" if status == "failed" else "completed 10 epochs"}
        (d / "MetaData.json").write_text(json.dumps(md))
        if png is None:
            from dlkit.analysis import plot_history, save_figure
            png = save_figure(plot_history(history, loss_name="categorical_crossentropy"), d, "History",
                              formats=("png",))[0]
        else:
            (d / "History.png").write_bytes(png.read_bytes())
        trials.append({"params": p, "value": float(auc), "status": status})
    return trials


def optuna_html(trials: list[dict], path: Path) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dists = {"Width": optuna.distributions.CategoricalDistribution([32, 64, 128, 256, 512]),
             "Depth": optuna.distributions.IntDistribution(1, 5),
             "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
             "Dropout": optuna.distributions.FloatDistribution(0, 0.5),
             "Optimizer": optuna.distributions.CategoricalDistribution(["adam", "sgd", "rmsprop"])}
    for t in trials:
        state = optuna.trial.TrialState.COMPLETE if t["status"] == "completed" else optuna.trial.TrialState.FAIL
        value = t["value"] if state == optuna.trial.TrialState.COMPLETE else None
        study.add_trial(optuna.trial.create_trial(params=t["params"], distributions=dists, state=state, value=value))
    fig = optuna.visualization.plot_parallel_coordinate(study)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)


def load(browser, path: Path, interact: bool) -> dict:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    start = time.perf_counter()
    page.goto(path.as_uri(), wait_until="load")
    wall = time.perf_counter() - start
    nav = page.evaluate("() => { const e = performance.getEntriesByType('navigation')[0]; "
                        "return [e.domContentLoadedEventEnd, e.loadEventEnd]; }")
    out = {"wall_s": wall, "dom_ms": nav[0], "load_ms": nav[1]}
    if interact:
        out["sort_ms"] = page.evaluate("""() => { const th = Array.from(document.querySelectorAll('#runs th'))
            .find(h => h.textContent === 'Ele_AUC'); const t = performance.now(); th.click();
            return performance.now() - t; }""")
        out["filter_ms"] = page.evaluate("""() => { const f = document.getElementById('filter');
            f.value = 'Width>=128 lr<0.01'; const t = performance.now();
            f.dispatchEvent(new Event('input')); return performance.now() - t; }""")
        out["shown_after_filter"] = page.locator("#count").text_content()
    page.close()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--chromium", default=os.environ.get("DLKIT_CHROMIUM", "/usr/bin/chromium"))
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="report-bench-"))
    base = work / "TrainedModels"
    t = time.perf_counter()
    trials = make_scan(base, args.runs)
    print(f"scan of {args.runs} runs written in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    report, peer = work / "report.html", work / "optuna_parallel_coordinate.html"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    write, ours, theirs = [], [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=FLAGS)
        for _ in range(args.repeats):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dlkit.ScanAnalysis", str(base), "--html", str(report)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            write.append(time.perf_counter() - t)
            ours.append(load(browser, report, interact=True))
            optuna_html(trials, peer)
            theirs.append(load(browser, peer, interact=False))
        browser.close()
    med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}; "
          f"{args.runs} runs, median of {args.repeats}")
    print(f"| what | dlkit report | Optuna parallel-coordinate HTML (Plotly inlined) |\n|---|---|---|")
    print(f"| file size | {report.stat().st_size / 1e6:.2f} MB | {peer.stat().st_size / 1e6:.2f} MB |")
    print(f"| write (`ScanAnalysis --html`, process wall incl. start-up) | {statistics.median(write):.2f} s | - |")
    for key, label in (("dom_ms", "DOMContentLoaded [ms]"), ("load_ms", "load event [ms]")):
        a, b = med(ours, key), med(theirs, key)
        print(f"| {label} | {a:.0f} | {b:.0f} ({b / a:.1f}x ours) |")
    print(f"| sort {args.runs} rows by a header click [ms] | {med(ours, 'sort_ms'):.1f} | - |")
    print(f"| filter `Width>=128 lr<0.01` [ms] | {med(ours, 'filter_ms'):.1f} ({ours[-1]['shown_after_filter']}) | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
