"""User-facing model classes (AnnData in, AnnData out)."""

from ._scgm import SCGM

__all__ = ["SCGM"]
