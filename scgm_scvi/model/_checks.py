"""Argument checks shared by the model classes: clear errors that name the fix."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from numbers import Integral, Real

import numpy as np
import pandas as pd

from scgm_scvi._counts import scan_counts


def check_counts(X, where: str = "X", owner: str = "adata") -> None:
    """Refuse values a count model cannot use; warn on non-integers.

    Every stored value is checked, a block of rows at a time, so a backed matrix is never
    loaded whole (one pass over the stored values: cheap next to one training epoch).
    """
    scan = scan_counts(X)
    if scan.non_finite:
        raise ValueError(
            f"{owner}.{where} contains NaN or infinite values ({scan.non_finite}). SCGM needs raw "
            "counts: remove or fix these cells (e.g. adata = "
            "adata[np.isfinite(adata.X.sum(1)).A1])."
        )
    if scan.negative:
        raise ValueError(
            f"{owner}.{where} contains negative values ({scan.negative}), so it is not raw counts "
            "(scaled or centred data?). Register the raw counts, e.g. layer='counts'."
        )
    if scan.non_integer:
        warnings.warn(
            f"{owner}.{where} contains non-integer values; SCGM models counts with a negative "
            "binomial. If these are normalised or log1p values, register the raw counts "
            "(layer='counts') instead.",
            UserWarning,
            stacklevel=3,
        )


def _known(name, categories) -> bool:
    try:
        return name in categories
    except TypeError:  # an unhashable or incomparable name
        return False


def resolve_group_sizes(
    n: int | None,
    spec: str | Sequence[str] | Mapping[str, int],
    categories: Sequence[str],
    what: str,
) -> dict[str, int]:
    """Turn ``"B"``, ``["B", "NK"]`` or ``{"B": 10}`` into ``{name: count}`` with checks."""
    if n is not None and (not _is_int(n) or n < 0):
        raise ValueError(f"n must be a positive integer or None, got {n!r}.")
    if isinstance(spec, Mapping):
        bad = {k: v for k, v in spec.items() if not _is_int(v)}
        if bad:
            raise ValueError(f"The {what} dict needs integer cell counts, got {bad}.")
        sizes = {k: int(v) for k, v in spec.items()}
        if n is not None and n != sum(sizes.values()):
            raise ValueError(
                f"n={n} does not match the {sum(sizes.values())} cells requested in the "
                f"{what} dict; pass n=None."
            )
        if any(v < 0 for v in sizes.values()) or sum(sizes.values()) == 0:
            raise ValueError(f"The {what} dict needs non-negative counts with a positive sum.")
    else:
        many = isinstance(spec, Sequence | np.ndarray | pd.Index) and not isinstance(spec, str)
        names = list(spec) if many else [spec]  # a single name (unknown ones are named below)
        if n is None or n <= 0:
            raise ValueError(f"n must be a positive integer, got {n!r}.")
        if not names:
            raise ValueError(f"{what} is an empty list.")
        base, extra = divmod(n, len(names))
        sizes = {}
        for i, name in enumerate(names):
            sizes[name] = sizes.get(name, 0) + base + (i < extra)
    unknown = [k for k in sizes if not _known(k, categories)]
    if unknown:
        raise ValueError(f"Unknown {what} {unknown}. Valid values: {list(categories)}.")
    return {k: v for k, v in sizes.items() if v > 0}


# ---------------------------------------------------------------------- public-argument checks
def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_positive_int(value, name: str, allow_none: bool = False) -> None:
    """``value`` must be an integer >= 1 (or ``None`` when allowed)."""
    if value is None and allow_none:
        return
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def check_seed(seed) -> None:
    """A seed is ``None`` or an integer >= 0 (numpy's and torch's rule)."""
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise ValueError(f"seed must be None or a non-negative integer, got {seed!r}.")


def check_finite(value, name: str, minimum: float | None = None, strict: bool = False) -> None:
    """``value`` must be a finite real number (``>= minimum``, or ``>`` with ``strict``)."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}.")


def check_sampling_args(n_steps, guidance_scale, seed, batch_size) -> None:
    """The reverse-process arguments shared by ``generate``, ``sample_latent`` and ``edit``."""
    check_positive_int(n_steps, "n_steps", allow_none=True)
    check_finite(guidance_scale, "guidance_scale", minimum=0.0)
    check_seed(seed)
    check_positive_int(batch_size, "batch_size")


def per_cell_values(value, n: int, name: str, dtype=float) -> np.ndarray:
    """A scalar or ``(n,)`` array broadcast to ``(n,)``, with a clear error for other shapes."""
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim > 1 or (arr.ndim == 1 and len(arr) != n):
        raise ValueError(
            f"{name} must be one value or one per cell ({n} values), got shape {arr.shape}."
        )
    return np.broadcast_to(arr, (n,))


def check_library_size(library_size, n: int) -> np.ndarray | None:
    """Library sizes (total counts) as ``(n,)`` floats, finite and positive."""
    if library_size is None:
        return None
    try:
        values = np.asarray(library_size, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"library_size must be numbers, got {library_size!r}.") from None
    lib = per_cell_values(values, n, "library_size")
    if not np.all(np.isfinite(lib)) or np.any(lib <= 0):
        raise ValueError("library_size must be finite and positive (total counts per cell).")
    return lib


def check_cells_and_genes(adata, where: str = "adata") -> None:
    """At least one cell, unique gene names."""
    if adata.n_obs == 0:
        raise ValueError(f"{where} has no cells.")
    if not adata.var_names.is_unique:
        dup = list(adata.var_names[adata.var_names.duplicated()].unique()[:5])
        raise ValueError(
            f"{where}.var_names has duplicated gene names (e.g. {dup}); make them unique first, "
            f"e.g. {where}.var_names_make_unique()."
        )


def check_category_columns(obs: pd.DataFrame, keys, where: str = "adata.obs") -> None:
    """Category columns (cell type, batch, covariates) without missing values."""
    for key in keys:
        if key is None:
            continue
        n_missing = int(obs[key].isna().sum())
        if n_missing:
            raise ValueError(
                f"{where}[{key!r}] has {n_missing} missing values; every cell needs one: fill "
                f"them (e.g. {where}[{key!r}] = {where}[{key!r}].astype(str) after choosing a "
                "name such as 'unknown') or drop those cells."
            )
