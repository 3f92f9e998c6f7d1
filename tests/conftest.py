import os

# Quiet, deterministic, CPU-only test runs; set before anything imports Keras.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MPLBACKEND", "Agg")
# tests/ on the path of every subprocess too: the scan tests run the toy experiment (toy.py) by name
_TESTS = os.path.dirname(os.path.abspath(__file__))
if _TESTS not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_TESTS, os.environ.get("PYTHONPATH")) if p)

import pytest  # noqa: E402


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A run's private world: its own data and cache directories and last-use records, tmp_path as the working directory; returns
    the environment for a subprocess (TensorFlow quiet)."""
    monkeypatch.setenv("DLKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DLKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # the caches' last-use records
    monkeypatch.chdir(tmp_path)
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
