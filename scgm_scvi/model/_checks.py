"""Argument checks shared by the model classes: clear errors that name the fix."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

# enough rows to catch normalised or log-transformed data without reading an atlas twice
_CHECK_ROWS = 20_000


def check_counts(X, where: str = "X") -> None:
    """Refuse values a count model cannot use; warn on non-integers.

    Only the stored values of the first rows are read, so a backed matrix is not loaded whole.
    """
    block = X[: min(X.shape[0], _CHECK_ROWS)]
    values = block.data if sp.issparse(block) else np.asarray(block)
    values = np.asarray(values)
    if values.size == 0:
        return
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"adata.{where} contains NaN or infinite values. SCGM needs raw counts: remove or "
            "fix these cells (e.g. adata = adata[np.isfinite(adata.X.sum(1)).A1])."
        )
    if values.min() < 0:
        raise ValueError(
            f"adata.{where} contains negative values, so it is not raw counts (scaled or "
            "centred data?). Register the raw counts, e.g. layer='counts'."
        )
    if not np.allclose(values, np.round(values)):
        warnings.warn(
            f"adata.{where} contains non-integer values; SCGM models counts with a negative "
            "binomial. If these are normalised or log1p values, register the raw counts "
            "(layer='counts') instead.",
            UserWarning,
            stacklevel=3,
        )


def resolve_group_sizes(
    n: int | None,
    spec: str | Sequence[str] | Mapping[str, int],
    categories: Sequence[str],
    what: str,
) -> dict[str, int]:
    """Turn ``"B"``, ``["B", "NK"]`` or ``{"B": 10}`` into ``{name: count}`` with checks."""
    if isinstance(spec, Mapping):
        sizes = {k: int(v) for k, v in spec.items()}
        if n is not None and n != sum(sizes.values()):
            raise ValueError(
                f"n={n} does not match the {sum(sizes.values())} cells requested in the "
                f"{what} dict; pass n=None."
            )
        if any(v < 0 for v in sizes.values()) or sum(sizes.values()) == 0:
            raise ValueError(f"The {what} dict needs non-negative counts with a positive sum.")
    else:
        names = [spec] if isinstance(spec, str) else list(spec)
        if n is None or n <= 0:
            raise ValueError(f"n must be a positive integer, got {n!r}.")
        if not names:
            raise ValueError(f"{what} is an empty list.")
        base, extra = divmod(n, len(names))
        sizes = {}
        for i, name in enumerate(names):
            sizes[name] = sizes.get(name, 0) + base + (i < extra)
    unknown = [k for k in sizes if k not in categories]
    if unknown:
        raise ValueError(f"Unknown {what} {unknown}. Valid values: {list(categories)}.")
    return {k: v for k, v in sizes.items() if v > 0}
