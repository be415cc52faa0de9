"""Reverse-time samplers, one small function each (in the spirit of k-diffusion).

Every sampler takes

- ``eps_fn(x, t) -> eps``: the noise prediction at ``x`` and time ``t`` (a batch of cells, a
  0-d time tensor); guidance and conditioning are wrapped into it by the caller;
- ``sde``: the forward SDE (:class:`~scgm_scvi.sde.VPSDE`);
- ``x``: the start, i.e. prior noise at ``ts[0] = T`` for generation or a noised latent at
  ``ts[0] = t0`` for editing;
- ``ts``: a decreasing time grid ending at ``sde.eps``, on the device of ``x``;
- ``callback(i, t, x) -> x or None``: an optional per-step hook, run after step ``i``;
  it may return a replacement ``x`` (interventions) and is used for progress bars.

Loops only launch device kernels: there is no ``.item()`` or host copy inside them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from scgm_scvi.sde import VPSDE

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None]


def _after_step(callback: StepCallback | None, i: int, t: torch.Tensor, x: torch.Tensor):
    if callback is None:
        return x
    out = callback(i, t, x)
    return x if out is None else out


def _reverse_sde_step(
    eps_fn: EpsFn,
    sde: VPSDE,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    generator: torch.Generator | None,
    add_noise: bool,
) -> torch.Tensor:
    """One Euler-Maruyama step of the reverse SDE from ``t`` down to ``t_next``.

    ``t`` is 0-d, so the schedule is evaluated once per step and broadcast over cells.
    """
    _, sigma = sde.marginal(t)
    score = -eps_fn(x, t) / sigma
    drift, g = sde.drift_diffusion(x, t)
    dt = t - t_next
    # backwards in time along the reverse drift f(x, t) - g(t)^2 score
    x_mean = x - (drift - g**2 * score) * dt
    if not add_noise:  # the last step returns the mean: noise at t = eps would only blur cells
        return x_mean
    noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    return x_mean + g * torch.sqrt(dt) * noise


def sample_euler_maruyama(
    eps_fn: EpsFn,
    sde: VPSDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Reverse-SDE Euler-Maruyama sampler; one network evaluation per step.

    Parameters
    ----------
    eps_fn
        Noise prediction ``eps_fn(x, t)``.
    sde
        Forward SDE.
    x
        Start latent at ``ts[0]``.
    ts
        Decreasing time grid, ``len(ts) - 1`` steps.
    generator
        Random generator for the injected noise (seeding).
    callback
        Per-step hook ``callback(i, t, x)``.

    Returns
    -------
    The latent at ``ts[-1]``.
    """
    n = len(ts) - 1
    for i in range(n):
        x = _reverse_sde_step(eps_fn, sde, x, ts[i], ts[i + 1], generator, add_noise=i < n - 1)
        x = _after_step(callback, i, ts[i + 1], x)
    return x


def sample_predictor_corrector(
    eps_fn: EpsFn,
    sde: VPSDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    snr: float = 0.16,
    n_corrector: int = 1,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Predictor-corrector sampler (Song et al. 2021, Algorithm 3 for the VP-SDE).

    Each step runs ``n_corrector`` Langevin corrector steps at ``t`` and then a reverse-SDE
    predictor step, i.e. ``n_corrector + 1`` network evaluations per step. The Langevin step
    size is Song et al.'s signal-to-noise rule ``2 (snr ||z|| / ||score||)^2`` with the norms
    replaced by their expectations (``||z||^2 = d``, ``||score||^2 = d / sigma^2``), i.e.
    ``2 (snr sigma)^2``: the same for every cell, so a cell's trajectory does not depend on which
    cells share its batch, and a cell with a small predicted noise does not take a huge step.

    Parameters
    ----------
    eps_fn, sde, x, ts, generator, callback
        As in :func:`sample_euler_maruyama`.
    snr
        Target signal-to-noise ratio of the corrector.
    n_corrector
        Langevin steps per time step.
    """
    n = len(ts) - 1
    for i in range(n):
        t = ts[i]
        _, sigma = sde.marginal(t)
        step = 2.0 * (snr * sigma) ** 2
        for _ in range(n_corrector):
            score = -eps_fn(x, t) / sigma
            noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            x = x + step * score + torch.sqrt(2.0 * step) * noise
        x = _reverse_sde_step(eps_fn, sde, x, t, ts[i + 1], generator, add_noise=i < n - 1)
        x = _after_step(callback, i, ts[i + 1], x)
    return x


def sample_ode_heun(
    eps_fn: EpsFn,
    sde: VPSDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Probability-flow ODE, second-order Heun steps; deterministic, two evaluations per step.

    The VP probability-flow ODE becomes ``dy/ds = eps(x, t)`` in the variables
    ``y = x / alpha(t)`` and ``s = sigma(t) / alpha(t)`` (the DDIM / EDM form), which is almost
    straight, so Heun's method is accurate with a few tens of evaluations. Integrating from
    ``t = eps`` up to ``T`` (an increasing grid) encodes a latent into noise (ODE inversion).

    Parameters
    ----------
    eps_fn, sde, x, ts, callback
        As in :func:`sample_euler_maruyama`; ``ts`` may also be increasing (inversion).
    generator
        Unused (the ODE is deterministic); accepted so that all samplers share one signature.
    """
    alpha, _ = sde.marginal(ts)
    s = sde.nsr(ts)
    y = x / alpha[0]
    n = len(ts) - 1
    for i in range(n):
        d = eps_fn(alpha[i] * y, ts[i])
        y_euler = y + (s[i + 1] - s[i]) * d
        d_next = eps_fn(alpha[i + 1] * y_euler, ts[i + 1])
        y = y + (s[i + 1] - s[i]) * 0.5 * (d + d_next)
        x_new = alpha[i + 1] * y
        out = _after_step(callback, i, ts[i + 1], x_new)
        if out is not x_new:
            y = out / alpha[i + 1]
    return alpha[-1] * y


def sample_ode_euler(
    eps_fn: EpsFn,
    sde: VPSDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Probability-flow ODE with first-order steps in ``(y, s)`` (equivalent to DDIM, eta = 0).

    One network evaluation per step; see :func:`sample_ode_heun` for the variables.
    """
    alpha, _ = sde.marginal(ts)
    s = sde.nsr(ts)
    y = x / alpha[0]
    for i in range(len(ts) - 1):
        y = y + (s[i + 1] - s[i]) * eps_fn(alpha[i] * y, ts[i])
        x_new = alpha[i + 1] * y
        out = _after_step(callback, i, ts[i + 1], x_new)
        if out is not x_new:
            y = out / alpha[i + 1]
    return alpha[-1] * y


def sample_dpmpp_2m(
    eps_fn: EpsFn,
    sde: VPSDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Probability-flow ODE with DPM-Solver++(2M) steps (Lu et al. 2022, arXiv 2211.01095).

    An exponential integrator in the half log signal-to-noise ratio
    ``lambda = log(alpha / sigma)``: the linear part of the ODE is solved exactly, and the
    denoised estimate ``x0 = (x - sigma eps) / alpha`` is extrapolated linearly from the
    previous step (multistep), so each step costs one network evaluation and is second order.
    It is accurate with about ten evaluations, where Heun's steps need several tens.

    Parameters
    ----------
    eps_fn, sde, x, ts, callback
        As in :func:`sample_euler_maruyama`; ``ts`` may also be increasing (inversion).
    generator
        Unused (the ODE is deterministic); accepted so that all samplers share one signature.
    """
    alpha, sigma = sde.marginal(ts)
    lam = torch.log(alpha) - torch.log(sigma)
    x0_prev, h_prev = None, None
    for i in range(len(ts) - 1):
        x0 = (x - sigma[i] * eps_fn(x, ts[i])) / alpha[i]
        h = lam[i + 1] - lam[i]
        if x0_prev is None:
            d = x0
        else:  # linear extrapolation of x0 in lambda, to the middle of the step
            r = h_prev / h
            d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * torch.expm1(-h) * d
        x = _after_step(callback, i, ts[i + 1], x)
        x0_prev, h_prev = x0, h
    return x


def sample_dpmpp_2m_sde(
    eps_fn: EpsFn,
    sde: VPSDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Reverse SDE with SDE-DPM-Solver++(2M) steps (Lu et al. 2022, arXiv 2211.01095).

    The stochastic sibling of :func:`sample_dpmpp_2m`: the same exponential integrator in
    ``lambda = log(alpha / sigma)`` and multistep extrapolation of the denoised estimate, for
    the reverse SDE instead of the ODE. Each step keeps ``exp(-2h)`` of the current noise and
    draws the rest afresh, so errors of the score network are partly forgotten rather than
    carried along the trajectory (the ODE carries them): with an imperfect score, the SDE's
    samples are closer to the data (Karras et al. 2022, arXiv 2206.00364). One network
    evaluation per step; ten steps by default.

    Parameters
    ----------
    eps_fn, sde, x, ts, generator, callback
        As in :func:`sample_euler_maruyama`.
    """
    alpha, sigma = sde.marginal(ts)
    lam = torch.log(alpha) - torch.log(sigma)
    n = len(ts) - 1
    x0_prev, h_prev = None, None
    for i in range(n):
        x0 = (x - sigma[i] * eps_fn(x, ts[i])) / alpha[i]
        h = lam[i + 1] - lam[i]
        renew = -torch.expm1(-2 * h)  # share of the noise variance drawn afresh this step
        d = x0
        if x0_prev is not None:  # extrapolate x0 to the step's midpoint (2M, as the ODE)
            r = h_prev / h
            d = x0 + (0.5 / r) * (x0 - x0_prev)
        x = (sigma[i + 1] / sigma[i]) * torch.exp(-h) * x + alpha[i + 1] * renew * d
        if i < n - 1:  # the last step returns the mean, as Euler-Maruyama does
            noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            x = x + sigma[i + 1] * torch.sqrt(renew) * noise
        x = _after_step(callback, i, ts[i + 1], x)
        x0_prev, h_prev = x0, h
    return x


SAMPLERS = {
    "ode": sample_ode_heun,
    "ode_euler": sample_ode_euler,
    "euler_maruyama": sample_euler_maruyama,
    "pc": sample_predictor_corrector,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
}
# network evaluations per step (Heun: two; PC: one predictor + one corrector by default)
EVALS_PER_STEP = {
    "ode": 2, "ode_euler": 1, "euler_maruyama": 1, "pc": 2, "dpmpp_2m": 1, "dpmpp_2m_sde": 1,
}  # fmt: skip
