"""The fixed reference embedding of protocol G1: HVGs, log1p(CP10k), PCA fit on real cells."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from sklearn.decomposition import PCA

from ._utils import (
    Matrix,
    align_genes,
    check_adata,
    check_counts,
    get_matrix,
    keep_torch_threads,
    log1p_cp10k,
    to_dense,
)

#: loess spans tried in turn by the seurat_v3 HVG selection (scanpy's default first).
_LOESS_SPANS = (0.3, 0.31, 0.35, 0.5)


@dataclass(frozen=True, eq=False)
class ReferenceEmbedding:
    """A PCA embedding fit on real cells that projects any cells with the same genes.

    Create it with :func:`reference_embedding`. Counts are normalised to 10,000 per cell over
    :attr:`genes` (all shared genes, not only the HVGs), ``log1p``-transformed, restricted to
    :attr:`hvg`, centred with the real cells' mean and projected on the real cells' principal
    axes. Genes are not scaled.

    Attributes
    ----------
    genes
        Genes whose counts define the library size; every projected AnnData must have them.
    hvg
        Highly variable genes, the features of the PCA (in the order of :attr:`genes`).
    mean
        Per-HVG mean of the real log1p(CP10k) values, shape ``(n_hvg,)``.
    components
        Principal axes, shape ``(n_comps, n_hvg)``.
    explained_variance_ratio
        Share of the real cells' variance along each axis.
    real_coords
        Coordinates of the real cells the embedding was fit on.
    """

    genes: pd.Index
    hvg: pd.Index
    mean: np.ndarray = field(repr=False)
    components: np.ndarray = field(repr=False)
    explained_variance_ratio: np.ndarray = field(repr=False)
    real_coords: np.ndarray = field(repr=False)

    @property
    def n_comps(self) -> int:
        """Number of principal components."""
        return int(self.components.shape[0])

    def transform(self, adata: AnnData, layer: str | None = None) -> np.ndarray:
        """Project cells of ``adata`` (raw counts) into the embedding.

        Parameters
        ----------
        adata
            Cells with raw counts; must contain every gene in :attr:`genes` (matched by name,
            any order; extra genes are ignored). Not modified.
        layer
            Layer with the counts; ``None`` uses ``adata.X``.

        Returns
        -------
        Array of shape ``(adata.n_obs, n_comps)``.
        """
        check_adata(adata, "adata")
        missing = self.genes[~self.genes.isin(adata.var_names)]
        if len(missing) > 0:
            raise ValueError(
                f"`adata` lacks {len(missing)} of the {len(self.genes)} reference genes "
                f"(e.g. {list(missing[:5])}); build the reference from the genes both datasets "
                "share, e.g. `reference_embedding(real, generated)`."
            )
        X = get_matrix(adata, self.genes, layer, "adata")
        check_counts(X, "adata")
        return self.transform_counts(X)

    def transform_counts(self, X: Matrix) -> np.ndarray:
        """Project a count matrix whose columns are exactly :attr:`genes`."""
        if X.shape[1] != len(self.genes):
            raise ValueError(
                f"Expected {len(self.genes)} columns (the reference genes), got {X.shape[1]}."
            )
        return self.transform_lognorm(log1p_cp10k(X))

    def transform_lognorm(self, L: Matrix) -> np.ndarray:
        """Project log1p(CP10k) values whose columns are exactly :attr:`genes`."""
        Z = to_dense(L[:, self._hvg_idx]) - self.mean
        return Z @ self.components.T

    @property
    def _hvg_idx(self) -> np.ndarray:
        return self.genes.get_indexer(self.hvg)


@keep_torch_threads()
def reference_embedding(
    real: AnnData,
    generated: AnnData | None = None,
    *,
    n_top_genes: int | None = 2000,
    n_comps: int = 30,
    layer: str | None = None,
    flavor: Literal["seurat_v3", "seurat_v3_paper"] = "seurat_v3",
    seed: int = 0,
) -> ReferenceEmbedding:
    """Fit the reference embedding of protocol G1 on real cells.

    1. Keep the genes shared with ``generated`` (when given), warning about dropped ones.
    2. Select ``n_top_genes`` highly variable genes on the *real* raw counts (scanpy,
       ``flavor="seurat_v3"``; needs the ``scikit-misc`` package).
    3. ``normalize_total(target_sum=1e4)`` over all shared genes, then ``log1p``.
    4. PCA with ``n_comps`` components fit on the real cells only.

    Generated (or any other) cells are then projected with
    :meth:`ReferenceEmbedding.transform`, using the real cells' mean and loadings.

    Parameters
    ----------
    real
        Real cells with raw counts (in protocol G1: the held-out test cells). Not modified.
    generated
        Optional second dataset; only its gene names are used, to restrict the reference to the
        shared genes so that it can be projected later.
    n_top_genes
        Number of HVGs. ``None``, or a number at least the number of genes, uses all genes.
    n_comps
        Number of principal components (reduced, with a warning, when there are too few cells
        or genes).
    layer
        Layer of ``real`` with the counts; ``None`` uses ``real.X``.
    flavor
        scanpy HVG flavour; both options work on raw counts.
    seed
        Random state of the PCA solver.

    Returns
    -------
    The fitted :class:`ReferenceEmbedding`.
    """
    check_adata(real, "real")
    if generated is not None:
        check_adata(generated, "generated")
        genes = align_genes({"real": real, "generated": generated})
    else:
        genes = pd.Index(real.var_names)
    X = get_matrix(real, genes, layer, "real")
    check_counts(X, "real")
    return fit_reference_embedding(
        X, genes, n_top_genes=n_top_genes, n_comps=n_comps, flavor=flavor, seed=seed
    )


def fit_reference_embedding(
    X: Matrix,
    genes: pd.Index,
    *,
    n_top_genes: int | None = 2000,
    n_comps: int = 30,
    flavor: str = "seurat_v3",
    seed: int = 0,
    lognorm: Matrix | None = None,
) -> ReferenceEmbedding:
    """Array-level core of :func:`reference_embedding` (``X``: real counts, columns ``genes``)."""
    if n_comps < 1:
        raise ValueError(f"`n_comps` must be at least 1, got {n_comps}.")
    hvg_mask = select_hvg(X, genes, n_top_genes, flavor)
    L = log1p_cp10k(X) if lognorm is None else lognorm
    Z = to_dense(L[:, np.flatnonzero(hvg_mask)])
    max_comps = min(Z.shape[0] - 1, Z.shape[1])
    if max_comps < 1:
        raise ValueError("At least 2 real cells are needed to fit the reference PCA.")
    if n_comps > max_comps:
        warnings.warn(
            f"Only {Z.shape[0]} real cells and {Z.shape[1]} HVGs: using {max_comps} principal "
            f"components instead of {n_comps}.",
            UserWarning,
            stacklevel=2,
        )
        n_comps = max_comps
    pca = PCA(n_components=n_comps, random_state=seed).fit(Z)
    # Project exactly as other cells will be; fit_transform's U*S differs with randomized SVD.
    coords = (Z - pca.mean_) @ pca.components_.T
    return ReferenceEmbedding(
        genes=pd.Index(genes),
        hvg=pd.Index(genes[hvg_mask]),
        mean=pca.mean_,
        components=pca.components_,
        explained_variance_ratio=pca.explained_variance_ratio_,
        real_coords=coords,
    )


def select_hvg(
    X: Matrix, genes: pd.Index, n_top_genes: int | None, flavor: str = "seurat_v3"
) -> np.ndarray:
    """Boolean mask of highly variable genes selected on raw counts ``X`` (scanpy)."""
    n_genes = X.shape[1]
    if n_top_genes is None or n_top_genes >= n_genes:
        return np.ones(n_genes, dtype=bool)
    if n_top_genes < 1:
        raise ValueError(f"`n_top_genes` must be positive or None, got {n_top_genes}.")
    tmp = AnnData(X, var=pd.DataFrame(index=pd.Index(genes, dtype=str)))
    with keep_torch_threads():
        return _seurat_hvg(tmp, n_top_genes, flavor)


def _seurat_hvg(tmp: AnnData, n_top_genes: int, flavor: str) -> np.ndarray:
    # scanpy's loess fit of seurat_v3 sometimes fails on a near-singular system
    # ("reciprocal condition number"); a slightly wider span fixes it.
    for span in _LOESS_SPANS:
        try:
            with warnings.catch_warnings():
                # Non-integer counts were already reported by `check_counts`.
                warnings.filterwarnings("ignore", message=".*non-integers.*")
                df = sc.pp.highly_variable_genes(
                    tmp, flavor=flavor, n_top_genes=n_top_genes, span=span, inplace=False
                )
        except ImportError as err:  # seurat_v3 needs scikit-misc's loess
            raise ImportError(
                "HVG selection with flavor='seurat_v3' needs scikit-misc: "
                "`pip install scikit-misc`."
            ) from err
        except ValueError as err:
            if "condition number" not in str(err) or span == _LOESS_SPANS[-1]:
                raise
            continue
        if span != _LOESS_SPANS[0]:
            warnings.warn(
                f"seurat_v3 HVG selection: loess failed with span={_LOESS_SPANS[0]}; used "
                f"span={span}.",
                UserWarning,
                stacklevel=3,
            )
        return df["highly_variable"].to_numpy(dtype=bool)
    raise AssertionError("unreachable")  # pragma: no cover
