"""Torch modules: the NB-VAE with its latent score network."""

from ._gaussian import LabelGaussians
from ._library import LibraryModel
from ._posterior_noise import PosteriorNoise
from ._scgm_module import (
    COND_KEY,
    Z_LOC_KEY,
    Z_SCALE_KEY,
    DiffusionTarget,
    LatentScaling,
    SCGMModule,
    ScoreBaseline,
)
from ._score_net import ConditionGroups, ScoreNetwork, condition_groups

__all__ = [
    "COND_KEY",
    "ConditionGroups",
    "DiffusionTarget",
    "LabelGaussians",
    "LatentScaling",
    "LibraryModel",
    "PosteriorNoise",
    "SCGMModule",
    "ScoreBaseline",
    "ScoreNetwork",
    "Z_LOC_KEY",
    "Z_SCALE_KEY",
    "condition_groups",
]
