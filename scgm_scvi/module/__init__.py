"""Torch modules: the NB-VAE with its latent score network."""

from ._scgm_module import (
    COND_KEY,
    Z_LOC_KEY,
    Z_SCALE_KEY,
    DiffusionTarget,
    LatentScaling,
    SCGMModule,
)
from ._score_net import ScoreNetwork

__all__ = [
    "COND_KEY",
    "DiffusionTarget",
    "LatentScaling",
    "SCGMModule",
    "ScoreNetwork",
    "Z_LOC_KEY",
    "Z_SCALE_KEY",
]
