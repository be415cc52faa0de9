"""Saving and loading models (safe files, atomic writes)."""

from __future__ import annotations

import logging
import os
from typing import Self

import numpy as np
import pandas as pd
from anndata import AnnData
from scvi.model.base._constants import SAVE_KEYS

from .._persist import (
    atomic_save,
    check_model_dir,
)
from .._safe_state import rewrite_safely, safe_scvi_loading

logger = logging.getLogger(__name__)


class SaveLoadMixin:
    """``save`` and ``load`` of :class:`~scgm_scvi.SCGM`."""

    @classmethod
    def load(
        cls,
        dir_path: str,
        adata: AnnData | None = None,
        allow_pickle: bool = False,
        **kwargs,
    ) -> Self:
        """Load a saved model; ``adata`` is optional (generation needs no training data).

        The model file is read with ``torch.load(weights_only=True)``: tensors and plain data
        only, so loading a model never runs code from the file.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            AnnData (or MuData) to attach (same genes); ``None`` loads the saved data if
            :meth:`save` wrote it, else the model alone, which can generate and decode.
        allow_pickle
            Also read model files that need Python's full unpickler: saves made before
            scgm_scvi 0.2 (save them again to convert them). Unpickling can run code from the
            file: pass ``True`` only for files from a source you trust.
        **kwargs
            Passed to :meth:`scvi.model.base.BaseModelClass.load`.

        Raises
        ------
        FileNotFoundError
            ``dir_path`` does not exist.
        ValueError
            ``dir_path`` is not a complete SCGM save: no ``model.pt``, a file whose size or
            checksum differs from the manifest written by :meth:`save`, an unreadable file, or
            a model of another class, or a file that needs the full unpickler while
            ``allow_pickle`` is ``False``.
        """
        saved = check_model_dir(dir_path, kwargs.get("prefix"), cls.__name__, allow_pickle)
        genes = saved[SAVE_KEYS.VAR_NAMES_KEY]
        if isinstance(adata, AnnData) and not np.array_equal(adata.var_names, genes):
            missing = pd.Index(genes).difference(adata.var_names)
            raise ValueError(
                f"adata has {adata.n_vars} genes and the model {len(genes)}"
                + (f" ({len(missing)} missing, e.g. {list(missing[:5])})" if len(missing) else "")
                + ": pass the model's genes in its order, adata[:, model_genes] with "
                "model_genes from SCGM.load(dir_path).var_names_, or use "
                "SCGM.load_query_data for data with other genes."
            )
        # scvi-tools saves the data as "<prefix>adata.h5ad" or, for MuData, "<prefix>mdata.h5mu"
        prefix = kwargs.get("prefix") or ""
        saved_data = (os.path.join(dir_path, f"{prefix}{f}") for f in ("adata.h5ad", "mdata.h5mu"))
        if adata is None and not any(os.path.exists(f) for f in saved_data):
            adata = False
        with safe_scvi_loading(allow_pickle):
            model = super().load(dir_path, adata=adata, **kwargs)
        model.module.eval()
        return model

    def save(
        self,
        dir_path: str,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **kwargs,
    ) -> None:
        """Save the model (both stages, generation state) to ``dir_path``, atomically.

        The files are written to a temporary directory next to ``dir_path`` and moved in place
        when complete, with a manifest of file sizes and the model file's checksum that
        :meth:`load` verifies: an interrupted save leaves the previous model (or nothing), never
        a half-written model that loads. The model file holds tensors and plain data only (no
        pickled Python objects), so that loading it cannot run code.

        Parameters
        ----------
        dir_path
            Target directory.
        prefix
            Prefix of the file names.
        overwrite
            Replace an existing save; otherwise an existing ``dir_path`` is an error.
        save_anndata
            Also write the registered AnnData.
        **kwargs
            Passed to :meth:`scvi.model.base.BaseModelClass.save`.
        """
        parent_save = super().save

        def save_safely(tmp: str) -> None:
            parent_save(tmp, prefix=prefix, overwrite=True, save_anndata=save_anndata, **kwargs)
            rewrite_safely(os.path.join(tmp, f"{prefix or ''}{SAVE_KEYS.MODEL_FNAME}"))

        atomic_save(save_safely, dir_path, prefix, overwrite)
