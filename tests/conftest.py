import os

# Quiet, deterministic, CPU-only test runs; set before anything imports Keras.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A run's private world: its own data and cache directories, tmp_path as the working directory; returns
    the environment for a subprocess (TensorFlow quiet)."""
    monkeypatch.setenv("DLKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DLKIT_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
