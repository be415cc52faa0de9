"""Metrics for edited cells (control -> stimulated), as in scGen and scPerturBench."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats

from ._distances import energy_distance
from ._perturbation import distribution_rows, perturbation_rows, wilcoxon_table
from ._utils import (
    Matrix,
    align_genes,
    check_adata,
    check_counts,
    col_mean_var,
    get_matrix,
    keep_torch_threads,
    log1p_cp10k,
    to_dense,
)


def mean_expression(
    adata: AnnData, genes: Sequence[str] | None = None, *, layer: str | None = None
) -> pd.Series:
    """Per-gene mean of log1p(CP10k) expression.

    The library size is computed over all genes of ``adata``; ``genes`` only selects which
    means are returned.

    Parameters
    ----------
    adata
        Cells with raw counts. Not modified.
    genes
        Genes to return (all by default).
    layer
        Layer holding the counts; ``None`` uses ``adata.X``.

    Returns
    -------
    Series indexed by gene name.
    """
    check_adata(adata, "adata")
    X = get_matrix(adata, None, layer, "adata")
    check_counts(X, "adata")
    means = pd.Series(col_mean_var(log1p_cp10k(X))[0], index=adata.var_names, name="mean")
    if genes is None:
        return means
    return means.loc[_check_genes(genes, adata.var_names, "adata")]


def r2_mean(
    pred: AnnData,
    real: AnnData,
    genes: Sequence[str] | None = None,
    *,
    layer: str | None = None,
    pred_layer: str | None = None,
) -> float:
    """scGen's R2: squared Pearson correlation of per-gene mean log1p(CP10k) expression.

    Both datasets are normalised over their shared genes; ``genes`` (default: all shared genes)
    selects the genes compared.

    Parameters
    ----------
    pred
        Predicted (edited) cells with counts. Not modified.
    real
        Real target cells with raw counts. Not modified.
    genes
        Genes to compare, e.g. the top DEGs from :func:`top_degs`.
    layer, pred_layer
        Layers holding the counts of ``real`` / ``pred``; ``None`` uses ``.X``.

    Returns
    -------
    R2 in [0, 1]; NaN if either mean profile is constant.
    """
    means = shared_means({"pred": (pred, pred_layer), "real": (real, layer)}, genes)
    return _pearson(means["pred"], means["real"]) ** 2


def pearson_delta(
    pred: AnnData,
    real: AnnData,
    control: AnnData,
    genes: Sequence[str] | None = None,
    *,
    layer: str | None = None,
    pred_layer: str | None = None,
) -> float:
    """Pearson correlation of predicted and real mean changes from control (scPerturBench).

    ``corr(mean(pred) - mean(control), mean(real) - mean(control))`` over ``genes``, with means
    of log1p(CP10k) normalised over the genes shared by the three datasets.

    Parameters
    ----------
    pred
        Predicted (edited) cells with counts. Not modified.
    real
        Real target (e.g. stimulated) cells with raw counts. Not modified.
    control
        Real control cells with raw counts (the cells that were edited). Not modified.
    genes
        Genes to compare (protocol: the top-100 DEGs); all shared genes by default.
    layer, pred_layer
        Layers holding the counts of ``real`` and ``control`` / of ``pred``.

    Returns
    -------
    Pearson correlation; NaN if either change is constant (e.g. for the identity baseline).
    """
    means = shared_means(
        {"pred": (pred, pred_layer), "real": (real, layer), "control": (control, layer)}, genes
    )
    return _pearson(means["pred"] - means["control"], means["real"] - means["control"])


def top_degs(
    real_stim: AnnData,
    control: AnnData,
    n: int = 100,
    *,
    layer: str | None = None,
    rank_by: Literal["score", "abs_score"] = "score",
) -> list[str]:
    """Top differentially expressed genes of ``real_stim`` vs ``control`` (Wilcoxon, scanpy).

    Runs :func:`scanpy.tl.rank_genes_groups` (``method="wilcoxon"``) on log1p(CP10k) values of
    the shared genes, stimulated vs control as reference.

    Parameters
    ----------
    real_stim
        Real stimulated cells with raw counts. Not modified.
    control
        Real control cells with raw counts. Not modified.
    n
        Number of genes.
    layer
        Layer holding the counts; ``None`` uses ``.X``.
    rank_by
        ``"score"``: highest Wilcoxon z-scores first, i.e. the most up-regulated genes (scanpy's
        order, as used by scGen). ``"abs_score"``: largest absolute z-score, up or down.

    Returns
    -------
    Gene names, strongest first.
    """
    if rank_by not in ("score", "abs_score"):
        raise ValueError(f"`rank_by` must be 'score' or 'abs_score', got {rank_by!r}.")
    check_adata(real_stim, "real_stim")
    check_adata(control, "control")
    if real_stim.n_obs < 2 or control.n_obs < 2:
        raise ValueError("The Wilcoxon test needs at least 2 stimulated and 2 control cells.")
    genes = align_genes({"real_stim": real_stim, "control": control})
    if n < 1 or n > len(genes):
        raise ValueError(f"`n` must be between 1 and the {len(genes)} shared genes, got {n}.")
    Ls = _lognorm(real_stim, genes, layer, "real_stim")
    Lc = _lognorm(control, genes, layer, "control")
    return top_degs_lognorm(Ls, Lc, genes, n, rank_by)


def top_degs_lognorm(
    L_stim: Matrix,
    L_control: Matrix,
    genes: pd.Index,
    n: int = 100,
    rank_by: Literal["score", "abs_score"] = "score",
) -> list[str]:
    """Array-level core of :func:`top_degs` on log1p(CP10k) matrices with columns ``genes``."""
    return _ranked_names(wilcoxon_table(L_stim, L_control, genes), n, rank_by)


def _ranked_names(table: pd.DataFrame, n: int, rank_by: str) -> list[str]:
    """The top ``n`` genes of a :func:`wilcoxon_table`: by score (scanpy's order) or |score|."""
    if rank_by == "abs_score":
        table = table.reindex(
            table["scores"].abs().sort_values(ascending=False, kind="stable").index
        )
    return [str(g) for g in table.index[:n]]


@keep_torch_threads()
def evaluate_edit(
    edited: AnnData,
    real_target: AnnData,
    control: AnnData,
    n_degs: int = 100,
    *,
    degs: Sequence[str] | None = None,
    layer: str | None = None,
    edited_layer: str | None = None,
    rank_by: Literal["score", "abs_score"] = "score",
    max_cells: int | None = 5000,
    seed: int = 0,
    n_estimators: int = 1000,
    ceiling: bool = False,
) -> pd.DataFrame:
    """All editing metrics of the evaluation protocol for one held-out cell type.

    Rows (column ``metric``):

    - ``r2_mean_all`` / ``r2_mean_top_degs``: scGen's R2 of means over all shared genes / the
      top DEGs;
    - ``pearson_delta_top_degs``: :func:`pearson_delta` on the top DEGs;
    - ``e_distance_top_degs``: E-distance (squared Euclidean, scPerturBench's convention; equals
      ``2 ||mean difference||^2``) between edited and real target cells on the log1p(CP10k) of
      the top DEGs; lower is better;
    - ``energy_distance_top_degs``: the same with Euclidean distances (pertpy >= 2025 default),
      which also sees differences in spread;
    - the perturbation field's DE metrics (cell-eval): ``n_real_degs_fdr``,
      ``deg_overlap_fdr``, ``deg_overlap_top{n_degs}``, ``lfc_spearman``,
      ``lfc_sign_agreement`` (DEGs significant at FDR 0.05 ranked by absolute log fold change;
      see the evaluation page of the documentation);
    - ``discriminator_auc`` (edited vs real target cells, protocol G2's forest; 0.5 ideal) and
      ``mmd_rbf`` (in 30 PCs fit on the real target cells).

    The DEGs (Wilcoxon, real target vs control) are stored in ``result.attrs["degs"]``.

    Parameters
    ----------
    edited
        Edited cells (counts), e.g. control cells moved to ``condition="stim"``. Not modified.
    real_target
        Real cells of the target condition (same cell type). Not modified.
    control
        The real control cells that were edited. Not modified.
    n_degs
        Number of top DEGs (protocol: 100).
    degs
        Use these genes instead of computing DEGs.
    layer, edited_layer
        Layers holding the counts of the real datasets / of ``edited``; ``None`` uses ``.X``.
    rank_by
        DEG ranking, see :func:`top_degs`.
    max_cells
        Subsampling cap of the E-distances (seeded).
    seed
        Seed of that subsampling, of the discriminator and of the split halves.
    n_estimators
        Trees of the discriminator's random forest (protocol: 1000).
    ceiling
        Add a column ``ceiling``: each metric for one random half of the real target cells
        "edited" against the other half (the best an edit can be expected to score).

    Returns
    -------
    Tidy frame with columns ``metric``, ``value`` (and ``ceiling``).
    """
    for name, a in (("edited", edited), ("real_target", real_target), ("control", control)):
        check_adata(a, name)
    genes = align_genes({"real_target": real_target, "control": control, "edited": edited})
    L = {
        "edited": _lognorm(edited, genes, edited_layer, "edited"),
        "real": _lognorm(real_target, genes, layer, "real_target"),
        "control": _lognorm(control, genes, layer, "control"),
    }
    if real_target.n_obs < 2 or control.n_obs < 2:
        raise ValueError("DEGs need at least 2 real target and 2 control cells.")
    X_real = get_matrix(real_target, genes, layer, "real_target")
    settings = {"n_degs": n_degs, "rank_by": rank_by, "max_cells": max_cells, "seed": seed}
    settings["n_estimators"] = n_estimators
    rows, degs = _edit_rows(L["edited"], L["real"], L["control"], X_real, genes, degs, settings)
    out = pd.DataFrame(rows, columns=["metric", "value"])
    if ceiling:
        if real_target.n_obs < 4:
            raise ValueError("The split-half ceiling needs at least 4 real target cells.")
        half = np.random.default_rng(seed).permutation(real_target.n_obs)
        a, b = np.sort(half[: len(half) // 2]), np.sort(half[len(half) // 2 :])
        rows_c, _ = _edit_rows(
            L["real"][a], L["real"][b], L["control"], X_real[b], genes, None, settings
        )
        out["ceiling"] = out["metric"].map(dict(rows_c))
    out.attrs["degs"] = list(degs)
    return out


def _edit_rows(L_edited, L_real, L_control, X_real, genes, degs, settings):
    """The rows of :func:`evaluate_edit` on log1p(CP10k) matrices; the DEGs used."""
    n_degs, seed, max_cells = settings["n_degs"], settings["seed"], settings["max_cells"]
    real_table = wilcoxon_table(L_real, L_control, genes)  # the real response, tested once
    if degs is None:
        degs = _ranked_names(real_table, min(n_degs, len(genes)), settings["rank_by"])
    deg_idx = genes.get_indexer(_check_genes(degs, genes, "the shared genes"))
    means = {
        k: col_mean_var(v)[0]
        for k, v in (("edited", L_edited), ("real", L_real), ("control", L_control))
    }
    delta_pred = means["edited"] - means["control"]
    delta_real = means["real"] - means["control"]
    x_ed = to_dense(L_edited[:, deg_idx])
    x_real = to_dense(L_real[:, deg_idx])
    rows = [
        ("r2_mean_all", _pearson(means["edited"], means["real"]) ** 2),
        ("r2_mean_top_degs", _pearson(means["edited"][deg_idx], means["real"][deg_idx]) ** 2),
        ("pearson_delta_top_degs", _pearson(delta_pred[deg_idx], delta_real[deg_idx])),
        (
            "e_distance_top_degs",
            energy_distance(x_ed, x_real, squared=True, max_cells=max_cells, seed=seed),
        ),
        (
            "energy_distance_top_degs",
            energy_distance(x_ed, x_real, squared=False, max_cells=max_cells, seed=seed),
        ),
    ]
    rows += perturbation_rows(L_edited, L_control, genes, real_table, n_degs)
    rows += distribution_rows(
        X_real, L_edited, L_real, genes, n_estimators=settings["n_estimators"],
        max_cells=max_cells, seed=seed,
    )  # fmt: skip
    return rows, degs


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _lognorm(adata: AnnData, genes: pd.Index, layer: str | None, name: str) -> Matrix:
    X = get_matrix(adata, genes, layer, name)
    check_counts(X, name)
    return log1p_cp10k(X)


def shared_means(
    datasets: dict[str, tuple[AnnData, str | None]], genes: Sequence[str] | None
) -> dict[str, np.ndarray]:
    for name, (a, _) in datasets.items():
        check_adata(a, name)
    shared = align_genes({k: a for k, (a, _) in datasets.items()})
    idx = (
        np.arange(len(shared))
        if genes is None
        else shared.get_indexer(_check_genes(genes, shared, "the shared genes"))
    )
    return {
        k: col_mean_var(_lognorm(a, shared, lay, k))[0][idx] for k, (a, lay) in datasets.items()
    }


def _check_genes(genes: Sequence[str], available: pd.Index, where: str) -> list[str]:
    genes = [str(g) for g in genes]
    if len(genes) == 0:
        raise ValueError("`genes` is empty.")
    missing = [g for g in genes if g not in available]
    if missing:
        raise ValueError(
            f"{len(missing)} requested genes are not in {where} (e.g. {missing[:5]}); pass "
            "genes present in every dataset."
        )
    return genes


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.pearsonr(a, b).statistic)
