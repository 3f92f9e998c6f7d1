"""dlkit.scan search: spaces validated like config entries, trials sampled into the ledger exactly once, a
known optimum found, a killed driver restarted without losing or rerunning a trial, pruning recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_fixture import slurm  # noqa: F401  (the fixture)

pytest.importorskip("optuna")

import importlib  # noqa: E402

scan_search = importlib.import_module("dlkit.scan.search")  # the module (dlkit.scan.search is also the function)
from dlkit.scan.ledger import Ledger, ScanError  # noqa: E402
from dlkit.scan.space import check_search, choice, int_range, loguniform, uniform  # noqa: E402
from toy import objective_of  # noqa: E402

TOY_DEFAULTS = {"lr": 0.01, "Width": 1, "Epochs": 3, "optimizer": "SGD"}


def write_config(path, search="{'lr': loguniform(1e-4, 1.0), 'Width': int_range(1, 128)}", extra=""):
    path.write_text("from dlkit.scan.space import choice, int_range, loguniform, uniform\n"
                    f"Config = {{'Epochs': 3}}\n{extra}\nSearch = {search}\n")
    return path


def test_spaces_are_checked_like_config_entries():
    with pytest.raises(Exception, match="loguniform"):
        loguniform(0, 1)
    with pytest.raises(Exception, match="low must be below high"):
        uniform(2, 1)
    with pytest.raises(Exception, match="integer"):
        int_range(1, 2.5)
    with pytest.raises(Exception, match="unknown key 'lrr'.*'lr'"):
        check_search({"lrr": loguniform(1e-3, 1)}, "cfg", TOY_DEFAULTS)
    with pytest.raises(Exception, match="'Width' is both in Params"):
        check_search({"Width": int_range(1, 4)}, "cfg", TOY_DEFAULTS, grid={"Width": [1, 2]})
    with pytest.raises(Exception, match="optimizer"):
        check_search({"optimizer": choice([1, 2])}, "cfg", TOY_DEFAULTS)
    with pytest.raises(Exception, match="not a space"):
        check_search({"lr": [0.1, 0.2]}, "cfg", TOY_DEFAULTS)


def test_search_manifest_names_a_bad_key(tmp_path):
    config = write_config(tmp_path / "s.py", "{'Widht': int_range(1, 4)}")
    with pytest.raises(ScanError, match="unknown key 'Widht'.*'Width'"):
        scan_search.make_search_manifest("toy", config, trials=3)


def _finish_in_process(ledger: Ledger, driver, index: int) -> None:
    """What a worker would do for a trial, in process: lease, end, final marker with the toy's objective."""
    token = ledger.new_token()
    assert ledger.acquire(index, token, {"host": "test"})
    params = ledger.trial(index)["params"]
    ledger.record_start(index, token, {})
    ledger.end(index, token)
    record = ledger.record_end(index, token, {"exit_code": 0, "outcome": "done", "epochs": 3,
                                              "metric": objective_of(params["lr"], params["Width"])})
    from dlkit.scan.ledger import classify_attempts

    ledger.finish_point(index, record, classify_attempts(ledger.counted_attempts(index), 2))
    ledger.remove_lease(index, token)


def _best_in_process(tmp_path, sampler: str, seed: int, trials: int) -> float:
    config = write_config(tmp_path / f"{sampler}{seed}.py")
    ledger = scan_search.open_search("toy", config, name=f"{sampler}{seed}", output_base=tmp_path / "TM",
                                     trials=trials, sampler=sampler, objective="Objective", direction="minimize",
                                     seed=seed)
    driver = scan_search.SearchDriver(ledger, parallel=1)
    while not driver.finished():
        driver.step()
        for index in list(driver.live):
            _finish_in_process(ledger, driver, index)
    assert sorted(ledger.trial_indices()) == list(range(trials))
    frame = scan_search.best(ledger.path)
    assert len(frame) == trials
    return float(frame["Objective"].iloc[0])


def test_tpe_finds_the_known_optimum_and_beats_random(tmp_path):
    import numpy as np

    tpe = [_best_in_process(tmp_path, "tpe", seed, 30) for seed in range(5)]
    rnd = [_best_in_process(tmp_path, "random", seed, 30) for seed in range(5)]
    assert np.median(tpe) < 0.3, tpe        # within tolerance of the optimum 0 at lr=0.01, Width=64
    assert np.mean(tpe) < np.mean(rnd), (tpe, rnd)


def _search_cmd(config, base, trials, *extra):
    return [sys.executable, "-m", "dlkit.scan", "search", str(config), "--experiment", "toy",
            "--trials", str(trials), "--objective", "Objective", "--direction", "minimize", "--seed", "3",
            "--OutputBase", str(base), "--no-progress", *extra]


def _kill_driver_after(cmd, base, done: int) -> Ledger:
    """Start the search driver, kill -9 it once ``done`` trials are done; the search's ledger."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = Ledger.at(base, "toy-s")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (ledger.path.exists() and len(ledger.done_indices()) >= done):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return ledger


def test_killed_driver_restarts_with_exactly_n_trials_none_run_twice(tmp_path):
    config = write_config(tmp_path / "s.py")
    base = tmp_path / "TM"
    cmd = _search_cmd(config, base, 6, "--parallel", "2", "--", "--set", "EpochTime=0.4")
    ledger = _kill_driver_after(cmd, base, 2)
    before = {i: ledger.trial(i)["params"] for i in ledger.trial_indices()}
    assert 2 <= len(ledger.done_indices()) < 6
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(ledger.trial_indices()) == list(range(6))
    assert sorted(ledger.done_indices()) == list(range(6))
    for index, params in before.items():  # a trial sampled before the kill keeps its params
        assert ledger.trial(index)["params"] == params
    intervals = []
    for index in range(6):
        attempts = ledger.attempts(index)
        assert sum(a.get("outcome") == "done" for a in attempts) == 1, attempts  # completed exactly once
        intervals += [(a["start_ts"], a["end_ts"]) for a in attempts if "end_ts" in a]
        metadata = json.loads((base / f"Toy_Trial{index}" / "MetaData.json").read_text()) \
            if (base / f"Toy_Trial{index}").is_dir() else None
        assert metadata is None or metadata["ScanPoint"]["Trial"] == index
    # two slots: two trials ran at once, never three
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 2
    assert "best trials" in result.stdout
    assert (ledger.path / "search_objective.png").is_file()


def test_pruner_stops_a_bad_trial_and_records_it_pruned(tmp_path):
    config = write_config(tmp_path / "s.py")
    base = tmp_path / "TM"
    cmd = _search_cmd(config, base, 6, "--sampler", "random", "--pruner", "median", "--prune-metric",
                      "val_objective", "--prune-direction", "minimize", "--lease-timeout", "5",
                      "--", "--set", "EpochTime=0.5", "--set", "Epochs=8")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ})
    assert result.returncode == 0, result.stderr
    ledger = Ledger.at(base, "toy-s")
    finals = ledger.final_states()
    assert len(finals) == 6
    pruned = [i for i, m in finals.items() if m["state"] == "pruned"]
    assert pruned, finals
    for index in pruned:
        attempt = ledger.attempts(index)[-1]
        assert attempt["exit_code"] == 77
        assert attempt["epochs"] < 8
        metadata = json.loads((base / f"Toy_Trial{index}" / "MetaData.json").read_text())
        assert metadata["Status"] == "pruned"


def _scancel_jobs(ledger: Ledger) -> None:
    try:
        jobs = json.loads((ledger.path / "engine.json").read_text()).get("jobs") or []
    except (OSError, ValueError):
        return
    if jobs:
        subprocess.run(["scancel", *map(str, jobs)], capture_output=True, timeout=30)


def _assert_trials_done_once(ledger: Ledger, base, n: int) -> None:
    """Exactly ``n`` trials, each sampled once and done once (from the attempt logs and the run dirs)."""
    assert sorted(ledger.trial_indices()) == list(range(n))
    assert sorted(ledger.done_indices()) == list(range(n))
    for index in range(n):
        outcomes = [a.get("outcome") for a in ledger.attempts(index)]
        assert outcomes.count("done") == 1, (index, outcomes)
    completed = [json.loads(p.read_text()) for p in base.glob("*/MetaData.json")]
    completed = [m for m in completed if m.get("Status") == "completed"]
    assert sorted(m["ScanPoint"]["Trial"] for m in completed) == list(range(n))
    for metadata in completed:  # each run trained with its trial's sampled params
        params = ledger.trial(metadata["ScanPoint"]["Trial"])["params"]
        assert {k: metadata["Configuration"][k] for k in params} == params


@pytest.mark.timeout(240)
def test_search_on_dask_runs_n_trials_once(tmp_path):
    pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install 'dlkit[dask]')")
    config = write_config(tmp_path / "s.py")
    base = tmp_path / "TM"
    result = subprocess.run(_search_cmd(config, base, 4, "--parallel", "2", "--engine", "dask",
                                        "--", "--set", "EpochTime=0.2"),
                            capture_output=True, text=True, timeout=200)
    assert result.returncode == 0, result.stderr[-3000:]
    ledger = Ledger.at(base, "toy-s")
    _assert_trials_done_once(ledger, base, 4)
    assert json.loads((ledger.path / "engine.json").read_text())["engine"] == "dask"
    assert "best trials" in result.stdout


@pytest.mark.timeout(240)
def test_search_on_slurm_runs_n_trials_once(tmp_path, slurm):  # noqa: F811
    config = write_config(tmp_path / "s.py")
    base = tmp_path / "TM"
    cmd = _search_cmd(config, base, 4, "--parallel", "2", "--engine", "slurm", "--lease-timeout", "10",
                      "--", "--set", "EpochTime=0.2")
    ledger = Ledger.at(base, "toy-s")
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=200, cwd=tmp_path)
    finally:
        if ledger.path.is_dir():
            _scancel_jobs(ledger)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_trials_done_once(ledger, base, 4)
    for index in range(4):  # every trial ran inside a Slurm job of the search
        assert all(a.get("job_id") for a in ledger.attempts(index)), ledger.attempts(index)
    record = json.loads((ledger.path / "engine.json").read_text())
    assert record["engine"] == "slurm" and {p for s in record["submissions"] for p in s["points"]} == {0, 1, 2, 3}


@pytest.mark.timeout(480)
def test_calodnn_search_of_4_trials_then_status_best_and_scan_analysis(tmp_path):
    """A real calodnn --Test search on the local engine: 4 trials, 2 at a time, each trained once with its
    sampled params; best(), status and ScanAnalysis --per-point show the trials with those params."""
    import pandas as pd

    from calodnn.simulate import write_dataset

    data = tmp_path / "lcd"
    write_dataset(data, events_per_class=300, events_per_file=150, seed=5, progress=False)
    config = tmp_path / "calo_search.py"
    config.write_text("from dlkit.scan.space import choice, loguniform\nConfig = {'Depth': 1}\n"
                      "Search = {'lr': loguniform(1e-3, 1e-1), 'Width': choice([16, 32, 64])}\n")
    out = tmp_path / "TM"
    cmd = [sys.executable, "-m", "dlkit.scan", "search", str(config), "--experiment",
           "calodnn.ClassificationExperiment", "--trials", "4", "--parallel", "2", "--objective", "Gamma_AUC",
           "--seed", "1", "--OutputBase", str(out), "--no-progress",
           "--", "--Test", "--data", str(data), "--set", "BatchSize=64", "--set", "EnergyBins=[10, 510, 4]"]
    env = dict(os.environ, DLKIT_CACHE_DIR=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stderr[-3000:]
    (ledger,) = Ledger.find(out)
    _assert_trials_done_once(ledger, out, 4)

    frame = scan_search.best(out)
    assert len(frame) == 4 and list(frame["Gamma_AUC"]) == sorted(frame["Gamma_AUC"], reverse=True)
    for row in frame.itertuples():  # the objective is the run's own Gamma_AUC, the params its trial's
        metadata = json.loads((Path(row.run_dir) / "MetaData.json").read_text())
        assert metadata["Gamma_AUC"] == pytest.approx(row.Gamma_AUC) and 0.5 < row.Gamma_AUC <= 1
        assert (row.lr, row.Width) == (metadata["Configuration"]["lr"], metadata["Configuration"]["Width"])
    assert f"{frame['Gamma_AUC'].iloc[0]:.4g}" in result.stdout.split("best trials:")[1]

    status = subprocess.run([sys.executable, "-m", "dlkit.scan", "status", str(out)], capture_output=True,
                            text=True, timeout=60)
    header = status.stdout.splitlines()[1].split()
    assert header[:3] == ["point", "trial", "params"] and "Gamma_AUC" in header, status.stdout
    assert "4 done" in status.stdout

    csv = tmp_path / "per_point.csv"
    table = subprocess.run([sys.executable, "-m", "dlkit.ScanAnalysis", str(out), "--per-point", "--csv", str(csv)],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    rows = pd.read_csv(csv)
    assert len(rows) == 4 and set(rows["Status"]) == {"ok"}
    for row in rows.itertuples():
        params = ledger.trial(int(row.Trial))["params"]
        assert row.lr == pytest.approx(params["lr"]) and row.Width == params["Width"]


def test_a_failing_trial_is_told_failed_and_does_not_hang_the_search(tmp_path):
    config = write_config(tmp_path / "s.py")
    base = tmp_path / "TM"
    cmd = _search_cmd(config, base, 4, "--parallel", "2", "--max-retries", "1", "--",
                      "--set", "UserErrorPoints=[1]", "--set", "CrashPoints=[2]")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr  # some trials failed
    ledger = Ledger.at(base, "toy-s")
    states = {i: m["state"] for i, m in ledger.final_states().items()}
    assert states == {0: "done", 1: "failed", 2: "failed", 3: "done"}
    assert [a["exit_code"] for a in ledger.attempts(1)] == [2]       # a user error is not retried
    assert [a["exit_code"] for a in ledger.attempts(2)] == [1, 1]    # a crash is, --max-retries times
    assert sorted(scan_search.best(base)["point"]) == [0, 3]
    driver = scan_search.SearchDriver(ledger, parallel=1)  # a restarted driver tells them failed, runs nothing
    trials = {t.user_attrs["point"]: t.state.name for t in driver.studies[0].trials}
    assert trials == {0: "COMPLETE", 1: "FAIL", 2: "FAIL", 3: "COMPLETE"} and driver.finished()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and len(ledger.attempts(2)) == 2


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_seeded_search_samples_the_same_trials_whether_or_not_its_driver_was_killed(tmp_path, sampler):
    """Each trial's sampler is seeded by (seed, grid point, trial): a driver killed after 2 trials and started
    again samples trials 2.. as an uninterrupted driver does, not trials 0.. again."""
    config = write_config(tmp_path / "s.py")

    def cmd(base):
        return _search_cmd(config, base, 4, "--sampler", sampler, "--parallel", "1", "--",
                           "--set", "EpochTime=0.15")

    whole = subprocess.run(cmd(tmp_path / "whole"), capture_output=True, text=True, timeout=120)
    assert whole.returncode == 0, whole.stderr
    base = tmp_path / "killed"
    ledger = _kill_driver_after(cmd(base), base, 2)
    assert 2 <= len(ledger.done_indices()) < 4
    again = subprocess.run(cmd(base), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    reference = Ledger.at(tmp_path / "whole", "toy-s")
    params = [ledger.trial(i)["params"] for i in range(4)]
    assert params == [reference.trial(i)["params"] for i in range(4)]
    assert len({p["lr"] for p in params}) == 4  # and all distinct
