"""lartpcdnn.preprocess: down-sampling, crop and normalisation against plain numpy, and in the generator."""

import pickle

import h5py
import numpy as np
import pytest

from lartpcdnn.preprocess import ProcessWireData, best_window, crop, downsample, tanh_log


def _raw(n=3, wires=24, ticks=512, seed=0):
    """Integer-valued ADC-like data in float16 (as the LArIAT files), a bright blob at a random time."""
    rng = np.random.default_rng(seed)
    x = np.rint(rng.normal(0, 3, (n, 2, wires, ticks))).astype(np.float16)
    for i in range(n):
        t0 = rng.integers(0, ticks - 40)
        x[i, :, 3:9, t0:t0 + 40] += np.float16(60)
    return x


def _reference(x, factor, window, scale):
    """The obvious (slow) numpy version of DLKit's ProcessWireData."""
    y = x.astype(np.float64).reshape(*x.shape[:-1], x.shape[-1] // factor, factor).sum(-1)
    out = []
    for ev in y:
        totals = [ev[..., s:s + window].sum() for s in range(y.shape[-1] - window + 1)]
        s = int(np.argmax(totals))
        out.append(ev[..., s:s + window])
    out = np.stack(out)
    return np.tanh(np.sign(out) * np.log(np.abs(out) / scale + 1) / 2)


def test_downsample_is_exact_on_adc_counts():
    x = _raw()
    ref = x.astype(np.float64).reshape(3, 2, 24, 64, 8).sum(-1)
    y = downsample(x, 8)
    assert y.dtype == np.float32 and y.shape == (3, 2, 24, 64)
    np.testing.assert_array_equal(y, ref)  # integer sums: float32 accumulation is exact
    with pytest.raises(ValueError, match="multiple of the down-sampling factor 7"):
        downsample(x, 7)


def test_best_window_and_crop_against_a_scan():
    rng = np.random.default_rng(3)
    y = rng.normal(0, 1, (6, 2, 5, 100))
    y[2, :, :, 70:80] += 5  # a clear maximum near the end
    start = best_window(y, 16)
    for i in range(6):
        totals = [y[i, ..., s:s + 16].sum() for s in range(100 - 16 + 1)]
        assert start[i] == int(np.argmax(totals))
    assert 64 <= start[2] <= 70
    c = crop(y, start, 16)
    for i in range(6):
        np.testing.assert_array_equal(c[i], y[i, ..., start[i]:start[i] + 16])
    assert best_window(np.zeros((2, 1, 10)), 4).tolist() == [0, 0]  # ties: the first window
    with pytest.raises(ValueError, match="window 11"):
        best_window(y[:, :, :, :10], 11)


def test_tanh_log_is_dlkits_formula_with_a_scale():
    x = np.array([-1000.0, -3.0, 0.0, 2.5, 50.0, 1e4], np.float32)
    np.testing.assert_allclose(tanh_log(x), np.tanh(np.sign(x) * np.log1p(np.abs(x)) / 2), rtol=1e-6)
    np.testing.assert_allclose(tanh_log(x, 50.0), x / (np.abs(x) + 100.0), rtol=1e-5)  # tanh(ln(y)/2) = (y-1)/(y+1)
    y = x.copy()
    assert tanh_log(y, 2.0, out=y) is y


@pytest.mark.parametrize("factor, window, scale", [(8, 32, 50.0), (4, 100, 10.0), (8, 64, 1.0)])
def test_process_wire_data_against_reference(factor, window, scale):
    x = _raw(ticks=512)
    pre = pickle.loads(pickle.dumps(ProcessWireData(factor, window, scale, dtype="float32", keep_start=True)))
    out = pre({"features": x, "Energy": np.arange(3, dtype=np.float32)})
    assert set(out) == {"Energy", "induction", "collection", "window_start"}
    ref = _reference(x, factor, window, scale)
    np.testing.assert_allclose(out["induction"], ref[:, 0], atol=2e-6)
    np.testing.assert_allclose(out["collection"], ref[:, 1], atol=2e-6)
    half = ProcessWireData(factor, window, scale)({"features": x})
    assert half["collection"].dtype == np.float16
    np.testing.assert_allclose(half["collection"], ref[:, 1], atol=1e-3)


def test_process_wire_data_errors():
    with pytest.raises(KeyError, match="'features'"):
        ProcessWireData()({"images": np.zeros((1, 2, 4, 64), np.float16)})
    with pytest.raises(ValueError, match=r"\(events, 2 views, wires, ticks\)"):
        ProcessWireData()({"features": np.zeros((1, 3, 4, 64), np.float16)})
    with pytest.raises(ValueError, match="scale"):
        ProcessWireData(scale=0)


def test_in_generator_first_and_cached_epochs_equal_direct_processing(tmp_path, monkeypatch):
    """The readers run ProcessWireData; the cache holds its output; read_all gives the same arrays."""
    from dlkit.generators import MultiClassGenerator, Select, make_samples_from_dirs

    monkeypatch.setenv("DLKIT_CACHE_DIR", str(tmp_path / "cache"))
    raw = {}
    for k, name in enumerate(("muon", "electron")):
        (tmp_path / name).mkdir()
        x = _raw(n=10, wires=16, ticks=256, seed=k)
        raw[name] = x
        with h5py.File(tmp_path / name / f"{name}_0.2d.h5", "w") as f:
            f.create_dataset("features", data=x, chunks=(1, *x.shape[1:]), compression="gzip", shuffle=True)
            f["Energy"] = np.arange(10, dtype=np.float32) + 10 * k
    pre = ProcessWireData(factor=4, window=32, scale=50.0, dtype="float32")
    expected = {name: pre({"features": x}) for name, x in raw.items()}
    samples = make_samples_from_dirs(tmp_path, ["features", "Energy"], classes=["muon", "electron"],
                                     pattern="*.2d.h5")
    with MultiClassGenerator(samples, 6, preprocess=pre, postprocess=Select(["induction", "collection", "Energy"]),
                             cache=True, n_workers=2, seed=1) as gen:
        assert gen.shapes["induction"] == (None, 16, 32) and "features" not in gen.shapes
        for _epoch in range(2):
            n = 0
            for (ind, col, energy), in gen:
                for a, b, e in zip(ind, col, energy):
                    name, i = ("muon", int(e)) if e < 10 else ("electron", int(e) - 10)
                    np.testing.assert_allclose(a, expected[name]["induction"][i], atol=1e-6)
                    np.testing.assert_allclose(b, expected[name]["collection"][i], atol=1e-6)
                    n += 1
            assert n == 20
        assert gen.cache_path.exists()
        everything = gen.read_all()
        np.testing.assert_allclose(everything["collection"][:10], expected["muon"]["collection"], atol=1e-6)


def test_mirror_drift_flips_whole_events_along_the_ticks():
    from lartpcdnn.data import MirrorDrift

    rng = np.random.default_rng(3)
    views = {"induction": rng.random((64, 5, 7), dtype=np.float32),
             "collection": rng.random((64, 5, 7), dtype=np.float32)}
    orig = {k: v.copy() for k, v in views.items()}
    out = MirrorDrift(("induction", "collection"), seed=1)(dict(views))
    flipped = [np.array_equal(out["induction"][i], orig["induction"][i, :, ::-1]) for i in range(64)]
    same = [np.array_equal(out["induction"][i], orig["induction"][i]) for i in range(64)]
    assert all(f != s for f, s in zip(flipped, same))  # each event either mirrored or untouched
    assert 16 < sum(flipped) < 48
    for i in range(64):  # both views of an event together
        assert np.array_equal(out["collection"][i], orig["collection"][i, :, ::-1] if flipped[i]
                              else orig["collection"][i])
    np.testing.assert_allclose(out["collection"].sum(axis=(1, 2)), orig["collection"].sum(axis=(1, 2)), rtol=1e-6)
    assert np.array_equal(views["induction"], orig["induction"])  # the generator's batch is not written to
