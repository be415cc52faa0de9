"""Bundled datasets and data modules."""

from ._datasets import pbmc3k
from ._latent_datamodule import LatentDataModule

__all__ = ["LatentDataModule", "pbmc3k"]
