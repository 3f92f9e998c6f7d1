"""dlkit.losses against independent numpy / scikit-learn / scipy references."""

import json
import zipfile

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

keras = pytest.importorskip("keras")

from dlkit import losses  # noqa: E402

N = 64


@pytest.fixture
def energies():
    rng = np.random.default_rng(1)
    y_true = rng.uniform(1.0, 500.0, size=N)
    y_pred = y_true * rng.normal(1.0, 0.1, size=N) + rng.normal(0.0, 2.0, size=N)
    return y_true, y_pred


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


# Relative tolerance of a loss computed in each dtype: TensorFlow keeps float64 inputs in float64, JAX
# (without x64) and torch compute them in float32.
RTOL = {np.dtype("float64"): 1e-6, np.dtype("float32"): 1e-5}


def assert_matches(out, reference, *inputs):
    """``out`` equals ``reference(*inputs)`` computed in float64 from the inputs rounded to ``out``'s dtype
    (the backend's computing precision), within that dtype's tolerance."""
    rounded = [np.asarray(x).astype(out.dtype).astype(np.float64) for x in inputs]
    np.testing.assert_allclose(out, reference(*rounded), rtol=RTOL[out.dtype])


# Per-sample numpy references, written from the formulas in the brief.
REFERENCES = {
    "mean_squared_error": lambda t, p: (p - t) ** 2,
    "mean_absolute_error": lambda t, p: np.abs(p - t),
    "mean_bias_error": lambda t, p: p - t,
    "msre": lambda t, p: ((p - t) / t) ** 2,
    "mrse": lambda t, p: ((t - p) / np.sqrt(t)) ** 2,
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize(
    "true_shape, pred_shape", [((N,), (N, 1)), ((N, 1), (N, 1)), ((N, 1), (N,)), ((N,), (N,))]
)
def test_function_losses_match_numpy(name, true_shape, pred_shape, energies):
    y_true, y_pred = energies
    fn = getattr(losses, name)
    out = _np(fn(y_true.reshape(true_shape), y_pred.reshape(pred_shape)))
    assert out.shape == (N,)  # one value per sample, never an (N, N) broadcast
    assert_matches(out, REFERENCES[name], y_true, y_pred)


def test_mse_mae_match_sklearn(energies):
    y_true, y_pred = energies
    mse = float(np.mean(_np(losses.mean_squared_error(y_true, y_pred[:, None]))))
    mae = float(np.mean(_np(losses.mean_absolute_error(y_true[:, None], y_pred))))
    assert mse == pytest.approx(sklearn.metrics.mean_squared_error(y_true, y_pred), rel=1e-6)
    assert mae == pytest.approx(sklearn.metrics.mean_absolute_error(y_true, y_pred), rel=1e-6)


def test_multi_column_targets_reduce_over_last_axis():
    rng = np.random.default_rng(2)
    y_true, y_pred = rng.uniform(1, 500, (N, 3)), rng.uniform(1, 500, (N, 3))
    assert_matches(_np(losses.msre(y_true, y_pred)), lambda t, p: np.mean(((p - t) / t) ** 2, axis=-1), y_true, y_pred)


def test_relative_losses_stay_finite_for_zero_target():
    assert np.isfinite(_np(losses.msre(np.zeros(3), np.ones((3, 1))))).all()
    assert np.isfinite(_np(losses.mrse(np.zeros(3), np.ones((3, 1))))).all()


@pytest.mark.parametrize("true_shape", [(N,), (N, 1), (N, 2)])
def test_gaussian_nll_matches_scipy(true_shape, energies):
    y_true, mu = energies
    rng = np.random.default_rng(3)
    sigma = rng.uniform(0.5, 30.0, size=N)
    y_pred = np.stack([mu, np.log(sigma**2)], axis=-1)
    target = y_true if true_shape == (N,) else np.repeat(y_true[:, None], true_shape[1], axis=1)
    out = _np(losses.gaussian_nll(target, y_pred))
    assert out.shape == (N,)
    assert_matches(out, lambda t, p: -scipy.stats.norm.logpdf(t[:, 0] if t.ndim > 1 else t, loc=p[:, 0],
                                                              scale=np.exp(0.5 * p[:, 1])), target, y_pred)
    mu_back, sigma_back = losses.split_gaussian_prediction(y_pred)
    np.testing.assert_allclose(mu_back, mu)
    np.testing.assert_allclose(sigma_back, sigma)


def test_gaussian_nll_rejects_wrong_output_width():
    with pytest.raises(ValueError, match="log"):
        losses.gaussian_nll(np.ones(4), np.ones((4, 3)))


def _chi2_reference(y_true, y_pred, a, b, c, floor=1e-6):
    var = np.maximum(a**2 * y_true + b**2 + c**2 * y_true**2, floor)
    return (y_pred - y_true) ** 2 / var


@pytest.mark.parametrize("true_shape", [(N,), (N, 1)])
def test_resolution_chi2_matches_numpy(true_shape, energies):
    # The Loss computes in float32 (keras floatx): compare on float32-representable inputs.
    y_true, y_pred = (e.astype(np.float32).astype(np.float64) for e in energies)
    loss = losses.ResolutionChi2(a=0.12, b=0.3, c=0.02, reduction=None)
    out = _np(loss(y_true.reshape(true_shape), y_pred[:, None]))
    assert out.shape == (N,)
    np.testing.assert_allclose(out, _chi2_reference(y_true, y_pred, 0.12, 0.3, 0.02), rtol=1e-5)
    # Default reduction: mean over the batch; default parameters.
    default = losses.ResolutionChi2()
    expected = _chi2_reference(y_true, y_pred, default.a, default.b, default.c).mean()
    assert float(_np(default(y_true, y_pred[:, None]))) == pytest.approx(expected, rel=1e-5)


def test_resolution_chi2_floor_and_validation():
    out = _np(losses.ResolutionChi2(a=0.1, b=0.0, c=0.0, reduction=None)(np.zeros(2), np.ones((2, 1))))
    np.testing.assert_allclose(out, 1.0 / 1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="min_variance"):
        losses.ResolutionChi2(min_variance=0.0)
    with pytest.raises(ValueError, match="a must"):
        losses.ResolutionChi2(a=-0.1)


def test_resolution_chi2_config_round_trip():
    loss = losses.ResolutionChi2(a=0.2, b=0.5, c=0.03, min_variance=1e-3, name="chi2")
    config = loss.get_config()
    assert {k: config[k] for k in ("a", "b", "c", "min_variance", "name")} == {
        "a": 0.2, "b": 0.5, "c": 0.03, "min_variance": 1e-3, "name": "chi2"
    }
    clone = losses.ResolutionChi2.from_config(config)
    assert clone.get_config() == config
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, losses.ResolutionChi2) and again.get_config() == config


SAVE_CASES = [
    ("mean_squared_error", losses.mean_squared_error, 1),
    ("mean_absolute_error", losses.mean_absolute_error, 1),
    ("msre", losses.msre, 1),
    ("mrse", losses.mrse, 1),
    ("gaussian_nll", losses.gaussian_nll, 2),
    ("ResolutionChi2", losses.ResolutionChi2(a=0.2, c=0.05), 1),
]


@pytest.mark.parametrize("name, loss, width", SAVE_CASES, ids=[c[0] for c in SAVE_CASES])
def test_save_load_round_trip(tmp_path, name, loss, width):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = rng.uniform(1.0, 500.0, size=32).astype("float32")  # (N,) target against an (N, width) output
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(width, bias_initializer="ones")])
    model.compile(optimizer="sgd", loss=loss, metrics=[losses.mean_bias_error])
    path = tmp_path / "model.keras"
    model.save(path)

    with zipfile.ZipFile(path) as archive:  # stored by registered name, so only the registry resolves it
        loss_config = json.loads(archive.read("config.json"))["compile_config"]["loss"]
    assert "dlkit>" in json.dumps(loss_config)

    loaded = keras.saving.load_model(path)  # no custom_objects
    if isinstance(loss, losses.ResolutionChi2):
        assert isinstance(loaded.loss, losses.ResolutionChi2)
        assert loaded.loss.get_config() == loss.get_config()
    else:
        assert loaded.loss is loss
    pred = loaded.predict(x, verbose=0).astype(np.float64)
    if width == 2:
        expected = -scipy.stats.norm.logpdf(y, pred[:, 0], np.exp(0.5 * pred[:, 1])).mean()
    elif isinstance(loss, losses.ResolutionChi2):
        expected = _chi2_reference(y, pred[:, 0], 0.2, 0.0, 0.05).mean()
    else:
        expected = REFERENCES[name](y, pred[:, 0]).mean()
    result = loaded.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(expected, rel=1e-4)
    if width == 1:
        assert result["mean_bias_error"] == pytest.approx(np.mean(pred[:, 0] - y), rel=1e-4, abs=1e-3)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("MSE", losses.mean_squared_error),
        ("mse", losses.mean_squared_error),
        ("mean_squared_error", losses.mean_squared_error),
        ("MAE", losses.mean_absolute_error),
        ("mean_absolute_error", losses.mean_absolute_error),
        ("MSRE", losses.msre),
        ("msre", losses.msre),
        ("MRSE", losses.mrse),
        ("GaussianNLL", losses.gaussian_nll),
        ("gaussian_nll", losses.gaussian_nll),
        ("categorical_crossentropy", keras.losses.categorical_crossentropy),
        ("binary_crossentropy", keras.losses.binary_crossentropy),
        ("cosine_proximity", keras.losses.cosine_similarity),
    ],
)
def test_get_loss_names(name, expected):
    assert losses.get_loss(name) is expected


def test_get_loss_objects():
    chi2 = losses.get_loss("resolutionchi2")
    assert isinstance(chi2, losses.ResolutionChi2)
    assert chi2.get_config() == losses.ResolutionChi2().get_config()
    assert isinstance(losses.get_loss("ResolutionChi2"), losses.ResolutionChi2)
    assert isinstance(losses.get_loss("CategoricalCrossentropy"), keras.losses.CategoricalCrossentropy)
    assert isinstance(losses.get_loss(losses.ResolutionChi2), losses.ResolutionChi2)
    custom = losses.ResolutionChi2(a=0.3)
    assert losses.get_loss(custom) is custom

    def my_loss(y_true, y_pred):
        return y_pred

    assert losses.get_loss(my_loss) is my_loss


def test_get_loss_unknown_name():
    with pytest.raises(ValueError) as info:
        losses.get_loss("MSRe_loss")
    message = str(info.value)
    assert "'MSRe_loss'" in message
    for valid in ("MSE", "MAE", "MSRE", "MRSE", "GaussianNLL", "ResolutionChi2"):
        assert valid in message
    with pytest.raises(ValueError, match="Did you mean 'categorical_crossentropy'"):
        losses.get_loss("categorical_crosentropy")
    with pytest.raises(ValueError, match="Did you mean 'GaussianNLL'"):
        losses.get_loss("GausianNLL")
    with pytest.raises(TypeError):
        losses.get_loss(3)


def test_get_metric():
    assert losses.get_metric("MBE") is losses.mean_bias_error
    assert losses.get_metric("mean_bias_error") is losses.mean_bias_error
    assert losses.get_metric("msre") is losses.msre
    assert losses.get_metric("accuracy") == "accuracy"  # left for compile() to resolve
    assert losses.get_metric("categorical_accuracy") == "categorical_accuracy"
    with pytest.raises(ValueError, match="Did you mean 'MBE'.*mean_bias|MBE"):
        losses.get_metric("MBEE")
    assert "MBE" in losses.available_metrics()
    assert set(losses.available_losses()) >= {"MSE", "MAE", "MSRE", "MRSE", "GaussianNLL", "ResolutionChi2"}
