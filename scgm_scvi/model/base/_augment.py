"""Enhancing data: real cells plus generated cells of the rare cell types."""

from __future__ import annotations

from collections.abc import Mapping

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._checks import check_counts, check_positive_int


class AugmentMixin:
    """``augment`` of :class:`~scgm_scvi.SCGM`."""

    def augment(
        self,
        adata: AnnData | None = None,
        min_cells: int | None = None,
        per_type: Mapping[str, int] | None = None,
        seed: int | None = None,
        synthetic_key: str = "synthetic",
        **generate_kwargs,
    ) -> AnnData:
        """Real cells plus generated cells of the cell types that have few.

        Every cell type of ``adata`` with fewer than ``min_cells`` cells gets generated cells up
        to ``min_cells``; ``per_type`` sets the number of generated cells per type instead (a
        type absent from ``adata`` is only generated when named there).
        The result is a new AnnData for the analyses that suffer from rare types (e.g. training
        a cell-type classifier); ``adata`` is not modified.

        Parameters
        ----------
        adata
            Real cells with raw counts (in ``X`` or the registered layer), the model's genes
            (any order; others are left out) and the cell-type column registered with
            :meth:`setup_anndata`; default: the model's training data.
        min_cells
            Target number of cells per type; default: the median number of cells of a type in
            ``adata``.
        per_type
            ``{cell type: number of generated cells}``; replaces ``min_cells``.
        seed
            Seed of the generation (see :meth:`generate`).
        synthetic_key
            Boolean ``obs`` column marking the generated cells.
        **generate_kwargs
            Passed to :meth:`generate` (e.g. ``sampler``, ``guidance_scale``).

        Returns
        -------
        AnnData with the real cells first (their ``obs``), then the generated ones (cell type,
        covariates, ``library_size``), counts in ``X`` (and in the registered layer, if any),
        the model's genes in ``var``, ``obs[synthetic_key]``, and the generation settings in
        ``uns["scgm"]``.
        """
        labels_key = self.registry_["setup_args"].get("labels_key")
        if labels_key is None:
            raise ValueError(
                "augment() generates cells per cell type, but no labels_key was registered: "
                "call SCGM.setup_anndata(adata, labels_key=...) and train again."
            )
        adata = self.adata if adata is None else adata
        if adata is None:
            raise ValueError("Pass adata: the model was loaded without its training data.")
        real = self._real_counts(adata, labels_key)
        counts = real.obs[labels_key].astype(str).value_counts()
        sizes = self._augment_sizes(counts, min_cells, per_type)
        if not sizes:
            out = real
            out.obs[synthetic_key] = False
            return out
        generated = self.generate(n=None, cell_type=sizes, seed=seed, **generate_kwargs)
        generated.obsm.clear()
        out = ad.concat([real, generated], join="outer", merge="first", uns_merge="first")
        out.obs[synthetic_key] = np.r_[np.zeros(real.n_obs, bool), np.ones(generated.n_obs, bool)]
        cats = list(dict.fromkeys(real.obs[labels_key].astype(str).tolist() + list(sizes)))
        out.obs[labels_key] = pd.Categorical(out.obs[labels_key].astype(str), categories=cats)
        setup = self.registry_["setup_args"]
        layer = setup.get("layer", setup.get("rna_layer"))
        if layer is not None:
            out.layers[layer] = out.X.copy()
        out.uns["scgm"] = generated.uns["scgm"]
        return out

    def _real_counts(self, adata: AnnData, labels_key: str) -> AnnData:
        """The real cells' counts of the model's genes, in a new AnnData."""
        genes = self.var_names_
        missing = genes[~genes.isin(adata.var_names)]
        if len(missing):
            raise ValueError(
                f"adata lacks {len(missing)} of the model's {len(genes)} genes "
                f"(e.g. {list(missing[:5])}); generated cells have the model's genes only."
            )
        if labels_key not in adata.obs:
            raise ValueError(f"adata.obs has no {labels_key!r} column (the registered labels).")
        setup = self.registry_["setup_args"]
        layer = setup.get("layer", setup.get("rna_layer"))
        X = adata.X if layer is None else adata.layers[layer]
        X = X[:, adata.var_names.get_indexer(genes)]
        X = sp.csr_matrix(X, dtype=np.float32, copy=True)
        check_counts(X, "X" if layer is None else f"layers[{layer!r}]")
        obs = adata.obs.copy()
        return AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes.copy()))

    def _augment_sizes(self, counts: pd.Series, min_cells, per_type) -> dict[str, int]:
        """Generated cells per type."""
        known = [str(c) for c in self.conditions_["columns"][0]["categories"]]
        if per_type is not None:
            unknown = sorted(set(map(str, per_type)) - set(known))
            if unknown:
                raise ValueError(f"Unknown cell types {unknown}. Valid values: {known}.")
            for name, n in per_type.items():
                check_positive_int(n, f"per_type[{name!r}]")
            return {str(k): int(v) for k, v in per_type.items()}
        if min_cells is None:
            min_cells = int(np.median(counts.to_numpy()))
        check_positive_int(min_cells, "min_cells")
        return {
            t: min_cells - int(counts.get(t, 0))
            for t in known
            if counts.get(t, 0) < min_cells and t in counts.index
        }
