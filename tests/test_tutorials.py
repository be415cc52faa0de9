"""The tutorial notebooks run end to end (a few epochs and sampler steps; outputs not saved)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
#: notebook -> data file it reads from tutorials/data/ (None: the package's bundled data)
NOTEBOOKS = {
    "01_generate_pbmc.ipynb": None,
    "02_edit_kang_ifnb.ipynb": "kang2018_ifnb_muscat1.5k.h5ad",
    "03_finetune_new_cell_type.ipynb": None,
}

nbformat = pytest.importorskip("nbformat", reason="docs extra not installed (nbformat)")
nbclient = pytest.importorskip("nbclient", reason="docs extra not installed (nbclient)")
pytest.importorskip("ipykernel", reason="docs extra not installed (ipykernel)")


def test_every_notebook_is_tested():
    assert sorted(p.name for p in TUTORIALS.glob("*.ipynb")) == sorted(NOTEBOOKS)


def test_tutorial_data_is_in_the_repository():
    """A fresh clone runs every tutorial: the data they read are in tutorials/data/."""
    readme = (TUTORIALS / "data" / "README.md").read_text()
    for data in filter(None, NOTEBOOKS.values()):
        assert (TUTORIALS / "data" / data).is_file() and data in readme


def test_notebooks_are_saved_with_outputs():
    """Committed notebooks carry their outputs (the docs render them without executing)."""
    for name in NOTEBOOKS:
        nb = nbformat.read(TUTORIALS / name, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(c.get("execution_count") for c in code), f"{name}: not executed"
        assert not any(
            o.get("output_type") == "error" for c in code for o in c.get("outputs", [])
        ), f"{name}: saved with an error"


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_notebook_runs(name, monkeypatch):
    monkeypatch.setenv("SCGM_TUTORIAL_EPOCHS", "2")
    monkeypatch.setenv("SCGM_TUTORIAL_STEPS", "3")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    # the "python3" kernel runs the first python on PATH: make it this interpreter
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    client.execute()  # raises CellExecutionError with the failing cell on error
