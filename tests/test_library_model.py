"""The library model: log library size given the latent, per cell type, and its use in generate."""

from __future__ import annotations

import numpy as np
import torch

from scgm_scvi.module import LibraryModel


def _moments(z: torch.Tensor, log_lib: torch.Tensor, labels: torch.Tensor, n_labels: int):
    """The per-label sums that ``SCGM._latent_pass`` accumulates."""
    z, log_lib = z.double(), log_lib.double()
    d = z.shape[1]
    m = {
        "label_count": torch.zeros(n_labels, dtype=torch.float64),
        "label_sum": torch.zeros(n_labels, d, dtype=torch.float64),
        "label_outer": torch.zeros(n_labels, d, d, dtype=torch.float64),
        "label_lib_sum": torch.zeros(n_labels, dtype=torch.float64),
        "label_lib_sq": torch.zeros(n_labels, dtype=torch.float64),
        "label_lib_cross": torch.zeros(n_labels, d, dtype=torch.float64),
    }
    for c in range(n_labels):
        rows = labels == c
        zc, lc = z[rows], log_lib[rows]
        m["label_count"][c] = rows.sum()
        m["label_sum"][c] = zc.sum(0)
        m["label_outer"][c] = zc.T @ zc
        m["label_lib_sum"][c] = lc.sum()
        m["label_lib_sq"][c] = lc.square().sum()
        m["label_lib_cross"][c] = lc @ zc
    return m


def test_recovers_a_linear_gaussian_relation():
    gen = torch.Generator().manual_seed(0)
    n, d = 20_000, 5
    labels = torch.arange(2).repeat_interleave(n)
    z = torch.randn(2 * n, d, generator=gen) + 3.0 * labels[:, None]
    beta = torch.tensor([[0.5, -0.2, 0.0, 0.1, 0.3], [-0.4, 0.0, 0.2, 0.0, 0.0]])
    center = 3.0 * labels[:, None]
    log_lib = 7.0 + labels + ((z - center) * beta[labels]).sum(1)
    log_lib = log_lib + 0.1 * torch.randn(2 * n, generator=gen)

    model = LibraryModel(d, n_labels=3)  # label 2 has no cells
    assert not model.fitted
    model.fit(_moments(z, log_lib, labels, 3), torch.arange(3))
    assert model.fitted
    torch.testing.assert_close(model.coef[:, :2].T, beta, atol=0.01, rtol=0)
    torch.testing.assert_close(model.mean[:2], torch.tensor([7.0, 8.0]), atol=0.03, rtol=0)
    torch.testing.assert_close(model.std[:2], torch.tensor([0.1, 0.1]), atol=0.01, rtol=0)
    # a label without cells and the "unknown" slot get the model of all cells
    torch.testing.assert_close(model.coef[:, 2], model.coef[:, 3])
    assert model.std[3] > model.std[0]  # the types' different means are residual there

    # sampling: the regression's mean and spread, reproducible with a generator
    zq = torch.zeros(4000, d) + 3.0
    zq[:, 0] += 1.0
    lab = torch.ones(4000, dtype=torch.long)
    draw = model.sample(zq, lab, generator=torch.Generator().manual_seed(1))
    assert abs(draw.mean().item() - (8.0 - 0.4)) < 0.03
    assert abs(draw.std().item() - 0.1) < 0.01
    again = model.sample(zq, lab, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(draw, again)


def test_rare_type_is_shrunk_toward_the_pooled_relation():
    gen = torch.Generator().manual_seed(0)
    d = 3
    labels = torch.cat([torch.zeros(5000, dtype=torch.long), torch.ones(4, dtype=torch.long)])
    z = torch.randn(len(labels), d, generator=gen)
    log_lib = 6.0 + 0.5 * z[:, 0] + 0.1 * torch.randn(len(labels), generator=gen)
    model = LibraryModel(d, n_labels=2)
    model.fit(_moments(z, log_lib, labels, 2), torch.arange(2))
    # four cells alone would give a wild fit in 3 dimensions; 20 pseudo-cells of the pooled
    # covariance keep the rare type's slope near the common one
    assert torch.all(torch.isfinite(model.coef))
    assert 0.3 < model.coef[0, 1].item() < 0.7
    assert model.std[1] > 0


def test_generate_draws_library_sizes_from_the_latents(trained):
    model, _ = trained
    assert model.module.library_model.fitted
    g = model.generate(n=200, seed=3)
    assert g.uns["scgm"]["library_size"] == "latent"
    lib = g.obs["library_size"].to_numpy()
    assert np.all(lib > 0) and len(np.unique(lib)) > 100
    # the counts are drawn around the recorded library sizes
    totals = np.asarray(g.X.sum(1)).ravel()
    assert np.corrcoef(np.log(lib), np.log1p(totals))[0, 1] > 0.5
    # the same seed gives the same library sizes; given ones are kept
    np.testing.assert_array_equal(model.generate(n=200, seed=3).obs["library_size"], lib)
    fixed = model.generate(n=20, seed=3, library_size=500.0)
    assert fixed.uns["scgm"]["library_size"] == "given"
    assert np.all(fixed.obs["library_size"] == 500)


def test_model_saved_before_the_library_model_draws_from_training_cells(trained):
    model, _ = trained
    module = model.module
    state = {k: v.clone() for k, v in module.state_dict().items()}
    old = {k: v for k, v in state.items() if not k.startswith("library_model.")}
    try:
        module.load_state_dict(old)
        assert not module.library_model.fitted
        g = model.generate(n=30, seed=0)
        assert g.uns["scgm"]["library_size"] == "training cells"
        drawn = np.exp(model.condition_table_["log_library"].to_numpy()).round()
        assert set(g.obs["library_size"]) <= set(drawn)
    finally:
        module.load_state_dict(state)


def test_directions_beyond_the_rank_are_ridged():
    # two directions of unit variance, two nearly dead ones that happen to correlate with the
    # library in the training cells: generated latents vary there more than training means
    # do, so the model must not lean on them
    gen = torch.Generator().manual_seed(0)
    n = 5000
    z = torch.randn(n, 4, generator=gen) * torch.tensor([1.0, 1.0, 0.01, 0.01])
    log_lib = 6.0 + 0.3 * z[:, 0] + 20.0 * z[:, 2] + 0.05 * torch.randn(n, generator=gen)
    labels = torch.zeros(n, dtype=torch.long)
    free, ridged = LibraryModel(4, 1, rank=4), LibraryModel(4, 1, rank=2)
    for model in (free, ridged):
        model.fit(_moments(z, log_lib, labels, 1), torch.arange(1))
    assert abs(free.coef[2, 0].item() - 20.0) < 1.0  # all directions free: the exact slope
    # ridged by the dead directions' mean variance, which is their own here: halved
    assert abs(ridged.coef[2, 0].item() - 10.0) < 1.0
    assert abs(ridged.coef[0, 0].item() - 0.3) < 0.02  # the leading direction is untouched


def test_noisy_latents_do_not_become_library_noise():
    # stage 2 on posterior samples hands the library model means plus posterior noise; dimensions
    # the means barely use carry noise of variance ~1 there, and the library may depend on them
    gen = torch.Generator().manual_seed(0)
    n, d = 20_000, 10
    labels = torch.zeros(n, dtype=torch.long)
    scale = torch.tensor([1.0] * 5 + [0.01] * 5)
    z = torch.randn(n, d, generator=gen) * scale
    log_lib = 7.0 + 0.5 * z[:, 0] + 20.0 * z[:, 5] + 0.1 * torch.randn(n, generator=gen)
    noise_var = torch.tensor([0.25] * 5 + [1.0] * 5)
    z_sample = z + noise_var.sqrt() * torch.randn(n, d, generator=gen)
    moments = _moments(z, log_lib, labels, 1)

    naive = LibraryModel(d, n_labels=1, rank=5)
    naive.fit(moments, torch.arange(1))
    wild = naive.sample(z_sample, labels, generator=torch.Generator().manual_seed(1))
    assert wild.std() > 2 * log_lib.std()  # the failure this guards against

    model = LibraryModel(d, n_labels=1, rank=5)
    model.fit(moments, torch.arange(1), extra_var=noise_var.double())
    draw = model.sample(z_sample, labels, generator=torch.Generator().manual_seed(1))
    # the conditional given the noisy latent: slope attenuated by 1 / (1 + 0.25), spread kept
    assert abs(model.coef[0, 0].item() - 0.5 / 1.25) < 0.02
    assert abs(draw.mean().item() - 7.0) < 0.02
    assert abs(draw.std().item() - log_lib.std().item()) < 0.02
    assert np.corrcoef(draw.numpy(), log_lib.numpy())[0, 1] > 0.3
