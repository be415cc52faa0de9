"""The score network's Gaussian baseline: exact per-cell-type Gaussian noise prediction."""

from __future__ import annotations

import pytest
import torch
from conftest import FIT, TINY, make_adata

import scgm_scvi
from scgm_scvi.module import LabelGaussians
from scgm_scvi.sde import VPSDE


def _moments(x: torch.Tensor, labels: torch.Tensor, n_labels: int):
    x = x.double()
    count = torch.bincount(labels, minlength=n_labels).double()
    total = torch.zeros(n_labels, x.shape[1], dtype=torch.float64).index_add_(0, labels, x)
    outer = torch.stack([x[labels == c].T @ x[labels == c] for c in range(n_labels)])
    return count, total, outer


def _exact_eps(x, alpha, sigma, mu, cov):
    """sigma (alpha^2 Sigma + sigma^2 I)^-1 (x - alpha mu), one cell at a time."""
    eye = torch.eye(len(mu), dtype=torch.float64)
    out = []
    for xi, a, s in zip(x.double(), alpha.double(), sigma.double(), strict=True):
        out.append(s * torch.linalg.solve(a**2 * cov + s**2 * eye, xi - a * mu))
    return torch.stack(out).float()


def test_unfitted_is_the_standard_normal():
    """Before fitting, eps = sigma x: the Gaussian N(0, I), i.e. plain velocity prediction."""
    g = LabelGaussians(n_latent=5, n_labels=3, rank=2)
    x = torch.randn(7, 5)
    alpha, sigma = VPSDE().marginal(torch.rand(7))
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 3])  # 3 = all cells
    torch.testing.assert_close(g.eps(x, alpha, sigma, labels), sigma[:, None] * x)


def test_full_rank_eps_is_exact():
    """With every eigenpair kept, eps is the closed form for each label's fitted Gaussian."""
    torch.manual_seed(0)
    d, n_labels = 4, 2
    labels = torch.arange(300) % n_labels
    mix = torch.randn(n_labels, d, d)
    x0 = torch.randn(300, d)
    x0 = torch.einsum("nd,nde->ne", x0, mix[labels]) + 3 * labels[:, None]
    g = LabelGaussians(d, n_labels, rank=d, shrinkage=0.0)
    g.fit(*_moments(x0, labels, n_labels), torch.arange(n_labels))
    xt, t = torch.randn(6, d), torch.rand(6) * 0.9 + 0.05
    alpha, sigma = VPSDE().marginal(t)
    cell_labels = torch.tensor([0, 1, 2, 0, 1, 2])
    for c in range(n_labels + 1):
        xc = x0 if c == n_labels else x0[labels == c]
        mu, cov = xc.double().mean(0), torch.cov(xc.double().T, correction=0)
        rows = cell_labels == c
        torch.testing.assert_close(
            g.eps(xt, alpha, sigma, cell_labels)[rows],
            _exact_eps(xt[rows], alpha[rows], sigma[rows], mu, cov),
            rtol=1e-4,
            atol=1e-4,
        )


def test_low_rank_keeps_leading_directions_and_rest_variance():
    torch.manual_seed(1)
    scales = torch.tensor([5.0, 3.0, 1.0, 1.0, 1.0])
    x0 = torch.randn(4000, 5) * scales
    labels = torch.zeros(4000, dtype=torch.long)
    g = LabelGaussians(5, 1, rank=2, shrinkage=0.0)
    g.fit(*_moments(x0, labels, 1), torch.arange(1))
    assert torch.allclose(g.top_var[:, 0].sqrt(), torch.tensor([3.0, 5.0]), rtol=0.05)
    assert torch.allclose(g.rest_var[0], torch.tensor(1.0), rtol=0.1)
    lead = g.basis[:, 1, 0].abs()  # leading eigenvector: the first axis
    assert lead[0] > 0.99


def test_label_without_cells_gets_the_all_cells_gaussian_and_refit_is_selective():
    torch.manual_seed(2)
    x0 = torch.randn(100, 3) + 2.0
    labels = torch.zeros(100, dtype=torch.long)  # label 1 has no cells
    g = LabelGaussians(3, 2, rank=3)
    moments = _moments(x0, labels, 2)
    g.fit(*moments, torch.arange(2))
    torch.testing.assert_close(g.mean[:, 1], g.mean[:, 2])
    torch.testing.assert_close(g.mean[:, 2], x0.mean(0))
    before = g.mean.clone()
    g.fit(moments[0], moments[1] * 0, moments[2], torch.tensor([0]), refit_all_cells=False)
    assert not torch.allclose(g.mean[:, 0], before[:, 0])  # refit
    torch.testing.assert_close(g.mean[:, 1:], before[:, 1:])  # kept


def test_shrinkage_regularises_a_single_cell_type():
    """A type with one cell gets a usable covariance from the pooled within-type one."""
    x0 = torch.cat([torch.randn(200, 3), torch.tensor([[5.0, 5.0, 5.0]])])
    labels = torch.cat([torch.zeros(200, dtype=torch.long), torch.ones(1, dtype=torch.long)])
    g = LabelGaussians(3, 2, rank=3, shrinkage=20.0)
    g.fit(*_moments(x0, labels, 2), torch.arange(2))
    assert g.top_var[:, 1].min() > 0.5  # about 20/21 of the pooled unit variance


@pytest.mark.parametrize("baseline", ["gaussian", "none"])
def test_model_fits_the_baseline_from_its_latents(baseline):
    adata = make_adata()
    scgm_scvi.SCGM.setup_anndata(adata, labels_key="labels")
    model = scgm_scvi.SCGM(adata, score_baseline=baseline, gaussian_rank=3, **TINY)
    model.train_vae(max_epochs=2, **FIT)
    model.train_diffusion(max_epochs=1, **FIT)
    module = model.module
    x = torch.randn(4, TINY["n_latent"])
    t = torch.full((4,), 0.5)
    cond = torch.zeros(4, 1, dtype=torch.long)
    alpha, sigma = module.sde.marginal(t)
    if baseline == "none":
        assert module.gaussians is None
        torch.testing.assert_close(module.baseline_eps(x, t, cond), sigma[:, None] * x)
        return
    z = module.standardize(torch.as_tensor(model.get_latent_representation()))
    codes = torch.tensor(adata.obs["labels"].cat.codes.to_numpy())
    for c in range(module.condition_sizes[0]):
        torch.testing.assert_close(
            module.gaussians.mean[:, c], z[codes == c].mean(0), atol=1e-4, rtol=1e-4
        )
    assert module.gaussians.basis.shape == (TINY["n_latent"], 3, module.condition_sizes[0] + 1)
    # eps = baseline + alpha * network
    torch.testing.assert_close(
        module.eps(x, t, cond),
        module.baseline_eps(x, t, cond) + alpha[:, None] * module.score_net(x, t, cond),
    )


def test_state_without_the_baseline_loads_as_none():
    """Models saved before the baseline existed keep working, with the baseline they had."""
    from scgm_scvi.module import SCGMModule

    old = SCGMModule(n_input=20, n_labels=3, n_latent=4, n_hidden=8, score_baseline="none")
    new = SCGMModule(n_input=20, n_labels=3, n_latent=4, n_hidden=8)
    with pytest.warns(UserWarning, match="score_baseline='none'"):
        new.load_state_dict(old.state_dict())
    assert new.gaussians is None
    x, t, cond = torch.randn(5, 4), torch.rand(5), torch.zeros(5, 1, dtype=torch.long)
    torch.testing.assert_close(new.eps(x, t, cond), old.eps(x, t, cond))
