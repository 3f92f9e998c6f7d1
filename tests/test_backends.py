"""Keras backends: models saved on one backend load and train on every other, and the device choice
(--gpu/--cpu) is applied before anything imports Keras.

Every check runs its backends in fresh processes (``KERAS_BACKEND`` is fixed at Keras' import), so the whole
matrix runs under any backend; pairs whose backend is not installed skip, saying which.
"""

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).parent / "scripts" / "backend_roundtrip.py"
BACKENDS = ("tensorflow", "jax", "torch")


def _env(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _need(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"the {backend} backend is not installed (pip install '.[{backend}]')")


def _run(backend, *args):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], check=False, env=_env(backend), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, f"{backend} {args[0]} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def _installed():
    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """``{(x, y): result}`` of loading the model saved on x (2 epochs of Adam) on y and training one more
    epoch, for every installed pair: one process saves per backend, one loads all per backend (torch's
    save last, so that the torch check of the others is not masked)."""
    root, installed = tmp_path_factory.mktemp("backends"), _installed()
    for x in installed:
        _run(x, "save", str(root / x))
    results = {}
    for y in installed:
        out = root / f"loaded-on-{y}.json"
        _run(y, "load", str(out), *(str(root / x) for x in installed))
        got = json.loads(out.read_text())
        results.update({(x, y): got[str(root / x)] for x in installed})
    return results


@pytest.mark.timeout(900)
@pytest.mark.parametrize("load_on", BACKENDS)
@pytest.mark.parametrize("save_on", BACKENDS)
def test_saved_on_one_backend_loads_and_trains_on_another(save_on, load_on, matrix):
    """Save on X, load with the optimizer on Y (-L, -p), train one more epoch: the optimizer state came
    along (iterations 8 -> 12, and the weights equal those of X's own continuation, which a fresh Adam
    would not give), no other backend's optimizer module, and torch never enters a TF or JAX process."""
    _need(save_on)
    _need(load_on)
    got = matrix[save_on, load_on]
    assert "error" not in got, got
    assert got["backend"] == load_on
    assert got["loaded"]["iterations"] == 8 and got["iterations"] == 12  # 2 + 1 epochs of 64 / 16 batches
    module = got["loaded"]["module"]
    assert not module.startswith("keras.src.backend.") or module.startswith(f"keras.src.backend.{load_on}.")
    if load_on != "torch":
        assert not got["torch_imported"]
    reference = matrix[save_on, save_on]["kernels"]
    for a, b in zip(got["kernels"], reference, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


# Records CUDA_VISIBLE_DEVICES when the first ML framework is imported, then ends the run there (os._exit:
# nothing after the device choice matters here). A file, not stderr: dlkit.quiet filters fd 2 around Keras.
_FIRST_IMPORT = """
import importlib.abc, os, runpy, sys
record, module = sys.argv[1], sys.argv[2]

class FirstImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("keras", "tensorflow", "jax", "torch"):
            with open(record, "w") as f:
                f.write(repr((name, os.environ.get("CUDA_VISIBLE_DEVICES"))))
            os._exit(0)
        return None

sys.meta_path.insert(0, FirstImport())
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""

EXPERIMENTS = ["calodnn.ClassificationExperiment", "calodnn.RegressionExperiment",
               "lartpcdnn.ClassificationExperiment", "clustercount.PeakFindingExperiment",
               "clustercount.ClusterizationExperiment"]


@pytest.mark.parametrize("flag, expected", [(["--gpu", "3"], "3"), (["--cpu"], "")], ids=["gpu", "cpu"])
@pytest.mark.parametrize("module", EXPERIMENTS)
def test_device_choice_is_applied_before_keras_is_imported(module, flag, expected, tmp_path):
    """--gpu N / --cpu set CUDA_VISIBLE_DEVICES before the first import of Keras (or a framework), the only
    moment it pins the GPU."""
    record = tmp_path / "first_import"
    env = {k: v for k, v in _env("tensorflow").items() if k != "CUDA_VISIBLE_DEVICES"}
    proc = subprocess.run([sys.executable, "-c", _FIRST_IMPORT, str(record), module, "--Test", *flag],
                          check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert record.exists(), f"{module} ended (rc {proc.returncode}) without importing Keras:\n{proc.stderr[-2000:]}"
    name, devices = ast.literal_eval(record.read_text())
    assert devices == expected, f"{module} imported {name} with CUDA_VISIBLE_DEVICES={devices!r}"
