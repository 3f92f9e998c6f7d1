"""Keras backends: the device choice (--gpu/--cpu) is applied before anything imports Keras.

Every check runs in fresh processes (``KERAS_BACKEND`` and the device are fixed at Keras' import).
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


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
