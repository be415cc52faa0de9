"""Fine-tuning on new data: scArches query loading, new cell types and batches, gene alignment."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from conftest import FIT, TINY, make_adata

import scgm_scvi
from scgm_scvi.model._query import align_genes


@pytest.fixture(scope="module")
def reference():
    """``(reference model, query AnnData)``: label_2 cells only in the query, in a new batch."""
    adata = make_adata()
    ref = adata[adata.obs["labels"] != "label_2"].copy()
    query = adata[adata.obs["labels"] == "label_2"].copy()
    query.obs["batch"] = "batch_new"
    scgm_scvi.SCGM.setup_anndata(ref, labels_key="labels", batch_key="batch")
    model = scgm_scvi.SCGM(ref, **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=3, diffusion_max_epochs=4, **FIT)
    return model, query


def _emb(model, j=0):
    return model.module.score_net.condition_embedding.tables[j].weight.detach().clone()


def test_query_new_label_and_batch(reference):
    ref, query = reference
    q = scgm_scvi.SCGM.load_query_data(query, ref)
    labels = q.conditions_["columns"][0]["categories"]
    batches = q.conditions_["columns"][1]["categories"]
    # existing categories keep their codes, new ones are appended
    assert labels == ["label_0", "label_1", "label_2"]
    assert batches == ["batch_0", "batch_1", "batch_new"]
    assert q.module.condition_sizes == [3, 3]
    old, new = _emb(ref), _emb(q)
    assert new.shape == (4, old.shape[1])
    torch.testing.assert_close(new[:2], old[:2])  # label_0, label_1 unchanged
    torch.testing.assert_close(new[3], old[2])  # the "unknown" row moved to the end
    torch.testing.assert_close(new[2], old[2])  # the new label starts as "unknown"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q.train_vae(max_epochs=2, **FIT)
        assert q.diffusion_trained_  # scArches keeps the reference latent space
        q.train_diffusion(max_epochs=4, **FIT)
    tuned = _emb(q)
    torch.testing.assert_close(tuned[:2], old[:2])  # reference labels not touched
    torch.testing.assert_close(tuned[3], old[2])
    assert not torch.equal(tuned[2], old[2])  # the new label was learned
    torch.testing.assert_close(_emb(q, 1)[:2], _emb(ref, 1)[:2])
    assert not torch.equal(_emb(q, 1)[2], _emb(ref, 1)[2])  # new batch learned
    # the rest of the score network is frozen
    for name, p in q.module.score_net.named_parameters():
        if "condition_embedding" not in name:
            torch.testing.assert_close(p, ref.module.score_net.get_parameter(name))
    torch.testing.assert_close(q.module.latent_mean, ref.module.latent_mean)

    g = q.generate(n=25, cell_type="label_2", seed=0)
    assert (g.obs["labels"] == "label_2").all()
    assert list(g.obs["labels"].cat.categories) == labels
    assert set(g.obs["batch"]) == {"batch_new"}  # drawn from the query's label_2 cells
    assert g.X.shape == (25, 100) and g.X.sum() > 0
    np.testing.assert_array_equal(g.X.data, np.round(g.X.data))
    # reference cell types are generated as by the reference
    a = q.generate(n=20, cell_type="label_0", seed=1)
    b = ref.generate(n=20, cell_type="label_0", seed=1)
    np.testing.assert_allclose(a.obsm["X_scgm"], b.obsm["X_scgm"], atol=1e-3)
    # the drawn library sizes and batches of a reference label come from reference cells
    assert set(a.obs["batch"]) <= {"batch_0", "batch_1"}


def test_query_from_saved_dir_and_roundtrip(reference, tmp_path):
    ref, query = reference
    ref.save(tmp_path / "ref")
    q = scgm_scvi.SCGM.load_query_data(query, str(tmp_path / "ref"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q.train_diffusion(max_epochs=3, **FIT)
    q.save(tmp_path / "query")
    loaded = scgm_scvi.SCGM.load(str(tmp_path / "query"))
    assert loaded.query_["condition_sizes"] == [2, 2]
    a = q.generate(n=10, cell_type="label_2", seed=3)
    b = loaded.generate(n=10, cell_type="label_2", seed=3)
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
    # fine-tuning again after load keeps the reference rows frozen
    again = scgm_scvi.SCGM.load(str(tmp_path / "query"), adata=q.adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again.train_diffusion(max_epochs=2, **FIT)
    torch.testing.assert_close(_emb(again)[:2], _emb(ref)[:2])


def test_query_gene_alignment_warns_with_count(reference):
    ref, query = reference
    rng = np.random.default_rng(0)
    keep = rng.permutation(query.n_vars)[:70]  # 30 genes missing, order shuffled
    partial = query[:, keep].copy()
    partial.X = sp.csr_matrix(partial.X)  # sparse input stays sparse
    before = partial.copy()
    with pytest.warns(UserWarning, match=r"lacks 30 of the reference's 100 genes \(30.0%\)"):
        q = scgm_scvi.SCGM.load_query_data(partial, ref)
    assert list(q.adata.var_names) == list(ref.var_names_)
    assert partial.var_names.equals(before.var_names)  # the input is not modified
    missing = ~ref.var_names_.isin(partial.var_names)
    assert q.adata.X[:, np.flatnonzero(missing)].sum() == 0
    gene = partial.var_names[0]
    j = list(ref.var_names_).index(gene)
    assert sp.issparse(q.adata.X)
    np.testing.assert_array_equal(
        q.adata.X[:, [j]].toarray().ravel(), partial[:, gene].X.toarray().ravel()
    )
    # same genes in the same order: no warning, no copy
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        same = query.copy()
        assert align_genes(same, ref.var_names_) is same


def test_query_errors(reference):
    ref, query = reference
    bad = query.copy()
    del bad.obs["batch"]
    with pytest.raises(ValueError, match=r"lacks the obs columns \['batch'\]"):
        scgm_scvi.SCGM.load_query_data(bad, ref)
    with pytest.raises(ValueError, match="no gene"):
        other = query.copy()
        other.var_names = [f"x{i}" for i in range(other.n_vars)]
        scgm_scvi.SCGM.load_query_data(other, ref)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scgm_scvi.SCGM.load_query_data(query, "/nonexistent/model")
    # a query without new categories: the default fine-tuning has nothing to train
    known = make_adata()
    known = known[known.obs["labels"] == "label_0"].copy()
    q = scgm_scvi.SCGM.load_query_data(known, ref)
    with pytest.raises(ValueError, match="no new cell type"):
        q.train_diffusion(max_epochs=1, **FIT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q.train_diffusion(max_epochs=1, finetune="all", **FIT)
    assert q.diffusion_trained_
