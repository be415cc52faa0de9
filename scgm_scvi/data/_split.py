"""Held-out cells for honest evaluation: a split stratified by cell type."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def stratified_split(
    labels: Sequence, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test row indices with ``test_fraction`` of every label in the test set.

    Labels with at least two cells put at least one cell on each side.

    Parameters
    ----------
    labels
        One label per cell.
    test_fraction
        Share of each label's cells in the test set.
    seed
        Seed of the permutation.

    Returns
    -------
    Sorted train and test indices.

    Examples
    --------
    >>> train_idx, test_idx = scgm_scvi.data.stratified_split(adata.obs["cell_type"], 0.2)
    >>> train, test = adata[train_idx].copy(), adata[test_idx].copy()
    """
    labels = pd.Series(np.asarray(labels))
    rng = np.random.default_rng(seed)
    train, test = [], []
    for _, idx in labels.groupby(labels, sort=True).indices.items():
        idx = rng.permutation(idx)
        n_test = int(round(test_fraction * len(idx)))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
