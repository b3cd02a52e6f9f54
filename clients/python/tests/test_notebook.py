"""The quick-start notebook runs from top to bottom: against the live network, and against a fake one."""

from __future__ import annotations

import os

import pytest

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "..", "..", "docs", "notebooks", "python-quickstart.ipynb")


def run_notebook(connect_path: str, tmp_path):
    """Executes the notebook with PLEXUS_CONNECT set; returns its code cells' outputs."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    if not os.path.exists(NOTEBOOK):
        pytest.skip("the notebook is not in this tree (an installed package without the docs)")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env_before = os.environ.get("PLEXUS_CONNECT")
    os.environ["PLEXUS_CONNECT"] = connect_path
    # The kernel's own inline backend draws the plot into the notebook; Agg would draw nothing.
    backend = os.environ.pop("MPLBACKEND", None)
    try:
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        if backend is not None:
            os.environ["MPLBACKEND"] = backend
        if env_before is None:
            os.environ.pop("PLEXUS_CONNECT", None)
        else:
            os.environ["PLEXUS_CONNECT"] = env_before
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def check_outputs(outputs) -> None:
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "invalid:" in text and "agee" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, "the Kaplan-Meier plot was not drawn"


@pytest.mark.live
def test_quickstart_notebook_runs(demo, tmp_path):
    check_outputs(run_notebook(demo.connect_path, tmp_path))


def test_quickstart_notebook_runs_against_a_fake_coordinator(tmp_path):
    """The notebook's mechanics (connect file, kernel, plot) without a live network."""
    pytest.importorskip("cryptography")
    from fake_https import FakeCoordinator

    fake = FakeCoordinator(str(tmp_path))
    try:
        check_outputs(run_notebook(fake.connect_path, tmp_path))
    finally:
        fake.close()
