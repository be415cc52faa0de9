"""MuData: ``SCGM.setup_mudata`` trains, generates and edits on the RNA modality of a MuData."""

from __future__ import annotations

import re
import warnings

import anndata as ad
import mudata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import DIFFUSION_EPOCHS, FIT, TINY, VAE_EPOCHS, make_adata

import scgm_scvi
from scgm_scvi import SCGM, SCGEditor, cli

mudata.set_options(pull_on_update=False)


def make_mdata(seed: int = 0) -> mudata.MuData:
    """RNA (counts in layer "counts", labels in its obs) + protein; batch/condition global."""
    adata = make_adata(seed)
    rng = np.random.default_rng(seed)
    rna = ad.AnnData(
        X=sp.csr_matrix(np.log1p(adata.X)),  # X is not counts: the layer must be used
        obs=adata.obs[["labels"]].copy(),
        var=adata.var.copy(),
        layers={"counts": sp.csr_matrix(adata.X)},
    )
    prot = ad.AnnData(
        X=rng.poisson(5.0, size=(adata.n_obs, 10)).astype(np.float32),
        obs=pd.DataFrame(index=adata.obs_names.copy()),
        var=pd.DataFrame(index=[f"prot_{i}" for i in range(10)]),
    )
    mdata = mudata.MuData({"rna": rna, "prot": prot})
    mdata.obs["batch"] = adata.obs["batch"].to_numpy()
    mdata.obs["condition"] = pd.Categorical(np.where(np.arange(adata.n_obs) % 2, "ctrl", "stim"))
    return mdata


def setup(mdata: mudata.MuData) -> None:
    SCGM.setup_mudata(
        mdata,
        rna_layer="counts",
        labels_key="labels",
        batch_key="batch",
        categorical_covariate_keys=["condition"],
        modalities={"rna_layer": "rna", "labels_key": "rna"},
    )


@pytest.fixture(scope="module")
def mu_trained():
    mdata = make_mdata()
    setup(mdata)
    model = SCGM(mdata, **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=VAE_EPOCHS, diffusion_max_epochs=DIFFUSION_EPOCHS, **FIT)
    return model, mdata


def test_registry_uses_the_rna_modality(mu_trained):
    model, mdata = mu_trained
    setup_args = model.registry_["setup_args"]
    assert model.registry_["setup_method_name"] == "setup_mudata"
    assert setup_args["modalities"] == {"rna_layer": "rna", "labels_key": "rna"}
    assert list(model.var_names_) == list(mdata["rna"].var_names)  # not the protein names
    assert model.summary_stats.n_vars == mdata["rna"].n_vars
    assert model.summary_stats.n_batch == 2
    keys = [c["key"] for c in model.conditions_["columns"]]
    assert keys == ["labels", "batch", "condition"]


def test_train_and_latent(mu_trained):
    model, mdata = mu_trained
    assert model.diffusion_trained_
    assert len(model.history["train_loss"]) == VAE_EPOCHS
    z = model.get_latent_representation(mdata)
    assert z.shape == (mdata.n_obs, TINY["n_latent"])


def test_generate(mu_trained):
    model, mdata = mu_trained
    generated = model.generate(cell_type={"label_0": 7, "label_2": 5}, n=None, seed=1)
    assert isinstance(generated, ad.AnnData)
    assert generated.obs["labels"].value_counts().to_dict() == {
        "label_0": 7,
        "label_2": 5,
    }
    assert list(generated.var_names) == list(mdata["rna"].var_names)
    np.testing.assert_array_equal(generated.X.data, np.round(generated.X.data))
    again = model.generate(cell_type={"label_0": 7, "label_2": 5}, n=None, seed=1)
    np.testing.assert_array_equal(generated.X.toarray(), again.X.toarray())


def test_edit_a_mudata(mu_trained):
    model, mdata = mu_trained
    ctrl = mdata[mdata.obs["condition"] == "ctrl"].copy()
    before = ctrl["rna"].layers["counts"].toarray().copy()
    editor = SCGEditor(model)
    edited = editor.edit(ctrl, {"condition": "stim"}, strength=0.4, n_steps=5, store_latent=True)
    assert isinstance(edited, ad.AnnData) and edited.n_obs == ctrl.n_obs
    assert set(edited.obs["condition"]) == {"stim"}
    assert set(edited.obs["source_condition"]) == {"ctrl"}
    assert list(edited.obs["labels"]) == list(ctrl["rna"].obs["labels"])
    assert not any(c.startswith("_scvi") for c in edited.obs.columns)
    assert ctrl.obsm["X_scgm_edited"].shape == (ctrl.n_obs, TINY["n_latent"])
    np.testing.assert_array_equal(ctrl["rna"].layers["counts"].toarray(), before)
    shifted = editor.edit(ctrl, {"condition": "stim"}, method="latent_shift")
    assert shifted.uns["scgm_edit"]["method"] == "latent_shift"


def test_same_edit_from_mudata_and_its_rna_anndata(mu_trained):
    """A MuData and the equivalent AnnData of its RNA modality give the same edited cells."""
    model, mdata = mu_trained
    cells = mdata[:20].copy()
    rna = cells["rna"].copy()
    rna.obs["batch"] = cells.obs["batch"].to_numpy()
    rna.obs["condition"] = cells.obs["condition"].to_numpy()
    editor = SCGEditor(model)
    a = editor.edit(cells, {"condition": "stim"}, strength=0.3, n_steps=4, seed=2)
    b = editor.edit(rna, {"condition": "stim"}, strength=0.3, n_steps=4, seed=2)
    np.testing.assert_allclose(a.obsm["X_scgm_edited"], b.obsm["X_scgm_edited"], atol=1e-5)
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())


def test_save_load_without_data(mu_trained, tmp_path):
    model, mdata = mu_trained
    model.save(str(tmp_path / "mu_model"), overwrite=True, save_anndata=False)
    loaded = SCGM.load(str(tmp_path / "mu_model"))
    assert loaded.adata is None
    assert list(loaded.var_names_) == list(model.var_names_)
    a = model.generate(n=10, cell_type="label_1", seed=3)
    b = loaded.generate(n=10, cell_type="label_1", seed=3)
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
    edited = SCGEditor(loaded).edit(mdata[:10].copy(), {"condition": "stim"}, n_steps=3)
    assert edited.n_obs == 10


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"labels_key": "labels"}, ValueError, "it is in mdata['rna'].obs"),
        ({"modalities": {"rna_layer": "atac"}}, ValueError, "not a modality"),
        ({"modalities": {"protein_layer": "prot"}}, ValueError, "Unknown modalities entries"),
        ({"rna_layer": "raw"}, ValueError, "Layer 'raw' not found"),
        ({"rna_layer": None}, UserWarning, "non-integer"),
        ({"batch_key": "donor"}, ValueError, "'donor' (batch_key) not found in mdata.obs"),
    ],
)
def test_setup_errors(kwargs, error, message):
    mdata = make_mdata()
    kwargs = {"rna_layer": "counts", **kwargs}
    if error is UserWarning:
        with pytest.warns(UserWarning, match=message):
            SCGM.setup_mudata(mdata, **kwargs)
        return
    with pytest.raises(error, match=re.escape(message)):
        SCGM.setup_mudata(mdata, **kwargs)


def test_rna_modality_is_found():
    mdata = make_mdata()
    mdata.obs["cell_type"] = mdata["rna"].obs["labels"].to_numpy()
    SCGM.setup_mudata(mdata, rna_layer="counts", labels_key="cell_type")  # RNA: "rna"
    model = SCGM(mdata, **TINY)
    assert model.registry_["setup_args"]["modalities"] == {"rna_layer": "rna"}
    only = mudata.MuData({"gex": mdata["rna"].copy()})
    SCGM.setup_mudata(
        only, rna_layer="counts", modalities={"labels_key": "gex"}, labels_key="labels"
    )
    assert SCGM(only, **TINY).registry_["setup_args"]["modalities"]["rna_layer"] == "gex"
    both = mudata.MuData({"a": mdata["rna"].copy(), "b": mdata["rna"].copy()})
    with pytest.raises(ValueError, match="Which modality holds the RNA counts"):
        SCGM.setup_mudata(both, rna_layer="counts")


def test_cli_trains_on_h5mu(tmp_path):
    mdata = make_mdata()
    path = tmp_path / "cells.h5mu"
    mdata.write(path)
    model_dir = tmp_path / "model"
    argv = ["train", str(path), "--out", str(model_dir), "--layer", "counts"]
    argv += ["--labels-key", "labels", "--batch-key", "batch", "--covariate", "condition"]
    argv += ["--n-latent", "8", "--n-hidden", "32", "--score-width", "32", "--score-blocks", "2"]
    argv += ["--max-epochs", "2", "--diffusion-max-epochs", "2", "--accelerator", "cpu"]
    assert cli.main(argv) == 0
    model = SCGM.load(str(model_dir))
    assert model.registry_["setup_args"]["modalities"] == {"rna_layer": "rna", "labels_key": "rna"}
    out = tmp_path / "edited.h5ad"
    argv = ["edit", str(model_dir), str(path), "--target", "condition=stim", "--out", str(out)]
    assert cli.main([*argv, "--select", "condition=ctrl", "--n-steps", "3"]) == 0
    assert set(ad.read_h5ad(out).obs["condition"]) == {"stim"}
    assert scgm_scvi.SCGM.load(str(model_dir)).generate(n=5).n_obs == 5


def test_save_load_with_data(mu_trained, tmp_path):
    """``save_anndata=True`` writes the MuData; ``load`` without data reads it back."""
    model, mdata = mu_trained
    model.save(str(tmp_path / "mu_data"), prefix="run1_", save_anndata=True)
    loaded = SCGM.load(str(tmp_path / "mu_data"), prefix="run1_")
    assert isinstance(loaded.adata, mudata.MuData)
    assert loaded.adata.n_obs == mdata.n_obs
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-5
    )
