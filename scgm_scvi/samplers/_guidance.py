"""Guidance wraps the noise prediction; samplers never know about it."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._samplers import EpsFn


def classifier_free_guidance(
    net_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    cond: torch.Tensor,
    null_cond: torch.Tensor,
    guidance_scale: float,
) -> EpsFn:
    """Classifier-free guidance (Ho & Salimans 2022).

    ``eps = eps(x | null) + w (eps(x | cond) - eps(x | null))``: ``w = 1`` is the plain
    conditional model, ``w > 1`` sharpens the condition, ``w = 0`` ignores it. For ``w != 1`` the
    conditional and unconditional predictions come from one batched network call.

    Parameters
    ----------
    net_fn
        ``net_fn(x, t, cond) -> eps`` with ``t`` of shape ``(n,)`` and integer ``cond`` of shape
        ``(n, n_conditions)``.
    cond
        Condition codes of the cells being sampled.
    null_cond
        The same shape with the "no condition" codes in the guided columns.
    guidance_scale
        ``w`` above.
    """
    if guidance_scale == 1.0:
        return lambda x, t: net_fn(x, t.expand(x.shape[0]), cond)
    both = torch.cat([cond, null_cond])

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_c, eps_u = net_fn(torch.cat([x, x]), t.expand(2 * x.shape[0]), both).chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)

    return eps_fn


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
