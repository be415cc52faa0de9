"""Generated and edited AnnData go through scanpy's standard pipeline unchanged."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

from scgm_scvi import SCGEditor


def standard_pipeline(adata: ad.AnnData) -> ad.AnnData:
    """normalize_total, log1p, pca, neighbors, umap (and a Leiden-free check of the graph)."""
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=10)
    sc.pp.neighbors(adata, n_neighbors=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.umap(adata, random_state=0)
    return adata


def check(adata: ad.AnnData) -> None:
    assert adata.obsm["X_pca"].shape == (adata.n_obs, 10)
    assert adata.obsm["X_umap"].shape == (adata.n_obs, 2)
    assert np.isfinite(adata.obsm["X_umap"]).all()
    assert adata.obsp["connectivities"].shape == (adata.n_obs, adata.n_obs)
    assert "log1p" in adata.uns
    # the counts are still the generated integers
    np.testing.assert_array_equal(
        adata.layers["counts"].data, np.round(adata.layers["counts"].data)
    )


@pytest.fixture(scope="module")
def outputs(trained, tmp_path_factory):
    model, adata = trained
    generated = model.generate(n=120, seed=0)
    edited = SCGEditor(model).edit(adata[:80], {"labels": "label_1"}, strength=0.5, n_steps=5)
    # through disk, as users get them from the command line
    root = tmp_path_factory.mktemp("scanpy")
    generated.write_h5ad(root / "generated.h5ad")
    edited.write_h5ad(root / "edited.h5ad")
    return {
        "generated": generated,
        "edited": edited,
        "generated_read": ad.read_h5ad(root / "generated.h5ad"),
        "edited_read": ad.read_h5ad(root / "edited.h5ad"),
    }


@pytest.mark.parametrize("name", ["generated", "edited", "generated_read", "edited_read"])
def test_standard_pipeline(outputs, name):
    adata = outputs[name].copy()
    check(standard_pipeline(adata))


def test_highly_variable_genes_and_rank_genes(outputs):
    adata = outputs["generated_read"].copy()
    sc.pp.highly_variable_genes(adata, n_top_genes=30, flavor="seurat_v3")
    assert adata.var["highly_variable"].sum() == 30
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.tl.rank_genes_groups(adata, groupby="labels", method="wilcoxon")
    assert "rank_genes_groups" in adata.uns


def test_concatenate_with_real_cells(trained, outputs):
    _, real = trained
    both = ad.concat(
        {"real": real, "generated": outputs["generated"]}, label="source", join="inner"
    )
    assert both.n_obs == real.n_obs + outputs["generated"].n_obs
    check(standard_pipeline(both))
