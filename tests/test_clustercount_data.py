"""clustercount.data: the derived peak-finding and clusterization datasets, their caching and their errors."""

import json
import pickle
import subprocess
import sys

import h5py
import numpy as np
import pytest

from clustercount.baselines import PeakList, derivative_peaks, encode_times, time_proximity_counts
from clustercount.data import (
    TP_GAPS_NS,
    DerivationOptions,
    TimesPreprocess,
    WindowPreprocess,
    cluster_dataset,
    derived_files,
    peak_dataset,
    waveform_files,
)
from clustercount.simulate import DriftSimConfig, write_dataset
from dlkit.config import ConfigError
from dlkit.generators import DataError


@pytest.fixture(scope="module")
def waves(tmp_path_factory):
    root = tmp_path_factory.mktemp("waves")
    write_dataset(root, n_waveforms=120, waveforms_per_file=60, seed=9, progress=False, workers=1)
    return root


def test_peak_dataset_contents_and_cache(waves, tmp_path, monkeypatch):
    monkeypatch.setenv("DLKIT_DATA", str(tmp_path))
    directory = peak_dataset(waves)
    assert directory.parent == tmp_path / "clustercount" and directory.name.startswith("peaks-")
    files = derived_files(directory, "peaks")
    assert [f.name for f in files] == ["peaks_0.h5", "peaks_1.h5"]
    with h5py.File(files[1]) as f, h5py.File(waves / "wave_1.h5") as raw:
        k = f["window"].shape[0]
        assert f["window"].shape == (k, 15, 1) and f["window"].dtype == np.float16
        for key in ("label", "peak_type", "deriv", "amplitude", "waveform_index", "sample"):
            assert f[key].shape == (k,)
        np.testing.assert_array_equal(f["label"][()], f["peak_type"][()] > 0)
        # The window is the waveform around the candidate; the derivative flags are the algorithm's peaks.
        w = raw["waveform"][()].astype(np.float32)
        wf, s = f["waveform_index"][()], f["sample"][()]
        np.testing.assert_array_equal(f["window"][:, 7, 0], w[wf, s].astype(np.float16))
        d = derivative_peaks(w)
        assert set(zip(wf[f["deriv"][()] == 1].tolist(), s[f["deriv"][()] == 1].tolist())) == \
            set(zip(d.waveform.tolist(), d.index.tolist()))
        assert 0.2 < f["label"][()].mean() < 0.6
    mtime = files[0].stat().st_mtime_ns
    assert peak_dataset(waves) == directory and files[0].stat().st_mtime_ns == mtime  # reused
    other = peak_dataset(waves, DerivationOptions(candidate_threshold=3.0))
    assert other != directory
    with h5py.File(derived_files(other, "peaks")[0]) as f:
        assert np.all((f["amplitude"][()] > 3.0) | (f["deriv"][()] == 1))


def test_cluster_dataset_contents(waves, tmp_path, monkeypatch):
    monkeypatch.setenv("DLKIT_DATA", str(tmp_path))
    directory = cluster_dataset(waves)
    cfg = DriftSimConfig()
    with h5py.File(derived_files(directory, "clusters")[0]) as f, h5py.File(waves / "wave_0.h5") as raw:
        assert f["times"].shape == (60, 1024, 1) and f["times"].dtype == np.uint8
        np.testing.assert_array_equal(f["n_clusters"][()], raw["n_clusters"][()])
        np.testing.assert_array_equal(f["particle"][()], raw["particle"][()])
        w = raw["waveform"][()].astype(np.float32)
        d = derivative_peaks(w)
        times = PeakList(d.offsets, d.index * cfg.dt_ns)
        np.testing.assert_array_equal(f["times"][()], encode_times(times))
        np.testing.assert_array_equal(f["n_peaks"][()], d.counts)
        np.testing.assert_array_equal(f["tp_counts"][()], time_proximity_counts(times, TP_GAPS_NS))
        assert list(f.attrs["tp_gaps_ns"]) == list(TP_GAPS_NS) and f.attrs["peak_finder"] == "derivative"
    info = json.loads((directory / "COMPLETE.json").read_text())
    assert info["peak_finder"] == "derivative" and info["options"]["k1"] == DerivationOptions().k1


def test_preprocesses():
    batch = {"window": np.full((2, 15, 1), 5.0, np.float16), "label": np.array([0, 1], np.int8)}
    out = WindowPreprocess(10)(batch)
    assert out["window"].dtype == np.float32 and out["window"][0, 0, 0] == 0.5 and out["label"].dtype == np.float32
    with pytest.raises(ConfigError, match="WindowScale"):
        WindowPreprocess(0)
    out = TimesPreprocess()({"times": np.ones((1, 4, 1), np.uint8), "n_clusters": np.array([3.0], np.float32)})
    assert out["times"].dtype == np.float32


def test_preprocesses_pickle_to_a_light_module():
    """The readers unpickle the pre-processes: their module must not pull in the simulator, scipy or Keras."""
    for pre in (WindowPreprocess(10), TimesPreprocess()):
        assert b"clustercount.preprocess" in pickle.dumps(pre) and b"clustercount.data" not in pickle.dumps(pre)
    heavy = ("scipy", "h5py", "keras", "tensorflow", "clustercount.simulate", "clustercount.data")
    code = ("import sys, clustercount.preprocess; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} or m in {heavy!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        waveform_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no \\*.h5"):
        waveform_files(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    with h5py.File(bad / "wave_0.h5", "w") as f:
        f["waveform"] = np.zeros((3, 100), np.float32)
    with pytest.raises(DataError, match="wave_0.h5.*missing datasets"):
        peak_dataset(bad, path=tmp_path / "out")
