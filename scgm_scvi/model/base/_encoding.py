"""Reading real cells into the model's space: aligned copies and posterior means."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from mudata import MuData
from scvi import REGISTRY_KEYS

from .._checks import check_counts, check_positive_int
from .._conditions import Conditions, encode_names
from .._mudata import as_registered_mudata, rna_anndata


class EncodingMixin:
    """``encode`` of :class:`~scgm_scvi.SCGM`: real cells to latents and condition codes."""

    def _registered_copy(self, adata: AnnData | MuData, name: str) -> AnnData | MuData:
        """A minimal private AnnData with the model's genes in order and the registered columns.

        For a model set up with :meth:`~scgm_scvi.SCGM.setup_mudata` it is a MuData laid out as
        the training data was.

        scvi-tools' registration writes ``_scvi_*`` columns and ``uns`` keys into the AnnData it
        is given, so it only ever sees this copy.
        """
        setup = self.registry_["setup_args"]
        # a model set up with setup_mudata registered ``rna_layer``; a MuData becomes the AnnData
        # of its RNA modality, with the registered layer's counts in X
        layer = setup.get("layer", setup.get("rna_layer"))
        if isinstance(adata, MuData):
            adata, layer = rna_anndata(adata, setup, name), None
        if not isinstance(adata, AnnData):
            raise TypeError(
                f"`{name}` must be an AnnData or MuData object, got {type(adata).__name__}."
            )
        if adata.n_obs == 0:
            raise ValueError(f"`{name}` has no cells.")
        model = self
        genes = model.var_names_
        present = genes.isin(adata.var_names)
        if not present.all():
            missing = list(genes[~present])
            raise ValueError(
                f"`{name}` lacks {len(missing)} of the model's {len(genes)} genes "
                f"(e.g. {missing[:10]}). Editing needs every gene the model was trained on, "
                "matched by name in var_names."
            )
        if not adata.var_names.is_unique:
            raise ValueError(f"`{name}` has duplicated gene names; make var_names unique first.")
        n_extra = adata.n_vars - len(genes)
        if n_extra > 0:
            warnings.warn(
                f"`{name}` has {n_extra} genes the model was not trained on; they are dropped.",
                UserWarning,
                stacklevel=3,
            )
        keys = [setup.get("labels_key"), setup.get("batch_key")]
        keys += list(setup.get("categorical_covariate_keys") or [])
        keys += list(setup.get("continuous_covariate_keys") or [])
        keys = [k for k in keys if k is not None]
        missing_cols = [k for k in keys if k not in adata.obs]
        if missing_cols:
            raise ValueError(
                f"`{name}`.obs lacks the registered columns {missing_cols}; every source cell "
                "needs its cell type and covariates (the target only replaces some of them)."
            )
        conditions = Conditions(model.conditions_)
        categories = {c["key"]: c["categories"] for c in conditions.columns}
        if conditions.batch_key is not None:
            categories[conditions.batch_key] = conditions.batch_categories
        for key, cats in categories.items():
            if key in keys:
                values, what = pd.unique(adata.obs[key]), f"`{name}`.obs[{key!r}]"
                encode_names(values, cats, what, " (the model was not trained on them)")
        if layer is not None and layer not in adata.layers:
            raise ValueError(
                f"`{name}` lacks the layer {layer!r} the model was trained on; it has "
                f"{list(adata.layers.keys())}."
            )
        data = adata.X if layer is None else adata.layers[layer]
        data = data[:, adata.var_names.get_indexer(genes)]
        data = data.copy() if sp.issparse(data) else np.array(data, copy=True)
        check_counts(data, "X" if layer is None else f"layers[{layer!r}]", owner=name)
        obs = pd.DataFrame({k: adata.obs[k].to_numpy() for k in keys}, index=adata.obs_names)
        var = pd.DataFrame(index=genes.copy())
        if model.registry_.get("setup_method_name") == "setup_mudata":
            return as_registered_mudata(data, obs, var, setup)
        if layer is None:
            return AnnData(X=data, obs=obs, var=var)
        return AnnData(
            X=sp.csr_matrix(data.shape, dtype=np.float32), obs=obs, var=var, layers={layer: data}
        )

    @torch.inference_mode()
    def encode(
        self, adata: AnnData | MuData | None = None, batch_size: int = 1024, name: str = "adata"
    ) -> dict[str, torch.Tensor | None]:
        """Encode real cells: their posterior means and what the score network and decoder see.

        Parameters
        ----------
        adata
            Counts with the model's genes (matched by name, any order; extra genes are dropped
            with a warning) and the ``obs`` columns registered with :meth:`setup_anndata`, or a
            MuData laid out as in :meth:`setup_mudata`. Not modified: scvi-tools registers a
            private copy. ``None``: the model's training data (no copy).
        batch_size
            Cells encoded at once.
        name
            How error messages call ``adata``.

        Returns
        -------
        Tensors on the model's device, one row per cell: ``"z"`` the posterior means
        ``(n, n_latent)``, ``"cond"`` the condition codes of the score network
        ``(n, n_conditions)``, ``"log_library"`` and ``"batch_index"`` ``(n, 1)``, ``"cont"``
        the continuous covariates (or ``None``).
        """
        check_positive_int(batch_size, "batch_size")
        if adata is None:
            if self.adata is None:
                raise ValueError(
                    "encode() without adata reads the training data, but the model was loaded "
                    "without it: pass adata, or load the model with its AnnData."
                )
            return self._encode_registered(self.adata, batch_size)
        work = self._registered_copy(adata, name)
        # a model loaded without AnnData adopts the AnnData it validates: undo that afterwards
        loaded_bare = self.adata is None
        store = type(self)._per_instance_manager_store.get(self.id, {})
        before = set(store)
        self._validate_anndata(work)
        try:
            return self._encode_registered(work, batch_size)
        finally:
            # Forget the private copy so that repeated calls do not keep it alive. scvi-tools'
            # deregister_manager() looks only in the class-wide store, where a setup transferred
            # by _validate_anndata never goes, so the instance's store is cleaned here.
            store = type(self)._per_instance_manager_store.get(self.id, {})
            for key in set(store) - before:
                store.pop(key, None)
            if loaded_bare:
                self._adata, self._adata_manager = None, None

    def _encode_registered(self, adata, batch_size: int) -> dict[str, torch.Tensor | None]:
        module = self.module
        module.eval()
        loader = self._make_data_loader(adata=adata, batch_size=batch_size, shuffle=False)
        z, cond, lib, bidx, cont = [], [], [], [], []
        for batch in loader:
            inf = module.inference(**module._get_inference_input(batch))
            z.append(inf["qz"].loc)
            lib.append(inf["library"])
            cond.append(self._condition_codes_from_batch(batch))
            bidx.append(batch[REGISTRY_KEYS.BATCH_KEY].long())
            if REGISTRY_KEYS.CONT_COVS_KEY in batch:
                cont.append(batch[REGISTRY_KEYS.CONT_COVS_KEY].float())
        device = self.device
        return {
            "z": torch.cat(z).to(device),
            "cond": torch.cat(cond).to(device),
            "log_library": torch.cat(lib).to(device),
            "batch_index": torch.cat(bidx).to(device),
            "cont": torch.cat(cont).to(device) if cont else None,
        }
