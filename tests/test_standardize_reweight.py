"""Issue 30 items 3 and 4: Standardize fitted on the training set, Reweight flattening a variable per class.

The references are built independently of dlkit's pipeline: the events a fit drew are known from the
generator's provenance, and read again with h5py; the statistics are numpy's over the valid entries only.
"""

import json
import logging
import pickle
import re

import h5py
import numpy as np
import pytest
from scipy import stats

from dlkit.generators import Chain, MultiClassGenerator, Normalize, Select, make_samples_from_dirs, split_samples
from dlkit.generators.cache import callable_identity
from dlkit.generators.fitting import (FITTED_KEY, FittedTransforms, check_entries, fit_transforms, resolve_fitted,
                                      sample_batches)
from dlkit.generators.reweight import Reweight, fit_reweight, parse_bins
from dlkit.generators.standardize import ROBUST_IQR_SIGMA, Standardize, fit_standardize

KEYS = ["hits", "hits_mask", "hits_count", "energy", "img"]
M, F = 6, 3
BINS = {"n": 10, "low": 10.0, "high": 500.0}


def _write(path, rng, n, cls):
    count = rng.integers(0, M + 1, n)  # events with no point at all too
    mask = np.arange(M)[None, :] < count[:, None]
    values = np.stack([rng.normal(5, 2, (n, M)), rng.exponential(3, (n, M)), rng.normal(-1, 0.5, (n, M))], -1)
    hits = np.zeros((n, M, F), np.float32)
    hits[mask] = values[mask]
    u = rng.random(n)
    energy = 10 + 490 * (u**2 if cls == 0 else np.sqrt(u))  # far from flat, differently per class
    with h5py.File(path, "w") as f:
        f["hits"], f["hits_mask"], f["hits_count"] = hits, mask, count.astype(np.int32)
        f["energy"] = energy.astype(np.float32)
        f["img"] = rng.gamma(2.0, 1.5 + cls, (n, 4, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("points")
    rng = np.random.default_rng(30)
    for c, name in enumerate(["A", "B"]):
        (root / name).mkdir()
        for i in range(2):
            _write(root / name / f"f{i}.h5", rng, 2000, c)
    samples = make_samples_from_dirs(root, KEYS, classes=["A", "B"])
    train, test = split_samples(samples, [0.75, 0.25], seed=1)
    return train, test


def _drawn(batches, keep=("_entry", "_event", "class_index", "energy")):
    out = {k: [] for k in keep}
    for b in batches:
        for k in keep:
            out[k].append(np.array(b[k]))
    return {k: np.concatenate(v) for k, v in out.items()}


def _read_back(train, entry, event, key):
    """The rows ``event`` of ``train[entry]``'s files, read with h5py: the independent reference."""
    rows = []
    for e, ev in zip(entry, event):
        with h5py.File(train[e].file, "r") as f:
            rows.append(f[key][int(ev)])
    return np.stack(rows)


# -- Standardize ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["standard", "robust"])
def test_fitted_constants_are_numpys_over_exactly_the_training_events_and_valid_entries(data, method):
    train, _ = data
    entry = {"arrays": ["hits", "img"], "method": method, "events": 1000, "seed": 3}
    fitted = fit_transforms(train, check_entries({"Standardize": entry})["Standardize"], n_workers=1)
    drawn = _drawn(sample_batches(train, events=1000, seed=3, provenance=True, n_workers=1))
    assert len(drawn["_event"]) == 1000
    assert len(set(zip(drawn["_entry"].tolist(), drawn["_event"].tolist()))) == 1000
    for e, ev in zip(drawn["_entry"], drawn["_event"]):  # every event drawn is a training event
        assert train[e].start <= ev < train[e].stop
    hits = _read_back(train, drawn["_entry"], drawn["_event"], "hits")
    mask = _read_back(train, drawn["_entry"], drawn["_event"], "hits_mask")
    img = _read_back(train, drawn["_entry"], drawn["_event"], "img")
    valid = hits[mask].astype(np.float64)  # (points, F): padded rows never enter
    assert (hits[~mask] == 0).all() and len(valid) < hits.shape[0] * M
    std = fitted.standardize.constants
    if method == "standard":  # population std (ddof=0), numpy's default
        img64 = img.astype(np.float64)
        ref = {"hits": (valid.mean(0), valid.std(0)), "img": ([img64.mean()], [img64.std()])}
    else:
        q = np.percentile(valid, [25, 75], axis=0)
        qi = np.percentile(img.astype(np.float64), [25, 75])
        ref = {"hits": (np.median(valid, 0), (q[1] - q[0]) / ROBUST_IQR_SIGMA),
               "img": ([np.median(img.astype(np.float64))], [(qi[1] - qi[0]) / ROBUST_IQR_SIGMA])}
    for name, (center, scale) in ref.items():
        np.testing.assert_allclose(std[name]["center"], center, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(std[name]["scale"], scale, rtol=1e-12)
    assert std["hits"]["per_feature"] and not std["img"]["per_feature"]
    assert std["hits"]["count"] == len(valid) and std["img"]["count"] == img.size
    assert fitted.info["Standardize"]["events"] == 1000


def test_streamed_fit_equals_one_batch_fit_and_per_feature_axes():
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (500, 5, 4)).astype(np.float32)
    batches = [{"x": x[i:i + 37]} for i in range(0, 500, 37)]
    whole = fit_standardize({"x": x}, "x", per_feature=["x"])
    streamed = fit_standardize(batches, "x", per_feature=["x"])
    flat = x.reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(streamed.constants["x"]["center"], flat.mean(0), rtol=1e-13)
    np.testing.assert_allclose(streamed.constants["x"]["scale"], flat.std(0), rtol=1e-12)
    np.testing.assert_allclose(streamed.constants["x"]["scale"], whole.constants["x"]["scale"], rtol=1e-12)
    # robust beyond max_values: the median of a uniform subsample of 1000 rows (its sigma: 1.25 * 2 / sqrt(1000))
    robust = fit_standardize(batches, "x", "robust", per_feature=["x"], max_values=1000, seed=1)
    np.testing.assert_allclose(robust.constants["x"]["center"], np.median(flat, 0), atol=4 * 0.079)
    assert robust.constants["x"]["count"] == 2500


def test_robust_subsample_is_uniform():
    from dlkit.generators.standardize import _Reservoir

    n, times = 2500, np.zeros(2500)
    for seed in range(200):
        reservoir = _Reservoir(1000, np.random.default_rng(seed))
        for i in range(0, n, 185):
            reservoir.add(np.arange(n, dtype=float)[i:i + 185, None])
        kept = np.concatenate(reservoir.rows)[:, 0].astype(int)
        assert len(kept) == 1000 == len(set(kept.tolist()))
        times[kept] += 1
    assert abs(times[:500].mean() / 200 - 0.4) < 0.01 and abs(times[-500:].mean() / 200 - 0.4) < 0.01


def test_padded_entries_stay_zero_and_normalize_chains(data):
    train, test = data
    norm = Normalize({"img": 2.0, "energy": None})
    std = fit_standardize(sample_batches(train, events=800, seed=5, preprocess=norm, n_workers=1), ["hits", "img"])
    drawn = _drawn(sample_batches(train, events=800, seed=5, provenance=True, n_workers=1), ("_entry", "_event"))
    img = _read_back(train, drawn["_entry"], drawn["_event"], "img").astype(np.float64) / 2.0
    np.testing.assert_allclose(std.constants["img"]["center"], [img.mean()], rtol=1e-12)  # fitted after Normalize
    with MultiClassGenerator(test, 256, preprocess=Chain(norm, std), shuffle=False, n_workers=1,
                             provenance=True) as gen:
        out = gen.read_all()
    raw = {k: _read_back(test, out["_entry"], out["_event"], k) for k in ("hits", "hits_mask", "img")}
    mask = raw["hits_mask"]
    assert (out["hits_mask"] == mask).all() and (~mask).any()
    assert (out["hits"][~mask] == 0.0).all()  # padded entries: exactly the padding value
    c, s = np.asarray(std.constants["hits"]["center"]), np.asarray(std.constants["hits"]["scale"])
    np.testing.assert_allclose(out["hits"][mask], (raw["hits"][mask] - c) / s, rtol=1e-5, atol=1e-5)
    c, s = std.constants["img"]["center"][0], std.constants["img"]["scale"][0]
    np.testing.assert_allclose(out["img"], (raw["img"] / 2.0 - c) / s, rtol=1e-5, atol=1e-5)
    valid = out["hits"][mask]  # standardised on other events: mean near 0, std near 1
    assert np.abs(valid.mean(0)).max() < 0.1 and np.abs(valid.std(0) - 1).max() < 0.1


def test_json_pickle_cache_key_and_constant_feature(caplog):
    rng = np.random.default_rng(1)
    batch = {"p": rng.normal(size=(20, 3, 2)).astype(np.float32), "p_mask": rng.random((20, 3)) < 0.7,
             "e": np.full(20, 7.0, np.float32)}
    batch["p"][~batch["p_mask"]] = 0
    with caplog.at_level(logging.WARNING, logger="dlkit.generators.standardize"):
        std = fit_standardize(batch, ["p", "e"])
    assert std.constants["e"]["scale"] == [1.0] and "scale 0" in caplog.text  # constant: no division by zero
    text = json.dumps(std.to_json())
    back = Standardize.from_json(json.loads(text))
    assert back == std == Standardize.from_json(text) == pickle.loads(pickle.dumps(std))
    out = back({k: np.array(v) for k, v in batch.items()})
    assert (out["p"][~batch["p_mask"]] == 0).all() and np.allclose(out["e"], 0.0)
    other = Standardize({**std.constants, "e": {"center": [1.0], "scale": [2.0]}})
    norm = Normalize({"e": 2.0})  # the constants sit too deep in a Chain for the generic identity: a key of them
    assert callable_identity(Chain(norm, std)) != callable_identity(Chain(norm, other))
    assert callable_identity(Chain(norm, std)) == callable_identity(Chain(norm, back))
    with pytest.raises(ValueError, match="features on the last axis"):
        Standardize({"p": {"center": [0, 0, 0], "scale": [1, 1, 1]}})({"p": np.zeros((2, 4, 2), np.float32)})


def test_config_entries_are_checked_naming_them():
    from dlkit.config import ConfigError

    ok = check_entries({"Standardize": ["hits"], "Reweight": {"bins": BINS}})
    assert ok["Standardize"]["method"] == "standard" and ok["Reweight"]["variable"] == "energy"
    bad = [({"Standardize": {"arrays": ["x"], "method": "mean"}}, "'Standardize': 'method'"),
           ({"Standardize": {"arrays": []}}, "'Standardize': 'arrays'"),
           ({"Standardize": {"arrays": ["x"], "events": 0}}, "'Standardize': 'events' = 0"),
           ({"Standardize": {"arrays": ["x"], "evnets": 5}}, "'Standardize': unknown key"),
           ({"Reweight": {"bins": [3, 2, 1]}}, "'Reweight': 'bins'"),
           ({"Reweight": {"bins": {"n": 0, "low": 1, "high": 2}}}, "'Reweight': 'bins'"),
           ({"Reweight": {"variable": "energy"}}, "'Reweight': missing ['bins']"),
           ({"Reweight": {"bins": BINS, "outside": "keep"}}, "'Reweight': 'outside'"),
           ({"Reweight": "energy"}, "'Reweight': expected None or a dict")]
    for config, message in bad:
        with pytest.raises(ConfigError, match=re.escape(f"config entry {message}")):
            check_entries(config)
    with pytest.raises(ConfigError, match="'Reweight': lartpcdnn does not support it"):
        check_entries({"Reweight": {"bins": BINS}}, supported=("Standardize",), experiment="lartpcdnn")
    assert parse_bins((4, 0.0, 2.0)).tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]


# -- Reweight ------------------------------------------------------------------------------------------------
def _hist(energy, w, edges):
    h, _ = np.histogram(energy, edges, weights=w)
    h2, _ = np.histogram(energy, edges, weights=w * w)
    return h, h2


def _chi2_flat(h, var):
    """chi2 of the hypothesis 'flat' (its level fitted: the weighted mean), ndf = bins - 1."""
    level = np.sum(h / var) / np.sum(1 / var)
    return float(np.sum((h - level) ** 2 / var)), len(h) - 1


def test_weighted_energy_is_flat_per_class_within_errors(data):
    train, _ = data
    edges = parse_bins(BINS)
    fit_events = _drawn(sample_batches(train, events=3000, seed=11, provenance=True, n_workers=1))
    rw = fit_reweight(fit_events, "energy", BINS, n_classes=2)
    # every training event, as the generator delivers it to Keras: the Reweight step sets "weight"
    with MultiClassGenerator(train, 500, postprocess=rw, seed=2, provenance=True, n_workers=1) as gen:
        served = _drawn(gen, ("_entry", "_event", "class_index", "energy", "weight"))
    assert len(served["weight"]) == sum(s.stop - s.start for s in train)
    was_fitted = {(int(e), int(v)) for e, v in zip(fit_events["_entry"], fit_events["_event"])}
    in_fit = np.array([(int(e), int(v)) in was_fitted for e, v in zip(served["_entry"], served["_event"])])
    results = {}
    for c in (0, 1):
        fit_c, rest = in_fit & (served["class_index"] == c), ~in_fit & (served["class_index"] == c)
        # the fitted events: each bin's weights add up to the same, exactly
        h, _ = _hist(served["energy"][fit_c], served["weight"][fit_c].astype(np.float64), edges)
        np.testing.assert_allclose(h, h.mean(), rtol=1e-5)
        assert np.isclose(served["weight"][fit_c].mean(), 1.0, rtol=1e-5)  # each class's mean weight: 1
        # the other training events: flat within the statistical errors, sum of w^2 and the fit's own counts
        h, h2 = _hist(served["energy"][rest], served["weight"][rest].astype(np.float64), edges)
        n_fit = np.asarray(rw.counts)[c]
        chi2, ndf = _chi2_flat(h, h2 + h**2 / n_fit)
        raw, _ = np.histogram(served["energy"][rest], edges)
        chi2_raw, _ = _chi2_flat(raw.astype(float), raw.astype(float))  # unweighted: Poisson errors
        results[c] = (chi2 / ndf, chi2_raw / ndf)
        assert stats.chi2.sf(chi2, ndf) > 1e-3, (c, chi2, ndf, h, np.sqrt(h2))
        assert stats.chi2.sf(chi2_raw, ndf) < 1e-10, (c, chi2_raw, raw)  # the input is far from flat
    print("chi2/ndf weighted, unweighted per class:", results)


def test_class_balance_outside_and_resampling(data):
    train, _ = data
    energy = np.array([5.0, 20.0, 20.0, 60.0, 600.0, 20.0])
    cls = np.array([0, 0, 0, 0, 0, 1])
    drop = fit_reweight({"energy": energy, "class_index": cls}, "energy", [10, 50, 100])
    assert drop.weights(energy, cls)[[0, 4]].tolist() == [0.0, 0.0]  # outside the bins: weight 0
    clip = fit_reweight({"energy": energy, "class_index": cls}, "energy", [10, 50, 100], outside="clip")
    assert (clip.weights(energy, cls) > 0).all()
    balanced = fit_reweight({"energy": energy, "class_index": cls}, "energy", [10, 50, 100], class_balance=True)
    w = balanced.weights(energy, cls)
    assert np.isclose(w[cls == 0].sum(), w[cls == 1].sum()) and np.isclose(w.sum(), 4.0)  # 4 events inside
    assert Reweight.from_json(json.loads(json.dumps(balanced.to_json()))) == balanced
    assert pickle.loads(pickle.dumps(balanced)) == balanced
    # resampling: a seeded event filter per training file; what is kept is flat per class (binomial errors)
    everything = _drawn(sample_batches(train, events=None, seed=0, n_workers=1), ("class_index", "energy"))
    rw = fit_reweight(everything, "energy", BINS, method="resample")
    kept = [s.with_filter(rw.resample_filter(0 if s.class_name == "A" else 1, seed=4)) for s in train]
    with MultiClassGenerator(kept, 500, n_workers=1, seed=0) as gen:
        once = gen.read_all()
    with MultiClassGenerator(kept, 500, n_workers=1, seed=0) as gen:
        assert (gen.read_all()["energy"] == once["energy"]).all()  # the same subset every time
    edges = parse_bins(BINS)
    for c in (0, 1):
        n = np.histogram(everything["energy"][everything["class_index"] == c], edges)[0]
        k = np.histogram(once["energy"][once["class_index"] == c], edges)[0]
        p = n.min() / n
        chi2 = float(np.sum((k - n * p) ** 2 / np.maximum(n * p * (1 - p), 1e-9)))
        assert stats.chi2.sf(chi2, len(n) - 1) > 1e-3, (c, k, n * p)
        assert k.sum() < 0.7 * n.sum()


def test_weights_reach_keras_as_sample_weights(data):
    import keras

    train, _ = data
    part = [s.with_range(s.start, s.start + 100) for s in train]
    rw = fit_reweight(_drawn(sample_batches(part, events=None, n_workers=1), ("class_index", "energy")), "energy", BINS)
    post = Chain(rw, Select("img", "onehot", "weight"))
    with MultiClassGenerator(part, 400, shuffle=False, n_workers=1, postprocess=post) as gen:
        arrays = gen.read_all()
        assert len(gen) == 1

        def model():
            keras.utils.set_random_seed(0)
            m = keras.Sequential([keras.Input((4, 4)), keras.layers.Flatten(), keras.layers.Dense(2, "softmax")])
            m.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy")
            return m

        w = rw.weights(arrays["energy"], arrays["class_index"])
        assert w.std() > 0.1  # far from uniform: an unweighted fit would differ
        via_generator, weighted, unweighted = model(), model(), model()
        via_generator.fit(gen, epochs=1, verbose=0, shuffle=False)
    weighted.fit(arrays["img"], arrays["onehot"], sample_weight=w, batch_size=400, epochs=1, verbose=0, shuffle=False)
    unweighted.fit(arrays["img"], arrays["onehot"], batch_size=400, epochs=1, verbose=0, shuffle=False)
    got, want, plain = (m.layers[-1].get_weights()[0] for m in (via_generator, weighted, unweighted))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert np.abs(got - plain).max() > 1e-4
    zero = Reweight("energy", rw.edges, np.zeros((2, 10)))  # all-zero weights: no loss at all
    x, y = arrays["img"][:50], arrays["onehot"][:50]
    assert via_generator.evaluate(x, y, sample_weight=zero.weights(arrays["energy"][:50], arrays["class_index"][:50]),
                                  verbose=0) == 0.0


# -- a run: fitted once, stored in MetaData.json, reused by -p ------------------------------------------------
@pytest.fixture(scope="module")
def lcd(tmp_path_factory):
    from calodnn.simulate import write_dataset

    root = tmp_path_factory.mktemp("lcd")
    write_dataset(root, events_per_class=200, events_per_file=100, seed=5, progress=False)
    return root


def test_calodnn_run_fits_once_and_a_resumed_run_reuses_the_stored_constants(lcd, env, tmp_path, caplog):
    from calodnn.ClassificationExperiment import cli
    from dlkit.metadata import read_metadata

    fitted = ["--set", 'Standardize={"arrays": ["ECAL", "HCAL"], "events": 300}',
              "--set", 'Reweight={"bins": {"n": 4, "low": 10, "high": 510}, "events": 300}']
    argv = ["--Test", "--data", str(lcd), "--set", "BatchSize=64", "--set", "Epochs=1", "-s", "0", "--NoAnalysis",
            "--set", "Workers=1", *fitted]
    with caplog.at_level(logging.INFO):
        assert cli(argv) == 0
    assert "fitted Standardize and Reweight on 300 training events" in caplog.text
    base = tmp_path / "TrainedModels.Test"
    first_dir = next(base.glob("CaloDNN_*"))
    first = read_metadata(first_dir)[FITTED_KEY]
    assert first["Info"]["Fits"] == 1 and (tmp_path / first["Info"]["FittedIn"]).resolve() == first_dir.resolve()
    assert set(first["Standardize"]["constants"]) == {"ECAL", "HCAL"} and len(first["Reweight"]["table"]) == 4
    caplog.clear()
    with caplog.at_level(logging.INFO):  # resumed: the stored constants, no second fit
        assert cli([*argv, "-p", "--set", "Epochs=2"]) == 0
    assert "fitted Standardize" not in caplog.text and "reusing the fit stored in MetaData.json" in caplog.text
    second_dir = sorted(base.glob("CaloDNN_*"))[-1]
    second = read_metadata(second_dir)
    assert second_dir != first_dir and second["TotalEpochs"] == 2
    assert second[FITTED_KEY] == first  # identical constants, fitted once, by the first run
    # a continued run whose config no longer names them still uses them (its model expects them)
    data = FittedTransforms.from_json(first)
    meta = {FITTED_KEY: first, "InputDir": str(second_dir)}
    again = resolve_fitted(meta, {"Standardize": None, "Reweight": None}, fit=None)
    assert again.standardize == data.standardize and again.reweight == data.reweight


def test_calodnn_refuses_what_it_cannot_fit(lcd, env, capsys):
    from calodnn.ClassificationExperiment import cli

    argv = ["--Test", "--data", str(lcd), "--NoAnalysis"]
    assert cli([*argv, "--set", 'Standardize={"arrays": ["ECAL"], "method": "mean"}']) == 2
    assert "config entry 'Standardize': 'method' = 'mean'" in capsys.readouterr().err
    assert cli([*argv, "--set", 'Reweight={"bins": [10, 510], "method": "resample"}']) == 2
    assert "use --nopremix" in capsys.readouterr().err


def test_calodnn_resampling_on_the_fly_and_an_analysis_of_the_loaded_model(lcd, env, tmp_path, caplog):
    from calodnn.ClassificationExperiment import cli
    from dlkit.metadata import read_metadata

    common = ["--Test", "--data", str(lcd), "--nopremix", "--set", "BatchSize=64", "--set", "Epochs=1", "-s", "0",
              "--set", "Workers=1", "--set", "AUCBootstrap=0", "--set", "EnergyBins=[10, 510, 2]"]
    assert cli([*common, "--NoAnalysis", "--set", 'Standardize={"arrays": ["ECAL"], "method": "robust"}',
                "--set", 'Reweight={"bins": [10, 260, 510], "method": "resample"}']) == 0
    first_dir = next((tmp_path / "TrainedModels.Test").glob("CaloDNN_*"))
    first = read_metadata(first_dir)
    assert first[FITTED_KEY]["Standardize"]["constants"]["ECAL"]["method"] == "robust"
    assert first[FITTED_KEY]["Reweight"]["method"] == "resample"
    caplog.clear()
    with caplog.at_level(logging.INFO):  # -L, analysis only, a config without the entries: the stored fit
        assert cli([*common, "-L", str(first_dir), "--NoTrain"]) == 0
    assert "fitted Standardize" not in caplog.text and "reusing the fit stored in MetaData.json" in caplog.text
    analysed = read_metadata(sorted((tmp_path / "TrainedModels.Test").glob("CaloDNN_*"))[-1])
    assert analysed[FITTED_KEY] == first[FITTED_KEY] and 0.0 <= analysed["Ele_AUC"] <= 1.0


def test_a_real_collection_from_csr_hdf5(tmp_path):
    """The batch contract's collections (dlkit.jagged files read through Collection): fitted over the real
    points only, clipped points included as served, padded rows untouched."""
    from dlkit.generators import Collection, SampleSpec
    from dlkit.jagged import Jagged, write_events

    rng = np.random.default_rng(8)
    n = 300
    counts = rng.integers(0, 9, n)
    x = [rng.normal(2, 3, c) for c in counts]
    e = [rng.exponential(1.5, c) for c in counts]
    path = write_events(tmp_path / "pts.h5", {"hit_x": Jagged.from_lists(x, np.float32),
                                              "hit_e": Jagged.from_lists(e, np.float32),
                                              "energy": rng.uniform(10, 500, n).astype(np.float32)})
    spec = [SampleSpec(str(path), {"hits": Collection(("hit_x", "hit_e"), max_points=6), "energy": "energy"}, "A")]
    std = fit_standardize(sample_batches(spec, events=None, n_workers=1), ["hits"])
    served = np.concatenate([np.stack([a[:6], b[:6]], -1) for a, b in zip(x, e)])  # clipped to 6 points
    served = served.astype(np.float32).astype(np.float64)  # as stored
    np.testing.assert_allclose(std.constants["hits"]["center"], served.mean(0), rtol=1e-10)
    np.testing.assert_allclose(std.constants["hits"]["scale"], served.std(0), rtol=1e-10)
    with MultiClassGenerator(spec, 128, shuffle=False, preprocess=std, n_workers=1) as gen:
        out = gen.read_all()
    assert (out["hits"][~out["hits_mask"]] == 0.0).all() and out["hits_mask"].sum() == len(served)
    np.testing.assert_allclose(out["hits"][out["hits_mask"]].mean(0), 0.0, atol=1e-5)
