"""Fine-tuning on new data: scArches query loading, new cell types and batches, gene alignment."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch
from anndata import AnnData
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
    """The frozen surgery (scArches): only new categories learn; explicit for a new label."""
    ref, query = reference
    with pytest.warns(UserWarning, match="cell types the reference lacks"):
        q = scgm_scvi.SCGM.load_query_data(query, ref, unfrozen=False)
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
    # the cell-type Gaussians of the score baseline are grown the same way
    g_old, g_new = ref.module.gaussians.mean, q.module.gaussians.mean
    torch.testing.assert_close(g_new[:, :2], g_old[:, :2])
    torch.testing.assert_close(g_new[:, 2:], g_old[:, [2, 2]])

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
    fitted = q.module.gaussians.mean
    torch.testing.assert_close(fitted[:, [0, 1, 3]], g_old)  # reference types, all cells
    assert not torch.allclose(fitted[:, 2], g_old[:, 2])  # the new type's Gaussian was fit

    g = q.generate(n=25, cell_type="label_2", seed=0)
    assert (g.obs["labels"] == "label_2").all()
    assert list(g.obs["labels"].cat.categories) == ["label_2"]  # the types present
    assert "label_2" in q.conditions_["columns"][0]["categories"]
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = scgm_scvi.SCGM.load_query_data(query, str(tmp_path / "ref"), unfrozen=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q.train_diffusion(max_epochs=3, **FIT)
    q.save(tmp_path / "query")
    loaded = scgm_scvi.SCGM.load(str(tmp_path / "query"))
    assert loaded.query_["condition_sizes"] == [2, 2]
    assert loaded.query_["freeze"]["unfrozen"] is False
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
    assert q.query_["freeze"]["unfrozen"] is False  # no new cell type: frozen surgery
    with pytest.raises(ValueError, match="no new cell type"):
        q.train_diffusion(max_epochs=1, **FIT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q.train_diffusion(max_epochs=1, finetune="all", **FIT)
    assert q.diffusion_trained_
    # after an unfrozen VAE fine-tuning, training only the new embeddings is an error
    with pytest.warns(UserWarning, match="lacks 2 of the reference's cell types"):
        u = scgm_scvi.SCGM.load_query_data(query, ref)
    assert u.query_["freeze"]["unfrozen"] is True  # the default for a new cell type
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u.train_vae(max_epochs=1, **FIT)
    with pytest.raises(ValueError, match="finetune='all'"):
        u.train_diffusion(max_epochs=1, finetune="new_conditions", **FIT)
    with pytest.raises(ValueError, match="finetune must be"):
        u.train_diffusion(max_epochs=1, finetune="some", **FIT)


def _marker_adata(seed: int = 0, n_per_label: int = 120, n_genes: int = 60) -> AnnData:
    """Counts with 3 labels; each label has 10 marker genes of its own (20x expression)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(["label_0", "label_1", "label_2"], n_per_label)
    rate = np.full((len(labels), n_genes), 1.0)
    for k in range(3):
        rate[labels == f"label_{k}", 10 * k : 10 * k + 10] = 20.0
    rate *= rng.lognormal(0.0, 0.3, size=(len(labels), 1))  # library size
    X = rng.poisson(rate).astype(np.float32)
    adata = AnnData(
        X=sp.csr_matrix(X),
        obs=pd.DataFrame({"labels": labels}, index=[f"c{i}" for i in range(len(labels))]),
    )
    adata.var_names = [f"g{j}" for j in range(n_genes)]
    return adata


def test_new_cell_type_recommended_path():
    """New cell type: reference + new cells, unfrozen VAE, score network warm-started."""
    scvi.settings.seed = 0
    full = _marker_adata()
    ref_data = full[full.obs["labels"] != "label_2"].copy()
    scgm_scvi.SCGM.setup_anndata(ref_data, labels_key="labels")
    ref = scgm_scvi.SCGM(ref_data, **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.train_vae(max_epochs=100, early_stopping=False, **FIT)
        ref.train_diffusion(max_epochs=100, **FIT)
        q = scgm_scvi.SCGM.load_query_data(full, ref)  # reference cells + the new ones
        assert q.query_["freeze"]["unfrozen"] is True
        q.train_vae(max_epochs=30, early_stopping=False, **FIT)
        assert not q.diffusion_trained_  # the latent space moved
        for name, p in q.module.score_net.named_parameters():  # VAE training left it alone
            if "condition_embedding" not in name:
                torch.testing.assert_close(p, ref.module.score_net.get_parameter(name))
        # stage 2 warm-starts from the reference's score network (lr 0: nothing moves)
        q.train_diffusion(max_epochs=1, plan_kwargs={"lr": 0.0}, **FIT)
        for name, p in q.module.score_net.named_parameters():
            if "condition_embedding" not in name:
                torch.testing.assert_close(p, ref.module.score_net.get_parameter(name))
        q.train_diffusion(max_epochs=50, **FIT)  # default: finetune="all"
        # the frozen path (scArches surgery, new embedding only) for contrast
        frozen = scgm_scvi.SCGM.load_query_data(full, ref, unfrozen=False)
        frozen.train_diffusion(max_epochs=50, **FIT)
    assert any(
        not torch.equal(p, ref.module.score_net.get_parameter(n))
        for n, p in q.module.score_net.named_parameters()
        if "condition_embedding" not in n
    )
    # generated new-type cells lie next to the real new-type cells in latent space
    z = q.get_latent_representation()
    centroids = np.stack(
        [z[(full.obs["labels"] == f"label_{k}").to_numpy()].mean(0) for k in range(3)]
    )
    g = q.generate(n=60, cell_type="label_2", seed=0, progress_bar=False)
    dist = ((g.obsm["X_scgm"][:, None, :] - centroids[None]) ** 2).sum(-1)
    assert (dist.argmin(1) == 2).mean() >= 0.7
    # and express the new type's marker genes, which the reference never saw
    X = g.X.toarray()
    assert X[:, 20:30].mean() > 2 * X[:, :20].mean()
    # which the reference's frozen VAE cannot decode: the frozen path fails on them
    Xf = frozen.generate(n=60, cell_type="label_2", seed=0, progress_bar=False).X.toarray()
    assert Xf[:, 20:30].mean() < 0.3 * X[:, 20:30].mean()
    # the reference's types are still generated as themselves
    old = q.generate(n=60, cell_type="label_0", seed=0, progress_bar=False)
    dist = ((old.obsm["X_scgm"][:, None, :] - centroids[None]) ** 2).sum(-1)
    assert (dist.argmin(1) == 0).mean() >= 0.7
