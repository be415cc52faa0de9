"""Guidance wraps the noise prediction; samplers never know about it."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from scgm_scvi.module._score_net import condition_groups

from ._samplers import EpsFn


def classifier_free_guidance(
    net_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    cond: torch.Tensor,
    null_cond: torch.Tensor,
    guidance_scale: float,
    interval: tuple[float, float] | None = None,
) -> EpsFn:
    """Classifier-free guidance (Ho & Salimans 2022), optionally in a limited time interval.

    ``eps = eps(x | null) + w (eps(x | cond) - eps(x | null))``: ``w = 1`` is the plain
    conditional model, ``w > 1`` sharpens the condition, ``w = 0`` ignores it. For ``w != 1`` the
    conditional and unconditional predictions come from one batched network call.

    With ``interval = (t_lo, t_hi)`` the weight is ``w`` only at times ``t_lo <= t <= t_hi`` and
    1 elsewhere (Kynkaanniemi et al. 2024). Guidance at high noise moves every cell's trajectory
    toward a mean extrapolated past the condition's own (``mu_null + w (mu_cond - mu_null)``),
    which costs diversity; at low noise, for Gaussian-like conditions, it gives the guided
    density the precision ``P_cond + (w - 1)(P_cond - P_null)``, which can turn negative in
    directions where the condition is wider than the population and then sends cells off the
    data. The switch is a tensor operation on ``t``, so there is no host synchronisation; both
    predictions are computed at every step.

    The cells' distinct condition rows are found once here
    (:func:`~scgm_scvi.module.condition_groups`, one host synchronisation), not at every step.

    Parameters
    ----------
    net_fn
        ``net_fn(x, t, cond, groups) -> eps`` with ``t`` of shape ``(n,)`` (one time for all
        cells), integer ``cond`` of shape ``(n, n_conditions)`` and ``groups`` its
        :class:`~scgm_scvi.module.ConditionGroups`.
    cond
        Condition codes of the cells being sampled.
    null_cond
        The same shape with the "no condition" codes in the guided columns.
    guidance_scale
        ``w`` above.
    interval
        ``(t_lo, t_hi)`` in units of the SDE's time, or ``None`` for guidance at every time.
    """
    if guidance_scale == 1.0:
        groups = condition_groups(cond)
        return lambda x, t: net_fn(x, t.expand(x.shape[0]), cond, groups)
    both = torch.cat([cond, null_cond])
    groups = condition_groups(both)
    lo, hi = check_guidance_interval(interval)

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        xx, tt = torch.cat([x, x]), t.expand(2 * x.shape[0])
        eps_c, eps_u = net_fn(xx, tt, both, groups).chunk(2)
        w = guidance_scale
        if interval is not None:  # w inside [lo, hi], 1 outside, without leaving the device
            w = 1.0 + (guidance_scale - 1.0) * ((t >= lo) & (t <= hi)).to(eps_c.dtype)
        return eps_u + w * (eps_c - eps_u)

    return eps_fn


def check_guidance_interval(interval: tuple[float, float] | None) -> tuple[float, float]:
    """Check a guidance interval and return its bounds.

    Parameters
    ----------
    interval
        ``(t_lo, t_hi)`` with ``0 <= t_lo < t_hi`` in units of the SDE's time, or ``None``.

    Returns
    -------
    ``(t_lo, t_hi)`` as floats; ``(-inf, inf)`` (every time) for ``None``.

    Raises
    ------
    ValueError
        If ``interval`` is not a pair of numbers with ``0 <= t_lo < t_hi``.
    """
    if interval is None:
        return -math.inf, math.inf
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(
            f"guidance_interval must be None or a pair (t_lo, t_hi), got {interval!r}."
        ) from None
    if not 0.0 <= lo < hi:
        raise ValueError(
            f"guidance_interval (t_lo, t_hi) needs 0 <= t_lo < t_hi, got {interval!r}."
        )
    return lo, hi


def gene_guidance(
    eps_fn: EpsFn,
    sde,
    expression_fn: Callable[[torch.Tensor], torch.Tensor],
    target: torch.Tensor,
    direction: torch.Tensor,
    scale: float = 1.0,
) -> EpsFn:
    """Reconstruction guidance toward gene-level constraints (Ho et al. 2022; Chung et al. 2023).

    At each call the clean latent is predicted from the noisy one,
    ``x0 = (x - sigma eps(x, t)) / alpha``, decoded to expression with ``expression_fn`` and
    scored by a per-cell loss on the constrained genes. The clean estimate takes a gradient step
    down that loss, ``x0' = x0 - scale * grad``, and the noise prediction is made consistent with
    it, ``eps' = (x - alpha x0') / sigma = eps + scale * (alpha / sigma) * grad``: the push is
    weak at high noise and strong near the data. The gradient goes through the decoder only, not
    the score network (cheaper, and independent of how the network's Jacobian is trained). The
    loss is ``(log1p(e) - log1p(target))^2`` for genes with ``direction == 0`` and
    ``-direction * log(e)`` for genes pushed up (``+1``) or down (``-1``), a push of constant
    strength in fold-change terms whatever the gene's expression level.

    Limits: genes move together with the genes the decoder couples them to; values far outside
    what the decoder produced for training cells are approached, not reached; the wrapper needs
    autograd, so call it outside :func:`torch.inference_mode` (``torch.no_grad`` is fine; the
    wrapper enables gradients locally).

    Parameters
    ----------
    eps_fn
        Noise prediction ``eps_fn(x, t)`` to guide (possibly already classifier-free guided).
    sde
        The forward SDE (:class:`~scgm_scvi.sde.VPSDE`), for ``alpha(t)`` and ``sigma(t)``.
    expression_fn
        Differentiable ``x0 -> (n, k)`` non-negative expression of the ``k`` constrained genes.
    target
        Target expression per gene, shape ``(k,)``; used where ``direction == 0``.
    direction
        ``+1`` (up), ``-1`` (down) or ``0`` (toward ``target``) per gene, shape ``(k,)``.
    scale
        Guidance strength; ``0`` switches it off.
    """
    if scale == 0.0:
        return eps_fn
    to_value = (direction == 0).to(target.dtype)
    log_target = torch.log1p(target)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = sde.marginal(t)
        eps = eps_fn(x, t)
        with torch.enable_grad():
            x0 = ((x - sigma * eps) / alpha).detach().requires_grad_(True)
            e = expression_fn(x0)
            loss = to_value * (torch.log1p(e) - log_target) ** 2
            loss = loss - direction * torch.log(e.clamp_min(1e-8))
            (grad,) = torch.autograd.grad(loss.sum(), x0)
        return eps + scale * (alpha / sigma) * grad

    return guided
