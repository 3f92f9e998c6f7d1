"""dlkit.generators: batches against plain h5py reads, epochs, class counts, seeds, filters, splits, cache.

Small simulated files (4 classes x 3 files x 100-200 events, small shapes) written with plain h5py; every
expectation is computed independently with h5py and numpy. Each test checks that no reader process and no
/dev/shm segment of ours is left behind.
"""

from __future__ import annotations

import gc
import glob
import multiprocessing
import os
import time

import h5py
import numpy as np
import pytest

from dlkit.generators import (
    DataError,
    EnergyCut,
    MultiClassGenerator,
    SampleSpec,
    Select,
    _shm,
    make_samples_from_dirs,
    make_samples_from_globs,
    read_cache,
    split_samples,
)

CLASSES = ["A", "B", "C", "D"]
KEYS = ["X", "H", "id", "u", "energy"]


def n_events(ci: int, j: int) -> int:
    return 100 + 31 * j + 13 * ci


def write_dataset(root, chunked=False):
    """4 classes x 3 files; X float32 (n,4,3), H float16 (n,5), id int64 (unique), u uint8 (n,2), energy f4.

    With ``chunked``, file 1 of each class stores X in row-aligned chunks (read raw) and file 2 gzip
    (read through h5py in the workers).
    """
    rng = np.random.default_rng(12345)
    for ci, c in enumerate(CLASSES):
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for j in range(3):
            n = n_events(ci, j)
            with h5py.File(os.path.join(root, c, f"{c}_{j}.h5"), "w") as f:
                x = rng.standard_normal((n, 4, 3)).astype(np.float32)
                if chunked and j == 1:
                    f.create_dataset("X", data=x, chunks=(7, 4, 3))
                elif chunked and j == 2:
                    f.create_dataset("X", data=x, chunks=(16, 4, 3), compression="gzip")
                else:
                    f.create_dataset("X", data=x)
                f["H"] = rng.standard_normal((n, 5)).astype(np.float16)
                f["id"] = (ci * 100_000 + j * 1_000 + np.arange(n)).astype(np.int64)
                f["u"] = rng.integers(0, 256, (n, 2), dtype=np.uint8)
                f["energy"] = rng.uniform(0, 100, n).astype(np.float32)
    return root


@pytest.fixture(scope="session")
def h5dir(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("gen_data")), chunked=True)


@pytest.fixture
def samples(h5dir):
    return make_samples_from_dirs(h5dir, KEYS)


def _readers():
    return [p for p in multiprocessing.active_children() if p.name.startswith("dlkit-reader")]


@pytest.fixture(autouse=True)
def no_leftovers():
    """Nothing of ours in /dev/shm and no reader processes after each test."""
    mine = f"{_shm.PREFIX}{os.getpid()}_"  # other processes on the machine may use dlkit too
    yield
    gc.collect()
    assert [n for n in _shm.list_ours() if n.startswith(mine)] == [], "leaked shared-memory segments"
    assert _readers() == [], "reader processes left behind"


def h5_rows(path, key, rows):
    with h5py.File(path, "r") as f:
        data = f[key][...]
    return data if isinstance(rows, slice) else data[np.asarray(rows, dtype=np.int64)]


def all_ids(samples_):
    return np.sort(np.concatenate([h5_rows(s.file, "id", slice(None)) for s in samples_]))


def check_rows_against_h5py(batch, samples_, keys=KEYS):
    """Every row of a provenance batch equals the plain h5py read of (entry, event), bit for bit."""
    entries, events = batch["_entry"], batch["_event"]
    for e in np.unique(entries):
        rows = np.flatnonzero(entries == e)
        for k in keys:
            ref = h5_rows(samples_[e].file, k, events[rows])
            assert ref.dtype == batch[k].dtype
            assert np.array_equal(ref.view(np.uint8), np.ascontiguousarray(batch[k][rows]).view(np.uint8)), k


# --------------------------------------------------------------------------------------- sample specs
def test_make_samples_from_dirs_sorted_and_named(h5dir):
    s = make_samples_from_dirs(h5dir, ["X", "id"], classes=["B", "A"])
    assert [x.class_name for x in s] == ["B"] * 3 + ["A"] * 3
    assert [os.path.basename(x.file) for x in s[:3]] == ["B_0.h5", "B_1.h5", "B_2.h5"]
    assert s[0].keys == (("X", "X"), ("id", "id"))
    allc = make_samples_from_dirs(h5dir, "X")
    assert sorted({x.class_name for x in allc}) == CLASSES
    g = make_samples_from_globs({"Ele": os.path.join(h5dir, "A", "*.h5")}, {"img": "X"})
    assert len(g) == 3 and g[0].keys == (("img", "X"),) and g[0].class_name == "Ele"
    by_dir = make_samples_from_globs(os.path.join(h5dir, "*", "*_0.h5"), ["X"])
    assert sorted(x.class_name for x in by_dir) == CLASSES
    with pytest.raises(DataError, match="no files match"):
        make_samples_from_globs({"x": os.path.join(h5dir, "nothing*.h5")}, ["X"])
    assert SampleSpec.from_any((s[0].file, ["X"], "A", 2.0)).rate == 2.0


def test_split_samples_by_events_reproducible_and_disjoint(samples):
    parts = split_samples(samples, [0.6, 0.25, 0.15], seed=3)
    again = split_samples(samples, [0.6, 0.25, 0.15], seed=3)
    other = split_samples(samples, [0.6, 0.25, 0.15], seed=4)
    assert parts == again and parts != other
    seen = {}
    for p, part in enumerate(parts):
        for s in part:
            rows = set(range(s.start, s.stop))
            for q, r in seen.get(s.file, []):
                assert not rows & r, "parts overlap"
            seen.setdefault(s.file, []).append((p, rows))
    for ci, c in enumerate(CLASSES):
        total = sum(n_events(ci, j) for j in range(3))
        counts = [sum(s.stop - s.start for s in part if s.class_name == c) for part in parts]
        cuts = np.floor(np.cumsum([0, 0.6, 0.25, 0.15]) * total + 1e-9).astype(int)
        assert counts == list(np.diff(cuts)), c
    # by events, not files: some file is shared between two parts
    assert any(len(v) > 1 for v in seen.values())


# --------------------------------------------------------------------------------------- batches
def expected_unshuffled(samples_, gen):
    """Independent reference for shuffle=False: per batch, each class's next events in file order."""
    streams = {}
    for s in samples_:
        with h5py.File(s.file, "r") as f:
            part = {k: f[k][...] for k in KEYS}
        streams.setdefault(s.class_name, []).append(part)
    streams = {c: {k: np.concatenate([p[k] for p in v]) for k in KEYS} for c, v in streams.items()}
    pos = dict.fromkeys(CLASSES, 0)
    out = []
    for counts in gen.batch_class_counts:
        batch = {k: [] for k in KEYS + ["class_index"]}
        for ci, c in enumerate(CLASSES):
            n = int(counts[ci])
            for k in KEYS:
                batch[k].append(streams[c][k][pos[c] : pos[c] + n])
            batch["class_index"].append(np.full(n, ci))
            pos[c] += n
        out.append({k: np.concatenate(v) for k, v in batch.items()})
    return out


def test_unshuffled_batches_equal_plain_h5py_bit_for_bit(samples):
    with MultiClassGenerator(samples, 64, shuffle=False, n_workers=2) as gen:
        expected = expected_unshuffled(samples, gen)
        assert len(gen) == len(expected) == int(np.ceil(sum(gen.events_per_class.values()) / 64))
        for b, exp in enumerate(expected):
            got = gen[b]
            for k in KEYS:
                assert got[k].dtype == exp[k].dtype, k  # float16, uint8, int64 stay what they are
                assert got[k].shape == exp[k].shape
                assert np.array_equal(got[k].view(np.uint8), exp[k].view(np.uint8)), (b, k)
            assert np.array_equal(got["class_index"], exp["class_index"])
            assert got["class_index"].dtype == np.int32
            assert np.array_equal(got["onehot"], np.eye(4, dtype=np.float32)[exp["class_index"]])


def test_shuffled_rows_equal_plain_h5py(samples):
    with MultiClassGenerator(samples, 50, provenance=True, n_workers=2, seed=5) as gen:
        for b in gen:
            check_rows_against_h5py(b, samples)
            cls = np.array([CLASSES.index(samples[e].class_name) for e in b["_entry"]])
            assert np.array_equal(b["class_index"], cls)
            assert np.array_equal(np.argmax(b["onehot"], 1), cls)


def test_every_event_exactly_once_per_epoch(samples):
    ref = all_ids(samples)
    with MultiClassGenerator(samples, 64, n_workers=2, seed=1) as gen:
        epochs = []
        for _ in range(3):
            ids = np.concatenate([b["id"].copy() for b in gen])
            assert np.array_equal(np.sort(ids), ref)
            epochs.append(ids)
        assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
        # and the batches are mixed: no batch is one class
        b = gen[0]
        assert len(np.unique(b["class_index"])) == 4
        assert not np.all(np.diff(b["class_index"]) >= 0)  # rows shuffled within the batch


def test_class_counts_per_batch(samples):
    totals = {c: sum(n_events(ci, j) for j in range(3)) for ci, c in enumerate(CLASSES)}
    N = sum(totals.values())
    with MultiClassGenerator(samples, 64, n_workers=1) as gen:
        counts = np.array([np.bincount(b["class_index"], minlength=4) for b in gen])
        assert np.array_equal(counts, gen.batch_class_counts)
        assert np.array_equal(counts.sum(0), [totals[c] for c in CLASSES])
        q = 64 * np.array([totals[c] for c in CLASSES]) / N
        assert np.all(np.abs(counts[:-1] - q) < 1.0 + 1e-9)  # as even as possible
    with MultiClassGenerator(samples, 64, rates="balanced", n_workers=1) as gen:
        counts = np.array([np.bincount(b["class_index"], minlength=4) for b in gen])
        assert np.all(counts[:-1] == 16)
        assert counts.sum(0)[0] == min(totals.values())
    with MultiClassGenerator(
        samples, 64, rates={"A": 2, "B": 1, "C": 1, "D": 0}, n_workers=1, last_batch="drop"
    ) as gen:
        counts = np.array([np.bincount(b["class_index"], minlength=4) for b in gen])
        assert np.all(counts == [32, 16, 16, 0])


def test_last_batch_keep_and_drop(samples):
    N = len(all_ids(samples))
    with MultiClassGenerator(samples, 100, last_batch="keep", n_workers=1) as gen:
        sizes = [len(b["id"]) for b in gen]
        assert sum(sizes) == N and sizes[-1] == N % 100 and set(sizes[:-1]) == {100}
    with MultiClassGenerator(samples, 100, last_batch="drop", n_workers=1) as gen:
        ids = [b["id"].copy() for b in gen]
        assert {len(x) for x in ids} == {100} and len(ids) == N // 100
        allid = np.concatenate(ids)
        assert len(np.unique(allid)) == len(allid)
    with MultiClassGenerator(samples, 64, max_events=300, n_workers=1) as gen:
        assert gen.events_per_epoch == 300 and len(gen) == 5


def test_same_seed_same_batches_whatever_the_workers(samples):
    def epochs(n_workers, seed):
        with MultiClassGenerator(samples, 64, n_workers=n_workers, seed=seed, provenance=True) as gen:
            return [[{k: v.copy() for k, v in b.items()} for b in gen] for _ in range(2)]

    a, b, c = epochs(1, 7), epochs(2, 7), epochs(2, 8)
    for ea, eb in zip(a, b):
        for x, y in zip(ea, eb):
            assert all(np.array_equal(x[k], y[k]) for k in x)
    assert not np.array_equal(a[0][0]["id"], c[0][0]["id"])


def test_filter_selects_exactly_the_right_events(samples):
    cut = EnergyCut(30.0, 70.0)
    filtered = [s.with_filter(cut) for s in samples]
    expected = []
    for s in samples:
        with h5py.File(s.file, "r") as f:
            e, ids = f["energy"][...], f["id"][...]
        expected.append(ids[(e >= 30) & (e < 70)])
    expected = np.sort(np.concatenate(expected))
    with MultiClassGenerator(filtered, 32, provenance=True, n_workers=2) as gen:
        got = []
        for b in gen:
            assert np.all((b["energy"] >= 30) & (b["energy"] < 70))
            check_rows_against_h5py(b, filtered)
            got.append(b["id"].copy())
        assert np.array_equal(np.sort(np.concatenate(got)), expected)
        every = gen.read_all()
        assert np.array_equal(np.sort(every["id"]), expected)
    # a filter returning indices, combined with an event range
    spec = samples[0].with_range(10, 60).with_filter(lambda f: np.array([0, 5, 12, 13, 14, 40, 59, 60, 99]))
    with MultiClassGenerator([spec], 4, shuffle=False, n_workers=1) as gen:
        ids = np.concatenate([b["id"].copy() for b in gen])
        assert np.array_equal(ids, h5_rows(spec.file, "id", [12, 13, 14, 40, 59]))


def test_preprocess_in_workers_postprocess_in_consumer(samples):
    with MultiClassGenerator(
        samples,
        40,
        n_workers=2,
        provenance=True,
        preprocess=Scale(3.0),
        postprocess=Select(["X", "Hsum"], "onehot", "energy"),
    ) as gen:
        assert gen.dtypes["X"] == np.float32 and gen.dtypes["H"] == np.float32  # H became float32
        assert gen.shapes["Hsum"] == (None,)
        (x, hsum), y, w = gen[0]
        assert x.shape == (40, 4, 3) and hsum.shape == (40,) and y.shape == (40, 4) and w.shape == (40,)
    with MultiClassGenerator(samples, 40, n_workers=2, provenance=True, preprocess=Scale(3.0)) as gen:
        for b in gen:
            for e in np.unique(b["_entry"]):
                rows = np.flatnonzero(b["_entry"] == e)
                x = h5_rows(samples[e].file, "X", b["_event"][rows])
                h = h5_rows(samples[e].file, "H", b["_event"][rows]).astype(np.float32)
                assert np.array_equal(b["X"][rows], x * np.float32(3.0))
                assert np.array_equal(b["Hsum"][rows], h.sum(1))


class Scale:
    """Picklable pre-process: X *= factor in place, H -> float32, plus a new array."""

    def __init__(self, factor):
        self.factor = factor

    def __call__(self, a):
        a["X"] *= np.float32(self.factor)
        a["H"] = a["H"].astype(np.float32)
        a["Hsum"] = a["H"].sum(1)
        return a


class Augment:
    """Random augmentation: deterministic because np.random is seeded per batch in the reader."""

    def __call__(self, a):
        a["X"] += np.random.standard_normal(a["X"].shape).astype(np.float32)
        return a


def test_augmentation_is_deterministic_under_a_seed(samples):
    def first(n_workers, seed=2):
        with MultiClassGenerator(samples, 64, n_workers=n_workers, seed=seed, preprocess=Augment()) as gen:
            return [gen[i]["X"].copy() for i in range(3)]

    a, b, c = first(1), first(2), first(1, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_batch_stays_valid_until_released_and_memory_is_bounded(samples):
    with MultiClassGenerator(samples, 16, n_workers=2, queue_depth=1) as gen:
        first = gen[0]
        copy = {k: v.copy() for k, v in first.items()}
        for i in range(1, 12):  # far more batches than slots, while `first` is referenced
            gen[i]
        assert all(np.array_equal(first[k], copy[k]) for k in copy)
        del first
        slots = len(gen._pool.slots)
        for _ in range(6):  # many epochs: the ring does not grow
            for b in gen:
                pass
        assert len(gen._pool.slots) == slots <= gen._pool.base_slots + 1


def test_read_all_returns_every_event_in_order_and_outlives_generator(samples):
    gen = MultiClassGenerator(samples, 64, n_workers=2, provenance=True)
    with gen:
        data = gen.read_all()
    assert gen.closed
    ref = {k: np.concatenate([h5_rows(s.file, k, slice(None)) for s in samples]) for k in KEYS}
    for k in KEYS:
        assert np.array_equal(data[k].view(np.uint8), ref[k].view(np.uint8))
    cls = np.concatenate([np.full(n_events(ci, j), ci) for ci in range(4) for j in range(3)])
    assert np.array_equal(data["class_index"], cls)
    assert np.array_equal(data["onehot"].argmax(1), cls)
    assert data["X"].sum() == ref["X"].sum()  # memory still valid after close
    with MultiClassGenerator(samples, 64, n_workers=1, postprocess=Select(["X"], "class_index")) as gen:
        (x,), y = gen.read_all(apply_postprocess=True)
        assert x.shape == (len(cls), 4, 3) and np.array_equal(y, cls)


# --------------------------------------------------------------------------------------- cache
def reader_calls(marks):
    """Pre-process calls made by reader processes (the consumer probes the output shapes once)."""
    return len([m for m in os.listdir(marks) if not m.startswith(f"{os.getpid()}-")])


class CountingScale:
    """A pre-process that leaves a file per call in ``marks`` (to prove the cache skips it)."""

    def __init__(self, marks, factor=2.0):
        self.marks, self.factor = marks, factor

    def __call__(self, a):
        open(os.path.join(self.marks, f"{os.getpid()}-{np.random.randint(1 << 30)}"), "w").close()
        a["X"] *= np.float32(self.factor)
        return a


def test_cache_written_once_then_reused_by_later_epochs_and_runs(samples, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    cache_dir = tmp_path / "cache"
    pre = CountingScale(str(marks))
    ref = all_ids(samples)
    with MultiClassGenerator(
        samples, 64, n_workers=2, seed=1, preprocess=pre, cache=cache_dir, provenance=True
    ) as gen:
        e0 = [{k: v.copy() for k, v in b.items()} for b in gen]
        calls_first = reader_calls(marks)
        assert gen.cache_path.exists()  # complete after the first epoch, renamed
        assert not glob.glob(str(cache_dir / "*.tmp-*"))
        e1 = [{k: v.copy() for k, v in b.items()} for b in gen]
        # a few batches of epoch 2 may have been read ahead while the cache was being finished
        calls_second = reader_calls(marks)
        assert calls_second - calls_first <= gen._pool.base_slots
        for b in gen:
            pass
        assert reader_calls(marks) == calls_second  # later epochs do not pre-process again
        for epoch in (e0, e1):
            assert np.array_equal(np.sort(np.concatenate([b["id"] for b in epoch])), ref)
            for b in epoch:
                for e in np.unique(b["_entry"]):
                    rows = np.flatnonzero(b["_entry"] == e)
                    assert np.array_equal(b["X"][rows], h5_rows(samples[e].file, "X", b["_event"][rows]) * 2)
        assert not np.array_equal(e0[0]["id"], e1[0]["id"])  # cached epochs are reshuffled
        path = gen.cache_path
    arrays, header = read_cache(path)
    assert arrays["X"].shape == (len(ref), 4, 3) and header["classes"] == CLASSES
    # a later run (another scan point, other batch size and seed) reads the cache from its first epoch
    with MultiClassGenerator(samples, 50, n_workers=1, seed=9, preprocess=pre, cache=cache_dir) as gen2:
        assert gen2.cache_path == path
        ids = np.concatenate([b["id"].copy() for b in gen2])
        assert np.array_equal(np.sort(ids), ref)
        assert reader_calls(marks) == calls_second
    # a different pre-process is a different cache
    with MultiClassGenerator(
        samples, 64, n_workers=1, preprocess=CountingScale(str(marks), 3.0), cache=cache_dir
    ) as gen3:
        assert gen3.cache_path != path


def test_cache_completes_with_events_the_first_epoch_did_not_use(samples, tmp_path):
    with MultiClassGenerator(samples, 64, n_workers=2, rates="balanced", cache=tmp_path, seed=4) as gen:
        for b in gen:
            pass
        for b in gen:  # epoch 2 starts while the unused events are being cached
            pass
        assert gen.build_cache() == gen.cache_path  # waits for the last writes, if any
        assert gen.cache_path.exists()
        arrays, _ = read_cache(gen.cache_path)
        assert np.array_equal(np.sort(np.asarray(arrays["id"])), all_ids(samples))
        del arrays


def test_interrupted_first_epoch_leaves_no_usable_cache(samples, tmp_path):
    with MultiClassGenerator(samples, 64, n_workers=2, cache=tmp_path) as gen:
        for i in range(3):
            gen[i]
        path = gen.cache_path
    assert not path.exists()
    assert os.listdir(tmp_path) == []  # the partial temporary is removed on close


def test_preload_keeps_everything_in_ram(samples, tmp_path):
    ref = all_ids(samples)
    with MultiClassGenerator(samples, 64, n_workers=2, preload=True, preprocess=Scale(1.0)) as gen:
        for _ in range(3):
            ids = np.concatenate([b["id"].copy() for b in gen])
            assert np.array_equal(np.sort(ids), ref)
        assert gen._pool.ram_complete
        data = gen.read_all()
        assert np.array_equal(
            data["id"], np.concatenate([h5_rows(s.file, "id", slice(None)) for s in samples])
        )
    assert data["X"].shape[0] == len(ref)
    # preload from an existing disk cache
    with MultiClassGenerator(samples, 64, n_workers=2, cache=tmp_path) as gen:
        gen.read_all()
    with MultiClassGenerator(samples, 64, n_workers=2, cache=tmp_path, preload=True) as gen:
        ids = np.concatenate([b["id"].copy() for b in gen])
        assert np.array_equal(np.sort(ids), ref) and gen._pool.ram_complete


def test_normalize_preprocess_matches_numpy(samples):
    from dlkit.generators import Chain, Normalize

    pre = Chain(Normalize({"X": 2, "energy": "NonLinear", "H": None}), Scale(1.0))
    with MultiClassGenerator(samples, 64, n_workers=2, preprocess=pre, provenance=True) as gen:
        b = gen[0]
        for e in np.unique(b["_entry"]):
            rows = np.flatnonzero(b["_entry"] == e)
            x = h5_rows(samples[e].file, "X", b["_event"][rows])
            en = h5_rows(samples[e].file, "energy", b["_event"][rows])
            assert np.array_equal(b["X"][rows], x / np.float32(2))
            ref = np.tanh(np.sign(en) * np.log1p(np.abs(en)) / 2).astype(np.float32)
            assert np.allclose(b["energy"][rows], ref, rtol=1e-6)
    with pytest.raises(ValueError, match="is 0"):
        Normalize({"X": 0})


def test_read_all_after_a_partial_epoch_completes_the_cache(samples, tmp_path):
    with MultiClassGenerator(samples, 64, n_workers=2, cache=tmp_path, seed=3) as gen:
        for i in range(5):
            gen[i]
        data = gen.read_all()
        assert gen.cache_path.exists()
        arrays, _ = read_cache(gen.cache_path)
        assert np.array_equal(np.asarray(arrays["id"]), data["id"])
        del arrays


def test_build_cache_ahead_of_training(samples, tmp_path, capsys):
    with MultiClassGenerator(samples, 64, n_workers=2, cache=tmp_path, rates="balanced") as gen:
        path = gen.build_cache(progress=True)
        bar = capsys.readouterr().err
        assert "dlkit cache" in bar and f"{len(all_ids(samples))}/{len(all_ids(samples))}" in bar
        assert path is not None and path.exists()
        arrays, _ = read_cache(path)
        assert np.array_equal(np.sort(np.asarray(arrays["id"])), all_ids(samples))
        del arrays
        ids = np.concatenate([b["id"].copy() for b in gen])
        assert len(np.unique(ids)) == len(ids) == gen.events_per_epoch
    with MultiClassGenerator(samples, 64, n_workers=1) as gen:
        assert gen.build_cache() is None


def test_read_all_and_cache_fill_run_the_preprocess(samples, tmp_path):
    ref = {k: np.concatenate([h5_rows(s.file, k, slice(None)) for s in samples]) for k in ("X", "H")}
    with MultiClassGenerator(samples, 64, n_workers=2, preprocess=Augment(), seed=5) as gen:
        a = gen.read_all()
    with MultiClassGenerator(samples, 64, n_workers=1, preprocess=Augment(), seed=5) as gen:
        b = gen.read_all()
    assert np.array_equal(a["X"], b["X"]) and not np.array_equal(a["X"], ref["X"])  # seeded per task
    with MultiClassGenerator(
        samples, 64, n_workers=2, preprocess=Scale(2.0), rates="balanced", cache=tmp_path
    ) as gen:
        gen[0]
        time.sleep(0.5)  # let the readers fill every slot with read-ahead batches nobody asks for yet
        gen._pool._pump()
        path = gen.build_cache()
        arrays, _ = read_cache(path)
        assert np.array_equal(np.asarray(arrays["X"]), ref["X"] * np.float32(2))
        assert np.array_equal(np.asarray(arrays["H"]), ref["H"].astype(np.float32))
        del arrays


def test_reader_told_of_a_cache_already_renamed_opens_the_final_file(tmp_path):
    """A reader may read the "store" message after another reader completed the cache and the consumer
    renamed it (a one-batch first epoch): it opens the final file read-only instead of dying."""
    from dlkit.generators._worker import Worker

    final = tmp_path / "dlkit-x.cache"
    final.write_bytes(b"complete")
    cfg = {"entries": [], "inputs": [], "outputs": [], "inplace": [], "preprocess": None, "n_classes": 1}
    w = Worker(0, cfg)
    w.handle(("store", "disk", str(tmp_path / "dlkit-x.cache.tmp-1-ab"), None, True, str(final)))
    fd, _, writable = w.disk
    assert not writable and os.pread(fd, 8, 0) == b"complete"
    with pytest.raises(FileNotFoundError):
        w.handle(("store", "disk", str(tmp_path / "missing.cache"), None, False, None))


def test_one_batch_epochs_with_cache(samples, tmp_path):
    """Every epoch the whole data set, as one batch, while the cache is built and after (3 runs, 2 readers)."""
    ref = all_ids(samples)
    for run in range(3):
        with MultiClassGenerator(samples, len(ref), n_workers=2, seed=run, cache=tmp_path / str(run)) as gen:
            assert len(gen) == 1
            for _ in range(3):
                assert np.array_equal(np.sort(gen[0]["id"]), ref)
                gen.on_epoch_end()
            assert gen.cache_path.exists()
    assert not _readers()


def test_split_fractions_from_config(samples):
    from dlkit.config import ConfigError
    from dlkit.generators import count_events, split_fractions

    total = sum(count_events(s) for s in samples)
    assert split_fractions({"ValidationFraction": 0.1, "TestFraction": 0.2}) == pytest.approx([0.7, 0.1, 0.2])
    scaled = split_fractions({"ValidationFraction": 0.1, "TestFraction": 0.2, "MaxEvents": total // 2}, samples)
    assert sum(scaled) * total == pytest.approx(total // 2)
    assert split_fractions({"ValidationFraction": 0.1, "TestFraction": 0.2, "MaxEvents": 10 * total},
                           samples) == pytest.approx([0.7, 0.1, 0.2])
    for val, test in ((0.6, 0.5), (0.0, 0.2), (0.1, -0.1)):
        with pytest.raises(ConfigError, match="'ValidationFraction'.*'TestFraction'"):
            split_fractions({"ValidationFraction": val, "TestFraction": test})


def test_a_flipped_bit_in_a_finished_cache_is_caught_named_and_rebuilt(samples, tmp_path):
    """The cache's per-block xxh3 checksums (computed independently here with xxhash over the header's blocks):
    a bit flipped inside the arrays fails its block on the first read, naming the file; the file is removed
    and the next generator rebuilds it and serves exactly the source's events."""
    import xxhash

    cache_dir = tmp_path / "cache"
    with MultiClassGenerator(samples, 64, n_workers=2, seed=1, cache=cache_dir) as gen:
        for _ in gen:
            pass
        path = gen.cache_path
    _, header = read_cache(path)
    spec = header["checksum"]
    raw = path.read_bytes()
    assert len(raw) == header["size"] == spec["offset"] + 8 * spec["count"]
    table = np.frombuffer(raw[spec["offset"]:], dtype="<u8")
    for k in range(spec["count"]):
        lo = spec["start"] + k * spec["block"]
        assert int(table[k]) == xxhash.xxh3_64_intdigest(raw[lo:min(lo + spec["block"], spec["end"])])
    x_offset = next(a["offset"] for a in header["arrays"] if a["name"] == "X")
    flipped = bytearray(raw)
    flipped[x_offset + 100] ^= 0x10
    path.write_bytes(bytes(flipped))
    with MultiClassGenerator(samples, 64, n_workers=2, seed=1, cache=cache_dir) as gen:
        assert gen.cache_path == path
        with pytest.raises(DataError, match="cache block 0 .* fails its checksum") as info:
            for _ in gen:
                pass
        assert info.value.file == str(path)
    assert not path.exists()
    ref = all_ids(samples)
    with MultiClassGenerator(samples, 64, n_workers=2, seed=1, cache=cache_dir, provenance=True) as gen:
        for epoch in range(2):  # the rebuild, then a read of the rebuilt cache
            batches = [{k: v.copy() for k, v in b.items()} for b in gen]
            assert np.array_equal(np.sort(np.concatenate([b["id"] for b in batches])), ref)
            for b in batches:
                for e in np.unique(b["_entry"]):
                    rows = np.flatnonzero(b["_entry"] == e)
                    assert np.array_equal(b["X"][rows], h5_rows(samples[e].file, "X", b["_event"][rows]))
    assert path.exists()
