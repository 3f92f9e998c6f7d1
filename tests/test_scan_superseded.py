"""A run killed and then continued (``Name.1``, ``-p``) is ``superseded`` in ScanAnalysis and the HTML report.

The runs are made by the real ModelWrapper, the way an experiment makes them: the killed one saved its model
with ``Status: analysing`` (what :func:`dlkit.experiment.train` writes before the analysis) and never finished.
"""

from html.parser import HTMLParser
from pathlib import Path

import keras
import numpy as np

from dlkit import ModelWrapper
from dlkit.ScanAnalysis import main
from dlkit.analysis import write_scan_report
from dlkit.analysis.scan import LoadModels, ScanTable


class Dense(ModelWrapper):
    def Build(self):
        inputs = keras.Input((4,))
        self.Model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))


def _wrapper(base, name, width, **kw):
    w = Dense(name, OutputBase=base, Config={"Width": width}, ScanPoint={"Width": width},
              HyperParamSet=width, **kw)
    if w.Model is None and not kw.get("LoadPrevious"):
        w.Build()
    return w


def _train(w, epochs, data):
    if w.Model is None:
        w.Build()
    if not w.ContinuesPrevious:  # a loaded save comes compiled, with its optimizer state
        w.BuildOptimizer("Adam", lr=0.01)
        w.Compile(Loss="categorical_crossentropy")
    w.Train(*data, Epochs=epochs, BatchSize=32, InitialEpoch=w.PreviousEpochs, verbose=0)


def _run(base, width, epochs, data, status="completed", auc=None, **kw):
    """One run of point ``width``: Initialize, train to ``epochs`` (if any), save; ``completed`` finishes it,
    any other ``status`` is what a kill left in its metadata."""
    w = _wrapper(base, f"Toy_W{width}", width, **kw)
    w.Initialize()
    if epochs:
        _train(w, epochs, data)
        w.MetaData.update(Status="analysing" if status == "completed" else status, Toy_AUC=auc)
        w.Save()
    if status == "completed":
        w.finish(status)
    return w


def _make_scan(base: Path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    data = (x, keras.utils.to_categorical((x[:, 0] > 0).astype(int), 2))
    # point 8: trained, saved, killed during its analysis (a partial metric written: it must not count);
    # the scan resumes it with -p: Toy_W8.1 loads that save, trains the epoch left, completes
    _run(base, 8, 2, data, status="analysing", auc=0.99)
    resumed = _run(base, 8, 3, data, auc=0.8, LoadPrevious=True)
    assert resumed.ContinuesPrevious and resumed.OutDir.name == "Toy_W8.1"
    # point 16: killed before its first save, then run again from scratch (nothing to load)
    _run(base, 16, 0, data, status="initialized")
    again = _run(base, 16, 1, data, auc=0.7, LoadPrevious=True)
    assert not again.ContinuesPrevious and again.OutDir.name == "Toy_W16.1"
    # point 32: killed during its analysis, not resumed (yet): it stays running/killed
    _run(base, 32, 1, data, status="analysing")
    return base


class _Rows(HTMLParser):
    """The runs table of a report: per row its data-status, cell texts and the links in it; the best-run line."""

    def __init__(self):
        super().__init__()
        self.rows, self.best, self._row, self._cell, self._in_best = [], "", None, None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-status" in attrs:
            self._row = {"status": attrs["data-status"], "class": attrs.get("class", ""), "cells": [], "links": []}
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "a" and self._row is not None:
            self._row["links"].append(attrs.get("href", ""))
        elif tag == "p" and attrs.get("id") == "best":
            self._in_best = True

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row["cells"].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        elif tag == "p":
            self._in_best = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_best:
            self.best += data


def test_killed_then_resumed_run_is_superseded_in_table_and_report(tmp_path, capsys):
    base = _make_scan(tmp_path / "TrainedModels")
    models = {m.path.name: m for m in LoadModels(base)}
    assert {k: m.status for k, m in models.items()} == {
        "Toy_W8": "superseded", "Toy_W8.1": "ok", "Toy_W16": "superseded", "Toy_W16.1": "ok",
        "Toy_W32": "running/killed"}
    assert models["Toy_W8"].superseded_by == base / "Toy_W8.1"
    assert models["Toy_W8"].message.startswith("running/killed (") and models["Toy_W8"].message.endswith(
        "; continued in Toy_W8.1")
    assert models["Toy_W16"].superseded_by == base / "Toy_W16.1"
    assert models["Toy_W16"].message.endswith("; ran again in Toy_W16.1")
    # loaded alone, the old directory still finds the run that went on beside it
    (alone,) = LoadModels(base / "Toy_W8")
    assert alone.status == "superseded" and alone.superseded_by == base / "Toy_W8.1"

    table = ScanTable(list(models.values()), ["Model Name", "Status", "Toy_AUC"])
    assert dict(zip(table["Model Name"], table["Status"]))["Toy_W8"] == "superseded"

    assert main([str(base), "-c", "Model Name,Status,Toy_AUC"]) == 0
    out, err = capsys.readouterr()
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert lines["Toy_W8"][1] == "superseded" and lines["Toy_W8.1"][1] == "ok"
    assert "Toy_W8: superseded: running/killed (" in err and "continued in Toy_W8.1" in err

    report = write_scan_report(tmp_path / "report.html", list(models.values()), metric="Toy_AUC")
    parsed = _Rows()
    parsed.feed(report.read_text(encoding="utf-8"))
    rows = {r["cells"][0].split()[0]: r for r in parsed.rows}
    assert rows["Toy_W8"]["status"] == "superseded" and "status-superseded" in rows["Toy_W8"]["class"]
    assert "best" not in rows["Toy_W8"]["class"].split()  # its 0.99 is no result: the scan redid its analysis
    assert "TrainedModels/Toy_W8.1/" in rows["Toy_W8"]["links"]  # a link to the run that continued it
    assert rows["Toy_W8"]["cells"][1].startswith("superseded")
    assert rows["Toy_W16"]["status"] == "superseded" and "TrainedModels/Toy_W16.1/" in rows["Toy_W16"]["links"]
    assert rows["Toy_W32"]["status"] == "running/killed"
    assert "best" in rows["Toy_W8.1"]["class"].split()
    assert parsed.best.startswith("Best run by Toy_AUC: Toy_W8.1 ")
