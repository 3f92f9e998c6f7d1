"""calodnn.baselines: BDT and feature/cell DNNs on tiny data, and the paper's table against sklearn."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from calodnn.baselines import (TASKS, Task, compare_classifiers, format_table, load_task, main, run_task, train_bdt,
                               working_point_gains)
from calodnn.simulate import FEATURE_NAMES, write_dataset


@pytest.fixture(scope="module")
def lcd(tmp_path_factory):
    root = tmp_path_factory.mktemp("lcd")
    write_dataset(root, events_per_class=300, events_per_file=150, seed=11, progress=False,
                  particles=("Ele", "Gamma", "Pi0", "ChPi"))
    return root


def test_load_task_splits(lcd):
    splits = load_task(lcd, "GammaPi0", fractions=(0.6, 0.1, 0.3))
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [360, 60, 180]
    test = splits["test"]
    assert test.features.shape == (180, len(FEATURE_NAMES)) and test.ecal.shape == (180, 25, 25, 25)
    assert test.y.mean() == pytest.approx(0.5) and test.feature_names == FEATURE_NAMES
    e = np.concatenate([splits[k].energy for k in splits])
    assert len(np.unique(e)) == len(e)  # disjoint splits
    small = load_task(lcd, "EPi", events_per_class=100, cells=False)
    assert len(small["train"]) == 120 and small["train"].ecal is None


def test_bdt_on_tiny_data(lcd):
    splits = load_task(lcd, "EPi", cells=False)
    bdt = train_bdt(splits["train"].features, splits["train"].y)
    assert roc_auc_score(splits["test"].y, bdt.predict_proba(splits["test"].features)[:, 1]) > 0.97
    g = load_task(lcd, "GammaPi0", cells=False)
    classic = train_bdt(g["train"].features, g["train"].y, method="classic", n_estimators=50)
    assert roc_auc_score(g["test"].y, classic.predict_proba(g["test"].features)[:, 1]) > 0.6


def _brute_force(y, s, ref, wp):
    """Threshold scans in plain numpy: the reference's working point, then the model at it."""
    sig, bkg = y == 1, y == 0
    thr = np.unique(np.r_[ref, np.inf])
    eff_r = np.array([(ref[sig] >= t).mean() for t in thr])
    fake_r = np.array([(ref[bkg] >= t).mean() for t in thr])
    ref_fake = fake_r[eff_r >= wp].min()

    def best_eff(scores, fake):
        ts = np.unique(np.r_[scores, np.inf])
        return max((scores[sig] >= t).mean() for t in ts if (scores[bkg] >= t).mean() <= fake)

    def fake_at(scores):
        ts = np.unique(np.r_[scores, np.inf])
        return min((scores[bkg] >= t).mean() for t in ts if (scores[sig] >= t).mean() >= wp)

    return best_eff(s, ref_fake) - best_eff(ref, ref_fake), fake_at(ref) / fake_at(s)


def test_working_point_gains_match_a_threshold_scan():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(400), np.zeros(400)].astype(int)
    ref = rng.normal(y * 1.0, 1.0)
    better = rng.normal(y * 2.0, 1.0)
    got = working_point_gains(y, better, ref, 0.9)
    d_eff, ratio = _brute_force(y, better, ref, 0.9)
    assert got["d_eff_sig"] == pytest.approx(d_eff, abs=1e-9) and d_eff > 0.05
    assert got["r_bkg_ratio"] == pytest.approx(ratio, rel=1e-9) and ratio > 1.5
    same = working_point_gains(y, ref, ref, 0.9)
    assert same["d_eff_sig"] == 0 and same["r_bkg_ratio"] == 1
    perfect = working_point_gains(y, y + 0.1 * rng.random(800), ref, 0.9)
    assert perfect["r_bkg_lower_bound"] and perfect["r_bkg_ratio"] == pytest.approx(got["ref_bkg_eff"] * 400 / 1)


def test_compare_classifiers_table():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    scores = {"BDT": rng.random(500), "Other": np.clip(y * 0.6 + 0.4 * rng.random(500), 0, 1)}
    table = compare_classifiers(y, scores)
    for name, s in scores.items():
        assert table.loc[name, "auc"] == pytest.approx(roc_auc_score(y, s))
        assert table.loc[name, "accuracy"] == pytest.approx(np.mean((s > 0.5) == (y == 1)))
    assert np.isnan(table.loc["BDT", "d_eff_sig"]) and table.loc["Other", "d_eff_sig"] > 0
    assert list(format_table(table).columns) == ["acc.", "AUC", "Δε_sig", "ΔR_bkg"]
    with pytest.raises(ValueError, match="reference"):
        compare_classifiers(y, {"A": scores["BDT"]})


def test_run_task_all_models_few_epochs(lcd):
    splits = load_task(lcd, "GammaPi0")
    table, scores, seconds = run_task(splits, epochs=1, cell_epochs=1)
    assert list(table.index) == ["BDT", "FeatureDNN", "CellDNN"] and set(seconds) == set(scores)
    assert all(len(s) == len(splits["test"]) and np.isfinite(s).all() for s in scores.values())


def test_cut_that_removes_a_class_is_an_error(lcd):
    paper_cut = Task("Ele", "ChPi", max_hcal_ecal=0.025)  # no simulated pion is that EM-like
    with pytest.raises(ValueError, match="no ChPi events left"):
        load_task(lcd, paper_cut, cells=False)
    with pytest.raises(ValueError, match="unknown task"):
        load_task(lcd, "MuPi")
    assert set(TASKS) == {"GammaPi0", "EPi"}


def test_cli(lcd, tmp_path, capsys):
    assert main(["--data", str(lcd), "--task", "EPi", "--models", "BDT", "--csv", str(tmp_path / "t.csv")]) == 0
    assert "BDT" in capsys.readouterr().out and (tmp_path / "t.csv").exists()
    assert main(["--data", str(tmp_path / "nope"), "--models", "BDT"]) == 2
    assert "nope" in capsys.readouterr().err
