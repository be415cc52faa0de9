"""Bundled datasets and data modules."""

from ._datasets import pbmc3k
from ._latent_datamodule import LatentDataModule
from ._split import stratified_split

__all__ = ["LatentDataModule", "pbmc3k", "stratified_split"]
