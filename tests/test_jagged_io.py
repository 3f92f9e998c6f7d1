"""dlkit.jagged: per-event lists written to and read from ROOT (TTree, RNTuple), parquet and HDF5, checked
against independent reads (uproot/awkward, pyarrow, h5py); conversion between every pair of layouts; the
``python -m dlkit.io convert`` CLI; the simulators' hit files (calodnn cells, lartpcdnn deposits)."""

import itertools
import subprocess
import sys

import awkward as ak
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot

from dlkit.generators.errors import DataError
from dlkit.jagged import (
    EXTENSIONS,
    FORMATS,
    EventWriter,
    Jagged,
    convert,
    format_of,
    iter_events,
    num_events,
    read_events,
    read_metadata,
    write_events,
)
from dlkit.protocol import EXIT_OK, EXIT_USER_ERROR

N = 300
CHUNK = 64
#: (format, hdf5_layout): every layout a file can have
LAYOUTS = [("root", "csr"), ("rntuple", "csr"), ("parquet", "csr"), ("hdf5", "csr"), ("hdf5", "vlen")]


def _columns(n=N, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 30, n)
    counts[:5] = 0  # empty events, also at the start of a chunk
    other = rng.integers(0, 4, n)
    total = int(counts.sum())
    return {
        "hit_x": Jagged.from_counts(rng.normal(size=total).astype(np.float32), counts),
        "hit_e": Jagged.from_counts(rng.exponential(size=total).astype(np.float32), counts),
        "other": Jagged.from_counts(rng.integers(-9, 9, int(other.sum())).astype(np.int32), other),
        "energy": rng.uniform(1, 100, n).astype(np.float32),
        "pdgID": rng.choice(np.array([-11, 11, 22], np.int32), n),
        "index": np.arange(n, dtype=np.int64),
        "image": rng.normal(size=(n, 2, 3)),
    }


def _path(tmp_path, fmt, layout="csr", stem="ev"):
    return tmp_path / f"{stem}-{fmt}-{layout}{EXTENSIONS[fmt]}"


def _assert_same(got, want):
    assert list(got) == list(want)
    for k, w in want.items():
        g = got[k]
        if isinstance(w, Jagged):
            assert isinstance(g, Jagged), k
            assert g.dtype == w.dtype, k
            np.testing.assert_array_equal(g.offsets, w.offsets, err_msg=k)
            np.testing.assert_array_equal(g.values, w.values, err_msg=k)
        else:
            assert isinstance(g, np.ndarray) and g.dtype == w.dtype and g.shape == w.shape, k
            np.testing.assert_array_equal(g, w, err_msg=k)


# ---------------------------------------------------------------------------------------------------------
# Jagged
# ---------------------------------------------------------------------------------------------------------


def test_jagged_basics_and_validation():
    j = Jagged.from_lists([[1, 2], [], [3, 4, 5]], np.float32)
    assert len(j) == 3 and j.counts.tolist() == [2, 0, 3] and j.dtype == np.float32
    assert j.event(2).tolist() == [3, 4, 5] and j.event(-3).tolist() == [1, 2] and j[1].size == 0
    assert j[1:].offsets.tolist() == [0, 0, 3] and j[1:].values.tolist() == [3, 4, 5]
    assert j[::2] == Jagged.from_lists([[1, 2], [3, 4, 5]], np.float32)
    assert j[np.array([2, 0, 2])].values.tolist() == [3, 4, 5, 1, 2, 3, 4, 5]
    assert j[np.array([True, False, True])] == j[[0, 2]]
    assert Jagged.concatenate([j[:1], j[1:]]) == j
    with pytest.raises(ValueError, match="start at 0"):
        Jagged(np.zeros(3), [1, 3])
    with pytest.raises(ValueError, match="end at len"):
        Jagged(np.zeros(3), [0, 2])
    with pytest.raises(ValueError, match="not decrease"):
        Jagged(np.zeros(3), [0, 2, 1, 3])
    with pytest.raises(ValueError, match="1-D numeric"):
        Jagged(np.zeros((3, 1)), [0, 3])
    with pytest.raises(IndexError):
        j.event(3)


def test_format_of_and_one_line_errors(tmp_path):
    assert [format_of(f"a{e}") for e in (".root", ".parquet", ".pq", ".h5", ".hdf5")] == \
        ["root", "parquet", "parquet", "hdf5", "hdf5"]
    with pytest.raises(ValueError, match="'hits.txt': unknown extension") as err:
        write_events("hits.txt", _columns(5))
    assert "\n" not in str(err.value)
    path = write_events(tmp_path / "a.parquet", _columns(5))
    with pytest.raises(DataError) as err:
        read_events(path, ["hit_x", "nope"])
    assert "a.parquet" in str(err.value) and "'nope'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="file not found"):
        read_events(tmp_path / "missing.root")
    with pytest.raises(ValueError, match="column 'b' has 4 events, column 'a' has 3"):
        write_events(tmp_path / "b.h5", {"a": np.zeros(3), "b": np.zeros(4)})
    with pytest.raises(ValueError, match="does not fit the extension"):
        write_events(tmp_path / "b.h5", {"a": np.zeros(3)}, format="parquet")
    assert not list(tmp_path.glob("b*")) and not list(tmp_path.glob(".b*"))


# ---------------------------------------------------------------------------------------------------------
# Round trips, checked by independent reads
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Every layout written once from the same columns (chunks of CHUNK events)."""
    tmp = tmp_path_factory.mktemp("jagged")
    cols = _columns()
    paths = {}
    for fmt, layout in LAYOUTS:
        paths[fmt, layout] = write_events(_path(tmp, fmt, layout), cols, format=fmt, hdf5_layout=layout,
                                          chunk_events=CHUNK, metadata={"seed": 0, "note": "test"})
    return cols, paths


@pytest.mark.parametrize("fmt,layout", LAYOUTS)
def test_round_trip(written, fmt, layout):
    cols, paths = written
    path = paths[fmt, layout]
    _assert_same(read_events(path), cols)
    _assert_same(read_events(path, ["energy", "hit_e"]), {"energy": cols["energy"], "hit_e": cols["hit_e"]})
    assert num_events(path) == N and read_metadata(path) == {"seed": "0", "note": "test"}
    parts = list(iter_events(path, ["hit_x", "image"], step_events=70))
    assert [len(p["hit_x"]) for p in parts] == [70, 70, 70, 70, 20]
    assert Jagged.concatenate([p["hit_x"] for p in parts]) == cols["hit_x"]


def _check_awkward(arrays, cols):
    for k in ("hit_x", "hit_e", "other"):
        np.testing.assert_array_equal(ak.to_numpy(ak.num(arrays[k], axis=1)), cols[k].counts)
        flat = ak.to_numpy(ak.flatten(arrays[k], axis=1))
        assert flat.dtype.newbyteorder("=") == cols[k].dtype
        np.testing.assert_array_equal(flat, cols[k].values)
    for k in ("energy", "pdgID", "index", "image"):
        got = ak.to_numpy(arrays[k])
        assert got.shape == cols[k].shape and got.dtype.newbyteorder("=") == cols[k].dtype
        np.testing.assert_array_equal(got, cols[k])


def test_root_ttree_by_uproot(written):
    cols, paths = written
    with uproot.open(paths["root", "csr"]) as f:
        assert {k.split(";")[0]: c for k, c in f.classnames().items()} == {"events": "TTree",
                                                                          "events_metadata": "TObjString"}
        tree = f["events"]
        # uproot's counter branches: one per group of jagged columns <prefix>_* with equal counts
        assert tree.keys() == ["nhit", "hit_x", "hit_e", "nother", "other", "energy", "pdgID", "index", "image"]
        assert tree["hit_x"].count_branch.name == "nhit" and tree["other"].count_branch.name == "nother"
        assert tree["hit_x"].typename == "float[]" and tree["image"].typename == "double[2][3]"
        np.testing.assert_array_equal(tree["nhit"].array(library="np"), cols["hit_x"].counts)
        _check_awkward(tree.arrays(library="ak"), cols)
        # baskets of CHUNK events, not one basket for the whole file
        for branch in ("hit_x", "energy", "image"):
            assert tree[branch].num_baskets == -(-N // CHUNK)


def test_root_counter_names_do_not_clash(tmp_path):
    cols = {"hit_x": Jagged.from_lists([[1.0], []]), "hit_y": Jagged.from_lists([[2.0], []]),
            "nhit": np.array([7, 8]), "z": Jagged.from_lists([[1.0, 2.0], [3.0]])}
    path = write_events(tmp_path / "c.root", cols)
    with uproot.open(path) as f:
        assert f["events"].keys() == ["nhit_", "hit_x", "hit_y", "nhit", "nz", "z"]
    _assert_same(read_events(path), cols)
    assert read_events(path, ["nhit_"])["nhit_"].tolist() == [1, 0]  # a counter, by name only


def test_rntuple_by_uproot(written):
    cols, paths = written
    with uproot.open(paths["rntuple", "csr"]) as f:
        assert {k.split(";")[0]: c for k, c in f.classnames().items()}["events"] == "ROOT::RNTuple"
        ntuple = f["events"]
        assert ntuple.keys() == list(cols)  # no counter fields
        assert len(ntuple.cluster_summaries) == -(-N // CHUNK)
        _check_awkward(ntuple.arrays(), cols)


def test_parquet_by_pyarrow(written):
    cols, paths = written
    pf = pq.ParquetFile(paths["parquet", "csr"])
    assert pf.metadata.num_row_groups == -(-N // CHUNK)
    schema = pf.schema_arrow
    assert schema.field("hit_x").type == pa.list_(pa.field("item", pa.float32(), nullable=False))
    assert schema.field("image").type == pa.list_(pa.field("item", pa.list_(
        pa.field("item", pa.float64(), nullable=False), 3), nullable=False), 2)
    assert schema.field("pdgID").type == pa.int32()
    table = pf.read()
    for k in ("hit_x", "hit_e", "other"):
        arr = table.column(k).combine_chunks()
        np.testing.assert_array_equal(np.diff(arr.offsets.to_numpy()), cols[k].counts)
        np.testing.assert_array_equal(arr.values.to_numpy(), cols[k].values)
    np.testing.assert_array_equal(table.column("energy").to_numpy(), cols["energy"])
    image = table.column("image").combine_chunks().flatten().flatten().to_numpy().reshape(N, 2, 3)
    np.testing.assert_array_equal(image, cols["image"])


@pytest.mark.parametrize("layout", ["csr", "vlen"])
def test_hdf5_by_h5py(written, layout):
    cols, paths = written
    with h5py.File(paths["hdf5", layout], "r") as f:
        for k in ("hit_x", "hit_e", "other"):
            if layout == "csr":
                assert isinstance(f[k], h5py.Group) and f[k]["offsets"].dtype == np.int64
                np.testing.assert_array_equal(f[k]["offsets"][()], cols[k].offsets)
                np.testing.assert_array_equal(f[k]["values"][()], cols[k].values)
                assert f[k]["values"].dtype == cols[k].dtype
            else:
                assert h5py.check_vlen_dtype(f[k].dtype) == cols[k].dtype and f[k].shape == (N,)
                events = f[k][()]
                assert [len(e) for e in events] == cols[k].counts.tolist()
                np.testing.assert_array_equal(np.concatenate(events), cols[k].values)
        for k in ("energy", "pdgID", "index", "image"):
            assert f[k].dtype == cols[k].dtype
            np.testing.assert_array_equal(f[k][()], cols[k])
        assert f.attrs["note"] == "test"


def test_nullable_parquet_lists_read_as_empty(tmp_path):
    path = tmp_path / "nullable.parquet"
    # a null list backed by a non-empty segment (allowed by Arrow) must read as empty too
    backed = pa.ListArray.from_arrays(pa.array([0, 2, 4, 4, 5], pa.int32()), pa.array([1, 2, 3, 4, 5], pa.float32()),
                                      mask=pa.array([False, True, False, False]))
    table = pa.table({"hits": pa.array([[1.0, 2.0], None, [], [3.0]], pa.list_(pa.float32())), "backed": backed,
                      "e": pa.array([1.0, None, 3.0, 4.0], pa.float64()), "n": pa.array([1, 2, 3, 4], pa.int16())})
    pq.write_table(table, path)
    assert pq.read_schema(path).field("hits").nullable
    got = read_events(path)
    assert got["hits"] == Jagged.from_lists([[1, 2], [], [], [3]], np.float32)
    assert got["backed"] == Jagged.from_lists([[1, 2], [], [], [5]], np.float32)
    np.testing.assert_array_equal(got["e"], [1.0, np.nan, 3.0, 4.0])
    assert got["n"].dtype == np.int16
    out = convert(path, tmp_path / "nullable.root")
    assert read_events(out)["hits"] == got["hits"]


def test_empty_file_and_failed_write(tmp_path):
    cols = {"a": Jagged(np.zeros(0, np.float32), [0]), "b": np.zeros((0, 3), np.int16)}
    for fmt in FORMATS:
        path = write_events(tmp_path / f"e-{fmt}{EXTENSIONS[fmt]}", cols, format=fmt)
        _assert_same(read_events(path), cols)
    with pytest.raises(RuntimeError, match="boom"):
        with EventWriter(tmp_path / "killed.root") as w:
            w.write(_columns(10))
            raise RuntimeError("boom")
    assert not list(tmp_path.glob("*killed*"))
    with pytest.raises(ValueError, match="columns differ"):
        with EventWriter(tmp_path / "bad.parquet") as w:
            w.write(_columns(10))
            w.write({"energy": np.zeros(3, np.float32)})
    assert not list(tmp_path.glob("*bad*"))


def test_several_trees_need_a_name(tmp_path):
    path = tmp_path / "two.root"
    with uproot.recreate(path) as f:
        f.mktree("a", {"x": np.float32})
        f["a"].extend({"x": np.arange(3, dtype=np.float32)})
        f["b"] = {"y": np.arange(4.0)}  # uproot >= 5.7: an RNTuple
    with pytest.raises(DataError, match=r"give the tree's name: the file has 2 TTrees/RNTuples \(a, b\)"):
        read_events(path)
    assert read_events(path, tree="b")["y"].tolist() == [0, 1, 2, 3]
    with pytest.raises(DataError, match="no TTree or RNTuple 'c'"):
        read_events(path, tree="c")


# ---------------------------------------------------------------------------------------------------------
# Conversion and its CLI
# ---------------------------------------------------------------------------------------------------------


def test_convert_every_pair(written, tmp_path):
    cols, paths = written
    for (src_layout, dst_layout) in itertools.product(LAYOUTS, LAYOUTS):
        dst = _path(tmp_path, *dst_layout, stem=f"from-{src_layout[0]}-{src_layout[1]}")
        convert(paths[src_layout], dst, format=dst_layout[0], hdf5_layout=dst_layout[1], step_events=70,
                chunk_events=100)
        _assert_same(read_events(dst), cols)
        assert read_metadata(dst) == {"seed": "0", "note": "test"}
    with uproot.open(tmp_path / "from-hdf5-vlen-root-csr.root") as f:
        assert f["events"]["hit_x"].num_baskets == 3


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "dlkit.io", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_cli_converts_a_class_per_directory_tree(tmp_path):
    src, dst = tmp_path / "root", tmp_path / "parquet"
    expected = {}
    for k, cls in enumerate(("Ele", "Gamma")):
        for i in range(2):
            cols = _columns(40, seed=10 * k + i)
            write_events(src / cls / f"{cls}_{i}.root", cols, format="rntuple" if i else "root")
            expected[f"{cls}/{cls}_{i}"] = cols
    (src / "COMPLETE.json").write_text("{}")
    proc = _cli("convert", src, dst, "--format", "parquet")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()) == \
        sorted(f"{k}.parquet" for k in expected)
    for k, cols in expected.items():
        _assert_same(read_events(dst / f"{k}.parquet"), cols)
    one = tmp_path / "one.h5"
    proc = _cli("convert-hits", dst / "Ele" / "Ele_1.parquet", one, "--hdf5-layout", "vlen")
    assert proc.returncode == EXIT_OK, proc.stderr
    _assert_same(read_events(one), expected["Ele/Ele_1"])
    for args, message in (((src, tmp_path / "x"), "give the output --format"),
                          ((one, tmp_path / "x.txt"), "unknown extension '.txt'"),
                          ((tmp_path / "nope.root", tmp_path / "x.h5"), "file not found")):
        proc = _cli("convert", *args)
        assert proc.returncode == EXIT_USER_ERROR and message in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ---------------------------------------------------------------------------------------------------------
# The simulators' hit files
# ---------------------------------------------------------------------------------------------------------


def _independent_read(path, fmt, names):
    """{name: (counts, values) or array} read without dlkit.jagged."""
    out = {}
    if fmt in ("root", "rntuple"):
        with uproot.open(path) as f:
            arrays = f["events"].arrays(filter_name=lambda n: n in names, library="ak")
            for k in names:
                a = arrays[k]
                if a.ndim == 2:
                    out[k] = (ak.to_numpy(ak.num(a, axis=1)), ak.to_numpy(ak.flatten(a)).astype("=f4"))
                else:
                    out[k] = ak.to_numpy(a)
    elif fmt == "parquet":
        table = pq.read_table(path, columns=list(names))
        for k in names:
            a = table.column(k).combine_chunks()
            out[k] = (np.diff(a.offsets.to_numpy()), a.values.to_numpy()) if pa.types.is_list(a.type) else a.to_numpy()
    else:
        with h5py.File(path, "r") as f:
            for k in names:
                out[k] = ((np.diff(f[k]["offsets"][()]), f[k]["values"][()]) if isinstance(f[k], h5py.Group)
                          else f[k][()])
    return out


@pytest.fixture(scope="module")
def calo_images(tmp_path_factory):
    import calodnn.simulate as calo

    out = tmp_path_factory.mktemp("calo-images")
    kw = dict(particles=("ChPi",), events_per_class=50, events_per_file=30, seed=5, progress=False, workers=1,
              config=calo.CaloSimConfig(chunk_events=20))
    paths = calo.write_dataset(out, **kw)
    images = {}
    for p in paths:
        with h5py.File(p, "r") as f:
            images[p.stem] = {k: f[k][()] for k in ("ECAL", "HCAL", "energy", "pdgID", "ECAL_E")}
    return kw, images


@pytest.mark.parametrize("fmt", FORMATS)
def test_calodnn_hits_are_the_image_cells(calo_images, fmt, tmp_path):
    import calodnn.simulate as calo

    kw, images = calo_images
    paths = calo.write_dataset(tmp_path, hits=fmt, **kw)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == \
        [f"ChPi/ChPi_{i}{EXTENSIONS[fmt]}" for i in range(2)]
    cfg = kw["config"]
    depth = calo._geometry(cfg).depth_mm.astype(np.float32)
    layer_of = {float(z): i for i, z in enumerate(depth)}
    for p in paths:
        img = images[p.stem]
        got = _independent_read(p, fmt, ("hit_x", "hit_y", "hit_z", "hit_e", "hit_det", "energy", "pdgID",
                                         "ECAL_E"))
        counts = got["hit_e"][0]
        assert all(np.array_equal(got[k][0], counts) for k in calo.HIT_COLUMNS)
        assert got["hit_e"][1].dtype == np.float32 and got["hit_det"][1].dtype == np.float32
        event = np.repeat(np.arange(len(counts)), counts)
        for det, name, pitch in ((0, "ECAL", cfg.ecal_cell_mm), (1, "HCAL", cfg.hcal_cell_mm)):
            sel = got["hit_det"][1] == det
            shape = img[name].shape
            ix = np.rint(got["hit_x"][1][sel] / pitch + (shape[1] - 1) / 2).astype(int)
            iy = np.rint(got["hit_y"][1][sel] / pitch + (shape[2] - 1) / 2).astype(int)
            first_layer = 0 if det == 0 else cfg.ecal_shape[2] + 1  # the combined axis: ECAL, dead layer, HCAL
            il = np.array([layer_of[float(z)] for z in got["hit_z"][1][sel]]) - first_layer
            rebuilt = np.zeros(shape, np.float32)
            np.add.at(rebuilt, (event[sel], ix, iy, il), got["hit_e"][1][sel])
            np.testing.assert_array_equal(rebuilt, img[name])  # exactly: every nonzero cell once
            assert sel.sum() == np.count_nonzero(img[name])
        assert got["hit_z"][1][got["hit_det"][1] == 1].min() > got["hit_z"][1][got["hit_det"][1] == 0].max()
        for k in ("energy", "pdgID", "ECAL_E"):
            np.testing.assert_array_equal(np.asarray(got[k]).astype(img[k].dtype), img[k])
        meta = read_metadata(p)
        assert meta["particle"] == "ChPi" and calo.CaloSimConfig.from_json(meta["simulation_config"]) == cfg


def test_calodnn_hits_from_images_matches_a_loop():
    import calodnn.simulate as calo

    cfg = calo.CaloSimConfig(ecal_shape=(6, 5, 4), hcal_shape=(3, 2, 5), chunk_events=7)
    rng = np.random.default_rng(3)
    ecal = np.where(rng.random((9, 6, 5, 4)) < 0.2, rng.random((9, 6, 5, 4)), 0).astype(np.float32)
    hcal = np.where(rng.random((9, 3, 2, 5)) < 0.3, rng.random((9, 3, 2, 5)), 0).astype(np.float32)
    ecal[4] = 0
    hcal[[4, 6]] = 0
    hits = calo.hits_from_images(ecal, hcal, cfg)
    geo = calo._geometry(cfg)
    for i in range(9):
        want = []
        for det, img, ex, ey, ez in ((0, ecal, geo.ecal_edges_mm, geo.ecal_edges_y_mm, geo.depth_mm[:4]),
                                     (1, hcal, geo.hcal_edges_mm, geo.hcal_edges_y_mm, geo.depth_mm[geo.hcal])):
            for x, y, z in zip(*np.nonzero(img[i])):
                want.append(((ex[x] + ex[x + 1]) / 2, (ey[y] + ey[y + 1]) / 2, ez[z], img[i, x, y, z], det))
        got = np.stack([hits[k].event(i) for k in calo.HIT_COLUMNS], axis=1)
        np.testing.assert_allclose(got, np.array(want, np.float32).reshape(-1, 5), rtol=1e-6)


@pytest.mark.parametrize("fmt", ["root", "hdf5"])
def test_lartpcdnn_deposits_are_the_simulators(fmt, tmp_path):
    import lartpcdnn.simulate as lar

    cfg = lar.LArSimConfig(chunk_events=3)
    paths = lar.write_dataset(tmp_path, ("muon", "photon"), events_per_class=4, events_per_file=4, seed=2,
                              config=cfg, progress=False, workers=1, hits=fmt)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == \
        [f"muon/muon_0{EXTENSIONS[fmt]}", f"photon/photon_0{EXTENSIONS[fmt]}"]
    for p, particle in zip(paths, ("muon", "photon")):
        ev = lar.simulate_events(particle, 4, np.random.default_rng(lar.file_seed_sequence(2, particle, 0)), cfg)
        truth = ev["truth3d"]
        got = _independent_read(p, fmt, (*lar.DEPOSIT_COLUMNS, "Energy", "pdg"))
        for axis, k in enumerate(lar.DEPOSIT_COLUMNS[:3]):
            np.testing.assert_array_equal(got[k][0], truth.counts)
            np.testing.assert_array_equal(got[k][1], truth.coords[:, axis])
        np.testing.assert_array_equal(got["dep_q"][1], truth.values)
        np.testing.assert_array_equal(got["Energy"], ev["Energy"])
        np.testing.assert_array_equal(got["pdg"], ev["pdg"])


def test_simulator_hit_datasets_are_cached_apart_and_have_a_cli_flag(env, tmp_path):
    import calodnn.simulate as calo
    import lartpcdnn.simulate as lar

    kw = dict(events_per_class=12, events_per_file=12, particles=("Gamma",), progress=False, workers=1)
    hits = calo.default_dataset(hits="parquet", **kw)
    assert hits.name.startswith("lcd-hits-parquet-") and (hits / "Gamma" / "Gamma_0.parquet").is_file()
    assert calo.default_dataset(hits="parquet", **kw) == hits
    assert calo.dataset_key(calo.CaloSimConfig(), 0, ("Gamma",), 12, 12) not in hits.name  # images: their own key
    with pytest.raises(ValueError, match="hits must be None or one of"):
        calo.write_dataset(tmp_path, hits="csv", **kw)
    assert calo.main(["--out", str(tmp_path / "cli"), "--events-per-class", "5", "--particles", "Pi0",
                      "--hits", "rntuple", "--workers", "1", "--no-progress"]) == EXIT_OK
    assert len(read_events(tmp_path / "cli" / "Pi0" / "Pi0_0.root")["hit_e"]) == 5
    cfg = lar.LArSimConfig(chunk_events=2)
    deps = lar.default_dataset(events_per_class=2, events_per_file=2, particles=("proton",), config=cfg,
                               progress=False, workers=1, hits="parquet")
    assert deps.name.startswith("lariat-hits-parquet-")
    assert list(read_events(deps / "proton" / "proton_0.parquet")) == [*lar.DEPOSIT_COLUMNS, "Energy", "px", "py",
                                                                       "pz", "pdg", "Track_length"]
