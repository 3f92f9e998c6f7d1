"""dlkit.analysis.scan (the notebook API) and python -m dlkit.ScanAnalysis on fake and real model dirs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dlkit.ScanAnalysis import main
from dlkit.analysis import plot_chained_history, plot_scan, save_figure
from dlkit.analysis.plots import history_boundaries
from dlkit.analysis.scan import (GetEpochs, GetGoodParams, GetHistorical, LoadModels, PlotMetaData,
                                 PlotMetaDataMany, ResetNames, ScanModel, ScanTable, SelectModels,
                                 default_columns, format_table)
from dlkit.model_wrapper import chained_history

ROOT = Path(__file__).resolve().parents[1]


def write_run(base, name, status="completed", width=32, depth=1, epochs=4, earlier=(), end=True, auc=0.9,
              **extra):
    """A model directory as ModelWrapper writes it (no training)."""
    directory = Path(base) / name
    directory.mkdir(parents=True)
    history = {"loss": [1.0 / (i + 1) for i in range(epochs)],
               "val_loss": [1.2 / (i + 1) for i in range(epochs)]}
    md = {
        "Name": name.split(".")[0], "Status": status, "History": history, "EpochTime": [0.5] * epochs,
        "Epochs": epochs, "InputMetaData": list(earlier), "ScanPoint": {"Depth": depth, "Width": width},
        "HyperParamSet": depth * 10 + width, "Width": width, "Depth": depth,
        "Loss": "categorical_crossentropy",
        "Configuration": {"lr": 0.01, "Width": width}, "Ele_AUC": auc, "Gamma_AUC": auc - 0.1,
        "FinalScore": [0.3, auc], "StartTime": "2025-01-01T00:00:00",
        "StopReason": {"completed": f"completed {epochs} epochs", "interrupted": "signal SIGTERM",
                       "failed": "ValueError: bad batch",
                       "stopped": "EarlyStopping at epoch 4"}.get(status, ""),
    }
    if end:
        md["EndTime"] = "2025-01-01T01:00:00"
    md.update(extra)
    (directory / "MetaData.json").write_text(json.dumps(md))
    return directory


@pytest.fixture
def three(tmp_path):
    """The issue's case: one good, one interrupted and one corrupt run."""
    base = tmp_path / "TrainedModels"
    write_run(base, "Dense_32_1", auc=0.91)
    write_run(base, "Dense_64_1", status="interrupted", width=64, epochs=2, auc=0.95)
    corrupt = base / "Dense_128_1"
    corrupt.mkdir()
    (corrupt / "MetaData.json").write_text('{"Name": "Dense_128_1", "History": {"loss": [0.5, ')
    return base


@pytest.fixture
def scan(tmp_path):
    """A scan with every kind of run, including a resumed one."""
    base = tmp_path / "TrainedModels"
    first = {"History": {"loss": [2.0, 1.5, 1.2], "val_loss": [2.1, 1.6, 1.3]}, "EpochTime": [1, 1, 1],
             "Width": 64, "Depth": 1, "InputMetaData": []}
    write_run(base, "Dense_32_1", auc=0.91)
    write_run(base, "Dense_64_1.1", width=64, epochs=4, earlier=[first], auc=0.97, TotalEpochs=7)
    write_run(base, "Dense_32_2", depth=2, status="stopped", auc=0.93)
    write_run(base, "Dense_64_2", width=64, depth=2, status="failed", epochs=1, auc=0.5)
    write_run(base, "Dense_128_1", width=128, status="training", epochs=2, end=False, auc=0.8)
    (base / "Dense_128_2").mkdir()  # killed before its metadata was written
    (base / "Dense_256_1").mkdir()
    (base / "Dense_256_1" / "MetaData.json").write_text("[1, 2]")  # valid JSON, not an object
    (base / ".hidden").mkdir()
    (base / "notes.txt").write_text("not a run")
    return base


def rows_of(text):
    lines = text.strip().splitlines()
    return [line.split() for line in lines[2:]]


# -- the CLI ------------------------------------------------------------------------------------

def test_cli_one_good_one_interrupted_one_corrupt(three, capsys):
    assert main([str(three)]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["Model", "Name", "Status"]
    rows = {r[0]: r for r in rows_of(out)}
    assert len(rows) == 3
    assert rows["Dense_32_1"][1] == "ok" and "0.9100" in rows["Dense_32_1"]
    assert rows["Dense_64_1"][1] == "interrupted" and "0.9500" in rows["Dense_64_1"]
    assert rows["Dense_128_1"][1] == "corrupt" and set(rows["Dense_128_1"][2:]) == {"N/A"}
    assert "Dense_128_1: corrupt" in err and "MetaData.json" in err
    assert "Dense_64_1: interrupted: signal SIGTERM" in err and "3 runs" in err


def test_metadata_failing_its_schema_is_flagged_with_the_reason(tmp_path, capsys):
    base = tmp_path / "TrainedModels"
    write_run(base, "Dense_32_1", auc=0.91)
    write_run(base, "Dense_64_1", width=64, auc=0.95)
    write_run(base, "Dense_128_1", width=128, auc=0.93, History={"loss": "oops", "val_loss": [0.5]})
    write_run(base, "Dense_256_1", width=256, auc=0.99, Ele_AUC="0.99")   # a string AUC
    bare = base / "Dense_512_1"
    bare.mkdir()
    (bare / "MetaData.json").write_text(json.dumps({"Ele_AUC": 0.97, "EndTime": "2025-01-01T01:00:00"}))
    models = {m.name: m for m in LoadModels(base)}
    assert models["Dense_32_1"].status == models["Dense_64_1"].status == "ok"
    assert models["Dense_128_1"].status == "invalid"
    assert "History: 'loss' must be a list of numbers, got 'oops'" in models["Dense_128_1"].message
    assert models["Dense_128_1"].history == {}  # not 's' (the last character of "oops")
    assert models["Dense_256_1"].status == "invalid"
    assert "Ele_AUC: expected a number in [0, 1], got '0.99'" in models["Dense_256_1"].message
    assert models["Dense_512_1"].status == "invalid"
    assert all(f"{key}: missing" in models["Dense_512_1"].message for key in ("Name", "Status", "History"))
    # sorted by Ele_AUC: the good numbers in order, the string AUC not among them
    frame = ScanTable(list(models.values()), ["Model Name", "Status", "Ele_AUC", "loss"], sort=["Ele_AUC"],
                      reverse=True)
    assert list(frame["Model Name"]) == ["Dense_512_1", "Dense_64_1", "Dense_128_1", "Dense_32_1", "Dense_256_1"]
    assert list(frame["Status"]) == ["invalid", "ok", "invalid", "ok", "invalid"]
    row = frame.set_index("Model Name").loc["Dense_256_1"]
    assert row["Ele_AUC"] is None or pd.isna(row["Ele_AUC"])
    row = frame.set_index("Model Name").loc["Dense_128_1"]
    assert row["loss"] is None or pd.isna(row["loss"])
    assert main([str(base)]) == 0
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert out.count("invalid") == 7 and "3 invalid, 2 ok" in out  # 3 in the table, 3 reasons, the count
    assert "Dense_128_1: invalid: History: 'loss' must be a list of numbers, got 'oops'" in out


def test_cli_columns_sort_csv_and_status(scan, tmp_path, capsys):
    csv = tmp_path / "scan.csv"
    code = main([str(scan), "-c", "Model Name,Status,Width,Depth,Ele_AUC,History.val_loss[-1]", "-s", "2,3,0",
                 "--select-status", "ok,stopped,killed", "--csv", str(csv), "--tablefmt", "github"])
    assert code == 0
    out, _ = capsys.readouterr()
    names = [line.split("|")[1].strip() for line in out.strip().splitlines()[2:]]
    assert names == ["Dense_32_1", "Dense_32_2", "Dense_64_1.1", "Dense_128_1"]  # by Width, then Depth
    frame = pd.read_csv(csv)
    assert list(frame.columns) == ["Model Name", "Status", "Width", "Depth", "Ele_AUC",
                                   "History.val_loss[-1]"]
    assert list(frame["Model Name"]) == names
    assert list(frame.Status) == ["ok", "stopped", "ok", "running/killed"]
    assert frame["History.val_loss[-1]"].iloc[0] == pytest.approx(1.2 / 4)

    assert main([str(scan), "--sort=-Ele_AUC", "-c", "0,1,4", "--select-status", "ok"]) == 0
    out, _ = capsys.readouterr()
    assert [r[0] for r in rows_of(out)] == ["Dense_64_1.1", "Dense_32_1"]


def test_cli_usage_errors_exit_2(tmp_path, scan, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "missing: no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "holds no model directories" in capsys.readouterr().err
    assert main([str(scan), "-c", "0,99"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main([str(scan), "-s", "42"]) == 2
    assert main([str(scan), "--list-keys"]) == 0
    assert "Ele_AUC" in capsys.readouterr().out


def test_cli_as_module(three):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "dlkit.ScanAnalysis", str(three), "-c", "0,1"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [r[:2] for r in rows_of(proc.stdout)] == [["Dense_128_1", "corrupt"], ["Dense_32_1", "ok"],
                                                     ["Dense_64_1", "interrupted"]]


# -- LoadModels ---------------------------------------------------------------------------------

def test_load_models_flags(scan):
    models = {m.name: m for m in LoadModels(scan)}
    assert set(models) == {"Dense_32_1", "Dense_64_1.1", "Dense_32_2", "Dense_64_2", "Dense_128_1",
                           "Dense_128_2", "Dense_256_1"}
    flags = {name: m.status for name, m in models.items()}
    assert flags == {"Dense_32_1": "ok", "Dense_64_1.1": "ok", "Dense_32_2": "stopped",
                     "Dense_64_2": "failed",
                     "Dense_128_1": "running/killed", "Dense_128_2": "no metadata", "Dense_256_1": "corrupt"}
    assert models["Dense_64_2"].message == "ValueError: bad batch"
    assert "no EndTime" in models["Dense_128_1"].message
    assert "must be a JSON object" in models["Dense_256_1"].message and models["Dense_256_1"].metadata == {}
    assert models["Dense_32_1"].ok and models["Dense_32_2"].ok and not models["Dense_64_2"].ok


def test_load_models_glob_list_single_and_errors(scan, tmp_path):
    assert [m.name for m in LoadModels(str(scan / "Dense_64_*"))] == ["Dense_64_1.1", "Dense_64_2"]
    single = LoadModels(scan / "Dense_32_1")
    assert len(single) == 1 and single[0]["Width"] == 32
    both = LoadModels([scan / "Dense_32_1", str(scan / "Dense_32_*"), scan / "Dense_32_1" / "MetaData.json"])
    assert [m.name for m in both] == ["Dense_32_1", "Dense_32_2"]  # duplicates once
    assert LoadModels(both) == both  # ScanModel objects pass through
    # a glob match without metadata is a flagged run; an explicit empty directory holds no runs
    assert [m.status for m in LoadModels(str(scan / "Dense_128_*"))] == ["running/killed", "no metadata"]
    (tmp_path / "empty").mkdir()
    assert LoadModels(tmp_path / "empty") == []
    with pytest.raises(FileNotFoundError):
        LoadModels(tmp_path / "nothere")
    with pytest.raises(FileNotFoundError):
        LoadModels(str(tmp_path / "nothere*"))


def test_scan_model_reads_as_metadata():
    m = ScanModel("TrainedModels/X.1", {"Width": 8, "Depth": 2}, status="ok")
    assert m["Width"] == 8 and m.get("lr") is None and dict(m) == m.MetaData and m.Name == "X.1"
    m.Name = "Width=8"
    assert m.name == "Width=8"
    assert m != ScanModel("other", {"Width": 8, "Depth": 2})  # identity, not metadata equality


# -- ScanTable ----------------------------------------------------------------------------------

def test_scan_table_defaults(scan):
    models = LoadModels(scan)
    table = ScanTable(models)
    assert list(table.columns) == ["Model Name", "Status", "Depth", "Width", "Epochs", "Ele_AUC", "Gamma_AUC",
                                   "loss", "val_loss"]
    assert list(table.columns) == default_columns(models) and len(table) == 7
    row = table.set_index("Model Name").loc["Dense_64_1.1"]
    assert row.Epochs == 7  # 3 in the run it resumed + 4
    assert row.Ele_AUC == pytest.approx(0.97) and row.Gamma_AUC == pytest.approx(0.87)
    assert row.loss == pytest.approx(0.25) and row.val_loss == pytest.approx(0.3)
    assert table.Width.dtype.name == "Int64" and table.Ele_AUC.dtype == float
    corrupt = table.set_index("Model Name").loc["Dense_256_1"]
    assert corrupt.Status == "corrupt" and pd.isna(corrupt.Width) and pd.isna(corrupt.Epochs)
    text = format_table(table)
    assert "Dense_256_1" in text and "N/A" in text and "0.9700" in text and " 64 " in text


def test_scan_table_expressions_select_and_sort(scan):
    models = LoadModels(scan)
    table = ScanTable(models, ["Model Name", "FinalScore[1]", "History.loss[0]", "Configuration.lr",
                               "InputMetaData[0].History.loss[-1]", "ScanPoint.Width",
                               ("History", "val_loss"),
                               "val_loss"],
                      select=lambda md: md["Depth"] == 1 and md.status == "ok", sort="-FinalScore[1]")
    assert list(table["Model Name"]) == ["Dense_64_1.1", "Dense_32_1"]
    assert list(table["FinalScore[1]"]) == pytest.approx([0.97, 0.91])
    assert list(table["History.loss[0]"]) == [1.0, 1.0]
    assert list(table["Configuration.lr"]) == [0.01, 0.01]
    assert table["InputMetaData[0].History.loss[-1]"].iloc[0] == 1.2
    assert pd.isna(table["InputMetaData[0].History.loss[-1]"].iloc[1])
    assert list(table["ScanPoint.Width"]) == [64, 32]
    assert table["History.val_loss"].iloc[1] == pytest.approx([1.2 / (i + 1) for i in range(4)])
    # DLKit's index sort, a list of keys, reverse; missing values sort last either way
    by_index = ScanTable(models, ["Model Name", "Width", "Depth", "Ele_AUC"], sort=[1, 2, 0])
    assert list(by_index["Model Name"])[:5] == ["Dense_32_1", "Dense_32_2", "Dense_64_1.1", "Dense_64_2",
                                                "Dense_128_1"]
    assert set(by_index["Model Name"][5:]) == {"Dense_128_2", "Dense_256_1"}
    by_auc = ScanTable(models, ["Model Name", "Ele_AUC"], sort="Ele_AUC", reverse=True)
    assert list(by_auc.Ele_AUC[:5]) == pytest.approx([0.97, 0.93, 0.91, 0.8, 0.5])
    assert by_auc.Ele_AUC[5:].isna().all()
    assert list(ScanTable(models, [0, 4], sort=1).columns) == ["Model Name", "Epochs"]


# -- the other notebook functions ---------------------------------------------------------------

def test_good_params_epochs_historical_names_select(scan):
    models = LoadModels(scan)
    good = GetGoodParams(models)
    assert {"Width", "Depth", "Ele_AUC", "Gamma_AUC", "Epochs", "HyperParamSet", "TotalEpochs"} <= set(good)
    assert "Name" not in good and "Status" not in good
    epochs = dict(zip([m.name for m in models], GetEpochs(models)))
    assert epochs["Dense_64_1.1"] == 7 and epochs["Dense_32_1"] == 4 and epochs["Dense_256_1"] is None
    new = GetHistorical(models, Params=["Width"])
    assert new == ["All_History.loss", "All_History.val_loss", "All_Width"]
    resumed = next(m for m in models if m.name == "Dense_64_1.1")
    assert resumed["All_History.loss"] == chained_history(resumed.metadata)["loss"]
    assert resumed["All_History.loss"][:3] == [2.0, 1.5, 1.2] and len(resumed["All_History.loss"]) == 7
    assert resumed["All_Width"] == [64, 64]
    assert ScanTable([resumed], ["All_History.val_loss[2]"]).iloc[0, 0] == 1.3
    ResetNames(models, ["Width", "Depth"])
    assert resumed.name == "Width=64 Depth=1"
    assert any(m.name == "Dense_256_1" for m in models)  # no parameters: name kept
    wide = SelectModels(models, lambda m: m["Width"] >= 64)  # runs without Width are left out
    assert sorted(m.name for m in wide) == ["Width=128 Depth=1", "Width=64 Depth=1", "Width=64 Depth=2"]
    assert len(SelectModels(models, lambda m: m.MetaData["Loss"] == "categorical_crossentropy")) == 5


def test_plot_metadata_lines_bars_and_many(scan, tmp_path):
    models = [m for m in LoadModels(scan) if m.metadata]
    GetHistorical(models)
    fig = PlotMetaData(models, "All_History.val_loss")
    lines = fig.axes[0].get_lines()
    assert len(lines) == len(models) and max(len(line.get_xdata()) for line in lines) == 7
    bars = PlotMetaData(models, ["Epochs"])
    assert len(bars.axes[0].patches) == len(models)
    assert [t.get_text() for t in bars.axes[0].get_xticklabels()] == [m.name for m in models]
    hist = PlotMetaData(models, ["History", "loss"], mode="hist")
    assert len(hist.axes[0].patches) == len(models)
    many = PlotMetaDataMany(models, 2, ["All_History.loss", "All_History.val_loss"], sort="-Ele_AUC",
                            select=lambda m: m.status != "failed")
    assert len(many.axes) == 2  # 4 runs (the failed one left out), 2 per panel
    assert len(many.axes[0].get_lines()) == 4  # 2 runs x 2 keys
    assert "Dense_64_1.1" in many.axes[0].get_legend_handles_labels()[1][0]  # the best first
    top = PlotMetaDataMany(models, 2, "All_History.loss", switch=["Depth"], max_plots=1)
    assert len(top.axes) == 1
    depth = {m.name: m["Depth"] for m in models}
    assert len({depth[label] for label in top.axes[0].get_legend_handles_labels()[1]}) == 1
    paths = save_figure(many, tmp_path, "Many")
    paths += save_figure(PlotMetaData(models, "Nowhere"), tmp_path, "Empty")
    assert all(p.stat().st_size > 1000 for p in paths)


def test_history_boundaries_and_scan_plot(scan, tmp_path):
    resumed = LoadModels(scan / "Dense_64_1.1")[0]
    assert history_boundaries(resumed.metadata) == [3]
    fig = plot_chained_history(resumed.metadata, ["loss", "val_loss"])
    assert len(fig.axes[0].get_lines()[0].get_xdata()) == 7
    assert any(np.allclose(line.get_xdata(), 3.5) for line in fig.axes[0].get_lines()[2:])  # resume marker
    table = ScanTable(LoadModels(scan))
    scan_fig = plot_scan(table, "Width", "Ele_AUC", group="Depth")
    assert len(scan_fig.axes[0].get_lines()) == 2
    assert all(p.stat().st_size > 1000 for p in save_figure(scan_fig, tmp_path, "Scan"))


# -- a real ModelWrapper save -------------------------------------------------------------------

def test_real_model_wrapper_runs(tmp_path):
    import keras

    from dlkit import ModelWrapper

    class Tiny(ModelWrapper):
        def Build(self):
            inputs = keras.Input((3,))
            self.Model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = keras.utils.to_categorical((x[:, 0] > 0).astype(int), 2)
    base = tmp_path / "TrainedModels"
    first = Tiny("Tiny", OutputBase=base, ScanPoint={"Width": 2}, HyperParamSet=0)
    first.Build()
    first.Compile(Loss="categorical_crossentropy", Metrics=["accuracy"])
    first.Train(x, y, Epochs=2, BatchSize=32, validation_data=(x, y), verbose=0)
    first.MetaData["Ele_AUC"] = 0.75
    first.Save()
    second = Tiny("Tiny", OutputBase=base, InDir=first.OutDir)
    second.Initialize()
    second.Train(x, y, Epochs=1, BatchSize=32, validation_data=(x, y), verbose=0)
    second.Save()

    models = LoadModels(base, MetaDataOnly=False)
    assert [m.name for m in models] == ["Tiny", "Tiny.1"] and [m.status for m in models] == ["ok", "ok"]
    table = ScanTable(models)
    assert list(table.columns) == ["Model Name", "Status", "Width", "Epochs", "Ele_AUC", "loss", "val_loss"]
    assert list(table.Epochs) == [2, 3] and list(table.Width) == [2, 2]
    assert table.loss.iloc[1] == pytest.approx(second.MetaData["History"]["loss"][-1])
    assert np.allclose(models[1].Model.predict(x, verbose=0), second.Model.predict(x, verbose=0), atol=1e-6)
    GetHistorical(models)
    assert len(models[1]["All_History.val_accuracy"]) == 3
    (base / "Tiny" / "model.keras").unlink()
    broken = {m.name: m for m in LoadModels(base, MetaDataOnly=False)}
    assert broken["Tiny"].status == "model error" and "model.keras: missing" in broken["Tiny"].message
    assert broken["Tiny.1"].status == "ok"


def test_an_unknown_sort_or_column_key_is_an_error_naming_it_and_the_closest_names(scan, capsys):
    from dlkit.analysis.scan import UnknownColumnError

    models = LoadModels(scan)
    with pytest.raises(UnknownColumnError, match=r"sort key 'Gamma_AUCC': no run has it; did you mean 'Gamma_AUC'"):
        ScanTable(models, sort="-Gamma_AUCC")
    with pytest.raises(UnknownColumnError, match=r"column 'Ele_AUCx': no run has it; did you mean 'Ele_AUC'"):
        ScanTable(models, ["Model Name", "Ele_AUCx"])
    # present somewhere, even empty everywhere, is not unknown: a None value is a value
    for run in ("Dense_32_1", "Dense_32_2"):
        path = scan / run / "MetaData.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "Note": None}))
    assert list(ScanTable(LoadModels(scan), ["Model Name", "Note", "Configuration.lr", "History.loss[-1]"],
                          sort="Note").columns)[1] == "Note"
    assert main([str(scan), "-s", "Gamma_AUCC"]) == 2
    err = capsys.readouterr().err
    assert "sort key 'Gamma_AUCC'" in err and "'Gamma_AUC'" in err and "Traceback" not in err
    assert main([str(scan), "-c", "Model Name,Widht"]) == 2
    assert "column 'Widht': no run has it; did you mean 'Width'" in capsys.readouterr().err
