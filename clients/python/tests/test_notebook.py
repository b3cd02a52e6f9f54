"""The quick-start notebook runs from top to bottom against the live network."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.live

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "..", "..", "docs", "notebooks", "python-quickstart.ipynb")


def test_quickstart_notebook_runs(demo, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    if not os.path.exists(NOTEBOOK):
        pytest.skip("the notebook is not in this tree (an installed package without the docs)")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env_before = os.environ.get("PLEXUS_CONNECT")
    os.environ["PLEXUS_CONNECT"] = demo.connect_path
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        if env_before is None:
            os.environ.pop("PLEXUS_CONNECT", None)
        else:
            os.environ["PLEXUS_CONNECT"] = env_before
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "invalid:" in text and "agee" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, "the Kaplan-Meier plot was not drawn"
