"""The example notebooks execute (with a tiny dataset and a private cache) - they cannot rot."""

import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def execute(name, tmp_path, monkeypatch, **env):
    """Run examples/<name> in a fresh kernel in tmp_path, with a private data and cache directory."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    if not (EXAMPLES / name).exists():
        pytest.skip("not running from a source checkout")
    for key, value in {"DLKIT_DATA": str(tmp_path / "data"), "DLKIT_CACHE_DIR": str(tmp_path / "cache"),
                       "TF_CPP_MIN_LOG_LEVEL": "3", **env}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=540, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def html_of(cell) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)


@pytest.mark.timeout(600)
def test_scan_comparison_notebook(tmp_path, monkeypatch):
    nb = execute("scan_comparison.ipynb", tmp_path, monkeypatch, SCAN_POINTS="0,12")
    table_html = html_of(nb.cells[3])
    assert "CaloDNN_Depth1_Width64_decay0.01_lr0.1" in table_html and "Gamma_AUC" in table_html
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2


@pytest.mark.timeout(600)
def test_experiment_api_notebook(tmp_path, monkeypatch):
    """Two points trained with ClassificationExperiment.run(...) from a notebook, then compared with ScanTable."""
    nb = execute("experiment_api.ipynb", tmp_path, monkeypatch)
    dirs = [d for d in (tmp_path / "TrainedModels.API").iterdir() if d.is_dir()]
    assert sorted(json.loads((d / "MetaData.json").read_text())["HyperParamSet"] for d in dirs) == [0, 12]
    codes = [o for o in nb.cells[1].outputs if o.output_type == "execute_result"][0]["data"]["text/plain"]
    assert codes.count("(0, ") == 2  # both exit codes 0
    table_html = html_of(nb.cells[6])
    assert all(d.name in table_html for d in dirs) and "Ele_AUC" in table_html
    assert any("image/png" in o.get("data", {}) for o in nb.cells[4].outputs)  # the best run's ROC figure
