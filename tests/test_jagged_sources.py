"""Jagged sources: collections of points from ROOT (TTree, RNTuple), parquet and HDF5 (CSR, vlen), padded,
clipped and masked by the generator's readers, against an independent reference.

The files are written here with uproot, awkward, pyarrow and h5py directly; the reference reads them back
with the same libraries and pads every event with a plain numpy loop (sort by energy, descending, stable;
keep the first MaxPoints), then each batch of two shuffled, class-mixed epochs is compared event by event
through the generator's provenance arrays.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from dlkit.generators import Collection, DataError, MultiClassGenerator, SampleSpec

uproot = pytest.importorskip("uproot")
ak = pytest.importorskip("awkward")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

FIELDS = ["hit_x", "hit_y", "hit_z", "hit_e"]
M = 24  # max points: some events have more, some none
CLASSES = ["Gamma", "Pi0"]


def make_events(seed: int, n: int) -> dict:
    """Points with known content: energies unique per event (so the sort is unambiguous) and ties in
    the other fields."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(14, n).astype(np.int64)
    counts[::17] = 0
    counts[5::11] += 20  # over M
    total = int(counts.sum())
    cols = {f: rng.normal(size=total).astype(np.float32) for f in FIELDS[:3]}
    cols["hit_e"] = rng.permutation(total).astype(np.float32) / 7.0
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    energy = rng.uniform(10, 100, n).astype(np.float32)
    img = rng.random((n, 3, 4), dtype=np.float32)
    return {"cols": cols, "offsets": offsets, "energy": energy, "img": img}


def write_root(path, ev, rntuple=False, basket=40):
    counts = np.diff(ev["offsets"])
    with uproot.recreate(path) as f:
        if rntuple:
            data = {k: ak.unflatten(v, counts) for k, v in ev["cols"].items()}
            f["events"] = dict(data, energy=ev["energy"], img=ev["img"])
            return
        f.mktree("events", {**{k: "var * float32" for k in FIELDS}, "energy": "float32",
                            "img": ("float32", (3, 4))})
        for a in range(0, len(counts), basket):
            o = ev["offsets"]
            sl = {k: ak.unflatten(v[o[a]:o[min(a + basket, len(counts))]], counts[a:a + basket])
                  for k, v in ev["cols"].items()}
            f["events"].extend(dict(sl, energy=ev["energy"][a:a + basket], img=ev["img"][a:a + basket]))


def write_parquet(path, ev, nulls=False):
    counts = np.diff(ev["offsets"])
    offsets = pa.array(ev["offsets"].astype(np.int32))
    if nulls:  # the events without points as null lists, not empty ones
        offsets = pa.array(ev["offsets"].astype(np.int32), mask=np.concatenate([counts == 0, [False]]))
    cols = {k: pa.ListArray.from_arrays(offsets, pa.array(v)) for k, v in ev["cols"].items()}
    if nulls:
        assert cols["hit_x"].null_count == int((counts == 0).sum()) > 0
    img = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(pa.array(ev["img"].ravel()), 4), 3)
    table = pa.table(dict(cols, energy=pa.array(ev["energy"]), img=img))
    pq.write_table(table, path, row_group_size=50)


def write_hdf5(path, ev, layout="csr"):
    with h5py.File(path, "w") as f:
        f["energy"] = ev["energy"]
        f["img"] = ev["img"]
        o = ev["offsets"]
        for k, v in ev["cols"].items():
            if layout == "csr":
                g = f.create_group(k)
                g["values"] = v
                g["offsets"] = o
            else:
                ds = f.create_dataset(k, (len(o) - 1,), dtype=h5py.vlen_dtype(np.float32))
                for i in range(len(o) - 1):
                    ds[i] = v[o[i]:o[i + 1]]


WRITERS = {
    "root": (".root", write_root),
    "rntuple": (".root", lambda p, ev: write_root(p, ev, rntuple=True)),
    "parquet": (".parquet", lambda p, ev: write_parquet(p, ev, nulls=True)),
    "hdf5-csr": (".h5", write_hdf5),
    "hdf5-vlen": (".h5", lambda p, ev: write_hdf5(p, ev, "vlen")),
}


def reference_read(path):
    """Every event's points read back independently: ``[(n_i, 4) array, ...]``, energy, img."""
    if path.endswith(".root"):
        t = uproot.open(path)["events"]
        a = t.arrays(FIELDS + ["energy", "img"], library="ak")
        pts = [np.stack([np.asarray(a[f][i], np.float32) for f in FIELDS], 1).reshape(-1, 4)
               for i in range(len(a))]
        return pts, ak.to_numpy(a["energy"]), ak.to_numpy(a["img"])
    if path.endswith(".parquet"):
        tab = pq.read_table(path).to_pydict()
        pts = [np.array([tab[f][i] or [] for f in FIELDS], np.float32).T.reshape(-1, 4)
               for i in range(len(tab["energy"]))]
        return pts, np.array(tab["energy"], np.float32), np.array(tab["img"], np.float32)
    with h5py.File(path) as f:
        if isinstance(f["hit_x"], h5py.Group):
            o = f["hit_x/offsets"][:]
            vals = [f[k]["values"][:] for k in FIELDS]
            pts = [np.stack([v[o[i]:o[i + 1]] for v in vals], 1) for i in range(len(o) - 1)]
        else:
            pts = [np.stack([f[k][i] for k in FIELDS], 1).reshape(-1, 4) for i in range(len(f["energy"]))]
        return pts, f["energy"][:], f["img"][:]


def reference_pad(pts):
    """numpy, event by event: sort by hit_e descending (stable), keep M, pad with 0."""
    out = np.zeros((len(pts), M, 4), np.float32)
    mask = np.zeros((len(pts), M), bool)
    for i, p in enumerate(pts):
        p = p[np.argsort(-p[:, 3], kind="stable")][:M]
        out[i, :len(p)] = p
        mask[i, :len(p)] = True
    return out, mask, np.array([len(p) for p in pts], np.int32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two classes of two files each, in every format (the same events in each format)."""
    root = tmp_path_factory.mktemp("jagged")
    made = {}
    for fmt, (ext, write) in WRITERS.items():
        made[fmt] = []
        for ci, cls in enumerate(CLASSES):
            for j in range(2):
                path = root / fmt / cls / f"{cls}_{j}{ext}"
                path.parent.mkdir(parents=True, exist_ok=True)
                write(str(path), make_events(100 * ci + j, 130 + 20 * j))
                made[fmt].append((str(path), cls))
    return made


HITS = Collection(FIELDS, max_points=M, sort_by="hit_e")


def samples_of(files, keys=None):
    keys = keys or {"hits": HITS, "energy": "energy"}
    return [SampleSpec(p, keys, cls) for p, cls in files]


def check_epochs(gen, samples, epochs=2, image=False):
    refs = {}
    for s in samples:
        pts, energy, img = reference_read(s.file)
        refs[s.file] = (*reference_pad(pts), energy, img)
    n_total = sum(len(r[3]) for r in refs.values())
    orders = []
    for _ in range(epochs):
        seen = []
        for b in gen:
            assert b["hits"].dtype == np.float32 and b["hits_mask"].dtype == bool
            assert b["hits_count"].dtype == np.int32
            for e in np.unique(b["_entry"]):
                rows = np.flatnonzero(b["_entry"] == e)
                ev = b["_event"][rows]
                pts, mask, count, energy, img = refs[samples[e].file]
                np.testing.assert_array_equal(b["hits"][rows], pts[ev])
                np.testing.assert_array_equal(b["hits_mask"][rows], mask[ev])
                np.testing.assert_array_equal(b["hits_count"][rows], count[ev])
                np.testing.assert_array_equal(b["energy"][rows], energy[ev])
                if image:
                    np.testing.assert_array_equal(b["img"][rows], img[ev])
                assert (b["class_index"][rows] == CLASSES.index(samples[e].class_name)).all()
            seen.append(b["_entry"].astype(np.int64) * 10_000 + b["_event"])
        seen = np.concatenate(seen)
        assert len(seen) == n_total and len(np.unique(seen)) == n_total  # every event once per epoch
        orders.append(seen)
    assert not np.array_equal(orders[0], orders[1])  # reshuffled


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_batches_equal_independent_reference(files, fmt, tmp_path):
    samples = samples_of(files[fmt])
    with MultiClassGenerator(samples, 64, n_workers=2, seed=3, provenance=True, chunk_size=32,
                             cache=tmp_path / "cache") as gen:
        assert gen.shapes["hits"] == (None, M, 4) and gen.shapes["hits_mask"] == (None, M)
        b = gen[0]
        assert len(np.unique(b["class_index"])) == 2  # classes mixed in a batch
        check_epochs(gen, samples)  # the second epoch is read from the cache


@pytest.mark.parametrize("fmt", ["root", "parquet", "hdf5-csr"])
def test_image_and_collection_in_one_sample(files, fmt):
    samples = samples_of(files[fmt], {"hits": HITS, "energy": "energy", "img": "img"})
    with MultiClassGenerator(samples, 50, n_workers=2, seed=1, provenance=True) as gen:
        assert gen.shapes["img"] == (None, 3, 4)
        check_epochs(gen, samples, image=True)


def test_formats_side_by_side(files):
    """Gamma from ROOT, Pi0 from parquet and HDF5, in one generator."""
    mixed = files["root"][:2] + files["parquet"][2:3] + files["hdf5-csr"][3:]
    samples = samples_of(mixed)
    with MultiClassGenerator(samples, 64, n_workers=2, seed=2, provenance=True) as gen:
        check_epochs(gen, samples)


def test_unsorted_collection_keeps_file_order(files):
    coll = Collection(FIELDS, max_points=5)
    samples = samples_of(files["root"][:1], {"hits": coll})
    with MultiClassGenerator(samples, 40, n_workers=1, shuffle=False, provenance=True) as gen:
        data = gen.read_all()
    pts, _, _ = reference_read(samples[0].file)
    for i, p in enumerate(pts):
        k = min(len(p), 5)
        np.testing.assert_array_equal(data["hits"][i, :k], p[:k])
        assert not data["hits"][i, k:].any() and data["hits_mask"][i].sum() == k


def test_filter_on_root_and_parquet(files):
    from dlkit.generators import EnergyCut

    for fmt in ("root", "parquet"):
        s = samples_of(files[fmt][:1])[0].with_filter(EnergyCut(30.0, 70.0))
        with MultiClassGenerator([s], 32, n_workers=1, provenance=True) as gen:
            data = gen.read_all(provenance=True)
        _, energy, _ = reference_read(s.file)
        assert np.array_equal(np.sort(data["_event"]), np.flatnonzero((energy >= 30) & (energy < 70)))


# ---------------------------------------------------------------------------------------------- bad input
def one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_missing_branch_and_column(files):
    bad = Collection(["hit_x", "hit_q"], max_points=4)
    for fmt in ("root", "parquet", "hdf5-csr"):
        with pytest.raises(DataError) as exc:
            MultiClassGenerator(samples_of(files[fmt][:1], {"hits": bad}), 8, n_workers=1)
        text = one_line(exc)
        assert "hit_q" in text and os.path.basename(files[fmt][0][0]) in text


def test_fields_disagreeing_in_length(tmp_path):
    ev = make_events(1, 60)
    path = tmp_path / "bad.h5"
    write_hdf5(str(path), ev)
    with h5py.File(path, "a") as f:  # event 200 of hit_y has one point more (beyond the sampled events: read time)
        o = f["hit_y/offsets"][:]
        o[40:] += 1
        del f["hit_y/offsets"], f["hit_y/values"]
        f["hit_y/offsets"] = o
        f["hit_y/values"] = np.zeros(o[-1], np.float32)
    with pytest.raises(DataError) as exc:
        MultiClassGenerator([SampleSpec(str(path), {"hits": HITS}, "a")], 8, n_workers=1)
    text = one_line(exc)
    assert "'hit_y'" in text and "event 39" in text and "bad.h5" in text
    # ROOT: two branches written with different counts
    counts = np.diff(ev["offsets"])
    with uproot.recreate(tmp_path / "bad.root") as f:
        f["events"] = {"hit_x": ak.unflatten(ev["cols"]["hit_x"], counts),
                       "hit_e": ak.unflatten(np.zeros(int(counts.sum()) + 1, np.float32), np.r_[counts[0] + 1,
                                                                                                counts[1:]])}
    with pytest.raises(DataError) as exc:
        MultiClassGenerator([SampleSpec(str(tmp_path / "bad.root"), {"h": Collection(["hit_x", "hit_e"], 4)},
                                        "a")], 8, n_workers=1)
    assert "'hit_e'" in one_line(exc) and "event 0" in one_line(exc)


def test_fields_disagreeing_after_the_sampled_events(tmp_path):
    """A disagreement beyond the events checked at start is reported by the reader, naming the event."""
    ev = make_events(2, 600)
    path = tmp_path / "late.h5"
    write_hdf5(str(path), ev)
    with h5py.File(path, "a") as f:
        o = f["hit_y/offsets"][:]
        o[501:] += 1
        del f["hit_y/offsets"], f["hit_y/values"]
        f["hit_y/offsets"] = o
        f["hit_y/values"] = np.zeros(o[-1], np.float32)
    with MultiClassGenerator([SampleSpec(str(path), {"hits": HITS}, "a")], 100, n_workers=1,
                             shuffle=False) as gen:
        with pytest.raises(DataError) as exc:
            for _ in gen:
                pass
    text = one_line(exc)
    assert "'hit_y'" in text and "event 500" in text and "late.h5" in text


def test_empty_collection_in_every_event(tmp_path):
    n = 300
    with uproot.recreate(tmp_path / "empty.root") as f:
        f["events"] = {"hit_x": ak.unflatten(np.zeros(0, np.float32), np.zeros(n, np.int64)),
                       "energy": np.ones(n, np.float32)}
    with pytest.raises(DataError) as exc:
        MultiClassGenerator([SampleSpec(str(tmp_path / "empty.root"), {"hits": Collection(["hit_x"], 4)}, "a")],
                            8, n_workers=1)
    assert "no points in any event" in one_line(exc) and "'hits'" in one_line(exc)


@pytest.mark.parametrize("fmt", ["root", "parquet"])
def test_truncated_file(files, fmt, tmp_path):
    src = files[fmt][0][0]
    dst = tmp_path / os.path.basename(src)
    dst.write_bytes(open(src, "rb").read()[: os.path.getsize(src) * 2 // 3])
    with pytest.raises(DataError) as exc:
        MultiClassGenerator([SampleSpec(str(dst), {"hits": HITS}, "a")], 8, n_workers=1)
    text = one_line(exc)
    assert str(dst) in text and "truncated" in text


def test_bad_collection_settings():
    with pytest.raises(ValueError, match="max_points must be an integer >= 1"):
        Collection(FIELDS, max_points=0)
    with pytest.raises(ValueError, match="sort_by 'e'"):
        Collection(FIELDS, max_points=3, sort_by="e")
    with pytest.raises(DataError, match="unknown file type '.txt'"):
        MultiClassGenerator([SampleSpec("x.txt", {"hits": HITS}, "a")], 8)


def test_sparse_tensor_group(tmp_path):
    """A SparseTensor's padded group (LArIAT's images3D) as a collection: coordinates then the value."""
    from dlkit.sparse import SparseTensor

    rng = np.random.default_rng(4)
    paths = []
    for cls in CLASSES:
        counts = rng.integers(0, 40, 90)
        events = [(rng.normal(size=(c, 3)).astype(np.float32), rng.permutation(c).astype(np.float32) + 1)
                  for c in counts]
        path = tmp_path / f"{cls}.h5"
        SparseTensor.from_events(events).write_h5(str(path), "images3D")
        paths.append((str(path), cls))
    coll = Collection(["images3D"], max_points=16, sort_by="images3D")
    samples = [SampleSpec(p, {"deps": coll}, cls) for p, cls in paths]
    with MultiClassGenerator(samples, 30, n_workers=2, seed=1, provenance=True) as gen:
        assert gen.shapes["deps"] == (None, 16, 4)
        for b in gen:
            for e in np.unique(b["_entry"]):
                st = SparseTensor.read_h5(samples[e].file, "images3D")
                for row in np.flatnonzero(b["_entry"] == e):
                    c, v = st.event(int(b["_event"][row]))
                    pts = np.column_stack([c, v])[np.argsort(-v, kind="stable")][:16]
                    np.testing.assert_array_equal(b["deps"][row, :len(pts)], pts)
                    assert b["deps_mask"][row].sum() == len(pts) and b["deps_count"][row] == len(v)
                    assert not b["deps"][row, len(pts):].any()


@pytest.mark.parametrize("descending", [True, False])
def test_padding_sorts_like_a_numpy_loop(descending):
    """pad_points against a per-event numpy loop: ties (stable), negative keys, -0.0, clipping, empty events."""
    from dlkit.generators.sources.base import pad_points

    rng = np.random.default_rng(7)
    counts = rng.integers(0, 12, 300)
    counts[:3] = [0, 11, 1]
    total = int(counts.sum())
    key = rng.integers(-3, 4, total).astype(np.float32)  # many ties
    key[key == 0] = np.where(rng.random(int((key == 0).sum())) < 0.5, -0.0, 0.0)
    other = rng.normal(size=total).astype(np.float32)
    coll = Collection(["k", "o"], max_points=5, sort_by="k", descending=descending)
    points, mask, count = pad_points([key, other], counts, coll, ["k", "o"])
    starts = np.cumsum(counts) - counts
    for i, (a, c) in enumerate(zip(starts, counts)):
        p = np.column_stack([key[a:a + c], other[a:a + c]])
        p = p[np.argsort(-p[:, 0] if descending else p[:, 0], kind="stable")][:5]
        np.testing.assert_array_equal(points[i, :len(p)], p)
        assert not points[i, len(p):].any() and mask[i].sum() == len(p) and count[i] == c
