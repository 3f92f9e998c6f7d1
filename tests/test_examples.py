"""The example notebooks execute (with a tiny dataset and a private cache) - they cannot rot."""

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.timeout(600)
def test_scan_comparison_notebook(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    if not (EXAMPLES / "scan_comparison.ipynb").exists():
        pytest.skip("not running from a source checkout")
    monkeypatch.setenv("DLKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("DLKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("SCAN_POINTS", "0,12")
    nb = nbformat.read(EXAMPLES / "scan_comparison.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=540, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    table_html = "".join(o.get("data", {}).get("text/html", "") for o in nb.cells[3].outputs)
    assert "CaloDNN_Depth1_Width64_decay0.01_lr0.1" in table_html and "Gamma_AUC" in table_html
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2
