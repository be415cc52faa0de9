"""Stochastic differential equations that diffuse latents to noise."""

from ._vpsde import VPSDE

__all__ = ["VPSDE"]
