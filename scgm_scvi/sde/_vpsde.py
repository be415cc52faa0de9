"""Variance-preserving SDE of Song et al. (2021), arXiv 2011.13456, eq. 11.

The SDE knows nothing about networks: it gives the forward drift and diffusion, the closed-form
marginal ``x_t = alpha(t) x_0 + sigma(t) eps`` and the prior at ``t = T``. Samplers combine it with
a noise-prediction function.
"""

from __future__ import annotations

import torch


class VPSDE:
    """Variance-preserving SDE ``dx = -1/2 beta(t) x dt + sqrt(beta(t)) dW`` with linear ``beta``.

    Parameters
    ----------
    beta_min
        ``beta(0)``.
    beta_max
        ``beta(T)``.
    T
        End time; the marginal at ``T`` is close to ``N(0, I)``.
    eps
        Smallest time used for training and sampling; avoids the singular score at ``t = 0``.
    """

    def __init__(
        self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, eps: float = 1e-3
    ):
        self.beta_min = beta_min
        self.beta_max = beta_max
        self.T = T
        self.eps = eps

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """Noise rate ``beta(t)``."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``log alpha(t) = -1/2 int_0^t beta(s) ds``."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean coefficient ``alpha(t)`` and standard deviation ``sigma(t)`` of ``x_t | x_0``."""
        log_alpha = self.log_alpha(t)
        alpha = torch.exp(log_alpha)
        sigma = torch.sqrt(-torch.expm1(2.0 * log_alpha))
        return alpha, sigma

    def drift_diffusion(
        self, x: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward drift ``f(x, t)`` and diffusion coefficient ``g(t)``.

        ``t`` is one time for all cells (0-d, as the samplers pass it) or one per cell (then
        ``g`` has one value per cell).
        """
        beta = self.beta(t)
        rate = beta[:, None] if beta.ndim == 1 else beta
        return -0.5 * rate * x, torch.sqrt(beta)

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample ``x_t`` given ``x_0`` and standard normal ``noise``."""
        alpha, sigma = self.marginal(t)
        return alpha[:, None] * x0 + sigma[:, None] * noise

    def prior_sample(
        self, shape: tuple[int, ...], device=None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw from the prior ``N(0, I)`` at ``t = T``."""
        return torch.randn(shape, device=device, generator=generator)

    # --- noise-to-signal ratio, the natural clock of the probability-flow ODE (DDIM / EDM) ---
    def nsr(self, t: torch.Tensor) -> torch.Tensor:
        """Noise-to-signal ratio ``sigma(t) / alpha(t)``."""
        return torch.sqrt(torch.expm1(-2.0 * self.log_alpha(t)))

    def t_from_nsr(self, nsr: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`nsr` (solves the quadratic in ``log alpha``)."""
        c = 0.5 * torch.log1p(nsr**2)  # = -log alpha(t)
        a = 0.25 * (self.beta_max - self.beta_min)
        b = 0.5 * self.beta_min
        return (-b + torch.sqrt(b**2 + 4 * a * c)) / (2 * a)

    def time_grid(
        self,
        n_steps: int,
        t_start: float | None = None,
        spacing: str = "uniform",
        rho: float = 7.0,
        device=None,
    ) -> torch.Tensor:
        """Decreasing times from ``t_start`` (default ``T``) to ``eps``, ``n_steps + 1`` points.

        ``spacing="uniform"`` is Song et al.'s grid; ``"karras"`` spaces the noise-to-signal ratio
        as in Karras et al. (2022) with exponent ``rho``, which puts the steps where the ODE bends
        and makes few-step ODE sampling accurate; ``"logsnr"`` spaces ``log(alpha / sigma)``
        evenly, the grid of DPM-Solver's exponential integrators.
        """
        t_start = self.T if t_start is None else t_start
        if spacing == "uniform":
            return torch.linspace(t_start, self.eps, n_steps + 1, device=device)
        if spacing not in ("karras", "logsnr"):
            raise ValueError(f"spacing must be 'uniform', 'karras' or 'logsnr', got {spacing!r}.")
        hi = self.nsr(torch.tensor(t_start, dtype=torch.float64))
        lo = self.nsr(torch.tensor(self.eps, dtype=torch.float64))
        ramp = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64)
        if spacing == "karras":
            s = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        else:  # log(alpha / sigma) = -log(nsr), evenly spaced
            s = torch.exp(hi.log() + ramp * (lo.log() - hi.log()))
        t = self.t_from_nsr(s).clamp(self.eps, t_start)
        t[0], t[-1] = t_start, self.eps
        return t.to(device=device, dtype=torch.float32)

    def __repr__(self) -> str:
        return f"VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T})"
