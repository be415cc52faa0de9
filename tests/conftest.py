"""Shared fixtures: a tiny synthetic dataset and one tiny SCGM trained once per module."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch
from anndata import AnnData

import scgm_scvi

# The test networks are tiny: with a thread pool, per-op synchronisation dominates and becomes
# very slow when the CPU is shared (CI runners, parallel jobs). One thread is faster and stable.
torch.set_num_threads(1)

#: Small networks: every test model uses them so the whole suite trains in seconds.
TINY = {"n_latent": 8, "n_hidden": 32, "score_width": 32, "score_blocks": 2}
#: Trainer settings shared by every test fit.
FIT = {"accelerator": "cpu", "enable_progress_bar": False}
VAE_EPOCHS = 4
DIFFUSION_EPOCHS = 6


def make_adata(seed: int = 0) -> AnnData:
    """200 cells x 100 genes of integer counts, 2 batches ("batch"), 3 labels ("labels")."""
    scvi.settings.seed = seed
    adata = scvi.data.synthetic_iid(batch_size=100, n_genes=100, n_batches=2, n_labels=3)
    adata.obs_names = [f"cell_{i}" for i in range(adata.n_obs)]
    return adata


def make_model(adata: AnnData | None = None) -> scgm_scvi.SCGM:
    """A registered, untrained tiny SCGM (labels and batch registered)."""
    adata = make_adata() if adata is None else adata
    scgm_scvi.SCGM.setup_anndata(adata, labels_key="labels", batch_key="batch")
    return scgm_scvi.SCGM(adata, **TINY)


def snapshot(adata: AnnData) -> dict:
    """Deep copies of the parts of an AnnData a model method might modify by mistake."""
    X = adata.X.toarray() if sp.issparse(adata.X) else np.array(adata.X, copy=True)
    return {
        "X": X,
        "obs": adata.obs.copy(deep=True),
        "var": adata.var.copy(deep=True),
        "obsm": {k: np.array(v, copy=True) for k, v in adata.obsm.items()},
        "layers": sorted(adata.layers.keys()),
        "uns": copy.deepcopy(dict(adata.uns)),
        "shape": adata.shape,
    }


def _assert_same(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, obj=where)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b, where


def assert_unchanged(before: dict, adata: AnnData) -> None:
    """Compare an AnnData with a :func:`snapshot` taken earlier."""
    _assert_same(before, snapshot(adata), "adata")


@pytest.fixture(scope="module")
def trained():
    """``(model, adata)``: a tiny SCGM trained with both stages, shared within a test module."""
    adata = make_adata()
    model = make_model(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=VAE_EPOCHS, diffusion_max_epochs=DIFFUSION_EPOCHS, **FIT)
    return model, adata
