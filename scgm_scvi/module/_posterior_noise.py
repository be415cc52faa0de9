"""The encoder's uncertainty, added back to generated latents before decoding.

Stage 2 models posterior *means*. A cell decoded from its posterior mean is smoother than the
real cell: the spread that the encoder could not pin down (``Var(z | x)``) is missing, and a
discriminator sees it (on PBMC 3k, training cells decoded from their means were told from real
cells with AUC 0.75, from posterior samples with 0.63). Adding each cell type's mean posterior
variance back, ``z + sigma_type * noise``, decodes generated means as posterior samples are
decoded: the aggregate posterior is the mixture of ``q(z | x)``, whose spread around each mean
this approximates with one diagonal variance per cell type.
"""

from __future__ import annotations

import torch
from torch import nn


class PosteriorNoise(nn.Module):
    """Per-cell-type mean posterior variance of the VAE latent, and samples with it.

    The buffer puts the label axis last (as :class:`~scgm_scvi.module.LabelGaussians`), so query
    surgery appends the slots of new cell types; slot ``n_labels`` holds the all-cells variance.
    Zero everywhere (before fitting, or in a model saved before this existed) adds no noise.

    Parameters
    ----------
    n_latent
        Latent dimension.
    n_labels
        Number of cell types.
    """

    def __init__(self, n_latent: int, n_labels: int):
        super().__init__()
        self.register_buffer("var", torch.zeros(n_latent, n_labels + 1))

    @torch.no_grad()
    def fit(
        self,
        count: torch.Tensor,
        scale_sq: torch.Tensor,
        labels: torch.Tensor,
        refit_all_cells: bool = True,
    ) -> None:
        """Set the variances of ``labels`` (and of all cells) from per-label sums.

        Parameters
        ----------
        count
            Cells per label, ``(n_labels,)``.
        scale_sq
            Per label, the sum over its cells of the posterior variances, ``(n_labels, d)``.
        labels
            Labels to (re)fit; a label without cells gets the all-cells variance.
        refit_all_cells
            Also refit the all-cells variance (the "unknown" label).
        """
        overall = scale_sq.sum(0) / count.sum().clamp_min(1)
        null = self.var.shape[1] - 1
        for c in labels.tolist():
            var = scale_sq[c] / count[c] if count[c] > 0 else overall
            self.var[:, c] = var.to(self.var)
        if refit_all_cells:
            self.var[:, null] = overall.to(self.var)

    @property
    def fitted(self) -> bool:
        return bool(self.var.any())

    def sample(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``z`` plus Gaussian noise with its label's posterior variance (torch's global RNG)."""
        return z + self.var.T[labels].sqrt() * torch.randn_like(z)
