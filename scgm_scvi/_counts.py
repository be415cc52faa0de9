"""One scan of a count matrix for what a count model cannot use; callers word the verdict."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

#: rows read at a time: a backed matrix is checked without loading it whole
BLOCK_ROWS = 20_000


@dataclass(frozen=True)
class CountScan:
    """Where a matrix first breaks each rule of raw counts (``"rows a-b"``), or ``None``."""

    non_finite: str | None = None
    negative: str | None = None
    non_integer: str | None = None


def scan_counts(X, block_rows: int | None = None) -> CountScan:
    """Check every stored value of ``X`` (dense, sparse or backed), ``block_rows`` rows at a
    time, for non-finite, negative and non-integer values; stops at the first non-finite or
    negative block (the caller refuses those)."""
    block_rows = BLOCK_ROWS if block_rows is None else block_rows
    found: dict[str, str] = {}
    for start in range(0, X.shape[0], block_rows):
        block = X[start : start + block_rows]
        values = np.asarray(block.data if sp.issparse(block) else block)
        if values.size == 0:
            continue
        rows = f"rows {start}-{start + block.shape[0] - 1}"
        if not np.all(np.isfinite(values)):
            found.setdefault("non_finite", rows)
            break
        if values.min() < 0:
            found.setdefault("negative", rows)
            break
        if "non_integer" not in found and not np.array_equal(values, np.round(values)):
            found["non_integer"] = rows
    return CountScan(**found)
