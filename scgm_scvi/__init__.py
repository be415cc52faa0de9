"""scgm_scvi: score-based generative modelling of single-cell counts, on scvi-tools."""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

# first, so that tqdm.auto is imported with its Jupyter "IProgress not found" warning silenced
from . import _progress  # noqa: F401

try:
    __version__ = version("scgm-scvi")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

logger = logging.getLogger("scgm_scvi")

if TYPE_CHECKING:
    from . import data, metrics, pl
    from .editing import SCGEditor
    from .model import SCGM

# Imported on first use, so that ``scgm-scvi --help`` and ``--version`` start without torch and
# scvi-tools (several seconds); ``import scgm_scvi`` followed by any attribute behaves as before.
_LAZY = {
    "SCGM": ("scgm_scvi.model", "SCGM"),
    "SCGEditor": ("scgm_scvi.editing", "SCGEditor"),
    "data": ("scgm_scvi.data", None),
    "metrics": ("scgm_scvi.metrics", None),
    "pl": ("scgm_scvi.pl", None),
}

__all__ = ["SCGEditor", "SCGM", "__version__", "data", "logger", "metrics", "pl"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'scgm_scvi' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
