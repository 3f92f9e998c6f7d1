"""lartpcdnn.pid_study: chunked simulate+process cache, splits, the topology bound, a tiny end-to-end run."""

import numpy as np
import pytest

from lartpcdnn.pid_study import (
    load_processed,
    markdown,
    run,
    simulate_processed,
    split_indices,
    through_going,
    topology_ceiling,
)
from lartpcdnn.preprocess import ProcessWireData
from lartpcdnn.simulate import LArSimConfig, simulate_events


def test_through_going_follows_the_physics():
    cfg = LArSimConfig()
    # 1 GeV muons (range ~4 m) almost all cross the 90 cm TPC; 0.1 GeV muons (range ~30 cm) all stop
    fast = simulate_events("muon", 16, np.random.default_rng(0), cfg, energies=1.0)
    slow = simulate_events("muon", 16, np.random.default_rng(1), cfg, energies=0.1)
    assert through_going(fast, cfg).mean() > 0.6
    assert not through_going(slow, cfg).any()


def test_split_is_per_class_disjoint_and_seeded():
    labels = np.repeat(np.arange(3), 20)
    a = split_indices(labels, seed=1)
    b = split_indices(labels, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert sorted(np.concatenate(a).tolist()) == list(range(60))
    assert [len(x) for x in a] == [42, 6, 12]
    assert all(np.bincount(labels[x]).tolist() == [len(x) // 3] * 3 for x in a)


def test_topology_ceiling():
    names = ["electron", "muon", "pionPlus"]
    labels = np.repeat(np.arange(3), 100)
    through = np.zeros(300, bool)
    through[100:180] = True   # 80 % of muons through-going
    through[200:240] = True   # 40 % of pions
    c = topology_ceiling(labels, through, names, fake_rate=0.01)
    assert c["muon"]["through_going"] == pytest.approx(0.8) and c["pionPlus"]["through_going"] == pytest.approx(0.4)
    # muon: 1 % of 200 background events = 2 may pass, of 40 look-alike pions: keep 5 % of through-going muons
    assert c["muon"]["bound"] == pytest.approx(0.2 + 0.8 * 2 / 40)
    assert c["pionPlus"]["bound"] == pytest.approx(0.6 + 0.4 * 2 / 80)
    assert "bound" not in c.get("electron", {})


def test_chunks_are_cached_and_reused(tmp_path):
    pre = ProcessWireData(16, 128, 50.0)
    d = simulate_processed(["electron", "muon"], events_per_class=6, chunk=3, pre=pre, cache=tmp_path,
                           workers=1, progress=False)
    files = sorted(p.name for p in d.glob("*.npz"))
    assert files == ["electron_0.npz", "electron_1.npz", "muon_0.npz", "muon_1.npz"]
    mtimes = {p: p.stat().st_mtime_ns for p in d.glob("*.npz")}
    simulate_processed(["electron", "muon"], events_per_class=6, chunk=3, pre=pre, cache=tmp_path, workers=1,
                       progress=False)
    assert {p: p.stat().st_mtime_ns for p in d.glob("*.npz")} == mtimes
    data = load_processed(d, ["electron", "muon"], 5, chunk=3)
    assert data["collection"].shape == (10, 240, 128) and data["collection"].dtype == np.float16
    assert data["label"].tolist() == [0] * 5 + [1] * 5
    assert not data["through_going"][:5].any()  # showers have no through-going primary track


def test_tiny_run_end_to_end(tmp_path):
    r = run(["electron", "muon", "pionPlus"], events_per_class=10, epochs=1, batch=8, filters=2, depth=1, width=8,
            chunk=5, workers=1, cache=tmp_path, progress=False)
    assert r["events"] == {"train": 21, "validation": 3, "test": 6}
    for name in ("electron", "muon", "pionPlus"):
        c = r["classes"][name]
        assert 0 <= c["AUC"] <= 1 and 0 <= c["Eff1pctFake"] <= 1 and c["n_signal"] == 2
    assert "bound" in r["classes"]["muon"] and "muon_pionPlus_AUC" in r["pairs"]
    assert "| muon |" in markdown(r)
