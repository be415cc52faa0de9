"""Editing real cells toward a target state through the latent diffusion model."""

from ._editor import SCGEditor

__all__ = ["SCGEditor"]
