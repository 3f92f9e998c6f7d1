"""dlkit.sparse: SparseTensor densification equals np.histogramdd, HDF5 round trips, Densify in the generator."""

import pickle

import h5py
import numpy as np
import pytest

from dlkit.sparse import Densify, SparseTensor, bin_indices, histogram_edges


def _events(seed=1, n=12, dim=3, lo=-1.0, hi=11.0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        m = int(rng.integers(0, 300)) if i else 0  # event 0 is empty
        c = rng.uniform(lo, hi, (m, dim)).astype(np.float32)
        c[: m // 4] = np.round(c[: m // 4])  # many points exactly on bin edges, incl. the last edge
        v = rng.exponential(1.0, m).astype(np.float32)
        out.append((c, v))
    return out


@pytest.mark.parametrize("bins, region", [
    ((10, 7, 13), ((0, 10), (0, 10), (-0.5, 9.5))),          # uniform, points on edges and outside
    ((1, 4, 30), ((0, 10), (2.5, 2.5), (0, 10))),            # a degenerate range is widened like numpy's
    ((5, 5, 5), ((-1, 11), (-1, 11), (-1, 11))),             # everything inside, last edge closed
])
def test_dense_equals_histogramdd(bins, region):
    events = _events()
    st = SparseTensor.from_events(events)
    dense = st.dense(bins=bins, region=region)
    assert dense.shape == (len(events), *bins) and dense.dtype == np.float64
    for i, (c, v) in enumerate(events):
        ref, _ = np.histogramdd(c, bins=bins, range=region, weights=v)
        np.testing.assert_array_equal(dense[i], ref)  # exact: same bins, same float64 summation order


def test_dense_non_uniform_edges_projection_and_auto_range():
    events = _events(seed=2)
    st = SparseTensor.from_events(events)
    edges = [np.array([0.0, 1.0, 3.0, 7.0, 10.0]), np.array([-1.0, 0.0, 5.0, 11.0])]
    proj = st.dense(bins=edges, axes=(0, 2))
    for i, (c, v) in enumerate(events):
        np.testing.assert_array_equal(proj[i], np.histogramdd(c[:, [0, 2]], bins=edges, weights=v)[0])
    # no region: one event gets exactly histogramdd's automatic (min, max) range
    for i in (1, 2, 3):
        c, v = events[i]
        np.testing.assert_array_equal(st.dense(events=[i], bins=(6, 5, 4))[0],
                                      np.histogramdd(c, (6, 5, 4), weights=v)[0])


def test_bin_indices_match_searchsorted_at_edges():
    e = np.linspace(0.1, 0.7, 7)  # edges that are not exactly representable
    x = np.concatenate([e, np.nextafter(e, -1), np.nextafter(e, 2), [np.nan, -np.inf, np.inf]])[:, None]
    idx, inside = bin_indices(x, [e])
    ref = np.searchsorted(e, x[:, 0], side="right") - 1
    ref[x[:, 0] == e[-1]] = len(e) - 2
    ref_inside = (ref >= 0) & (ref < len(e) - 1)
    np.testing.assert_array_equal(inside, ref_inside)
    np.testing.assert_array_equal(idx[inside, 0], ref[ref_inside])


def test_padded_round_trip_access_and_selection():
    events = _events(seed=3, n=6)
    st = SparseTensor.from_events(events, shape=(4, 4, 4), region=((0, 10),) * 3, axes=("x", "y", "z"))
    c, v, n = st.to_padded(capacity=400)
    assert c.shape == (6, 400, 3) and v.shape == (6, 400) and n.tolist() == [len(e[1]) for e in events]
    assert np.all(v[0] == 0) and np.all(c[np.arange(400)[None, :] >= n[:, None]] == 0)
    back = SparseTensor.from_padded(c, v, n)
    np.testing.assert_array_equal(back.dense(bins=(4, 4, 4), region=((0, 10),) * 3), st.dense())
    np.testing.assert_array_equal(st.C[2], events[2][0])
    np.testing.assert_array_equal(st.V[4], events[4][1])
    sub = st[[4, 2]]
    assert len(sub) == 2 and sub.shape == (4, 4, 4)
    np.testing.assert_array_equal(sub.dense(), st.dense(events=[4, 2]))
    with pytest.raises(ValueError, match="more than the capacity"):
        st.to_padded(capacity=10)


def test_h5_round_trip_padded_and_vlen(tmp_path):
    events = _events(seed=4, n=8)
    region = ((0, 10), (0, 10), (0, 10))
    st = SparseTensor.from_events(events, shape=(5, 6, 7), region=region, axes=("x", "y", "z"))
    path = tmp_path / "t.3d.h5"
    st.write_h5(path, "images3D", capacity=512)
    with h5py.File(path) as f:
        g = f["images3D"]
        assert g["C"].shape == (8, 512, 3) and g["C"].dtype == np.float32 and g["V"].shape == (8, 512)
        assert g["C"].chunks[0] <= 16 and g["C"].compression == "gzip" and g["N"].dtype == np.int32
    back = SparseTensor.read_h5(path)
    assert back.shape == (5, 6, 7) and back.region == region and back.axes == ("x", "y", "z")
    np.testing.assert_array_equal(back.dense(), st.dense())
    np.testing.assert_array_equal(SparseTensor.read_h5(path, events=[5, 1]).dense(), st.dense(events=[1, 5]))
    # the variable-length form (one flat array per event)
    vpath = tmp_path / "vlen.h5"
    with h5py.File(vpath, "w") as f:
        g = f.create_group("images3D")
        g.create_dataset("C", data=np.array([c.reshape(-1) for c, _ in events], dtype=object),
                         dtype=h5py.vlen_dtype(np.float32))
        g.create_dataset("V", data=np.array([v for _, v in events], dtype=object), dtype=h5py.vlen_dtype(np.float32))
    vl = SparseTensor.read_h5(vpath)
    np.testing.assert_array_equal(vl.dense(bins=(5, 6, 7), region=region), st.dense())
    with pytest.raises(KeyError, match="nogroup"):
        SparseTensor.read_h5(path, "nogroup")


def test_densify_preprocess_matches_histogramdd():
    events = _events(seed=5, n=5)
    c, v, n = SparseTensor.from_events(events).to_padded(capacity=320)
    bins, region = (8, 3, 5), ((0, 10), (0, 10), (0, 10))
    pre = pickle.loads(pickle.dumps(Densify(bins, region, output="img")))
    out = pre({"C": c, "V": v, "N": n, "E": np.arange(5.0)})
    assert set(out) == {"E", "img"} and out["img"].dtype == np.float32
    for i, (ci, vi) in enumerate(events):
        np.testing.assert_allclose(out["img"][i], np.histogramdd(ci, bins, range=region, weights=vi)[0], rtol=1e-6)
    # 2-D projection on (x, z), counts from the values, sparse arrays kept
    out2 = Densify((4, 4), ((0, 10), (0, 10)), counts=None, axes=(0, 2), keep=True)({"C": c, "V": v})
    assert set(out2) == {"C", "V", "image3D"}
    for i, (ci, vi) in enumerate(events):
        np.testing.assert_allclose(out2["image3D"][i], np.histogramdd(ci[:, [0, 2]], (4, 4), range=((0, 10),) * 2,
                                                                      weights=vi)[0], rtol=1e-6)
    with pytest.raises(KeyError, match="'N'"):
        pre({"C": c, "V": v})
    with pytest.raises(ValueError, match="region"):
        Densify((2, 2), None)


def test_histogram_edges_errors():
    with pytest.raises(ValueError, match="positive integer"):
        histogram_edges((0, 3), ((0, 1), (0, 1)))
    with pytest.raises(ValueError, match="lower bound"):
        histogram_edges((2, 3), ((1, 0), (0, 1)))
    with pytest.raises(ValueError, match="increasing"):
        histogram_edges([np.array([0.0, 2.0, 1.0])], None)


def test_densify_in_the_generator(tmp_path, monkeypatch):
    """Sparse truth files read by MultiClassGenerator with Densify in the readers, then the cached epoch."""
    from dlkit.generators import MultiClassGenerator, make_samples_from_dirs

    monkeypatch.setenv("DLKIT_CACHE_DIR", str(tmp_path / "cache"))
    region = ((0, 10),) * 3
    truth = {}
    for k, name in enumerate(("a", "b")):
        events = _events(seed=10 + k, n=20)
        (tmp_path / name).mkdir()
        st = SparseTensor.from_events(events, shape=(6, 6, 6), region=region)
        st.write_h5(tmp_path / name / f"{name}_0.3d.h5", capacity=300)
        with h5py.File(tmp_path / name / f"{name}_0.3d.h5", "a") as f:
            f["Energy"] = np.arange(20, dtype=np.float32) + 100 * k
        truth[name] = st.dense(dtype=np.float32)
    keys = {"C": "images3D/C", "V": "images3D/V", "N": "images3D/N", "Energy": "Energy"}
    samples = make_samples_from_dirs(tmp_path, keys, classes=["a", "b"], pattern="*.3d.h5")
    with MultiClassGenerator(samples, 8, preprocess=Densify((6, 6, 6), region), cache=True, n_workers=1,
                             seed=3) as gen:
        assert gen.shapes["image3D"] == (None, 6, 6, 6) and "C" not in gen.shapes
        for _epoch in range(2):  # the first builds the cache, the second reads it
            seen = 0
            for batch in gen:
                for img, e in zip(batch["image3D"], batch["Energy"]):
                    name, i = ("a", int(e)) if e < 100 else ("b", int(e) - 100)
                    np.testing.assert_allclose(img, truth[name][i], rtol=1e-6)
                    seen += 1
            assert seen == 40
