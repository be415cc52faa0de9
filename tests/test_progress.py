"""Progress bars: shown on terminals and in Jupyter, hidden in logs, quiet imports."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import scvi

from scgm_scvi._progress import ProgressBar, show_progress

nbformat = pytest.importorskip("nbformat", reason="docs extra not installed (nbformat)")
nbclient = pytest.importorskip("nbclient", reason="docs extra not installed (nbclient)")
pytest.importorskip("ipykernel", reason="docs extra not installed (ipykernel)")


def test_default_follows_whether_someone_watches(monkeypatch):
    assert show_progress(True) and not show_progress(False)
    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))  # a log file
    assert not show_progress(None)


@pytest.mark.parametrize("style", ["tqdm", "rich"])
def test_bar_in_scvi_style(style, monkeypatch, capsys):
    monkeypatch.setattr(scvi.settings, "progress_bar_style", style)
    bar = ProgressBar(3, "Sampling", True)
    for _ in range(3):
        bar.update()
    bar.close()
    hidden = ProgressBar(3, "Sampling", False)
    hidden.update()
    hidden.close()
    assert hidden._tqdm is None and hidden._rich is None


def test_jupyter_import_is_quiet_and_generate_shows_progress(monkeypatch):
    """In a Jupyter kernel without ipywidgets: no TqdmWarning at import, and a visible bar."""
    # scvi-tools itself imports tqdm.auto: imported first, it warns on its own (not ours)
    code = """
import scgm_scvi
import scvi, torch
torch.set_num_threads(1)
scvi.settings.seed = 0
adata = scvi.data.synthetic_iid(batch_size=60, n_genes=30, n_batches=1, n_labels=2)
scgm_scvi.SCGM.setup_anndata(adata, labels_key="labels")
model = scgm_scvi.SCGM(adata, n_latent=4, n_hidden=16, score_width=16, score_blocks=1)
model.train(max_epochs=1, diffusion_max_epochs=1, accelerator="cpu", enable_progress_bar=False)
"""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(code),
        nbformat.v4.new_code_cell("cells = model.generate(n=10, n_steps=2)"),
    ]
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()

    def stderr(cell):
        return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stderr")

    assert "IProgress" not in stderr(nb.cells[0])
    assert "Generating (dpmpp_2m_sde)" in stderr(nb.cells[1])
