"""SCGEditor: API, reproducibility, small-strength limit, ODE inversion, gene guidance, errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch

from scgm_scvi._names import DEFAULT_SAMPLER, DEFAULT_STEPS
from scgm_scvi.editing import SCGEditor
from scgm_scvi.model import SCGM
from scgm_scvi.samplers import gene_guidance
from scgm_scvi.sde import VPSDE


def _synthetic(seed: int = 0):
    adata = scvi.data.synthetic_iid(batch_size=150, n_genes=100, n_batches=2, n_labels=3)
    rng = np.random.default_rng(seed)
    adata.obs["condition"] = pd.Categorical(rng.choice(["ctrl", "stim"], size=adata.n_obs))
    adata.var_names = [f"g{i}" for i in range(adata.n_vars)]
    # a condition effect the model can learn: stim raises the first ten genes
    X = adata.X.copy()
    stim = (adata.obs["condition"] == "stim").to_numpy()
    X[np.ix_(stim, np.arange(10))] = X[np.ix_(stim, np.arange(10))] * 3 + 2
    adata.X = sp.csr_matrix(X.astype(np.float32))
    return adata


@pytest.fixture(scope="module")
def trained():
    scvi.settings.seed = 0
    adata = _synthetic()
    SCGM.setup_anndata(
        adata, labels_key="labels", batch_key="batch", categorical_covariate_keys=["condition"]
    )
    model = SCGM(adata, n_latent=8, n_hidden=32, score_width=32, score_blocks=2)
    model.train(
        max_epochs=5,
        diffusion_max_epochs=30,
        enable_progress_bar=False,
        early_stopping=False,
    )
    return model, adata


@pytest.fixture
def editor(trained):
    return SCGEditor(trained[0])


@pytest.fixture
def source(trained):
    """Fresh, unregistered control cells (new data for the model)."""
    adata = _synthetic(seed=1)
    return adata[adata.obs["condition"] == "ctrl"][:40].copy()


def _snapshot(adata):
    return {
        "X": adata.X.copy(),
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "obsm": {k: np.array(v, copy=True) for k, v in adata.obsm.items()},
        "uns": set(adata.uns.keys()),
    }


def _assert_unchanged(adata, snap):
    assert (adata.X != snap["X"]).nnz == 0
    pd.testing.assert_frame_equal(adata.obs, snap["obs"])
    pd.testing.assert_frame_equal(adata.var, snap["var"])
    assert set(adata.obsm.keys()) == set(snap["obsm"])
    assert set(adata.uns.keys()) == snap["uns"]


def test_output_structure(editor, source):
    out = editor.edit(source, {"condition": "stim"}, strength=0.4, n_steps=20, seed=0)
    assert out.shape == source.shape
    assert sp.isspmatrix_csr(out.X)
    assert np.all(out.X.data == np.round(out.X.data)) and out.X.data.min() >= 0
    assert list(out.var_names) == list(source.var_names)
    assert (out.obs["condition"] == "stim").all()
    assert (out.obs["source_condition"] == "ctrl").all()
    # covariates the target does not change are kept
    assert (out.obs["labels"].astype(str) == source.obs["labels"].astype(str).to_numpy()).all()
    assert (out.obs["source_cell"] == source.obs_names).all()
    np.testing.assert_allclose(
        out.obs["library_size"], np.asarray(source.X.sum(1)).ravel(), rtol=1e-4
    )
    assert out.obsm["X_scgm_source"].shape == (source.n_obs, 8)
    assert out.obsm["X_scgm_edited"].shape == (source.n_obs, 8)
    params = out.uns["scgm_edit"]
    assert params["method"] == "sdedit" and params["target"] == {"condition": "stim"}
    assert params["n_steps"] == 20 and params["network_evaluations_per_cell"] == 20


def test_sdedit_default_sampler_is_generates(editor, source):
    # SDEdit runs generate's default sampler over the part of the time range it covers
    out = editor.edit(source[:5], {"condition": "stim"}, strength=0.5, seed=0)
    params = out.uns["scgm_edit"]
    assert params["sampler"] == DEFAULT_SAMPLER == "dpmpp_2m_sde"
    assert params["n_steps"] == math.ceil(DEFAULT_STEPS[DEFAULT_SAMPLER] * 0.5) == 5
    assert params["network_evaluations_per_cell"] == 5


def test_n_samples_and_label_target(editor, source):
    out = editor.edit(source[:10], "label_1", strength=0.3, n_steps=10, n_samples=3)
    assert out.n_obs == 30 and out.obs_names.is_unique
    assert (out.obs["labels"] == "label_1").all()
    assert "source_labels" in out.obs
    assert (out.obs["edit_sample"].to_numpy() == np.tile([0, 1, 2], 10)).all()
    z = out.obsm["X_scgm_edited"].reshape(10, 3, -1)
    assert not np.allclose(z[:, 0], z[:, 1])  # samples differ


def test_seed_reproducibility(editor, source):
    kw = {"strength": 0.5, "n_steps": 20}
    a = editor.edit(source, {"condition": "stim"}, seed=3, **kw)
    b = editor.edit(source, {"condition": "stim"}, seed=3, **kw)
    c = editor.edit(source, {"condition": "stim"}, seed=4, **kw)
    np.testing.assert_array_equal(a.obsm["X_scgm_edited"], b.obsm["X_scgm_edited"])
    assert (a.X != b.X).nnz == 0
    assert np.abs(a.obsm["X_scgm_edited"] - c.obsm["X_scgm_edited"]).mean() > 1e-3


def _std_dist(model, a, b):
    """Mean absolute difference in the standardised latent space the SDE works in."""
    return float(np.abs((a - b) / model.module.latent_std.cpu().numpy()).mean())


def test_tiny_strength_returns_source(trained, editor, source):
    model = trained[0]
    out = editor.edit(source, {"condition": "stim"}, strength=1e-3)
    z_src, z_edit = out.obsm["X_scgm_source"], out.obsm["X_scgm_edited"]
    # noise at t = eps has std sigma(eps) ~ 0.01 in standardised units: E|diff| ~ 0.008
    assert _std_dist(model, z_edit, z_src) < 0.03
    far = editor.edit(source, {"condition": "stim"}, strength=0.9, n_steps=30)
    assert _std_dist(model, far.obsm["X_scgm_edited"], z_src) > 0.3


def test_ode_deterministic_and_invertible(editor, source):
    kw = {"strength": 0.6, "method": "ode", "n_steps": 20}
    a = editor.edit(source, {"condition": "stim"}, seed=0, **kw)
    b = editor.edit(source, {"condition": "stim"}, seed=7, **kw)
    np.testing.assert_allclose(a.obsm["X_scgm_edited"], b.obsm["X_scgm_edited"], atol=1e-5)
    # invert under the source condition, integrate back under the same condition: the source
    back = editor.edit(source, {"condition": "ctrl"}, **kw)
    z_src = back.obsm["X_scgm_source"]
    err = _std_dist(editor.model, back.obsm["X_scgm_edited"], z_src)
    assert err < 0.05
    with pytest.raises(ValueError, match="ODE sampler"):
        editor.edit(source, {"condition": "stim"}, method="ode", sampler="euler_maruyama")
    # DPM-Solver++ inverts too
    back = editor.edit(source, {"condition": "ctrl"}, sampler="dpmpp_2m", **kw)
    assert _std_dist(editor.model, back.obsm["X_scgm_edited"], z_src) < 0.05


def test_gene_guidance_direction(trained, editor, source):
    model = trained[0]
    kw = {"strength": 0.5, "method": "ode", "n_steps": 10, "gene_guidance_scale": 50.0}
    source = source[:20]
    base = editor.edit(source, {"condition": "ctrl"}, **kw)
    up = editor.edit(source, {"condition": "ctrl"}, genes={"g50": "up"}, **kw)
    down = editor.edit(source, {"condition": "ctrl"}, genes={"g50": 0}, **kw)

    def mean_expr(out):
        return model.decode_latent(out.obsm["X_scgm_edited"], transform="normalized")[:, 50]

    assert mean_expr(up).mean() > 1.05 * mean_expr(base).mean()
    assert mean_expr(down).mean() < 0.95 * mean_expr(base).mean()
    assert up.uns["scgm_edit"]["genes"] == {"g50": "up"}


def test_gene_guidance_wrapper_needs_no_outer_grad():
    sde = VPSDE()
    w = torch.randn(4, 3)

    def eps_fn(x, t):
        return 0.1 * x

    guided = gene_guidance(
        eps_fn, sde, lambda x0: torch.exp(x0 @ w), torch.zeros(3), torch.ones(3), scale=1.0
    )
    with torch.no_grad():
        x = torch.randn(5, 4)
        out = guided(x, torch.tensor(0.5))
    assert out.shape == x.shape and not out.requires_grad
    assert not torch.allclose(out, eps_fn(x, None))


def test_latent_shift_baseline(editor, source, trained):
    out = editor.edit(source, {"condition": "stim"}, method="latent_shift", n_samples=2)
    assert out.shape == (2 * source.n_obs, source.n_vars)
    assert out.uns["scgm_edit"]["network_evaluations_per_cell"] == 0
    shift = out.obsm["X_scgm_edited"] - out.obsm["X_scgm_source"]
    np.testing.assert_allclose(shift, np.broadcast_to(shift[0], shift.shape), atol=1e-5)
    ref = editor.edit(
        source, {"condition": "stim"}, method="latent_shift", reference=trained[1][:200]
    )
    assert ref.shape == source.shape


def test_errors(editor, source):
    with pytest.raises(ValueError, match=r"Unknown target key 'donor'.*condition"):
        editor.edit(source, {"donor": "x"})
    with pytest.raises(ValueError, match=r"Valid values: \['ctrl', 'stim'\]"):
        editor.edit(source, {"condition": "IFN"})
    with pytest.raises(ValueError, match="Valid values"):
        editor.edit(source, "T cell")
    with pytest.raises(ValueError, match="strength"):
        editor.edit(source, {"condition": "stim"}, strength=0.0)
    with pytest.raises(ValueError, match="method"):
        editor.edit(source, {"condition": "stim"}, method="scgen")
    with pytest.raises(ValueError, match="not among the model"):
        editor.edit(source, {"condition": "stim"}, genes={"NOPE": "up"})
    with pytest.raises(ValueError, match="'up', 'down'"):
        editor.edit(source, {"condition": "stim"}, genes={"g1": "sideways"})
    with pytest.raises(ValueError, match="reverse process"):
        editor.edit(source, {"condition": "stim"}, method="latent_shift", genes={"g1": 0})
    bad = source.copy()
    bad.obs["condition"] = pd.Categorical(["other"] * bad.n_obs)
    with pytest.raises(ValueError, match="not trained on"):
        editor.edit(bad, {"condition": "stim"})


def test_gene_alignment(editor, source):
    with pytest.raises(ValueError, match=r"lacks 5 of the model's 100 genes"):
        editor.edit(source[:, 5:].copy(), {"condition": "stim"})
    extra = sp.csr_matrix(np.ones((source.n_obs, 3), dtype=np.float32))
    wide = source.copy()
    wide = type(source)(
        X=sp.hstack([extra, wide.X], format="csr"),
        obs=wide.obs,
        var=pd.DataFrame(index=["x1", "x2", "x3", *wide.var_names]),
    )
    shuffled = wide[:, np.random.default_rng(0).permutation(wide.n_vars)].copy()
    with pytest.warns(UserWarning, match="3 genes the model was not trained on"):
        out = editor.edit(shuffled, {"condition": "stim"}, strength=0.3, n_steps=5, seed=0)
    ref = editor.edit(source, {"condition": "stim"}, strength=0.3, n_steps=5, seed=0)
    assert list(out.var_names) == list(source.var_names)
    np.testing.assert_allclose(out.obsm["X_scgm_edited"], ref.obsm["X_scgm_edited"], atol=1e-5)


def test_input_not_modified(editor, source, trained):
    snap = _snapshot(source)
    editor.edit(source, {"condition": "stim"}, strength=0.3, n_steps=5, genes={"g3": "up"})
    editor.edit(source, {"condition": "stim"}, method="latent_shift")
    _assert_unchanged(source, snap)
    # the registered training data is not modified either
    train = trained[1]
    snap_train = _snapshot(train)
    editor.edit(train[:30], {"condition": "stim"}, strength=0.3, n_steps=5)
    _assert_unchanged(train, snap_train)


def test_store_latent_opt_in(editor, source):
    before = set(source.obsm.keys())
    out = editor.edit(source, {"condition": "stim"}, strength=0.3, n_steps=5)
    assert "X_scgm_edited" not in source.obsm
    out = editor.edit(source, {"condition": "stim"}, strength=0.3, n_steps=5, store_latent=True)
    np.testing.assert_allclose(source.obsm["X_scgm_edited"], out.obsm["X_scgm_edited"])
    assert set(source.obsm.keys()) - before == {"X_scgm_edited"}


def test_model_loaded_without_adata(trained, source, tmp_path):
    trained[0].save(str(tmp_path / "m"), save_anndata=False)
    model = SCGM.load(str(tmp_path / "m"))
    editor = SCGEditor(model)
    out = editor.edit(source, {"condition": "stim"}, strength=0.3, n_steps=5)
    assert out.shape == source.shape and model.adata is None
    with pytest.raises(ValueError, match="reference="):
        editor.edit(source, {"condition": "stim"}, method="latent_shift")
    out = editor.edit(source, {"condition": "stim"}, method="latent_shift", reference=trained[1])
    assert out.shape == source.shape


def test_latent_shift_init(editor, source):
    target = {"condition": "stim"}
    shift = editor.edit(source, target, method="latent_shift")
    delta = shift.obsm["X_scgm_edited"] - shift.obsm["X_scgm_source"]
    # at a tiny strength SDEdit from the shifted latent returns (nearly) the shifted latent
    tiny = editor.edit(source, target, strength=1e-3, init="latent_shift")
    np.testing.assert_allclose(tiny.obsm["X_scgm_source"], shift.obsm["X_scgm_source"])
    model = editor.model
    assert _std_dist(model, tiny.obsm["X_scgm_edited"], shift.obsm["X_scgm_edited"]) < 0.03
    assert _std_dist(model, tiny.obsm["X_scgm_edited"], tiny.obsm["X_scgm_source"]) > 0.01
    out = editor.edit(source, target, strength=0.3, n_steps=5, method="ode", init="latent_shift")
    assert out.uns["scgm_edit"]["init"] == "latent_shift"
    assert np.abs(delta).sum() > 0
    with pytest.raises(ValueError, match="init"):
        editor.edit(source, target, init="noise")


def test_guidance_reference_source(editor, source):
    target = {"condition": "stim"}
    kw = {"strength": 0.4, "n_steps": 10, "seed": 0, "method": "ode"}
    null = editor.edit(source, target, guidance_scale=2.0, **kw)
    src = editor.edit(source, target, guidance_scale=2.0, guidance_reference="source", **kw)
    plain = editor.edit(source, target, **kw)
    assert src.uns["scgm_edit"]["guidance_reference"] == "source"
    assert not np.allclose(null.obsm["X_scgm_edited"], src.obsm["X_scgm_edited"])
    # guidance weight 1 is the plain conditional model whatever the reference
    one = editor.edit(source, target, guidance_scale=1.0, guidance_reference="source", **kw)
    np.testing.assert_allclose(one.obsm["X_scgm_edited"], plain.obsm["X_scgm_edited"], atol=1e-5)
    with pytest.raises(ValueError, match="guidance_reference"):
        editor.edit(source, target, guidance_reference="other")


def test_guidance_interval(editor, source):
    target = {"condition": "stim"}
    kw = {"strength": 0.6, "n_steps": 10, "seed": 0, "method": "ode", "guidance_scale": 2.0}
    everywhere = editor.edit(source, target, **kw)
    limited = editor.edit(source, target, guidance_interval=(0.2, 0.7), **kw)
    # an interval above t0 = strength never applies: the plain conditional edit
    above = editor.edit(source, target, guidance_interval=(0.8, 1.0), **kw)
    plain = editor.edit(source, target, **{**kw, "guidance_scale": 1.0})
    assert limited.uns["scgm_edit"]["guidance_interval"] == [0.2, 0.7]
    assert everywhere.uns["scgm_edit"]["guidance_interval"] == "none"
    np.testing.assert_allclose(above.obsm["X_scgm_edited"], plain.obsm["X_scgm_edited"], atol=1e-5)
    assert not np.allclose(limited.obsm["X_scgm_edited"], everywhere.obsm["X_scgm_edited"])
    with pytest.raises(ValueError, match="guidance_interval"):
        editor.edit(source, target, guidance_interval=(0.5, 0.1))


def test_latent_shift_is_balanced_over_strata(trained):
    """The shift is the mean of the differences within each stratum of the other condition
    columns (here label x batch), not the difference of the pooled (composition-biased) means."""
    model, adata = trained
    editor = SCGEditor(model)
    ref = adata.copy()
    cond = ref.obs["condition"].to_numpy()
    labels = ref.obs["labels"].to_numpy()
    # drop the stim cells of one label, as in leave-one-cell-type-out
    keep = ~((labels == "label_0") & (cond == "stim"))
    ref = ref[keep].copy()
    z = model.get_latent_representation(ref)
    c, lab = ref.obs["condition"].to_numpy(), ref.obs["labels"].to_numpy()
    bat = ref.obs["batch"].to_numpy()
    diffs = []
    for k in ("label_1", "label_2"):
        for b in np.unique(bat):
            m = (lab == k) & (bat == b)
            diffs.append(z[m & (c == "stim")].mean(0) - z[m & (c == "ctrl")].mean(0))
    src = ref[(lab == "label_0") & (c == "ctrl")][:5].copy()
    out = editor.edit(src, {"condition": "stim"}, method="latent_shift", reference=ref)
    shift = (out.obsm["X_scgm_edited"] - out.obsm["X_scgm_source"])[0]
    np.testing.assert_allclose(shift, np.mean(diffs, axis=0), atol=1e-4)
    pooled = z[c == "stim"].mean(0) - z[c == "ctrl"].mean(0)
    assert np.abs(shift - pooled).max() > 1e-3


def test_count_summaries_describe_the_edited_counts(editor, source):
    source = source.copy()
    source.obs["n_counts"] = np.asarray(source.X.sum(1)).ravel()
    source.obs["n_genes"] = np.asarray((source.X > 0).sum(1)).ravel()
    out = editor.edit(source, {"condition": "stim"}, strength=0.5, n_steps=4, seed=0)
    np.testing.assert_allclose(out.obs["n_counts"], np.asarray(out.X.sum(1)).ravel())
    np.testing.assert_array_equal(out.obs["n_genes"], np.asarray((out.X > 0).sum(1)).ravel())


def test_decode_latent_takes_covariates(trained):
    """The public decoder sets categorical and continuous covariates (the editor decodes with
    it): stim raises the first ten genes of the synthetic data."""
    model, _ = trained
    z = np.zeros((20, model.module.n_latent), dtype=np.float32)
    kw = {"transform": "normalized", "library_size": 1e4}
    ctrl = model.decode_latent(z, covariates={"condition": "ctrl"}, **kw)
    stim = model.decode_latent(z, covariates={"condition": ["stim"] * 20}, **kw)
    assert stim[:, :10].sum() > ctrl[:, :10].sum()
    default = model.decode_latent(z, **kw)  # the first category
    np.testing.assert_allclose(default, ctrl, rtol=1e-5)
    with pytest.raises(ValueError, match=r"Unknown condition values \['STIM'\]"):
        model.decode_latent(z, covariates={"condition": "STIM"})
    with pytest.raises(ValueError, match="Unknown covariate 'labels'.*cell_type="):
        model.decode_latent(z, covariates={"labels": "label_0"})
