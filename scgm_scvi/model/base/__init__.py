"""The features of :class:`~scgm_scvi.SCGM`, one mixin each (as scvi-tools' ``model/base``)."""

from ._arches import QueryMixin
from ._augment import AugmentMixin
from ._encoding import EncodingMixin
from ._generation import GenerationMixin
from ._saving import SaveLoadMixin
from ._training import TrainingMixin

__all__ = [
    "AugmentMixin",
    "EncodingMixin",
    "GenerationMixin",
    "QueryMixin",
    "SaveLoadMixin",
    "TrainingMixin",
]
