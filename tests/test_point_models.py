"""Point models (dlkit.models) on every Keras backend: outputs unchanged when the points of an event are
permuted, when padding is appended and when padded points hold junk; EdgeConv's neighbours against a
brute-force numpy k-NN; each model trains a step, saves and loads to the same outputs."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from dlkit.models import MODELS, build, knn  # noqa: E402

F, M = 4, 12
OUTPUTS = {"class": (3, "softmax"), "energy": (1, None)}
SMALL = {
    "deepsets": {"widths": (16, 16), "head_widths": (16,)},
    "particlenet": {"k": 4, "blocks": ((16, 16), (16, 16)), "head_widths": (16,), "coords": (0, 1, 2)},
    "transformer": {"dim": 16, "heads": 2, "depth": 2, "class_depth": 1, "pair_bias": True, "head_widths": (16,)},
}


def events(seed=0, n=6, m=M):
    rng = np.random.default_rng(seed)
    counts = rng.integers(2, m + 1, n)
    counts[0] = m  # one event full, and at least k + 1 points in every one
    counts = np.maximum(counts, 6)
    points = rng.normal(size=(n, m, F)).astype(np.float32)
    mask = np.arange(m)[None, :] < counts[:, None]
    points[~mask] = 0.0
    return points, mask


def predict(model, points, mask):
    out = model({"hits": keras.ops.convert_to_tensor(points), "hits_mask": keras.ops.convert_to_tensor(mask)})
    return {k: keras.ops.convert_to_numpy(v) for k, v in out.items()}


def assert_same(a, b):
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=1e-5, err_msg=k)


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    keras.utils.set_random_seed(1)
    return build(request.param, F, OUTPUTS, name="hits", **SMALL[request.param])


def test_permuting_the_points_changes_nothing(model):
    points, mask = events()
    ref = predict(model, points, mask)
    rng = np.random.default_rng(5)
    perm = np.stack([rng.permutation(M) for _ in range(len(points))])
    rows = np.arange(len(points))[:, None]
    assert_same(ref, predict(model, points[rows, perm], mask[rows, perm]))


def test_padding_appended_or_junk_in_it_changes_nothing(model):
    points, mask = events()
    ref = predict(model, points, mask)
    more = np.concatenate([points, np.zeros((len(points), 7, F), np.float32)], axis=1)
    more_mask = np.concatenate([mask, np.zeros((len(points), 7), bool)], axis=1)
    assert_same(ref, predict(model, more, more_mask))
    junk = points.copy()
    junk[~mask] = np.random.default_rng(3).normal(scale=50, size=int((~mask).sum() * F)).reshape(-1, F)
    assert_same(ref, predict(model, junk, mask))


def test_trains_saves_and_loads(model, tmp_path):
    points, mask = events(seed=2, n=16)
    y = {"class": np.eye(3, dtype=np.float32)[np.arange(16) % 3], "energy": np.ones((16, 1), np.float32)}
    model.compile(optimizer="adam", loss={"class": "categorical_crossentropy", "energy": "mse"})
    history = model.fit({"hits": points, "hits_mask": mask}, y, epochs=2, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert_same(predict(model, points, mask), predict(loaded, points, mask))


def test_knn_equals_brute_force_numpy():
    rng = np.random.default_rng(11)
    coords = rng.normal(size=(3, 15, 3)).astype(np.float32)
    counts = np.array([15, 9, 5])
    mask = np.arange(15)[None, :] < counts[:, None]
    coords[~mask] = 0.0  # padding at the origin: close to everyone, yet nobody's neighbour
    k = 6
    idx, valid = (keras.ops.convert_to_numpy(t) for t in knn(keras.ops.convert_to_tensor(coords),
                                                               keras.ops.convert_to_tensor(mask), k))
    for b, n in enumerate(counts):
        for i in range(n):
            d = ((coords[b, :n] - coords[b, i]) ** 2).sum(-1)
            d[i] = np.inf
            expected = np.argsort(d, kind="stable")[: min(k, n - 1)]
            assert idx[b, i, : len(expected)].tolist() == expected.tolist(), (b, i)
            assert valid[b, i].sum() == len(expected)


def test_unknown_model_and_parameter():
    with pytest.raises(ValueError, match="point model 'pointnet' is not one of"):
        build("pointnet", F, OUTPUTS)
    with pytest.raises(ValueError, match="point model 'deepsets'.*width"):
        build("deepsets", F, OUTPUTS, width=3)
