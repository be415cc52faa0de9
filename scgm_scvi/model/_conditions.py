"""The registered conditions of a model, and the column names of its per-cell tables.

The score network sees one integer column per condition: the cell type (column 0), the batch
(column 1, when there are several) and each registered categorical covariate. The decoder also
takes a log library size, a batch index and continuous covariates. Generation and editing build
per-cell tables of these inputs; their column names are defined here, once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

#: per-cell table columns: the condition codes, then the decoder's other inputs
LOG_LIBRARY = "log_library"
BATCH_INDEX = "batch_index"


def code_column(j: int) -> str:
    """Table column of the ``j``-th condition's codes."""
    return f"cond_{j}"


def continuous_column(key: str) -> str:
    """Table column of the continuous covariate ``key``."""
    return f"cont_{key}"


class Conditions:
    """The conditions of a model, in the score network's column order.

    Built from the model's ``conditions_`` (a plain dict, as saved): ``{"columns": [{"name":
    "labels" | "batch" | "cat_cov", "key": obs key, "categories": [...]}, ...],
    "batch_categories": [...], "batch_key": ..., "cont_keys": [...]}``.
    """

    def __init__(self, spec: dict):
        self.spec = spec
        self.columns: list[dict] = spec["columns"]
        self.cont_keys: list[str] = list(spec.get("cont_keys") or [])
        self.batch_key: str | None = spec.get("batch_key")
        self.batch_categories: list = list(spec.get("batch_categories") or [])

    # ------------------------------------------------------------------ layout
    @property
    def keys(self) -> list[str]:
        """The obs key of every column."""
        return [c["key"] for c in self.columns]

    @property
    def labels(self) -> dict:
        """Column 0: the cell type (``registered`` is False without a ``labels_key``)."""
        return self.columns[0]

    @property
    def batch_column(self) -> int | None:
        """Index of the batch column, or ``None`` with a single batch."""
        return next((j for j, c in enumerate(self.columns) if c["name"] == "batch"), None)

    @property
    def covariate_columns(self) -> list[int]:
        """Indices of the categorical covariates' columns."""
        return [j for j, c in enumerate(self.columns) if c["name"] == "cat_cov"]

    def editable(self) -> dict[str, int]:
        """``{obs key: column}`` of the columns a target may set."""
        return {c["key"]: j for j, c in enumerate(self.columns) if c.get("registered", True)}

    # ------------------------------------------------------------------ names <-> codes
    def column(self, key: str, valid: Iterable[str] | None = None, what: str = "key") -> int:
        """The column of obs key ``key``; an unknown key names the valid ones."""
        keys = self.keys if valid is None else list(valid)
        if key not in keys:
            raise ValueError(f"Unknown {what} {key!r}. Valid: {keys}.")
        return self.keys.index(key)

    def encode(self, j: int, values: Sequence, what: str | None = None) -> np.ndarray:
        """Category names of column ``j`` as codes; unknown names list the valid values."""
        return encode_names(values, self.columns[j]["categories"], what or self.columns[j]["key"])

    def encode_batch(self, values: Sequence) -> np.ndarray:
        """Batch names as the decoder's batch indices (all registered batches)."""
        return encode_names(values, self.batch_categories, "batch")

    def decode_obs(self, codes: np.ndarray) -> pd.DataFrame:
        """The names of condition codes as categorical obs columns. Categories are those
        present (as after subsetting real cells), so that plots and ``rank_genes_groups`` see
        no empty groups."""
        obs = {}
        for j, col in enumerate(self.columns):
            names = pd.Categorical.from_codes(codes[:, j], categories=col["categories"])
            obs[col["key"]] = names.remove_unused_categories()
        return pd.DataFrame(obs)


def encode_names(values: Sequence, categories: Sequence, what: str, hint: str = "") -> np.ndarray:
    """Codes of ``values`` in ``categories``, with one error that lists the valid values."""
    lookup = {c: i for i, c in enumerate(categories)}
    unknown = sorted({str(v) for v in values if v not in lookup})
    if unknown:
        raise ValueError(
            f"Unknown {what} values {unknown}{hint}. Valid values: {list(categories)}."
        )
    return np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))
