"""dlkit.augment: the symmetries of the square, applied per event in the readers, preserve the energy."""

import pickle

import h5py
import numpy as np
import pytest

from dlkit.augment import TRANSFORMS, FlipRotate, apply_transform


def _references(x):
    """The 8 symmetries of the square on axes (1, 2), written with numpy's rot90 and flip."""
    rots = [np.rot90(x, k, axes=(1, 2)) for k in range(4)]
    return rots + [np.flip(r, axis=1) for r in rots]


def test_transforms_are_the_dihedral_group():
    x = np.random.default_rng(0).random((3, 5, 5, 4))
    ours = [apply_transform(x, t) for t in range(len(TRANSFORMS))]
    refs = _references(x)
    assert len({o.tobytes() for o in ours}) == 8
    assert {np.ascontiguousarray(o).tobytes() for o in ours} == {np.ascontiguousarray(r).tobytes() for r in refs}
    assert np.array_equal(ours[0], x)
    for t in (3, 5, 6):  # the "rotations" mode: 180, and +-90 degrees
        assert any(np.array_equal(ours[t], np.rot90(x, k, axes=(1, 2))) for k in (1, 2, 3))


def test_energy_preserved_and_same_transform_for_ecal_and_hcal():
    rng = np.random.default_rng(1)
    ecal = rng.exponential(1.0, (200, 25, 25, 25)).astype(np.float32)
    hcal = rng.exponential(1.0, (200, 5, 5, 60)).astype(np.float32)
    # a marker in a corner of both: after the transform it must sit in the same corner of both
    ecal[:, 0, 0, :] += 100.0
    hcal[:, 0, 0, :] += 100.0
    arrays = {"ECAL": ecal.copy(), "HCAL": hcal.copy()}
    np.random.seed(7)
    FlipRotate(("ECAL", "HCAL"))(arrays)
    for key, orig in (("ECAL", ecal), ("HCAL", hcal)):
        total = dict(axis=(1, 2, 3), dtype=np.float64)
        np.testing.assert_allclose(arrays[key].sum(**total), orig.sum(**total), rtol=1e-12)
        per_layer = dict(axis=(1, 2), dtype=np.float64)
        np.testing.assert_allclose(arrays[key].sum(**per_layer), orig.sum(**per_layer), rtol=1e-12)
    corner = lambda a: np.stack([a[:, 0, 0, 0], a[:, 0, -1, 0], a[:, -1, 0, 0], a[:, -1, -1, 0]], 1).argmax(1)  # noqa
    assert np.array_equal(corner(arrays["ECAL"]), corner(arrays["HCAL"]))
    assert len(np.unique(corner(arrays["ECAL"]))) == 4  # the marker went to every corner
    for i in range(20):  # each event is one of the 8 images of the original
        assert any(np.array_equal(arrays["ECAL"][i:i + 1], r) for r in _references(ecal[i:i + 1]))


def test_modes_checks_and_determinism():
    rect = {"X": np.ones((4, 6, 5, 3), np.float32)}
    with pytest.raises(ValueError, match="square"):
        FlipRotate("X")(dict(rect))
    out = FlipRotate("X", mode="flips")(dict(rect))  # flips are fine on a rectangle
    assert out["X"].shape == (4, 6, 5, 3)
    with pytest.raises(KeyError, match="HCAL"):
        FlipRotate(("HCAL",))({"ECAL": np.ones((2, 3, 3, 1))})
    with pytest.raises(ValueError, match="mode"):
        FlipRotate(mode="mirror")
    assert FlipRotate(mode="rotations").n_transforms == 4 and FlipRotate().n_transforms == 8
    x = np.random.default_rng(2).random((50, 7, 7, 2)).astype(np.float32)
    a, b = {"X": x.copy()}, {"X": x.copy()}
    FlipRotate("X", seed=3)(a)
    pickle.loads(pickle.dumps(FlipRotate("X", seed=3)))(b)
    assert np.array_equal(a["X"], b["X"]) and not np.array_equal(a["X"], x)


def test_flips_run_in_the_generator_workers(tmp_path, monkeypatch):
    from dlkit.generators import MultiClassGenerator, make_samples_from_dirs

    monkeypatch.setenv("DLKIT_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(5)
    ecal = rng.exponential(1.0, (96, 7, 7, 3)).astype(np.float32)
    (tmp_path / "A").mkdir()
    with h5py.File(tmp_path / "A" / "a.h5", "w") as f:
        f["ECAL"] = ecal
        f["energy"] = np.arange(96, dtype=np.float32)
    samples = make_samples_from_dirs(tmp_path, ["ECAL", "energy"])
    with MultiClassGenerator(samples, 32, shuffle=False, n_workers=2, preprocess=FlipRotate("ECAL")) as gen:
        epochs = [np.concatenate([b["ECAL"] for b in gen]) for _ in range(2)]
        energy = np.concatenate([b["energy"] for b in gen])
    order = energy.astype(int)
    for images in epochs:
        np.testing.assert_allclose(images.sum(axis=(1, 2, 3), dtype=np.float64),
                                   ecal[order].sum(axis=(1, 2, 3), dtype=np.float64), rtol=1e-12)
        assert not np.array_equal(images, ecal[order])
    assert not np.array_equal(epochs[0], epochs[1])  # a new draw every epoch
