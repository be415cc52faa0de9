"""scgm_scvi: score-based generative modelling of single-cell counts, on scvi-tools."""

import logging
from importlib.metadata import PackageNotFoundError, version

from . import data, metrics, pl
from .editing import SCGEditor
from .model import SCGM

try:
    __version__ = version("scgm-scvi")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

logger = logging.getLogger("scgm_scvi")

__all__ = ["SCGEditor", "SCGM", "__version__", "data", "logger", "metrics", "pl"]
