"""lartpcdnn.pid_study: chunked simulate+process cache, splits, the topology bound, a tiny end-to-end run."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lartpcdnn.pid_study import (
    batches,
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
        assert c["Eff1pctFake_lower"] <= c["Eff1pctFake"] <= c["Eff1pctFake_upper"]  # Clopper-Pearson, 2 events
        assert c["Eff1pctFake_upper"] - c["Eff1pctFake_lower"] > 0.4
    assert "bound" in r["classes"]["muon"] and "muon_pionPlus_AUC" in r["pairs"]
    assert "| muon |" in markdown(r) and "[0." in markdown(r)


def test_batches_every_event_once_per_epoch_flip_and_order():
    """The training feed: each epoch every selected event exactly once (a new seeded order), float32 views;
    the flip mirrors the ticks of both views of the same events; unshuffled, the events come in ``idx`` order."""
    rng = np.random.default_rng(0)
    n = 23
    x = {"induction": rng.normal(size=(n, 3, 5)).astype(np.float16),
         "collection": rng.normal(size=(n, 3, 5)).astype(np.float16)}
    y = np.eye(n, dtype=np.float32)  # one column per event: y names the event
    idx = np.array([0, 2, 3, 5, 7, 8, 11, 13, 17, 19, 22])
    feed = batches(x, y, idx, 4, True, seed=3, flip=True)
    orders = []
    for _ in range(3):
        seen = []
        for i in range(len(feed)):
            inputs, labels = feed[i]
            events = np.argmax(labels, axis=1)
            seen.extend(events)
            mirrored = np.array([not np.array_equal(inputs["collection"][j], x["collection"][e].astype(np.float32))
                                 for j, e in enumerate(events)])
            for k in ("induction", "collection"):
                assert inputs[k].dtype == np.float32
                ref = x[k][events].astype(np.float32)
                ref[mirrored] = ref[mirrored][:, :, ::-1]
                np.testing.assert_array_equal(inputs[k], ref)
        assert sorted(seen) == idx.tolist()
        orders.append(seen)
        feed.on_epoch_end()
    assert orders[0] != orders[1]
    plain = batches(x, y, idx, 4, False, seed=3)
    assert np.concatenate([np.argmax(plain[i][1], axis=1) for i in range(len(plain))]).tolist() == idx.tolist()


def test_tiny_run_without_tensorflow(tmp_path):
    """The study runs on JAX or torch (the current backend if it is one) where TensorFlow cannot be imported."""
    current = os.environ.get("KERAS_BACKEND")
    backend = next((b for b in ((current,) if current in ("jax", "torch") else ("jax", "torch"))
                    if importlib.util.find_spec(b) is not None), None)
    if backend is None:
        pytest.skip("neither JAX nor torch is installed (pip install '.[jax]' or '.[torch]')")
    code = (
        "import sys; sys.modules['tensorflow'] = None  # no TensorFlow in this Python\n"
        "from lartpcdnn.pid_study import run\n"
        f"r = run(['electron', 'muon'], events_per_class=8, epochs=1, batch=4, filters=2, depth=1, width=8,"
        f" chunk=4, workers=1, cache={str(tmp_path)!r}, progress=False, flip=True)\n"
        "assert r['events'] == {'train': 12, 'validation': 2, 'test': 2}, r['events']\n"
        "assert 'tensorflow' not in sys.modules or sys.modules['tensorflow'] is None\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, KERAS_BACKEND=backend,
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
