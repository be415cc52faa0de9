"""Behaviour of the public API of :class:`scgm_scvi.SCGM` on a tiny synthetic dataset."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch
from conftest import (
    DIFFUSION_EPOCHS,
    FIT,
    TINY,
    VAE_EPOCHS,
    assert_unchanged,
    make_adata,
    make_model,
    snapshot,
)

import scgm_scvi
from scgm_scvi.samplers import SAMPLERS

LABELS = ["label_0", "label_1", "label_2"]
BATCHES = ["batch_0", "batch_1"]


def assert_counts_csr(X, n_obs: int, n_vars: int = 100) -> None:
    """CSR matrix of non-negative integer values with the expected shape."""
    assert sp.isspmatrix_csr(X) or isinstance(X, sp.csr_array)
    assert X.shape == (n_obs, n_vars)
    assert np.all(np.isfinite(X.data))
    assert X.data.min(initial=0) >= 0
    np.testing.assert_array_equal(X.data, np.round(X.data))
    assert X.sum() > 0  # a decoder that only emits zeros is broken


def assert_generated(g, model, n: int) -> None:
    """Everything :meth:`SCGM.generate` promises about its output."""
    assert_counts_csr(g.X, n)
    assert list(g.obs.columns) == ["labels", "batch", "library_size"]
    # categories are those present, in the training order
    for key, cats in (("labels", LABELS), ("batch", BATCHES)):
        present = set(g.obs[key])
        assert list(g.obs[key].cat.categories) == [c for c in cats if c in present]
    assert np.all(g.obs["library_size"] > 0)
    assert g.obs_names.is_unique
    assert g.obsm["X_scgm"].shape == (n, TINY["n_latent"])
    assert np.all(np.isfinite(g.obsm["X_scgm"]))
    assert list(g.var_names) == list(model.var_names_) == list(model.adata.var_names)
    assert set(g.uns["scgm"]) == {
        "sampler",
        "n_steps",
        "guidance_scale",
        "guidance_interval",
        "precision",
        "posterior_noise",
        "library_size",
        "seed",
        "network_evaluations_per_cell",
    }
    assert g.uns["scgm"]["library_size"] in ("latent", "given", "training cells")


# ---------------------------------------------------------------------------------- setup_anndata
class TestSetupAnndata:
    def test_missing_obs_key(self):
        adata = make_adata()
        with pytest.raises(ValueError, match=r"not_a_column.*Available columns.*labels"):
            scgm_scvi.SCGM.setup_anndata(adata, labels_key="not_a_column")
        with pytest.raises(ValueError, match="nope"):
            scgm_scvi.SCGM.setup_anndata(adata, categorical_covariate_keys=["nope"])

    def test_missing_layer(self):
        adata = make_adata()
        with pytest.raises(ValueError, match=r"Layer 'counts' not found"):
            scgm_scvi.SCGM.setup_anndata(adata, layer="counts")

    @pytest.mark.parametrize("sparse", [False, True])
    def test_negative_values(self, sparse):
        adata = make_adata()
        X = adata.X.astype(np.float32)
        X[3, 5] = -1.0
        adata.X = sp.csr_matrix(X) if sparse else X
        with pytest.raises(ValueError, match="negative"):
            scgm_scvi.SCGM.setup_anndata(adata, labels_key="labels")

    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_nan_or_inf(self, bad):
        adata = make_adata()
        X = adata.X.astype(np.float32)
        X[0, 0] = bad
        adata.X = X
        with pytest.raises(ValueError, match="NaN or infinite"):
            scgm_scvi.SCGM.setup_anndata(adata, labels_key="labels")

    def test_non_integer_warns(self):
        adata = make_adata()
        adata.X = adata.X.astype(np.float32) + 0.5
        with pytest.warns(UserWarning, match="non-integer"):
            scgm_scvi.SCGM.setup_anndata(adata, labels_key="labels")

    def test_layer_is_checked_instead_of_X(self):
        adata = make_adata()
        adata.layers["counts"] = adata.X.copy()
        adata.X = np.log1p(adata.X.astype(np.float32)) - 1.0  # negative, non-integer
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # the layer is clean: no warning
            scgm_scvi.SCGM.setup_anndata(adata, layer="counts", labels_key="labels")
        bad = adata.layers["counts"].astype(np.float32)
        bad[1, 1] = -3
        adata.layers["counts"] = bad
        with pytest.raises(ValueError, match="negative"):
            scgm_scvi.SCGM.setup_anndata(adata, layer="counts", labels_key="labels")

    def test_adata_only_gains_scvi_registration(self):
        adata = make_adata()
        before = snapshot(adata)
        scgm_scvi.SCGM.setup_anndata(adata, labels_key="labels", batch_key="batch")
        after = snapshot(adata)
        np.testing.assert_array_equal(after["X"], before["X"])
        pd.testing.assert_frame_equal(after["var"], before["var"])
        assert after["obsm"].keys() == before["obsm"].keys()
        for k in before["obsm"]:
            np.testing.assert_array_equal(after["obsm"][k], before["obsm"][k])
        pd.testing.assert_frame_equal(after["obs"][before["obs"].columns], before["obs"])
        new_obs = set(after["obs"].columns) - set(before["obs"].columns)
        assert new_obs and all(c.startswith("_scvi") for c in new_obs)
        new_uns = set(after["uns"]) - set(before["uns"])
        assert all(k.startswith("_scvi") for k in new_uns)


# ---------------------------------------------------------------------------------- __init__
def test_init_untrained_state():
    model = make_model()
    assert model.module.n_latent == TINY["n_latent"]
    assert not model.vae_trained_ and not model.diffusion_trained_
    assert model.diffusion_history_ == {}
    assert list(model.var_names_) == list(model.adata.var_names)
    cols = model.conditions_["columns"]
    assert [c["name"] for c in cols] == ["labels", "batch"]
    assert cols[0]["key"] == "labels" and cols[0]["categories"] == LABELS
    assert cols[1]["key"] == "batch" and cols[1]["categories"] == BATCHES
    # one condition column per registered categorical, plus the "unknown" code of each
    assert model.module.condition_sizes == [3, 2]
    assert model._model_summary_string.startswith("SCGM: n_latent 8")
    with pytest.raises(RuntimeError, match="not trained"):
        model.generate(n=5)


def test_init_with_categorical_covariate():
    adata = make_adata()
    adata.obs["donor"] = np.where(np.arange(adata.n_obs) % 3 == 0, "d0", "d1")
    scgm_scvi.SCGM.setup_anndata(
        adata, labels_key="labels", batch_key="batch", categorical_covariate_keys=["donor"]
    )
    model = scgm_scvi.SCGM(adata, **TINY)
    assert [c["key"] for c in model.conditions_["columns"]] == ["labels", "batch", "donor"]
    assert model.module.condition_sizes == [3, 2, 2]


# ---------------------------------------------------------------------------------- training
def test_train_diffusion_before_vae_raises():
    model = make_model()
    with pytest.raises(RuntimeError, match="Train the VAE first"):
        model.train_diffusion(max_epochs=1, **FIT)


@pytest.mark.parametrize(
    ("plan_kwargs", "warmup", "final_weight"),
    [(None, 400, 16 / 400), ({"n_epochs_kl_warmup": 2}, 2, 1.0)],
)
def test_train_vae_kl_warmup(plan_kwargs, warmup, final_weight):
    """scVI's KL warm-up (400 epochs) unless ``plan_kwargs`` sets another (as for editing)."""
    model = make_model()
    model.train_vae(max_epochs=16, plan_kwargs=plan_kwargs, **FIT)
    plan = model.trainer.lightning_module
    assert plan.n_epochs_kl_warmup == warmup
    assert float(plan.kl_weight) == pytest.approx(final_weight, rel=1e-6)  # at epoch 16


@pytest.mark.parametrize("stage", ["vae", "diffusion"])
def test_set_stage(stage):
    module = make_model().module
    module.eval()
    module.set_stage(stage)
    assert module.training
    assert all(p.requires_grad == (stage == "vae") for p in module.vae_parameters())
    assert all(p.requires_grad == (stage == "diffusion") for p in module.score_net.parameters())
    n_vae = sum(1 for _ in module.vae_parameters())
    assert n_vae + len(list(module.score_net.parameters())) == len(list(module.parameters()))


def test_train_sets_flags_and_mode(trained):
    model, _ = trained
    assert model.is_trained and model.vae_trained_ and model.diffusion_trained_
    assert not model.module.training
    assert all(p.requires_grad for p in model.module.vae_parameters())
    # latent statistics were fitted from the encoded cells
    assert not torch.allclose(model.module.latent_mean, torch.zeros(TINY["n_latent"]))
    assert torch.all(model.module.latent_std > 0)
    assert model.condition_table_ is not None and len(model.condition_table_) == 200


@pytest.mark.parametrize("scaling", ["per_dim", "global"])
def test_latent_scaling(scaling):
    adata = make_adata()
    scgm_scvi.SCGM.setup_anndata(adata, labels_key="labels", batch_key="batch")
    model = scgm_scvi.SCGM(adata, latent_scaling=scaling, **TINY)
    model.train_vae(max_epochs=2, **FIT)
    model.train_diffusion(max_epochs=1, **FIT)
    spread = torch.as_tensor(model.get_latent_representation()).std(0)
    expected = spread if scaling == "per_dim" else spread.square().mean().sqrt().expand_as(spread)
    torch.testing.assert_close(model.module.latent_std, expected, rtol=1e-4, atol=1e-5)
    assert f"({scaling} scaling, gaussian baseline)" in model._model_summary_string


@pytest.mark.parametrize("option", ["latent_scaling", "diffusion_target", "score_baseline"])
def test_bad_stage2_option_names_the_choices(option):
    adata = make_adata()
    scgm_scvi.SCGM.setup_anndata(adata, labels_key="labels")
    with pytest.raises(ValueError, match=f"{option} must be one of"):
        scgm_scvi.SCGM(adata, **{option: "nope"}, **TINY)


def test_all_parameters_trainable_after_train(trained):
    model, _ = trained
    assert all(p.requires_grad for p in model.module.parameters())


def test_diffusion_history(trained):
    model, _ = trained
    hist = model.diffusion_history_
    assert "train_loss" in hist and "denoising_loss_validation" in hist
    assert len(hist["train_loss"]) == DIFFUSION_EPOCHS
    # the denoising loss of unit-variance noise starts near 1, the VAE's ELBO is in the hundreds
    assert float(hist["train_loss"].to_numpy().max()) < 5.0


def test_vae_history_not_polluted_by_diffusion(trained):
    model, _ = trained
    assert len(model.history["train_loss"]) == VAE_EPOCHS
    assert float(model.history["train_loss"].to_numpy().min()) > 5.0  # ELBO scale, not ~1


@pytest.fixture(scope="module")
def staged():
    """Parameters snapshotted around each stage of a second tiny model."""

    def vae_params(model):
        return {
            n: p.detach().clone()
            for n, p in model.module.named_parameters()
            if not n.startswith("score_net.")
        }

    def score_params(model):
        return {n: p.detach().clone() for n, p in model.module.score_net.named_parameters()}

    model = make_model()
    out = {"model": model, "score_init": score_params(model)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train_vae(max_epochs=3, **FIT)
        out["score_after_vae"] = score_params(model)
        out["vae_before_diffusion"] = vae_params(model)
        model.train_diffusion(max_epochs=3, **FIT)
        out["vae_after_diffusion"] = vae_params(model)
        out["score_after_diffusion"] = score_params(model)
        out["latent_mean"] = model.module.latent_mean.clone()
        model.train_vae(max_epochs=2, **FIT)  # continued VAE training
    out["vae_after_more_vae"] = vae_params(model)
    out["score_after_more_vae"] = score_params(model)
    return out


def _max_change(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_train_vae_does_not_touch_score_net(staged):
    assert _max_change(staged["score_init"], staged["score_after_vae"]) == 0.0
    assert _max_change(staged["score_after_diffusion"], staged["score_after_more_vae"]) == 0.0
    assert _max_change(staged["vae_after_diffusion"], staged["vae_after_more_vae"]) > 0.0
    assert torch.equal(staged["latent_mean"], staged["model"].module.latent_mean)


def test_train_diffusion_freezes_vae(staged):
    assert _max_change(staged["vae_before_diffusion"], staged["vae_after_diffusion"]) == 0.0
    assert _max_change(staged["score_after_vae"], staged["score_after_diffusion"]) > 0.0


def test_train_vae_invalidates_diffusion(staged):
    model = staged["model"]
    assert model.vae_trained_ and not model.diffusion_trained_
    with pytest.raises(RuntimeError, match="not trained"):
        model.generate(n=3)


# ---------------------------------------------------------------------------------- generate
def test_generate_cell_type_str(trained):
    model, _ = trained
    g = model.generate(n=30, cell_type="label_1", seed=0)
    assert_generated(g, model, 30)
    assert (g.obs["labels"] == "label_1").all()
    assert g.uns["scgm"]["sampler"] == "dpmpp_2m_sde"
    assert g.uns["scgm"]["n_steps"] == 10
    assert g.uns["scgm"]["network_evaluations_per_cell"] == 10
    assert g.uns["scgm"]["seed"] == 0


def test_generate_cell_type_list(trained):
    model, _ = trained
    g = model.generate(n=7, cell_type=["label_0", "label_2"], seed=0)
    assert_generated(g, model, 7)
    assert g.obs["labels"].value_counts().to_dict() == {"label_0": 4, "label_2": 3}


def test_generate_cell_type_dict(trained):
    model, _ = trained
    g = model.generate(n=None, cell_type={"label_2": 5, "label_0": 3}, seed=0)
    assert_generated(g, model, 8)
    assert g.obs["labels"].value_counts().to_dict() == {"label_2": 5, "label_0": 3}
    same = model.generate(n=8, cell_type={"label_2": 5, "label_0": 3}, seed=0)
    assert (g.X != same.X).nnz == 0


def test_generate_cell_type_none(trained):
    model, _ = trained
    g = model.generate(n=120, seed=0)
    assert_generated(g, model, 120)
    # types drawn in training proportions (about a third each): all three occur
    assert set(g.obs["labels"]) == set(LABELS)


def test_generate_covariates(trained):
    model, _ = trained
    g = model.generate(n=12, cell_type="label_0", covariates={"batch": "batch_1"}, seed=0)
    assert_generated(g, model, 12)
    assert (g.obs["batch"] == "batch_1").all()
    per_cell = ["batch_0", "batch_1"] * 6
    g = model.generate(n=12, cell_type="label_0", covariates={"batch": per_cell}, seed=0)
    assert list(g.obs["batch"]) == per_cell


def test_generate_library_size(trained):
    model, _ = trained
    sums = {}
    for lib in (300.0, 3000.0):
        g = model.generate(n=200, cell_type="label_0", library_size=lib, seed=0)
        assert np.allclose(g.obs["library_size"], lib)
        sums[lib] = float(g.X.sum(axis=1).mean())
    # NB means scale with the library: the mean total count matches it within 10 %
    for lib, mean_total in sums.items():
        assert abs(mean_total / lib - 1) < 0.1, sums
    libs = np.linspace(100, 1000, 10)
    g = model.generate(n=10, cell_type="label_0", library_size=libs, seed=0)
    np.testing.assert_allclose(g.obs["library_size"], libs)
    with pytest.raises(ValueError, match="positive"):
        model.generate(n=5, library_size=-1.0)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_generate_each_sampler(trained, sampler):
    model, _ = trained
    g = model.generate(n=16, cell_type="label_2", sampler=sampler, n_steps=8, seed=1)
    assert_generated(g, model, 16)
    evals = {
        "ode": 2, "ode_euler": 1, "euler_maruyama": 1, "pc": 2, "dpmpp_2m": 1, "dpmpp_2m_sde": 1,
    }[sampler]  # fmt: skip
    assert g.uns["scgm"] == {
        "sampler": sampler,
        "n_steps": 8,
        "guidance_scale": 1.0,
        "guidance_interval": "none",
        "precision": "32-true",
        "posterior_noise": True,
        "library_size": "latent",
        "seed": 1,
        "network_evaluations_per_cell": 8 * evals,
    }


def test_generate_guidance(trained):
    model, _ = trained
    plain = model.generate(n=10, cell_type="label_0", n_steps=5, seed=0)
    guided = model.generate(n=10, cell_type="label_0", n_steps=5, guidance_scale=2.0, seed=0)
    assert_generated(guided, model, 10)
    assert guided.uns["scgm"]["network_evaluations_per_cell"] == 10  # 5 steps, cond + uncond
    assert not np.allclose(plain.obsm["X_scgm"], guided.obsm["X_scgm"])
    # same noise, same conditions: only the guidance changes the latents (and with them the
    # library sizes drawn given the latents)
    cols = ["labels", "batch"]
    pd.testing.assert_frame_equal(plain.obs[cols], guided.obs[cols])


def test_generate_guidance_interval(trained):
    model, _ = trained
    kw = {"n": 10, "cell_type": "label_0", "n_steps": 5, "guidance_scale": 2.0, "seed": 0}
    everywhere = model.generate(**kw)  # default: guidance at every time
    limited = model.generate(**kw, guidance_interval=(0.2, 0.7))
    all_times = model.generate(**kw, guidance_interval=(0.0, 1.0))
    plain = model.generate(**{**kw, "guidance_scale": 1.0})
    assert limited.uns["scgm"]["guidance_interval"] == [0.2, 0.7]
    assert everywhere.uns["scgm"]["guidance_interval"] == "none"
    np.testing.assert_array_equal(all_times.obsm["X_scgm"], everywhere.obsm["X_scgm"])
    for other in (everywhere, plain):
        assert not np.allclose(limited.obsm["X_scgm"], other.obsm["X_scgm"])
    with pytest.raises(ValueError, match="guidance_interval"):
        model.generate(**kw, guidance_interval=(0.7, 0.2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 5, "cell_type": "T cell"}, r"Unknown cell_type \['T cell'\].*label_0"),
        ({"n": 5, "cell_type": ["label_0", "nope"]}, r"Unknown cell_type.*label_2"),
        ({"n": 5, "covariates": {"donor": "x"}}, r"Unknown covariate 'donor'.*batch"),
        ({"n": 5, "covariates": {"labels": "label_0"}}, r"cell_type="),
        ({"n": 5, "covariates": {"batch": "batch_9"}}, r"Unknown batch.*batch_0.*batch_1"),
        ({"n": 0}, "positive"),
        ({"n": -3, "cell_type": "label_0"}, "positive"),
        ({"n": None}, "positive"),
        ({"n": 4, "cell_type": {"label_0": 2, "label_1": 3}}, "does not match"),
        ({"n": None, "cell_type": {"label_0": 0}}, "positive sum"),
        ({"n": 4, "cell_type": []}, "empty"),
        ({"n": 4, "sampler": "ddpm"}, "sampler must be one of"),
    ],
)
def test_generate_bad_input(trained, kwargs, match):
    model, _ = trained
    with pytest.raises(ValueError, match=match):
        model.generate(**kwargs)


def test_generate_seed(trained):
    model, _ = trained
    a = model.generate(n=40, seed=7)
    b = model.generate(n=40, seed=7)
    c = model.generate(n=40, seed=8)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.obsm["X_scgm"], b.obsm["X_scgm"])
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert (a.X != c.X).nnz > 0
    assert not np.allclose(a.obsm["X_scgm"], c.obsm["X_scgm"])


def test_generate_keeps_global_rng(trained):
    model, _ = trained
    torch.manual_seed(123)
    state = torch.get_rng_state()
    model.generate(n=5, seed=3)
    assert torch.equal(state, torch.get_rng_state())


def test_generate_leaves_training_adata_unchanged(trained):
    model, adata = trained
    before = snapshot(adata)
    model.generate(n=20, seed=0)
    model.generate(n=10, cell_type="label_0", covariates={"batch": "batch_0"}, sampler="pc")
    model.decode_latent(np.zeros((3, TINY["n_latent"])), transform="normalized")
    assert_unchanged(before, adata)


def test_generate_chunking(trained):
    model, _ = trained
    one = model.generate(n=50, seed=4)
    many = model.generate(n=50, seed=4, batch_size=7)
    assert_generated(many, model, 50)
    # conditions and covariates come from the numpy seed: chunking keeps them (library sizes
    # follow the latents, drawn chunk by chunk)
    cols = ["labels", "batch"]
    pd.testing.assert_frame_equal(one.obs[cols], many.obs[cols])
    # the prior noise is drawn chunk by chunk, so latents may differ, but each cell's ODE
    # trajectory depends only on its own start point: solving in chunks changes nothing
    module, sde = model.module, model.module.sde
    cond = torch.tensor([[0, 0], [1, 1], [2, 0], [0, 1]] * 5)
    x = torch.randn(20, TINY["n_latent"])
    ts = sde.time_grid(10, spacing="karras")

    def ode(rows):
        return SAMPLERS["ode"](
            lambda xx, t: module.eps(xx, t.expand(len(xx)), cond[rows]), sde, x[rows], ts
        )

    with torch.inference_mode():
        whole = ode(slice(0, 20))
        parts = torch.cat([ode(slice(0, 7)), ode(slice(7, 20))])
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------- sample_latent
def test_sample_latent(trained):
    model, _ = trained
    cond = np.array([[0, 0], [1, 1], [2, 0]] * 4)
    z, nfe = model.sample_latent(cond, seed=0)
    assert isinstance(z, torch.Tensor) and z.shape == (12, TINY["n_latent"])
    assert torch.isfinite(z).all()
    assert nfe == 10
    _, nfe = model.sample_latent(cond, sampler="pc", n_steps=6, seed=0)
    assert nfe == 12
    _, nfe = model.sample_latent(cond, sampler="euler_maruyama", n_steps=6, seed=0)
    assert nfe == 6
    _, nfe = model.sample_latent(cond, sampler="ode_euler", n_steps=6, guidance_scale=1.5)
    assert nfe == 12
    z2, _ = model.sample_latent(cond, seed=0)
    torch.testing.assert_close(z, z2, rtol=0, atol=0)
    # latents are returned in the VAE's scale: un-standardised with the fitted statistics
    mean, std = model.module.latent_mean.clone(), model.module.latent_std.clone()
    try:
        model.module.latent_mean.add_(100.0)
        model.module.latent_std.mul_(2.0)
        shifted, _ = model.sample_latent(cond, seed=0)
    finally:
        model.module.latent_mean.copy_(mean)
        model.module.latent_std.copy_(std)
    torch.testing.assert_close(shifted, (z - mean) * 2.0 + mean + 100.0, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="sampler must be one of"):
        model.sample_latent(cond, sampler="heun")
    with pytest.raises(ValueError, match="n_steps"):
        model.sample_latent(cond, n_steps=-2)


def test_sample_latent_from_names(trained):
    model, _ = trained
    names = pd.DataFrame({"labels": ["label_1", "label_2", "label_1"], "batch": ["batch_0"] * 3})
    z, _ = model.sample_latent(names, seed=3)
    z_codes, _ = model.sample_latent(np.array([[1, 0], [2, 0], [1, 0]]), seed=3)
    torch.testing.assert_close(z, z_codes, rtol=0, atol=0)
    # a column left out is unconditional: the "unknown" code
    z_any_batch, _ = model.sample_latent(names[["labels"]], seed=3)
    null = model.module.condition_sizes[1]
    z_null, _ = model.sample_latent(np.array([[1, null], [2, null], [1, null]]), seed=3)
    torch.testing.assert_close(z_any_batch, z_null, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"Unknown labels values \['T cell'\]. Valid values"):
        model.sample_latent(pd.DataFrame({"labels": ["T cell"]}))
    with pytest.raises(ValueError, match=r"Unknown condition columns \['donor'\]"):
        model.sample_latent(pd.DataFrame({"donor": ["a"]}))


def test_sample_latent_bf16(trained):
    model, _ = trained
    cond = np.array([[0, 0], [1, 1], [2, 0]] * 20)
    z32, _ = model.sample_latent(cond, sampler="ode_euler", n_steps=8, seed=1)
    z16, _ = model.sample_latent(
        cond, sampler="ode_euler", n_steps=8, seed=1, precision="bf16-mixed"
    )
    assert z16.dtype == torch.float32 and torch.isfinite(z16).all()
    assert not torch.equal(z16, z32)  # the network really ran in bfloat16
    # the same starting noise ends close: bfloat16 keeps about 3 significant digits
    rel = (z16 - z32).norm() / z32.norm()
    assert rel < 0.05, rel
    g = model.generate(n=6, seed=0, precision="bf16-mixed")
    assert g.uns["scgm"]["precision"] == "bf16-mixed"
    with pytest.raises(ValueError, match="precision must be"):
        model.generate(n=6, precision="16-mixed")
    with pytest.raises(ValueError, match="precision must be"):
        model.sample_latent(cond, precision="fp8")


def test_sample_latent_zero_steps_raises(trained):
    model, _ = trained
    with pytest.raises(ValueError, match="n_steps"):
        model.sample_latent(np.zeros((2, 2), dtype=int), n_steps=0)


# ---------------------------------------------------------------------------------- decode_latent
def test_decode_latent(trained):
    model, _ = trained
    z = model.generate(n=200, cell_type="label_1", seed=0).obsm["X_scgm"]
    counts = model.decode_latent(z, cell_type="label_1", library_size=1000.0, seed=0)
    assert_counts_csr(counts, 200)
    assert abs(float(counts.sum(axis=1).mean()) / 1000.0 - 1) < 0.1
    again = model.decode_latent(
        torch.as_tensor(z), cell_type="label_1", library_size=1000.0, seed=0
    )
    assert (counts != again).nnz == 0  # numpy or torch input, same seed: same draws
    other = model.decode_latent(z, library_size=1000.0, seed=1)
    assert (counts != other).nnz > 0

    norm = model.decode_latent(z, transform="normalized", batch=["batch_1"] * 200)
    assert isinstance(norm, np.ndarray) and norm.shape == (200, 100)
    assert norm.min() >= 0
    np.testing.assert_allclose(norm.sum(axis=1), 1.0, rtol=1e-5)
    # normalised expression does not depend on the library size or on the chunking
    norm_lib = model.decode_latent(
        z, transform="normalized", batch=["batch_1"] * 200, library_size=50.0, batch_size=17
    )
    np.testing.assert_allclose(norm_lib, norm, rtol=1e-5, atol=1e-7)
    # batch norm decodes with its running statistics: a cell alone decodes as in a crowd
    alone = model.decode_latent(z[:3], transform="normalized", batch="batch_1", batch_size=1)
    np.testing.assert_allclose(alone, norm[:3], rtol=1e-5, atol=1e-7)
    # ... but does depend on the batch (the decoder is batch-conditional)
    norm_b0 = model.decode_latent(z, transform="normalized", batch="batch_0")
    assert not np.allclose(norm_b0, norm)


def test_decode_latent_bad_input(trained):
    model, _ = trained
    z = np.zeros((3, TINY["n_latent"]), dtype=np.float32)
    with pytest.raises(ValueError, match=r"Unknown cell_type values.*label_0"):
        model.decode_latent(z, cell_type=["label_0", "x", "label_1"])
    with pytest.raises(ValueError, match=r"Unknown batch values.*batch_0"):
        model.decode_latent(z, batch="batch_7")
    with pytest.raises(ValueError, match="transform"):
        model.decode_latent(z, transform="log1p")


# ---------------------------------------------------------------------------------- inherited
def test_get_latent_representation(trained):
    model, adata = trained
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, TINY["n_latent"]) and np.all(np.isfinite(z))
    np.testing.assert_allclose(model.get_latent_representation(), z)  # posterior mean
    sub = model.get_latent_representation(indices=np.arange(10))
    np.testing.assert_allclose(sub, z[:10], rtol=1e-5, atol=1e-5)


def test_get_normalized_expression(trained):
    model, adata = trained
    expr = model.get_normalized_expression(library_size=1.0)
    assert isinstance(expr, pd.DataFrame) and expr.shape == (adata.n_obs, 100)
    assert list(expr.index) == list(adata.obs_names)
    assert list(expr.columns) == list(adata.var_names)
    np.testing.assert_allclose(expr.sum(axis=1), 1.0, rtol=1e-5)


def test_inherited_scvi_methods(trained):
    """The scVI methods the API page lists work on SCGM's VAE (stage 1 of one module)."""
    model, adata = trained
    elbo = float(model.get_elbo())
    assert np.isfinite(elbo)
    recon = float(model.get_reconstruction_error()["reconstruction_loss"])
    assert 0 < recon <= -elbo + 1e-3  # -ELBO = reconstruction error + KL >= reconstruction error
    counts = model.posterior_predictive_sample(n_samples=1)
    assert counts.shape == adata.shape
    de = model.differential_expression(groupby="labels", group1="label_0", batch_size=64)
    assert set(de.index) == set(adata.var_names) and de["bayes_factor"].notna().all()


# ---------------------------------------------------------------------------------- save / load
@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    model, _ = trained
    paths = {}
    for save_anndata in (False, True):
        path = tmp_path_factory.mktemp(f"scgm_saved_{save_anndata}")
        model.save(str(path), overwrite=True, save_anndata=save_anndata)
        paths[save_anndata] = str(path)
    reference = model.generate(n=30, seed=11)
    return paths, reference


def _assert_same_generation(a, b):
    assert (a.X != b.X).nnz == 0
    np.testing.assert_allclose(a.obsm["X_scgm"], b.obsm["X_scgm"], rtol=1e-5, atol=1e-5)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert list(a.var_names) == list(b.var_names)


def test_load_without_adata(trained, saved):
    model, _ = trained
    paths, reference = saved
    loaded = scgm_scvi.SCGM.load(paths[False])
    assert loaded.adata is None
    _assert_same_generation(loaded.generate(n=30, seed=11), reference)
    assert loaded.conditions_ == model.conditions_


def test_load_saved_anndata(trained, saved):
    model, adata = trained
    paths, reference = saved
    loaded = scgm_scvi.SCGM.load(paths[True])
    assert loaded.adata is not None and loaded.adata.n_obs == adata.n_obs
    assert not loaded.module.training
    _assert_same_generation(loaded.generate(n=30, seed=11), reference)


def test_load_with_adata(trained, saved):
    model, adata = trained
    paths, reference = saved
    loaded = scgm_scvi.SCGM.load(paths[False], adata=make_adata())
    assert loaded.vae_trained_ and loaded.diffusion_trained_
    _assert_same_generation(loaded.generate(n=30, seed=11), reference)
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-5
    )
    assert loaded.conditions_ == model.conditions_
    assert list(loaded.var_names_) == list(model.var_names_)
    assert loaded.diffusion_history_.keys() == model.diffusion_history_.keys()
    for key, frame in model.diffusion_history_.items():
        pd.testing.assert_frame_equal(loaded.diffusion_history_[key], frame)
    pd.testing.assert_frame_equal(loaded.condition_table_, model.condition_table_)
    # continuing to train the loaded model works (stage flags restored with the weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded.train_diffusion(max_epochs=1, **FIT)
    assert loaded.diffusion_trained_


def test_norm_options_and_saves_that_predate_them(tmp_path):
    """Batch norm by default; a save without the norm options (earlier development versions,
    whose VAE had layer norm) loads with layer norm and generates as before."""

    def kinds(model):
        return {type(m) for m in model.module.z_encoder.modules()}

    adata = make_adata()
    assert torch.nn.BatchNorm1d in kinds(make_model(adata))
    scgm_scvi.SCGM.setup_anndata(adata, labels_key="labels", batch_key="batch")
    old = scgm_scvi.SCGM(adata, use_batch_norm="none", use_layer_norm="both", **TINY)
    assert kinds(old) & {torch.nn.BatchNorm1d, torch.nn.LayerNorm} == {torch.nn.LayerNorm}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old.train(max_epochs=2, diffusion_max_epochs=2, **FIT)
    old.save(str(tmp_path / "m"))
    path = tmp_path / "m" / "model.pt"
    saved = torch.load(path, weights_only=False)
    for key in ("use_batch_norm", "use_layer_norm"):
        del saved["attr_dict"]["init_params_"]["non_kwargs"][key]
    torch.save(saved, path)
    (tmp_path / "m" / "scgm_manifest.json").unlink()  # the file changed: drop its checksum
    loaded = scgm_scvi.SCGM.load(str(tmp_path / "m"))
    assert kinds(loaded) & {torch.nn.BatchNorm1d, torch.nn.LayerNorm} == {torch.nn.LayerNorm}
    np.testing.assert_array_equal(
        loaded.generate(n=6, seed=0).X.toarray(), old.generate(n=6, seed=0).X.toarray()
    )


def test_default_seed_follows_scvi_settings(trained):
    """``seed=None`` (default): new cells on every call, reproducible with scvi.settings.seed."""
    model, _ = trained
    scvi.settings.seed = 3
    first, second = model.generate(n=20), model.generate(n=20)
    assert (first.X != second.X).nnz > 0
    assert not set(first.obs_names) & set(second.obs_names)
    both = ad.concat([first, second])
    assert both.obs_names.is_unique
    scvi.settings.seed = 3
    again = model.generate(n=20)
    np.testing.assert_array_equal(again.X.toarray(), first.X.toarray())
    seed = first.uns["scgm"]["seed"]
    np.testing.assert_array_equal(model.generate(n=20, seed=seed).X.toarray(), first.X.toarray())


def test_generated_categories_are_those_present(trained):
    model, adata = trained
    g = model.generate(n=6, cell_type="label_1", seed=2)
    assert list(g.obs["labels"].cat.categories) == ["label_1"]
    both = ad.concat([adata[adata.obs["labels"] == "label_1"], g], label="source")
    assert set(both.obs["labels"]) == {"label_1"}


def test_stage_2_history_has_honest_names(trained):
    model, _ = trained
    assert set(model.diffusion_history_) == {
        "train_loss",
        "validation_loss",
        "denoising_loss_train",
        "denoising_loss_validation",
    }
    assert "elbo_train" in model.history  # stage 1 keeps scVI's names


def test_view_anndata_setup(trained, capsys):
    model, _ = trained
    model.view_anndata_setup()  # scvi-tools calls rich.pretty without importing it
    assert "setup_anndata" in capsys.readouterr().out


def test_encode_real_cells(trained):
    """``encode`` gives the posterior means and the codes generation and editing use, and
    leaves the input (and scvi-tools' manager stores) as they were."""
    model, adata = trained
    cells = adata[:40].copy()
    before = snapshot(cells)
    store = type(model)._per_instance_manager_store[model.id]
    n_managers = len(store)
    out = model.encode(cells, batch_size=16)
    assert_unchanged(before, cells)
    assert len(store) == n_managers
    z = model.get_latent_representation(adata[:40])
    np.testing.assert_allclose(out["z"].cpu().numpy(), z, rtol=1e-4, atol=1e-5)
    assert out["cond"].shape == (40, len(model.conditions_["columns"]))
    labels = adata.obs["labels"].cat.codes.to_numpy()[:40]
    np.testing.assert_array_equal(out["cond"][:, 0].cpu().numpy(), labels)
    assert out["log_library"].shape == (40, 1) and out["cont"] is None
    with pytest.raises(ValueError, match="lacks 100 of the model's 100 genes"):
        model.encode(cells[:, :0].copy())
