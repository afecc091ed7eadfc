"""The notebooks in ``notebooks/`` run from top to bottom and are stored without outputs.

They are executed with nbclient (the engine of nbmake) in a kernel running this
interpreter, from the ``notebooks/`` folder, as a user would open them: progress bars on
(tqdm's widget where the kernel has ipywidgets; text here, which needs no rendering), the
Dask dashboard's link printed, the data found through ``M3RCR_DATA`` or beside the
repository.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
EXPECTED = [
    "01-quickstart.ipynb",
    "02-m3rcr-dataset.ipynb",
    "03-hpc-cluster.ipynb",
    "04-your-own-area.ipynb",
]
KERNEL = "m3rcr-tests"


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def _code(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def _text(notebook) -> str:
    """What the executed cells printed."""
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
    )


def test_the_notebooks_are_there():
    assert [path.name for path in _notebooks()] == EXPECTED


@pytest.mark.parametrize("path", _notebooks(), ids=lambda path: path.stem)
def test_notebook_is_stored_without_outputs(path: Path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name}: outputs stored; clear them (jupyter nbconvert "
                "--clear-output --inplace)"
            )
    assert set(notebook.metadata) <= {"kernelspec", "language_info"}


@pytest.mark.parametrize("path", _notebooks(), ids=lambda path: path.stem)
def test_notebook_shows_the_real_install_and_keeps_progress_bars(path: Path):
    first = nbformat.read(path, as_version=4).cells[0].source
    assert 'pip install -e ".[notebooks]"' in first and "make venv" in first
    assert "pip install m3rcr_xr" not in first
    assert not any("progress=False" in code for code in _code(path))


def test_the_dataset_notebook_finds_its_data(tmp_path, monkeypatch, capsys):
    setup = _code(NOTEBOOKS / "02-m3rcr-dataset.ipynb")[0]
    monkeypatch.chdir(tmp_path)  # no repository above: no samples beside it
    monkeypatch.delenv("M3RCR_DATA", raising=False)
    namespace: dict = {}
    exec(setup, namespace)
    assert namespace["root"] is None
    assert "No M3R-CR data found: set M3RCR_DATA" in capsys.readouterr().out
    monkeypatch.setenv("M3RCR_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"M3RCR_DATA={tmp_path}: no test/ folder"):
        exec(setup, {})
    (tmp_path / "test").mkdir()
    exec(setup, namespace)
    assert namespace["root"] == tmp_path


@pytest.fixture(scope="module")
def kernel(tmp_path_factory) -> str:
    """A kernel spec that starts this interpreter, whatever is on PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "m3rcr tests", "language": "python"})
    )
    return str(root)


@pytest.mark.slow
@pytest.mark.parametrize("path", _notebooks(), ids=lambda path: path.stem)
def test_notebook_runs(path: Path, kernel: str, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", kernel)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel draws inline
    monkeypatch.delenv("M3RCR_DATA", raising=False)  # the samples beside the repository
    monkeypatch.delenv("M3RCR_STAC", raising=False)  # the catalog the notebook writes
    python_path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(python_path))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, kernel_name=KERNEL, timeout=180, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
    images = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert images or path.name == "03-hpc-cluster.ipynb", f"{path.name} drew nothing"
    text = _text(notebook)
    if path.name == "02-m3rcr-dataset.ipynb":
        assert "data: " in text or "No M3R-CR data found" in text
    if path.name == "03-hpc-cluster.ipynb":
        assert "Dask dashboard: http://" in text
    if path.name == "04-your-own-area.ipynb":  # the UDM2 blackfill, NaN in the COG
        assert "nodata: nan bands: ('blue', 'green', 'red', 'nir')" in text
        assert "no data in the COG: 8.3% of the values" in text
