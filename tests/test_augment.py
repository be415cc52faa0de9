"""SCGM.augment: real cells plus generated cells of the rare types, marked, input untouched."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_unchanged, snapshot


def _rare(adata):
    """label_0 cut down to 5 cells."""
    keep = np.ones(adata.n_obs, bool)
    keep[np.flatnonzero(adata.obs["labels"] == "label_0")[5:]] = False
    return adata[keep].copy()


def test_augment_fills_rare_types(trained):
    model, adata = trained
    real = _rare(adata)
    before = snapshot(real)
    counts = real.obs["labels"].value_counts()
    out = model.augment(real, min_cells=40, seed=0)
    assert_unchanged(before, real)
    assert list(out.var_names) == list(model.var_names_)
    assert out.obs["synthetic"].sum() == 40 - counts["label_0"]
    assert not out.obs["synthetic"][: real.n_obs].any()
    np.testing.assert_array_equal(out.obs_names[: real.n_obs], real.obs_names)
    augmented = out.obs["labels"].value_counts()
    assert augmented["label_0"] == 40
    assert augmented["label_1"] == counts["label_1"]  # above the target: untouched
    assert set(out.obs.loc[out.obs["synthetic"].to_numpy(), "labels"]) == {"label_0"}
    assert out.obs_names.is_unique
    X = out.X.toarray()
    np.testing.assert_array_equal(X, np.round(X))
    # the default target is the median type size: label_0 is brought up to it
    median = int(np.median(counts.to_numpy()))
    assert model.augment(real, seed=0).obs["labels"].value_counts()["label_0"] == median


def test_augment_per_type_and_bad_input(trained):
    model, adata = trained
    out = model.augment(adata, per_type={"label_2": 7}, seed=1, synthetic_key="fake")
    assert out.obs["fake"].sum() == 7 and out.n_obs == adata.n_obs + 7
    same = model.augment(adata, min_cells=1)  # nothing rare: the real cells alone
    assert same.n_obs == adata.n_obs and not same.obs["synthetic"].any()
    with pytest.raises(ValueError, match=r"Unknown cell types \['T cell'\]"):
        model.augment(adata, per_type={"T cell": 5})
    with pytest.raises(ValueError, match="min_cells must be a positive integer"):
        model.augment(adata, min_cells=0)
    with pytest.raises(ValueError, match="lacks 10 of the model's"):
        model.augment(adata[:, 10:].copy())
