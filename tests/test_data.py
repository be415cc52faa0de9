"""The bundled PBMC 3k dataset."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import scgm_scvi


@pytest.fixture(scope="module")
def pbmc():
    return scgm_scvi.data.pbmc3k()


def test_pbmc3k_shape_and_counts(pbmc):
    assert pbmc.shape == (2638, 2000)
    assert sp.issparse(pbmc.X) and pbmc.X.format == "csr"
    data = pbmc.X.data
    assert data.size > 0 and data.min() >= 0
    np.testing.assert_array_equal(data, np.round(data))  # raw UMI counts, not normalised
    assert np.all(np.asarray(pbmc.X.sum(axis=1)).ravel() > 0)
    assert pbmc.obs_names.is_unique and pbmc.var_names.is_unique


def test_pbmc3k_cell_types(pbmc):
    cell_type = pbmc.obs["cell_type"]
    assert cell_type.dtype == "category"
    assert cell_type.notna().all()
    assert cell_type.nunique() == 9
    assert cell_type.value_counts().min() > 0


def test_pbmc3k_fresh_copy_each_call(pbmc):
    first = scgm_scvi.data.pbmc3k()
    first.X.data[:] = -1.0
    first.obs["cell_type"] = "changed"
    second = scgm_scvi.data.pbmc3k()
    assert second is not first
    assert second.X.data.min() >= 0
    assert second.obs["cell_type"].nunique() == 9
    assert (second.X != pbmc.X).nnz == 0


def test_pbmc3k_registers_with_scgm(pbmc):
    adata = pbmc.copy()
    scgm_scvi.SCGM.setup_anndata(adata, labels_key="cell_type")
    model = scgm_scvi.SCGM(adata, n_latent=4, n_hidden=16, score_width=16, score_blocks=1)
    assert model.summary_stats.n_labels == 9
    assert model.summary_stats.n_vars == 2000
