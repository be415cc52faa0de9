"""One torch module holding both stages: the NB-VAE and the latent score network.

Keeping both in one module means the stock ``model.save`` / ``SCGM.load`` round-trip everything
(networks, latent statistics, library statistics) in one ``model.pt``.
"""

from __future__ import annotations

import warnings
from typing import Literal, get_args

import torch
from scvi.module import VAE
from scvi.module.base import LossOutput

from scgm_scvi.sde import VPSDE

from ._gaussian import LabelGaussians
from ._library import LibraryModel
from ._posterior_noise import PosteriorNoise
from ._score_net import ConditionGroups, ScoreNetwork

# keys of the stage-2 minibatches built by :class:`scgm_scvi.data.LatentDataModule`
Z_LOC_KEY = "z_loc"
Z_SCALE_KEY = "z_scale"
COND_KEY = "cond"

DiffusionTarget = Literal["mean", "sample"]
LatentScaling = Literal["per_dim", "global"]
ScoreBaseline = Literal["gaussian", "none"]


class SCGMModule(VAE):
    """NB-VAE (scVI's :class:`~scvi.module.VAE`, sub-network names kept for scArches) plus a
    conditional noise-prediction network over its standardised latent.

    Parameters
    ----------
    n_input
        Number of genes.
    n_batch, n_labels, n_continuous_cov, n_cats_per_cov
        Registry sizes, as in :class:`~scvi.module.VAE`.
    n_hidden, n_latent, n_layers, dropout_rate, dispersion, gene_likelihood
        VAE architecture, as in :class:`~scvi.module.VAE`.
    use_batch_norm, use_layer_norm
        Normalisation in the VAE; scVI's batch norm by default. Outside training the module is in
        eval mode, where batch norm uses its running statistics, so a cell decodes the same way
        whatever cells share its minibatch.
    score_width, score_blocks, score_dropout
        Size of the score network.
    p_uncond
        Probability of replacing each condition by "unknown" during stage-2 training, which makes
        the same network usable for classifier-free guidance.
    diffusion_target
        Train the score on posterior samples ``z ~ q(z|x)`` (``"sample"``) or on posterior means
        (``"mean"``).
    latent_scaling
        Scale of the latent dimensions before the SDE: each to unit standard deviation
        (``"per_dim"``) or all by one factor, their root-mean-square standard deviation
        (``"global"``, which keeps dimensions the VAE barely uses small).
    score_baseline
        ``"gaussian"``: the network corrects the exact noise prediction of a Gaussian fit to
        each cell type's latents (:class:`~scgm_scvi.module.LabelGaussians`). ``"none"``: it
        corrects that of ``N(0, I)``, i.e. plain velocity prediction.
    gaussian_rank
        Covariance eigenpairs kept per cell type by the Gaussian baseline.
    beta_min, beta_max
        Linear noise schedule of the VP-SDE.
    **vae_kwargs
        Passed to :class:`~scvi.module.VAE`.
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int = 0,
        n_labels: int = 0,
        n_hidden: int = 128,
        n_latent: int = 256,
        n_layers: int = 1,
        n_continuous_cov: int = 0,
        n_cats_per_cov: list[int] | None = None,
        dropout_rate: float = 0.1,
        dispersion: Literal["gene", "gene-batch", "gene-label", "gene-cell"] = "gene",
        gene_likelihood: Literal["nb", "zinb", "poisson"] = "nb",
        use_batch_norm: Literal["encoder", "decoder", "none", "both"] = "both",
        use_layer_norm: Literal["encoder", "decoder", "none", "both"] = "none",
        score_width: int = 256,
        score_blocks: int = 4,
        score_dropout: float = 0.0,
        p_uncond: float = 0.1,
        diffusion_target: DiffusionTarget = "mean",
        latent_scaling: LatentScaling = "global",
        score_baseline: ScoreBaseline = "gaussian",
        gaussian_rank: int = 64,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        **vae_kwargs,
    ):
        for name, value, options in (
            ("diffusion_target", diffusion_target, get_args(DiffusionTarget)),
            ("latent_scaling", latent_scaling, get_args(LatentScaling)),
            ("score_baseline", score_baseline, get_args(ScoreBaseline)),
        ):
            if value not in options:
                raise ValueError(f"{name} must be one of {list(options)}, got {value!r}.")
        super().__init__(
            n_input=n_input,
            n_batch=n_batch,
            n_labels=n_labels,
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            n_continuous_cov=n_continuous_cov,
            n_cats_per_cov=n_cats_per_cov,
            dropout_rate=dropout_rate,
            dispersion=dispersion,
            gene_likelihood=gene_likelihood,
            use_batch_norm=use_batch_norm,
            use_layer_norm=use_layer_norm,
            **vae_kwargs,
        )
        # condition columns of the score network: cell type, batch (if any), categorical covariates
        self.condition_sizes = [max(n_labels, 1)]
        if n_batch > 1:
            self.condition_sizes.append(n_batch)
        self.condition_sizes += list(n_cats_per_cov or [])
        self.score_net = ScoreNetwork(
            n_latent, self.condition_sizes, score_width, score_blocks, score_dropout
        )
        self.p_uncond = p_uncond
        self.diffusion_target = diffusion_target
        self.latent_scaling = latent_scaling
        self.sde = VPSDE(beta_min=beta_min, beta_max=beta_max)
        self.gaussians = (
            LabelGaussians(n_latent, self.condition_sizes[0], gaussian_rank)
            if score_baseline == "gaussian"
            else None
        )
        self.posterior_noise = PosteriorNoise(n_latent, self.condition_sizes[0])
        self.library_model = LibraryModel(n_latent, self.condition_sizes[0], gaussian_rank)
        # stage-2 state, saved in the state dict: the latent standardisation
        self.register_buffer("latent_mean", torch.zeros(n_latent))
        self.register_buffer("latent_std", torch.ones(n_latent))

    # ------------------------------------------------------------------ stages
    def vae_parameters(self):
        """Parameters of stage 1 (everything except the score network)."""
        return (p for name, p in self.named_parameters() if not name.startswith("score_net."))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As :meth:`torch.nn.Module.load_state_dict`; a state saved before the Gaussian score
        baseline existed (no ``gaussians.*`` entries) loads with ``score_baseline="none"``, the
        parametrisation it was trained with, and one saved before the posterior noise existed
        loads without it (generation then adds no noise, as when it was saved); one saved
        before the library model existed draws library sizes from training cells, as then."""
        # per-label library statistics that 0.1 saved and never used
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("library_log_")}
        # saved before these existed: all-zero buffers read as "not fitted" (no posterior
        # noise; library sizes of training cells), as when the model was saved
        missing = {
            f"{name}.{k}": torch.zeros_like(b)
            for name in ("posterior_noise", "library_model")
            for k, b in getattr(self, name).named_buffers()
            if f"{name}.{k}" not in state_dict
        }
        state_dict = {**state_dict, **missing}
        if self.gaussians is not None and not any(k.startswith("gaussians.") for k in state_dict):
            warnings.warn(
                "This model was saved before the Gaussian score baseline existed; it is loaded "
                "with score_baseline='none', as it was trained.",
                UserWarning,
                stacklevel=2,
            )
            self.gaussians = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def set_stage(self, stage: Literal["vae", "diffusion"]) -> None:
        """Make only the parameters of ``stage`` trainable and put the module in train mode.

        Needed before every ``train`` call: scvi-tools leaves the module in eval mode after
        training and after loading, and loading makes every parameter trainable again.
        """
        for p in self.vae_parameters():
            p.requires_grad_(stage == "vae")
        for p in self.score_net.parameters():
            p.requires_grad_(stage == "diffusion")
        self.train()

    def forward(self, tensors, *args, loss_kwargs: dict | None = None, **kwargs):
        """Stage 1 runs scVI's forward pass; stage 2 (``stage="diffusion"`` in the plan's
        ``loss_kwargs``) computes the denoising loss on precomputed latents."""
        loss_kwargs = dict(loss_kwargs or {})
        if loss_kwargs.pop("stage", "vae") == "diffusion":
            return {}, {}, self.diffusion_loss(tensors)
        return super().forward(tensors, *args, loss_kwargs=loss_kwargs, **kwargs)

    # ------------------------------------------------------------------ fitting stage-2 statistics
    @torch.no_grad()
    def fit_standardization(self, moments: dict) -> None:
        """Per-dimension mean and scale (per dimension or global, ``latent_scaling``) of the
        training latents (of posterior samples, with ``diffusion_target="sample"``).

        ``moments``: ``n`` cells, per-dimension ``sum`` and ``sumsq`` of the posterior means and
        ``scale_sq``, the sum of posterior variances (float64).
        """
        n = moments["n"]
        mean = moments["sum"] / n
        var = (moments["sumsq"] - n * mean**2) / max(n - 1, 1)  # unbiased, as torch.var
        if self.diffusion_target == "sample":
            var = var + moments["scale_sq"] / n
        self.latent_mean.copy_(mean.to(self.latent_mean))
        var = var.clamp_min(0)
        std = var.mean().sqrt().expand_as(var) if self.latent_scaling == "global" else var.sqrt()
        # floor: dimensions the VAE ignores must not be blown up into pure noise
        self.latent_std.copy_(std.clamp_min(1e-2).to(self.latent_std))

    @torch.no_grad()
    def fit_label_baselines(
        self, moments: dict, labels: torch.Tensor, refit_all_cells: bool = True
    ) -> None:
        """Fit the cell-type Gaussians of the score baseline (if any), the posterior noise and
        the library model of ``labels`` from per-label moments of the VAE latents.

        ``moments`` as in :meth:`fit_standardization`, plus per label ``label_count``,
        ``label_scale_sq``, ``label_sum`` and ``label_outer`` (raw latents; standardised here
        for the Gaussians with the fitted :meth:`standardize`) and the log-library sums of
        :meth:`LibraryModel.fit <scgm_scvi.module.LibraryModel.fit>`.
        """
        count = moments["label_count"]
        self.posterior_noise.fit(
            count, moments["label_scale_sq"], labels, refit_all_cells=refit_all_cells
        )
        # stage 2 on posterior samples generates latents with the posterior noise in them
        sample_var = None
        if self.diffusion_target == "sample":
            sample_var = moments["scale_sq"] / moments["n"]
        self.library_model.fit(moments, labels, refit_all_cells, extra_var=sample_var)
        if self.gaussians is None:
            return
        m, s = self.latent_mean.double(), self.latent_std.double()
        total, outer = moments["label_sum"], moments["label_outer"]
        # moments of the standardised latents (z - m) / s
        outer = (
            outer
            - total[:, :, None] * m[None, None, :]
            - m[None, :, None] * total[:, None, :]
            + count[:, None, None] * (m[:, None] * m[None, :])
        ) / (s[:, None] * s[None, :])
        total = (total - count[:, None] * m) / s
        extra = None if sample_var is None else sample_var / s**2
        self.gaussians.fit(count, total, outer, labels, extra, refit_all_cells=refit_all_cells)

    def label_buffers(self) -> list[tuple[str, torch.Tensor]]:
        """State with one slot per cell type (label axis last), for query surgery."""
        buffers = [
            (f"{name}.{k}", b)
            for name in ("posterior_noise", "library_model")
            for k, b in getattr(self, name).named_buffers()
        ]
        if self.gaussians is not None:
            buffers += [(f"gaussians.{k}", b) for k, b in self.gaussians.named_buffers()]
        return buffers

    # ------------------------------------------------------------------ latent space
    def standardize(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latent -> the unit-scale space the SDE works in."""
        return (z - self.latent_mean) / self.latent_std

    def unstandardize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`standardize`."""
        return x * self.latent_std + self.latent_mean

    def null_condition(self, cond: torch.Tensor, columns: list[int] | None = None) -> torch.Tensor:
        """Replace the given condition columns (default: all) by their "unknown" code."""
        out = cond.clone()
        for j in range(cond.shape[1]) if columns is None else columns:
            out[:, j] = self.condition_sizes[j]
        return out

    def baseline_eps(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        groups: ConditionGroups | None = None,
    ) -> torch.Tensor:
        """The closed-form part of the noise prediction: the exact ``eps`` of each cell's
        cell-type Gaussian (``score_baseline="gaussian"``) or of ``N(0, I)`` (``sigma x``)."""
        alpha, sigma = self.sde.marginal(t)
        if self.gaussians is None:
            return sigma[:, None] * x
        return self.gaussians.eps(x, alpha, sigma, cond[:, 0], groups)

    def eps(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        groups: ConditionGroups | None = None,
    ) -> torch.Tensor:
        """Predicted noise at standardised latent ``x``, time ``t`` (shape ``(n,)``).

        ``eps = baseline + alpha * network``. With the ``N(0, I)`` baseline this is velocity
        prediction (Salimans & Ho 2022): the network predicts ``v = alpha eps - sigma x_0``.
        The factor ``alpha`` damps network errors at high noise; with plain noise prediction
        they are multiplied by ``sigma / alpha`` (about 150 at ``t = T``) in the ODE and the
        samples blow up.

        ``groups`` (:func:`~scgm_scvi.module.condition_groups` of ``cond``, for cells that share
        one time, as in sampling) makes the same computation cheaper.
        """
        alpha, _ = self.sde.marginal(t)
        baseline = self.baseline_eps(x, t, cond, groups)
        return baseline + alpha[:, None] * self.score_net(x, t, cond, groups)

    def diffusion_loss(self, tensors: dict[str, torch.Tensor]) -> LossOutput:
        """Denoising score-matching loss of :meth:`eps`, uniform time.

        The network's target is ``(noise - baseline) / alpha``, which is ``v`` for the
        ``N(0, I)`` baseline; the loss weights time as velocity prediction does.
        """
        z = tensors[Z_LOC_KEY]
        if self.diffusion_target == "sample":
            z = z + tensors[Z_SCALE_KEY] * torch.randn_like(z)
        x0 = self.standardize(z)
        cond = tensors[COND_KEY].long()
        if self.training and self.p_uncond > 0:
            drop = torch.rand(cond.shape, device=cond.device) < self.p_uncond
            null = torch.as_tensor(self.condition_sizes, device=cond.device).expand_as(cond)
            cond = torch.where(drop, null, cond)
        t = torch.rand(x0.shape[0], device=x0.device) * (self.sde.T - self.sde.eps) + self.sde.eps
        noise = torch.randn_like(x0)
        alpha, sigma = self.sde.marginal(t)
        xt = alpha[:, None] * x0 + sigma[:, None] * noise
        target = (noise - self.baseline_eps(xt, t, cond)) / alpha[:, None]
        per_cell = ((self.score_net(xt, t, cond) - target) ** 2).mean(dim=-1)
        return LossOutput(loss=per_cell.mean(), reconstruction_loss=per_cell)

    # ------------------------------------------------------------------ decoding
    def decode(
        self,
        z: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor,
        labels: torch.Tensor,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
    ):
        """Count distribution ``p(x | z, library, covariates)`` for arbitrary latents.

        ``library`` is the log library size, shape ``(n, 1)``.
        """
        return self.generative(
            z=z,
            library=library,
            batch_index=batch_index,
            cont_covs=cont_covs,
            cat_covs=cat_covs,
            y=labels,
        )["px"]
