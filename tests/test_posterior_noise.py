"""Posterior noise: generated latents get each cell type's mean posterior variance back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import scgm_scvi
from scgm_scvi.module import PosteriorNoise

LEGACY = Path(__file__).parent / "data" / "legacy_v0.1"


def test_fitted_variances_are_the_mean_posterior_variance_per_type(trained):
    model, adata = trained
    _, var = model.get_latent_representation(adata, return_dist=True)
    labels = adata.obs["labels"].to_numpy()
    cats = model.conditions_["columns"][0]["categories"]
    fitted = model.module.posterior_noise.var.cpu().numpy()
    for j, cat in enumerate(cats):
        np.testing.assert_allclose(fitted[:, j], var[labels == cat].mean(0), rtol=1e-4)
    np.testing.assert_allclose(fitted[:, -1], var.mean(0), rtol=1e-4)


def test_generate_adds_the_noise_reproducibly(trained):
    model, _ = trained
    plain = model.generate(n=200, cell_type="label_1", seed=4, posterior_noise=False)
    noisy = model.generate(n=200, cell_type="label_1", seed=4)
    again = model.generate(n=200, cell_type="label_1", seed=4, posterior_noise=True)
    assert noisy.uns["scgm"]["posterior_noise"] and not plain.uns["scgm"]["posterior_noise"]
    np.testing.assert_array_equal(noisy.X.toarray(), again.X.toarray())
    diff = noisy.obsm["X_scgm"] - plain.obsm["X_scgm"]  # same latents before the noise
    var = model.module.posterior_noise.var[:, 1].cpu().numpy()
    ratio = diff.var(0) / var
    assert np.all((ratio > 0.6) & (ratio < 1.5)), ratio


def test_sample_noise_shape_and_zero_variance():
    noise = PosteriorNoise(n_latent=3, n_labels=2)
    assert not noise.fitted
    z = torch.ones(4, 3)
    torch.testing.assert_close(noise.sample(z, torch.tensor([0, 1, 2, 0])), z)
    noise.fit(torch.tensor([2.0, 0.0]), torch.tensor([[2.0, 4.0, 6.0], [0.0, 0.0, 0.0]]),
              torch.arange(2))  # fmt: skip
    torch.testing.assert_close(noise.var[:, 0], torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(noise.var[:, 1], noise.var[:, 2])  # no cells: all cells'


def test_off_for_models_trained_on_samples_and_for_old_saves():
    with pytest.warns(UserWarning):
        old = scgm_scvi.SCGM.load(str(LEGACY / "model"), allow_pickle=True)
    assert not old.module.posterior_noise.fitted
    assert not old.generate(n=3, seed=0).uns["scgm"]["posterior_noise"]
    with pytest.raises(ValueError, match="posterior_noise=False"):
        old.generate(n=3, posterior_noise=True)
    with pytest.raises(ValueError, match="posterior_noise must be"):
        old.generate(n=3, posterior_noise="yes")


def test_off_by_default_when_stage_2_models_posterior_samples():
    from conftest import FIT, TINY, make_adata

    adata = make_adata()
    scgm_scvi.SCGM.setup_anndata(adata, labels_key="labels")
    model = scgm_scvi.SCGM(adata, diffusion_target="sample", **TINY)
    model.train(max_epochs=1, diffusion_max_epochs=1, **FIT)
    assert model.module.posterior_noise.fitted
    generated = model.generate(n=200, seed=0)
    assert not generated.uns["scgm"]["posterior_noise"]
    # the library model sees posterior samples here: their noise must not become library noise
    log_lib = np.log(np.asarray(adata.X.sum(1)).ravel())
    drawn = np.log(generated.obs["library_size"].to_numpy())
    assert drawn.std() < 1.5 * log_lib.std()  # 2.1 x before the fix, now 1.0 x
