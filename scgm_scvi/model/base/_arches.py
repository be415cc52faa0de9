"""Reference mapping (scArches surgery): a trained model learns new data."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Self

import pandas as pd
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.model.base._archesmixin import _get_loaded_data

from .._persist import (
    check_model_dir,
)
from .._query import (
    align_genes,
    grow_condition_embeddings,
    grow_label_gaussians,
)
from .._safe_state import safe_scvi_loading

logger = logging.getLogger(__name__)


class QueryMixin:
    """``load_query_data`` of :class:`~scgm_scvi.SCGM`."""

    @classmethod
    def load_query_data(
        cls,
        adata: AnnData,
        reference_model: str | os.PathLike | Self,
        unfrozen: bool | None = None,
        allow_pickle: bool = False,
        **kwargs,
    ) -> Self:
        """A model for new data (a query) from a trained reference, by scArches surgery.

        As :meth:`scvi.model.SCVI.load_query_data`: the query is registered with the
        reference's setup, new batches and covariate values extend the categories, and the VAE
        grows input weights for them. Existing cell types keep their codes and embeddings, new
        ones get new rows in the score network's label embedding (started at the "unknown"
        label). Then fine-tune with :meth:`train_vae` and :meth:`train_diffusion` (or
        :meth:`train`) and generate the new cell types by name.

        Two cases (see the how-to guide "Fine-tune on new data"):

        - **New batches of known cell types**: scArches' frozen surgery (``unfrozen=False``,
          the default when the query has no new cell type). Only the new batches' weights
          learn, the latent space stays the reference's, and ``train_diffusion`` learns only
          the new categories' embeddings.
        - **New cell types**: a frozen VAE never learned their genes and cannot encode or decode
          them (reconstructed real B cells of PBMC 3k through a VAE trained without B cells are
          mostly not recognised as B cells), so the
          VAE must be fine-tuned unfrozen (the default when the query has a cell type the
          reference lacks). Pass the reference's cells together with the new ones as
          ``adata``: fine-tuning on the new cells alone moves the latent space away from the
          reference's types, which the score network then forgets. ``train_vae`` and
          ``train_diffusion`` (``finetune="all"``) start from the reference's weights, so a
          fraction of the reference's epochs is used (the report compares the quality and time
          with training from scratch).

        Parameters
        ----------
        adata
            Query AnnData with the reference's ``obs`` columns (cell type, batch, covariates).
            Its genes are aligned to the reference's by name, as ``prepare_query_anndata``
            does (missing genes become zero counts, with a warning that gives their number;
            extra genes are dropped); the input is not modified: the model then holds an
            aligned copy in ``model.adata``.
        reference_model
            Trained SCGM, or the directory of a saved one.
        unfrozen
            Fine-tune every VAE weight instead of scArches' new-covariate weights only (the
            latent space then moves and :meth:`train_diffusion` fine-tunes the whole score
            network, ``finetune="all"``). ``None`` (default): ``True`` when the query has a cell
            type that the reference lacks, else ``False``. ``False`` with a new cell type warns.
        allow_pickle
            As in :meth:`load`, for a ``reference_model`` directory.
        **kwargs
            Passed to :meth:`scvi.model.base.ArchesMixin.load_query_data` (``accelerator``,
            ``device``, ``freeze_dropout``, ``freeze_expression``, ...).

        Returns
        -------
        A new SCGM holding the query, with the reference's weights.
        """
        if adata is None:
            raise ValueError("load_query_data needs the query AnnData.")
        if isinstance(reference_model, str | os.PathLike):
            reference_model = os.fspath(reference_model)
            check_model_dir(reference_model, None, cls.__name__, allow_pickle)
        elif not isinstance(reference_model, cls):
            raise TypeError(
                f"reference_model must be a {cls.__name__} or the directory of a saved one, "
                f"got {type(reference_model).__name__}."
            )
        with safe_scvi_loading(allow_pickle):
            attr_dict, var_names, ref_state, _ = _get_loaded_data(reference_model, device="cpu")
        if not attr_dict.get("vae_trained_"):
            raise ValueError("The reference model is not trained; train it before querying.")
        setup_args = attr_dict["registry_"]["setup_args"]
        keys = [setup_args.get("labels_key"), setup_args.get("batch_key")]
        keys += list(setup_args.get("categorical_covariate_keys") or [])
        keys += list(setup_args.get("continuous_covariate_keys") or [])
        missing = [k for k in keys if k is not None and k not in adata.obs]
        if missing:
            raise ValueError(
                f"The query lacks the obs columns {missing} that the reference was set up with."
            )
        aligned = align_genes(adata, pd.Index(var_names))
        # scvi-tools registers (writes into) the AnnData it is given: never the user's own
        adata = aligned.copy() if aligned is adata else aligned
        new_types, lacking = [], []
        if setup_args.get("labels_key") is not None:
            known = attr_dict["registry_"]["field_registries"][REGISTRY_KEYS.LABELS_KEY]
            known = list(known["state_registry"]["categorical_mapping"])
            query_types = set(adata.obs[setup_args["labels_key"]].dropna().unique())
            new_types = sorted(str(t) for t in query_types if t not in set(known))
            lacking = [str(t) for t in known if t not in query_types]
        if unfrozen is None:
            unfrozen = bool(new_types)
            if unfrozen:
                logger.info(
                    "The query has cell types the reference lacks (%s): the whole VAE will be "
                    "fine-tuned (unfrozen=True).",
                    ", ".join(new_types),
                )
        elif not unfrozen and new_types:
            warnings.warn(
                f"The query has cell types the reference lacks ({', '.join(new_types)}) but "
                "the VAE is frozen (unfrozen=False): the reference VAE never learned these "
                "cells' genes and generates them poorly. Pass unfrozen=True (or leave the "
                "default) with the reference's cells and the new ones together.",
                UserWarning,
                stacklevel=2,
            )
        if unfrozen and lacking:
            warnings.warn(
                f"The query lacks {len(lacking)} of the reference's cell types "
                f"({', '.join(lacking[:5])}{', ...' if len(lacking) > 5 else ''}) and the VAE "
                "is unfrozen: fine-tuning on this query alone moves the latent space away from "
                "them and the model forgets them. Pass the reference's cells together with the "
                "new ones.",
                UserWarning,
                stacklevel=2,
            )
        freeze = {
            "unfrozen": unfrozen,
            "freeze_decoder_first_layer": kwargs.get("freeze_decoder_first_layer", True),
            "freeze_batchnorm_encoder": kwargs.get("freeze_batchnorm_encoder", True),
            "freeze_batchnorm_decoder": kwargs.get("freeze_batchnorm_decoder", False),
            "freeze_dropout": kwargs.get("freeze_dropout", False),
            "freeze_expression": kwargs.get("freeze_expression", True),
            "freeze_classifier": kwargs.get("freeze_classifier", True),
        }
        with safe_scvi_loading(allow_pickle):
            model = super().load_query_data(adata, reference_model, unfrozen=unfrozen, **kwargs)
        sizes = grow_condition_embeddings(model.module, ref_state)
        grow_label_gaussians(model.module, ref_state)
        model.conditions_ = model._condition_spec()
        model.query_ = {
            "condition_sizes": sizes,
            "freeze": freeze,
            "reference_table": attr_dict.get("condition_table_"),
        }
        model.diffusion_history_ = {}
        return model
