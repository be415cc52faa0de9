"""The VP-SDE and the reverse-time samplers, checked against closed-form Gaussian answers.

For data ``x_0 ~ N(mu, s^2 I)`` the VP-SDE marginal is ``x_t ~ N(alpha mu, (alpha^2 s^2 +
sigma^2) I)``, so the exact noise prediction is ``eps*(x, t) = sigma (x - alpha mu) / (alpha^2 s^2
+ sigma^2)``. With it, every sampler started from ``N(0, I)`` must return ``N(mu, s^2 I)`` up to
discretisation and Monte-Carlo error, and the probability-flow ODE is the linear map
``x_0 = m_0 + (std_0 / std_T) (x_T - m_T)``.
"""

from __future__ import annotations

import math

import pytest
import torch

from scgm_scvi.samplers import (
    EVALS_PER_STEP,
    SAMPLERS,
    check_guidance_interval,
    classifier_free_guidance,
    plan_reverse,
    sample_dpmpp_2m,
    sample_ode_euler,
    sample_ode_heun,
)
from scgm_scvi.sde import VPSDE

SDE = VPSDE()
DIM = 8
S = 0.5  # data standard deviation
MU = torch.linspace(-2.0, 2.0, DIM, dtype=torch.float64)  # data mean
N = 4000  # samples per check


def exact_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Exact noise prediction for data ``N(MU, S^2 I)``."""
    alpha, sigma = SDE.marginal(t.double())
    return sigma * (x - alpha * MU) / (alpha**2 * S**2 + sigma**2)


def marginal_moments(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean vector and standard deviation of ``x_t`` for data ``N(MU, S^2 I)``."""
    alpha, sigma = SDE.marginal(t.double())
    return alpha * MU, torch.sqrt(alpha**2 * S**2 + sigma**2)


def grid(sampler: str, n_steps: int) -> torch.Tensor:
    """The grid :meth:`SCGM.sample_latent` uses for ``sampler``."""
    return plan_reverse(SDE, sampler, n_steps).ts.double()


# ---------------------------------------------------------------------------------- VPSDE
def test_marginal_is_variance_preserving():
    t = torch.linspace(0.0, 1.0, 201, dtype=torch.float64)
    alpha, sigma = SDE.marginal(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t), rtol=0, atol=1e-12)
    assert alpha[0] == 1.0 and sigma[0] == 0.0
    assert torch.all(alpha.diff() < 0) and torch.all(sigma.diff() > 0)
    # the prior N(0, I) is close to the marginal at T: alpha(T) = exp(-(19.9/4 + 0.05))
    assert math.isclose(alpha[-1].item(), math.exp(-0.25 * 19.9 - 0.05), rel_tol=1e-12)
    assert alpha[-1] < 0.01


def test_log_alpha_matches_beta():
    """``d log alpha / dt = -beta(t) / 2``: marginal and drift describe the same SDE."""
    t = torch.linspace(0.0, 1.0, 50, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(SDE.log_alpha(t).sum(), t)
    torch.testing.assert_close(grad, -0.5 * SDE.beta(t.detach()))
    drift, g = SDE.drift_diffusion(torch.ones(50, 3, dtype=torch.float64), t.detach())
    torch.testing.assert_close(drift, -0.5 * SDE.beta(t.detach())[:, None].expand(50, 3))
    torch.testing.assert_close(g**2, SDE.beta(t.detach()))


def test_perturb_matches_marginal():
    torch.manual_seed(0)
    x0 = MU.expand(N, DIM) + S * torch.randn(N, DIM, dtype=torch.float64)
    t = torch.full((N,), 0.3, dtype=torch.float64)
    noise = torch.randn(N, DIM, dtype=torch.float64)
    xt = SDE.perturb(x0, t, noise)
    alpha, sigma = SDE.marginal(t)
    torch.testing.assert_close(xt, alpha[:, None] * x0 + sigma[:, None] * noise)
    mean, std = marginal_moments(t[:1])
    # standard errors: std / sqrt(N) ~ 0.015 for the mean, std / sqrt(2N) ~ 0.011 for the std
    assert (xt.mean(0) - mean).abs().max() < 0.06
    assert (xt.std(0) - std).abs().max() < 0.05


def test_nsr_inverse():
    t = torch.linspace(SDE.eps, SDE.T, 101, dtype=torch.float64)
    nsr = SDE.nsr(t)
    alpha, sigma = SDE.marginal(t)
    torch.testing.assert_close(nsr, sigma / alpha)
    assert torch.all(nsr.diff() > 0)
    torch.testing.assert_close(SDE.t_from_nsr(nsr), t, rtol=1e-10, atol=1e-12)
    s = torch.logspace(-3, 2, 50, dtype=torch.float64)
    torch.testing.assert_close(SDE.nsr(SDE.t_from_nsr(s)), s, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("spacing", ["uniform", "karras", "logsnr"])
@pytest.mark.parametrize("t_start", [None, 0.4])
def test_time_grid(spacing, t_start):
    ts = SDE.time_grid(25, t_start=t_start, spacing=spacing)
    assert ts.shape == (26,) and ts.dtype == torch.float32
    assert ts[0].item() == pytest.approx(SDE.T if t_start is None else t_start)
    assert ts[-1].item() == pytest.approx(SDE.eps)
    assert torch.all(ts.diff() < 0)


def test_karras_grid_spacing():
    """Karras et al. (2022): ``nsr^(1/rho)`` is linear in the step index."""
    rho = 7.0
    ts = SDE.time_grid(20, spacing="karras", rho=rho).double()
    ramp = SDE.nsr(ts) ** (1 / rho)
    torch.testing.assert_close(ramp.diff(), ramp.diff().mean().expand(20), rtol=1e-3, atol=0)
    # the noise-to-signal ratio shrinks by a larger factor at every step near t = eps
    ratio = SDE.nsr(ts[1:]) / SDE.nsr(ts[:-1])
    assert torch.all(ratio.diff() < 0)


def test_time_grid_bad_spacing():
    with pytest.raises(ValueError, match="spacing"):
        SDE.time_grid(10, spacing="cosine")


# ---------------------------------------------------------------------------------- samplers
@pytest.mark.parametrize(
    ("sampler", "n_steps"),
    [
        ("ode", 25),
        ("ode_euler", 500),
        ("dpmpp_2m", 10),
        ("dpmpp_2m_sde", 10),
        ("dpmpp_2m_sde", 20),
        ("euler_maruyama", 200),
        ("pc", 100),
    ],
)
def test_sampler_recovers_gaussian(sampler, n_steps):
    torch.manual_seed(1)
    x = torch.randn(N, DIM, dtype=torch.float64)
    ts = grid(sampler, n_steps)
    out = SAMPLERS[sampler](exact_eps, SDE, x, ts)
    assert out.shape == x.shape and torch.isfinite(out).all()
    mean, std = marginal_moments(ts[-1:])  # at t = eps: MU and S up to 1e-4
    # Monte-Carlo standard errors: S / sqrt(N) = 0.008 (mean), S / sqrt(2N) = 0.006 (std);
    # the bounds allow ~6 standard errors plus a small discretisation bias
    assert (out.mean(0) - mean).abs().max() < 0.05
    assert (out.std(0) / std - 1).abs().max() < 0.08


def _exact_flow(x_T: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    m_T, s_T = marginal_moments(ts[:1])
    m_0, s_0 = marginal_moments(ts[-1:])
    return m_0 + s_0 / s_T * (x_T - m_T)


def test_ode_heun_more_accurate_than_euler():
    torch.manual_seed(2)
    x = torch.randn(500, DIM, dtype=torch.float64)
    ts = grid("ode", 25)
    exact = _exact_flow(x, ts)
    err_heun = (sample_ode_heun(exact_eps, SDE, x, ts) - exact).abs().max()
    err_euler = (sample_ode_euler(exact_eps, SDE, x, ts) - exact).abs().max()
    assert err_heun < 0.25 * err_euler
    # converges to the exact flow
    err_fine = (sample_ode_heun(exact_eps, SDE, x, grid("ode", 200)) - exact).abs().max()
    assert err_fine < 0.1 * err_heun and err_fine < 1e-2


def test_ode_inversion_round_trip():
    torch.manual_seed(3)
    x0 = MU + S * torch.randn(200, DIM, dtype=torch.float64)
    ts = grid("ode", 100)
    noise = sample_ode_heun(exact_eps, SDE, x0, ts.flip(0))  # increasing grid: encode
    m_T, s_T = marginal_moments(ts[:1])
    # the encoding is the exact linear map to the marginal at T, roughly N(0, I)
    m_0, s_0 = marginal_moments(ts[-1:])
    torch.testing.assert_close(noise, m_T + s_T / s_0 * (x0 - m_0), rtol=0, atol=0.05)
    back = sample_ode_heun(exact_eps, SDE, noise, ts)
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-2)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_network_evaluations_per_step(sampler):
    calls = []

    def eps_fn(x, t):
        calls.append(t.item())
        return exact_eps(x, t)

    steps = []
    SAMPLERS[sampler](
        eps_fn,
        SDE,
        torch.randn(4, DIM, dtype=torch.float64),
        grid(sampler, 7),
        callback=lambda i, t, x: steps.append((i, t.item())),
    )
    assert len(calls) == EVALS_PER_STEP[sampler] * 7
    ts = grid(sampler, 7)
    assert [i for i, _ in steps] == list(range(7))
    assert [t for _, t in steps] == pytest.approx(ts[1:].tolist())


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_callback_replaces_state(sampler):
    """A callback's return value replaces the state (interventions), also at the last step."""
    x = torch.randn(6, DIM, dtype=torch.float64)
    out = SAMPLERS[sampler](
        exact_eps, SDE, x, grid(sampler, 5), callback=lambda i, t, x: torch.zeros_like(x)
    )
    torch.testing.assert_close(out, torch.zeros_like(x))
    kept = SAMPLERS[sampler](
        exact_eps,
        SDE,
        x,
        grid(sampler, 5),
        generator=torch.Generator().manual_seed(0),
        callback=lambda i, t, x: None,
    )
    ref = SAMPLERS[sampler](
        exact_eps, SDE, x, grid(sampler, 5), generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(kept, ref)


@pytest.mark.parametrize("sampler", ["euler_maruyama", "pc"])
def test_stochastic_samplers_use_generator(sampler):
    x = torch.randn(10, DIM, dtype=torch.float64)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return SAMPLERS[sampler](exact_eps, SDE, x, grid(sampler, 20), generator=gen)

    torch.testing.assert_close(run(0), run(0), rtol=0, atol=0)
    assert not torch.allclose(run(0), run(1))


def test_ode_is_deterministic_and_row_independent():
    x = torch.randn(10, DIM, dtype=torch.float64)
    ts = grid("ode", 10)
    whole = sample_ode_heun(exact_eps, SDE, x, ts)
    parts = torch.cat(
        [sample_ode_heun(exact_eps, SDE, x[:3], ts), sample_ode_heun(exact_eps, SDE, x[3:], ts)]
    )
    torch.testing.assert_close(parts, whole)


# ---------------------------------------------------------------------------------- guidance
def _toy_net(x, t, cond, groups=None):
    """A conditional 'network' whose output depends on x, t and the condition codes."""
    return x * (cond[:, :1].double() + 1.0) + t[:, None] + 10.0 * cond[:, 1:2].double()


def test_classifier_free_guidance():
    torch.manual_seed(4)
    x = torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor(0.7, dtype=torch.float64)
    cond = torch.tensor([[0, 1], [1, 0], [2, 1], [1, 1], [0, 0]])
    null = cond.clone()
    null[:, 0] = 3  # "unknown" code of column 0
    tt = t.expand(5)
    eps_c, eps_u = _toy_net(x, tt, cond), _toy_net(x, tt, null)
    torch.testing.assert_close(classifier_free_guidance(_toy_net, cond, null, 1.0)(x, t), eps_c)
    torch.testing.assert_close(classifier_free_guidance(_toy_net, cond, null, 0.0)(x, t), eps_u)
    torch.testing.assert_close(
        classifier_free_guidance(_toy_net, cond, null, 3.0)(x, t), eps_u + 3.0 * (eps_c - eps_u)
    )


def test_classifier_free_guidance_interval():
    """Inside ``[t_lo, t_hi]`` the guided prediction, outside the plain conditional one."""
    torch.manual_seed(5)
    x = torch.randn(4, 3, dtype=torch.float64)
    cond = torch.tensor([[0, 1], [1, 0], [2, 1], [1, 1]])
    null = cond.clone()
    null[:, 0] = 3
    guided = classifier_free_guidance(_toy_net, cond, null, 2.5, interval=(0.2, 0.7))
    everywhere = classifier_free_guidance(_toy_net, cond, null, 2.5)
    for t, inside in ((0.1, False), (0.2, True), (0.45, True), (0.7, True), (0.9, False)):
        t = torch.tensor(t, dtype=torch.float64)
        eps_c = _toy_net(x, t.expand(4), cond)
        expected = everywhere(x, t) if inside else eps_c
        torch.testing.assert_close(guided(x, t), expected)
    # w = 1 ignores the interval
    t = torch.tensor(0.45, dtype=torch.float64)
    torch.testing.assert_close(
        classifier_free_guidance(_toy_net, cond, null, 1.0, interval=(0.2, 0.7))(x, t),
        _toy_net(x, t.expand(4), cond),
    )


@pytest.mark.parametrize("interval", [(0.7, 0.2), (-0.1, 0.5), (0.3,), "ab", (0.5, 0.5)])
def test_guidance_interval_checked(interval):
    with pytest.raises(ValueError, match="guidance_interval"):
        check_guidance_interval(interval)


def test_classifier_free_guidance_batches_one_call():
    shapes = []

    def net(x, t, cond, groups):
        shapes.append((x.shape[0], t.shape, cond.shape[0], len(groups.inverse)))
        return _toy_net(x, t, cond)

    cond = torch.zeros(4, 2, dtype=torch.long)
    x = torch.zeros(4, 3, dtype=torch.float64)
    classifier_free_guidance(net, cond, cond + 1, 1.0)(x, torch.tensor(0.5))
    classifier_free_guidance(net, cond, cond + 1, 2.0)(x, torch.tensor(0.5))
    # w = 1: one conditional call; w != 1: conditional and unconditional in one batched call
    assert shapes == [(4, (4,), 4, 4), (8, (8,), 8, 8)]


def test_sampler_tables_agree():
    """The torch-free names the command line offers are the samplers that exist."""
    from scgm_scvi._names import DEFAULT_STEPS, ODE_SAMPLERS, SAMPLER_NAMES
    from scgm_scvi.samplers import EVALS_PER_STEP, SAMPLERS

    assert tuple(SAMPLERS) == SAMPLER_NAMES
    assert set(DEFAULT_STEPS) == set(EVALS_PER_STEP) == set(SAMPLERS)
    assert set(ODE_SAMPLERS) <= set(SAMPLERS)


def test_condition_groups_give_the_per_cell_noise_prediction():
    """Sampling's shortcut (conditioning once per distinct condition, one product per cell
    type) computes what the per-cell path computes."""
    from scgm_scvi.module import SCGMModule, condition_groups

    torch.manual_seed(6)
    module = SCGMModule(n_input=20, n_batch=3, n_labels=4, n_latent=8, gaussian_rank=3).eval()
    with torch.no_grad():  # a non-trivial network and Gaussian baseline
        for p in module.score_net.parameters():
            p.normal_(0, 0.2)
        module.gaussians.mean.normal_()
        module.gaussians.top_var.uniform_(0.5, 2.0)
    cond = torch.stack([torch.randint(0, 5, (50,)), torch.randint(0, 4, (50,))], dim=1)
    x, t = torch.randn(50, 8), torch.full((50,), 0.3)
    with torch.inference_mode():
        torch.testing.assert_close(
            module.eps(x, t, cond, condition_groups(cond)), module.eps(x, t, cond)
        )


def test_dpmpp_2m_converges_to_the_exact_ode_solution():
    """On Gaussian data (exact noise prediction) DPM-Solver++(2M) on its log-SNR grid is
    second order: 10 steps are closer to the exact ODE solution than Heun's 10 steps
    (20 evaluations), and the error shrinks with the steps."""
    torch.manual_seed(7)
    x = torch.randn(500, DIM, dtype=torch.float64)
    exact = sample_ode_heun(exact_eps, SDE, x, SDE.time_grid(2000, spacing="karras"))

    def err(fn, ts):
        return (fn(exact_eps, SDE, x, ts.double()) - exact).pow(2).mean().sqrt().item()

    e10, e20 = (err(sample_dpmpp_2m, SDE.time_grid(n, spacing="logsnr")) for n in (10, 20))
    assert e20 < e10 / 2
    assert e10 < err(sample_ode_heun, SDE.time_grid(10, spacing="karras"))


def test_dpmpp_2m_sde_noise_follows_the_generator():
    """The SDE sampler draws its fresh noise from ``generator``: same seed, same cells."""
    x = torch.randn(64, DIM, dtype=torch.float64)
    ts = grid("dpmpp_2m_sde", 10)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return SAMPLERS["dpmpp_2m_sde"](exact_eps, SDE, x, ts, generator=gen)

    torch.testing.assert_close(run(0), run(0), rtol=0, atol=0)
    assert (run(0) - run(1)).abs().max() > 1e-3
    # unlike the ODE from the same start
    assert (run(0) - sample_dpmpp_2m(exact_eps, SDE, x, grid("dpmpp_2m", 10))).abs().max() > 1e-3
