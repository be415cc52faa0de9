"""Reverse-process samplers and guidance, shared by generation and editing."""

from ._driver import (
    DEFAULT_STEPS,
    ODE_SAMPLERS,
    ChunkedRun,
    ReversePlan,
    Sampler,
    check_sampler,
    chunk_generator,
    chunk_seed,
    plan_reverse,
)
from ._guidance import (
    check_guidance_interval,
    classifier_free_guidance,
    gene_guidance,
)
from ._samplers import (
    EVALS_PER_STEP,
    SAMPLERS,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_euler_maruyama,
    sample_ode_euler,
    sample_ode_heun,
    sample_predictor_corrector,
)

__all__ = [
    "DEFAULT_STEPS",
    "EVALS_PER_STEP",
    "ODE_SAMPLERS",
    "SAMPLERS",
    "ChunkedRun",
    "ReversePlan",
    "Sampler",
    "check_sampler",
    "chunk_generator",
    "chunk_seed",
    "plan_reverse",
    "check_guidance_interval",
    "classifier_free_guidance",
    "gene_guidance",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_euler_maruyama",
    "sample_ode_euler",
    "sample_ode_heun",
    "sample_predictor_corrector",
]
