"""Library sizes of generated cells, drawn given their latent.

A cell's total count is not independent of its state: within a cell type, larger or more
active cells have more counts, and the VAE latent carries part of that. Drawing the library of
a generated cell from a random training cell of its type ignores this (the error budget of
``benchmarks/generation.py`` measures what it costs). This module keeps, per cell type, the
Gaussian of log library given the latent, the conditional of a joint Gaussian of
``(z, log library)`` fit with the same shrinkage toward the pooled within-type covariance as
the score baseline's Gaussians.
Directions of the latent beyond a type's leading ``rank`` are ridged by the mean variance there
(the level at which the Gaussians model them as isotropic noise): generated latents vary in
those directions more than the training means do, and an unregularised regression amplifies
that into wrong library sizes.
"""

from __future__ import annotations

import torch
from torch import nn


class LibraryModel(nn.Module):
    """Per-label linear-Gaussian model of the log library size given the VAE latent.

    ``log l | z, label c ~ N(mean_c + coef_c . (z - center_c), std_c^2)``. Buffers put the label
    axis last (as :class:`~scgm_scvi.module.LabelGaussians`), so query surgery appends the slots
    of new cell types; slot ``n_labels`` is the model of all cells. All-zero ``std`` (before
    fitting, or in a model saved before this existed) means "not fitted": generation then draws
    library sizes from training cells, as before.

    Parameters
    ----------
    n_latent
        Latent dimension.
    n_labels
        Number of cell types.
    rank
        Leading directions of each type's latent covariance that are regressed on freely; the
        others are ridged by their mean variance (as :class:`~scgm_scvi.module.LabelGaussians`
        keeps ``rank`` eigenpairs and one variance for the rest).
    shrinkage
        Pseudo-cells of the pooled within-type covariance mixed into each type's, so that rare
        types get a usable estimate.
    """

    def __init__(self, n_latent: int, n_labels: int, rank: int = 64, shrinkage: float = 20.0):
        super().__init__()
        self.rank = min(rank, n_latent)
        self.shrinkage = shrinkage
        n = n_labels + 1
        self.register_buffer("coef", torch.zeros(n_latent, n))
        self.register_buffer("center", torch.zeros(n_latent, n))
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.zeros(n))

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has set the models (all-zero ``std`` means not)."""
        return bool(self.std.any())

    @torch.no_grad()
    def fit(
        self,
        moments: dict,
        labels: torch.Tensor,
        refit_all_cells: bool = True,
        extra_var: torch.Tensor | None = None,
    ) -> None:
        """Set the models of ``labels`` (and of all cells) from per-label sums (float64).

        ``moments``: per label ``label_count`` ``(L,)``, ``label_sum`` ``(L, d)`` and
        ``label_outer`` ``(L, d, d)`` of the latents, ``label_lib_sum`` / ``label_lib_sq``
        ``(L,)`` of the log library and ``label_lib_cross`` ``(L, d)``, the sum of
        ``z * log library``. A label without cells gets the all-cells model.

        ``extra_var`` ``(d,)``: variance of noise independent of the library that the latents
        given to :meth:`sample` carry on top of those moments (posterior samples drawn around
        the means the moments describe). It is added to the latent covariance, so the
        regression is the conditional given such noisy latents (its slope attenuated, its
        residual wider) instead of one that turns the noise into library sizes; the ridge
        beyond ``rank`` is then left out, as the noise models those directions.
        """
        count = moments["label_count"]
        n = count.clamp_min(1)
        mz = moments["label_sum"] / n[:, None]
        ml = moments["label_lib_sum"] / n
        czz = moments["label_outer"] / n[:, None, None] - mz[:, :, None] * mz[:, None, :]
        noise = 0.0 if extra_var is None else torch.diag(extra_var.to(czz))
        czl = moments["label_lib_cross"] / n[:, None] - mz * ml[:, None]
        cll = moments["label_lib_sq"] / n - ml**2
        total = count.sum().clamp_min(1)
        w = count / total

        def pooled(c):  # within-type covariance, pooled over types
            return (w.view(-1, *[1] * (c.dim() - 1)) * c).sum(0)

        within = pooled(czz), pooled(czl), pooled(cll)
        # all cells: the covariance around the overall mean (between types included)
        mz_all = moments["label_sum"].sum(0) / total
        ml_all = moments["label_lib_sum"].sum(0) / total
        every = (
            moments["label_outer"].sum(0) / total - mz_all[:, None] * mz_all[None],
            moments["label_lib_cross"].sum(0) / total - mz_all * ml_all,
            moments["label_lib_sq"].sum(0) / total - ml_all**2,
        )
        null = self.mean.shape[0] - 1
        for c in labels.tolist() + ([null] if refit_all_cells else []):
            if c == null or count[c] == 0:
                (s_zz, s_zl, s_ll), mu_z, mu_l = every, mz_all, ml_all
            else:
                a = self.shrinkage / (count[c] + self.shrinkage)
                s_zz, s_zl, s_ll = (
                    (1 - a) * own + a * pool
                    for own, pool in zip((czz[c], czl[c], cll[c]), within, strict=True)
                )
                mu_z, mu_l = mz[c], ml[c]
            lam, vec = torch.linalg.eigh(s_zz + noise)
            lam = lam.clamp_min(0)
            ridge = 1e-6 * lam.mean().clamp_min(1e-12)  # keeps dead directions stable
            if self.rank < len(lam) and extra_var is None:  # (the noise does this job itself)
                ridge = lam[: -self.rank].mean().clamp_min(ridge)
            coef = vec @ ((vec.T @ s_zl) / (lam + ridge))
            var = (s_ll - s_zl @ coef).clamp_min(1e-3 * s_ll.clamp_min(1e-12))
            self.coef[:, c] = coef.to(self.coef)
            self.center[:, c] = mu_z.to(self.center)
            self.mean[c] = mu_l.to(self.mean)
            self.std[c] = var.sqrt().to(self.std)

    def sample(
        self, z: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Log library sizes ``(n,)`` of latents ``z`` ``(n, d)`` with label codes ``labels``."""
        z = z.float()
        loc = self.mean[labels] + ((z - self.center.T[labels]) * self.coef.T[labels]).sum(1)
        noise = torch.randn(len(z), device=z.device, dtype=z.dtype, generator=generator)
        return loc + self.std[labels] * noise
