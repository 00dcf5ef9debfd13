"""experiments/notebook.ipynb runs from top to bottom on the embedded model, and stays committed
with its outputs cleared."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO

NOTEBOOK = REPO / "experiments" / "notebook.ipynb"


def test_the_notebook_is_committed_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())  # read as it is on disk (no nbformat upgrade)
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "the notebook has no code cells"
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (f"cells {dirty} of {NOTEBOOK} hold outputs; clear them before committing "
                       "(Jupyter: Clear Outputs of All Cells, or jupyter nbconvert --clear-output --inplace)")


@pytest.mark.integration
def test_the_notebook_runs_without_errors(tmp_path, monkeypatch):
    """Executed by nbclient in a kernel of this interpreter (a kernelspec installed into a temporary
    folder), in a temporary working directory: nothing is written into the repository."""
    pytest.importorskip("nbclient", reason="the notebook extra: pip install '.[notebook]'")
    import nbformat
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    install(prefix=str(tmp_path / "kernel"))  # kernels/python3 running sys.executable
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "kernel" / "share" / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError at the first cell that fails
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    figures = [c for c in nb.cells if c.cell_type == "code" and "interp.figures." in c.source]
    assert figures and all(any("data" in o for o in c.outputs) for c in figures)  # shown inline
    run_dir = work / "outputs" / "runs" / "notebook"
    assert (run_dir / "manifest.json").is_file() and (run_dir / "stability.parquet").is_file()
