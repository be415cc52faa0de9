"""Sampler names and step defaults, torch-free: the command line's ``--help`` reads them
without importing torch."""

from __future__ import annotations

from typing import Literal

Sampler = Literal["ode", "ode_euler", "euler_maruyama", "pc", "dpmpp_2m", "dpmpp_2m_sde"]
SAMPLER_NAMES: tuple[str, ...] = (
    "ode", "ode_euler", "euler_maruyama", "pc", "dpmpp_2m", "dpmpp_2m_sde",
)  # fmt: skip
#: the sampler of ``generate`` and ``sample_latent`` (reverse SDE, DPM-Solver++(2M) steps)
DEFAULT_SAMPLER = "dpmpp_2m_sde"
#: steps of each sampler over the full time range [eps, T]: the ODE reaches its quality in tens
#: of network evaluations, Euler-Maruyama and predictor-corrector need hundreds, and the
#: exponential integrators (DPM-Solver++) ten
DEFAULT_STEPS = {
    "ode": 25, "ode_euler": 50, "euler_maruyama": 500, "pc": 250, "dpmpp_2m": 10,
    "dpmpp_2m_sde": 10,
}  # fmt: skip
#: the deterministic samplers (invertible; a Karras time grid suits them)
ODE_SAMPLERS: tuple[str, ...] = ("ode", "ode_euler", "dpmpp_2m")
#: the samplers derived on a grid even in log signal-to-noise ratio (DPM-Solver++)
LOGSNR_SAMPLERS: tuple[str, ...] = ("dpmpp_2m", "dpmpp_2m_sde")
