"""A Gaussian per cell type in the standardised latent, whose exact noise prediction the score
network corrects.

For data ``x0 ~ N(mu, Sigma)`` the VP-SDE's optimal noise prediction is linear and closed-form,
``eps(x, t) = sigma (alpha^2 Sigma + sigma^2 I)^-1 (x - alpha mu)``. With ``N(0, I)`` it is
``sigma x``, which is what plain velocity prediction (``eps = sigma x + alpha v``) builds in.
Fitting ``mu`` and ``Sigma`` per cell type instead gives the network only the non-Gaussian
remainder to learn: on PBMC 3k the score network alone spread each type's variance over too many
latent directions, and this removed most of that.
"""

from __future__ import annotations

import torch
from torch import nn

from ._score_net import ConditionGroups


class LabelGaussians(nn.Module):
    """Per-label means and low-rank-plus-isotropic covariances, and their exact ``eps``.

    Each label's covariance keeps its ``rank`` leading eigenpairs; the other directions share
    one variance, the mean of the remaining eigenvalues. Label ``n_labels`` (the "unknown" code
    of condition dropout and guidance) is the Gaussian of all cells. Buffers put the label axis
    last, so scvi-tools' query surgery appends the slots of new cell types.

    Parameters
    ----------
    n_latent
        Latent dimension.
    n_labels
        Number of cell types.
    rank
        Eigenpairs kept per label (at most ``n_latent``).
    shrinkage
        Pseudo-cells of the pooled within-type covariance mixed into each type's covariance,
        so that rare types get a usable estimate.
    """

    #: cells per gather in :meth:`eps`, which bounds its memory to ``256 * n_latent * rank``
    CHUNK = 256

    def __init__(self, n_latent: int, n_labels: int, rank: int = 64, shrinkage: float = 20.0):
        super().__init__()
        rank = min(rank, n_latent)
        self.shrinkage = shrinkage
        n = n_labels + 1
        basis = torch.eye(n_latent, rank)[:, :, None].repeat(1, 1, n)
        # before fitting: N(0, I) for every label, i.e. plain velocity prediction
        self.register_buffer("mean", torch.zeros(n_latent, n))
        self.register_buffer("basis", basis)
        self.register_buffer("top_var", torch.ones(rank, n))
        self.register_buffer("rest_var", torch.ones(n))

    @torch.no_grad()
    def fit(
        self,
        count: torch.Tensor,
        total: torch.Tensor,
        outer: torch.Tensor,
        labels: torch.Tensor,
        extra_var: torch.Tensor | None = None,
        refit_all_cells: bool = True,
    ) -> None:
        """Set the Gaussians of ``labels`` from per-label moments of standardised latents.

        Parameters
        ----------
        count, total, outer
            Per label (rows ``0 .. n_labels - 1``): number of cells, sum of latents ``(d,)``
            and sum of outer products ``(d, d)``, in float64.
        labels
            Labels to (re)fit; the others keep their Gaussians. A label without cells gets
            the all-cells Gaussian.
        extra_var
            Added to every variance (the mean posterior variance when stage 2 trains on
            posterior samples).
        refit_all_cells
            Also refit the all-cells Gaussian (the "unknown" label).
        """
        d = total.shape[1]
        eye = torch.eye(d, dtype=total.dtype, device=total.device)
        seen = count > 0
        cov = torch.zeros_like(outer)
        mean = total / count.clamp_min(1)[:, None]
        cov[seen] = outer[seen] / count[seen, None, None] - mean[seen, :, None] * mean[seen, None]
        within = (count[:, None, None] * cov).sum(0) / count.sum().clamp_min(1)
        n_all = count.sum().clamp_min(1)
        mean_all = total.sum(0) / n_all
        cov_all = outer.sum(0) / n_all - mean_all[:, None] * mean_all[None]
        extra = 0.0 if extra_var is None else torch.diag_embed(extra_var.to(outer))
        k = self.top_var.shape[0]
        null = self.mean.shape[1] - 1
        for c in labels.tolist() + ([null] if refit_all_cells else []):
            if c == null or count[c] == 0:
                mu, sigma = mean_all, cov_all
            else:
                w = self.shrinkage / (count[c] + self.shrinkage)
                mu, sigma = mean[c], (1 - w) * cov[c] + w * within
            lam, vec = torch.linalg.eigh(sigma + extra + 1e-6 * eye)
            lam = lam.clamp_min(1e-6)
            self.mean[:, c] = mu.to(self.mean)
            self.basis[:, :, c] = vec[:, -k:].to(self.basis)
            self.top_var[:, c] = lam[-k:].to(self.top_var)
            self.rest_var[c] = (lam[:-k].mean() if k < d else lam[0]).to(self.rest_var)

    def eps(
        self,
        x: torch.Tensor,
        alpha: torch.Tensor,
        sigma: torch.Tensor,
        labels: torch.Tensor,
        groups: ConditionGroups | None = None,
    ) -> torch.Tensor:
        """Exact noise prediction of each cell's label Gaussian at ``x_t``.

        ``alpha``, ``sigma`` are the marginal coefficients per cell, ``(n,)``; ``labels`` the
        label codes (``n_labels`` = all cells). With ``groups``
        (:class:`~scgm_scvi.module.ConditionGroups` of the cells, which then share one time)
        the cells of each label go through one dense product; without, each cell gathers its
        label's basis. Float32 even under autocast: at high noise the result is almost ``x``
        and the network adds a small correction to it.
        """
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if groups is not None:
                return self._eps_by_label(x, alpha[0].float(), sigma[0].float(), groups)
            bases = self.basis.permute(2, 0, 1)  # (labels, d, k): a gather gives (n, d, k)
            out = []
            for rows in torch.split(torch.arange(len(x), device=x.device), self.CHUNK):
                lab = labels[rows]
                a, s = alpha[rows, None].float(), sigma[rows, None].float()
                r = x[rows] - a * self.mean.T[lab]
                iso = s / (a**2 * self.rest_var[lab, None] + s**2)
                top = s / (a**2 * self.top_var.T[lab] + s**2) - iso
                basis = bases[lab]
                proj = torch.bmm(r[:, None, :], basis)[:, 0]
                out.append(iso * r + torch.bmm((top * proj)[:, None, :], basis.mT)[:, 0])
            return torch.cat(out)

    def _eps_by_label(
        self, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor, groups: ConditionGroups
    ) -> torch.Tensor:
        """:meth:`eps` for cells sharing one time, one label at a time."""
        out = torch.empty_like(x)
        for lab, rows in zip(groups.labels, torch.split(groups.order, groups.counts), strict=True):
            r = x[rows] - a * self.mean[:, lab]
            iso = s / (a**2 * self.rest_var[lab] + s**2)
            top = s / (a**2 * self.top_var[:, lab] + s**2) - iso
            basis = self.basis[:, :, lab]
            out[rows] = iso * r + ((r @ basis) * top) @ basis.T
        return out
