"""Shared input handling for the metrics: gene alignment, count checks, log1p(CP10k).

Every helper here works on arrays extracted from the AnnData objects (always copies), so that no
metric can modify the objects it was given.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from contextlib import contextmanager

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
import torch
from anndata import AnnData

from scgm_scvi._counts import scan_counts

#: Target library size of the CP10k normalisation used by every protocol.
TARGET_SUM = 1e4

Matrix = np.ndarray | sp.csr_matrix


@contextmanager
def keep_torch_threads():
    """Restore torch's intra-op thread count afterwards (also usable as a decorator).

    numba (scanpy's HVG selection) and scikit-learn's thread-pool limits reset the OpenMP pool
    that torch shares, which silently changed the caller's torch threads (measured: 1 -> 2
    after ``label_agreement``, and 20x slower training on a busy 2-core machine)."""
    n_threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n_threads)


def check_adata(adata: AnnData, name: str) -> None:
    """Raise a clear error when ``adata`` cannot be evaluated."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"`{name}` must be an AnnData object, got {type(adata).__name__}.")
    if adata.n_obs == 0:
        raise ValueError(f"`{name}` has no cells.")
    if not adata.var_names.is_unique:
        raise ValueError(
            f"`{name}` has duplicated gene names; call `{name}.var_names_make_unique()` first."
        )


def align_genes(adatas: Mapping[str, AnnData]) -> pd.Index:
    """Genes shared by all AnnData objects, in the order of the first one.

    Warns, per object, how many of its genes were dropped; raises when nothing is shared.
    """
    names = list(adatas)
    common = adatas[names[0]].var_names
    for name in names[1:]:
        common = common[common.isin(adatas[name].var_names)]
    if len(common) == 0:
        raise ValueError(
            f"{' and '.join(f'`{n}`' for n in names)} share no gene names. Use the same gene "
            "identifiers on both sides (e.g. gene symbols in both `var_names`)."
        )
    for name in names:
        n_dropped = adatas[name].n_vars - len(common)
        if n_dropped > 0:
            warnings.warn(
                f"`{name}`: {n_dropped} of {adatas[name].n_vars} genes are not shared with the "
                f"other inputs and were dropped; metrics use the {len(common)} shared genes.",
                UserWarning,
                stacklevel=3,
            )
    return pd.Index(common)


def get_matrix(
    adata: AnnData, genes: pd.Index | None = None, layer: str | None = None, name: str = "adata"
) -> Matrix:
    """Copy of ``adata.X`` (or a layer) restricted to ``genes``: CSR or dense float64."""
    if layer is None:
        X = adata.X
    else:
        if layer not in adata.layers:
            raise ValueError(
                f"`{name}` has no layer {layer!r}; available layers: {list(adata.layers)}. "
                "Pass `layer=None` to use `.X`."
            )
        X = adata.layers[layer]
    if X is None:
        raise ValueError(f"`{name}.X` is empty; pass the layer that holds the counts.")
    if genes is not None and not genes.equals(adata.var_names):
        idx = adata.var_names.get_indexer(genes)
        if (idx < 0).any():
            missing = genes[idx < 0]
            raise ValueError(
                f"`{name}` lacks {len(missing)} required genes (e.g. {list(missing[:5])}); "
                "subset or reorder it to the genes used by the reference."
            )
        X = X[:, idx]
    if sp.issparse(X):
        return sp.csr_matrix(X, dtype=np.float64, copy=True)
    return np.array(X, dtype=np.float64, copy=True)


def check_counts(X: Matrix, name: str) -> None:
    """Raise on NaN/negative values, warn on non-integers: the metrics expect raw counts."""
    scan = scan_counts(X)
    if scan.non_finite:
        raise ValueError(f"`{name}` contains NaN or infinite values; pass raw counts.")
    if scan.negative:
        raise ValueError(
            f"`{name}` has negative values, so it looks log-normalised or scaled rather than raw "
            "counts. Pass raw counts (e.g. `layer='counts'`)."
        )
    if scan.non_integer:
        warnings.warn(
            f"`{name}` has non-integer values, but raw counts are expected. If these are "
            "normalised values, pass the raw counts instead (e.g. `layer='counts'`).",
            UserWarning,
            stacklevel=3,
        )


def log1p_cp10k(X: Matrix) -> Matrix:
    """``log1p`` of counts scaled to 10,000 per cell (scanpy), as a new matrix."""
    # A bare AnnData around our own copy lets scanpy do the normalisation without side effects.
    tmp = AnnData(X)
    out = sc.pp.normalize_total(tmp, target_sum=TARGET_SUM, inplace=False)["X"]
    return sc.pp.log1p(out)


def to_dense(X: Matrix) -> np.ndarray:
    """Dense float64 version of ``X``."""
    return X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)


def col_mean_var(X: Matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and (population) variance without densifying a sparse matrix."""
    mean = np.asarray(X.mean(axis=0)).ravel()
    if sp.issparse(X):
        sq = np.asarray(X.multiply(X).mean(axis=0)).ravel()
    else:
        sq = (np.asarray(X) ** 2).mean(axis=0)
    return mean, np.maximum(sq - mean**2, 0.0)


def zero_fraction(X: Matrix) -> np.ndarray:
    """Per-gene share of cells with a zero count."""
    n = X.shape[0]
    nnz = np.diff(sp.csc_matrix(X).indptr) if sp.issparse(X) else (np.asarray(X) != 0).sum(0)
    return 1.0 - np.asarray(nnz, dtype=np.float64) / n


def library_size(X: Matrix) -> np.ndarray:
    """Total counts per cell."""
    return np.asarray(X.sum(axis=1), dtype=np.float64).ravel()


def get_labels(adata: AnnData, key: str, name: str) -> np.ndarray:
    """``adata.obs[key]`` as an array of strings, with a clear error when missing."""
    if key not in adata.obs:
        raise ValueError(
            f"{key!r} is not a column of `{name}.obs`; available columns: {list(adata.obs)}."
        )
    col = adata.obs[key]
    if col.isna().any():
        raise ValueError(f"`{name}.obs[{key!r}]` has missing values; drop or label those cells.")
    return col.astype(str).to_numpy()


def ordered_groups(adata: AnnData, key: str, labels: np.ndarray) -> list[str]:
    """Group names in category order when categorical, else sorted."""
    col = adata.obs[key]
    present = set(labels)
    if isinstance(col.dtype, pd.CategoricalDtype):
        return [str(c) for c in col.cat.categories if str(c) in present]
    return sorted(present)


def as_points(x: np.ndarray, name: str) -> np.ndarray:
    """Validate a point cloud: 2-D, finite, at least one row; returns float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D array (cells x dimensions), got {x.ndim}-D.")
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` has no points.")
    if not np.isfinite(x).all():
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return x


def subsample(x: np.ndarray, max_cells: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most ``max_cells`` rows of ``x``, drawn without replacement."""
    if max_cells is None or x.shape[0] <= max_cells:
        return x
    return x[np.sort(rng.choice(x.shape[0], size=max_cells, replace=False))]
