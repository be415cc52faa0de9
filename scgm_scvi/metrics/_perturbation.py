"""Perturbation-field metrics of edited cells: DE-gene recovery, fold-change agreement, and
how well a classifier tells edited from real target cells (cell-eval, scPerturBench)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData
from scipy import stats

from ._distances import mmd_rbf
from ._embedding import fit_reference_embedding
from ._realism import pooled_rf_auc
from ._utils import Matrix

#: false discovery rate below which a real DEG counts as significant
FDR = 0.05


def wilcoxon_table(L_a: Matrix, L_b: Matrix, genes: pd.Index) -> pd.DataFrame:
    """Wilcoxon test of every gene, ``a`` against ``b`` (scanpy), on log1p(CP10k) matrices.

    Returns scanpy's table indexed by gene: ``scores``, ``logfoldchanges`` (natural log, from
    the means of ``expm1``), ``pvals``, ``pvals_adj`` (Benjamini-Hochberg).
    """
    X = sp.vstack([sp.csr_matrix(L_a), sp.csr_matrix(L_b)], format="csr")
    group = np.r_[np.repeat("a", L_a.shape[0]), np.repeat("b", L_b.shape[0])]
    obs = pd.DataFrame({"group": pd.Categorical(group)}, index=np.arange(len(group)).astype(str))
    tmp = AnnData(X, obs=obs, var=pd.DataFrame(index=pd.Index(genes, dtype=str)))
    tmp.uns["log1p"] = {"base": None}  # natural-log log1p values, as scanpy assumes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(
            tmp, "group", groups=["a"], reference="b", method="wilcoxon", key_added="rgg"
        )
    return sc.get.rank_genes_groups_df(tmp, group="a", key="rgg").set_index("names")


def ranked_degs(table: pd.DataFrame, fdr: float = FDR) -> tuple[list[str], int]:
    """Genes ranked as cell-eval ranks DEGs: the significant ones (adjusted p below ``fdr``)
    by absolute log fold change, then the others; and how many are significant."""
    table = table.assign(
        significant=table["pvals_adj"] < fdr, abs_lfc=table["logfoldchanges"].abs()
    )
    order = table.sort_values(["significant", "abs_lfc"], ascending=False, kind="stable")
    return [str(g) for g in order.index], int(table["significant"].sum())


def perturbation_rows(
    L_edited: Matrix, L_control: Matrix, genes: pd.Index, real: pd.DataFrame, n: int = 100
) -> list[tuple[str, float]]:
    """DE-gene overlap, and agreement of log fold changes on the real DEGs.

    ``real`` is the :func:`wilcoxon_table` of the real target cells against the control cells.

    - ``n_real_degs_fdr``: real DEGs (target vs control) significant at FDR 0.05;
    - ``deg_overlap_fdr`` / ``deg_overlap_top{n}``: the share of the real top-N DEGs found among
      the edited cells' top-N (edited vs control), for N = the number of significant real DEGs
      and N = ``n``;
    - ``lfc_spearman`` / ``lfc_sign_agreement``: Spearman correlation of edited and real log
      fold changes on the significant real DEGs (the real top ``n`` if fewer than 3 are
      significant), and the share of them whose change has the right sign.
    """
    edited = wilcoxon_table(L_edited, L_control, genes)
    real_rank, n_sig = ranked_degs(real)
    edited_rank, _ = ranked_degs(edited)
    n = min(n, len(genes))

    def overlap(k: int) -> float:
        if k == 0:
            return float("nan")
        return len(set(real_rank[:k]) & set(edited_rank[:k])) / k

    degs = real_rank[: n_sig if n_sig >= 3 else n]
    lfc_real = real.loc[degs, "logfoldchanges"].to_numpy(dtype=float)
    lfc_edit = edited.loc[degs, "logfoldchanges"].to_numpy(dtype=float)
    moving = lfc_real != 0
    constant = np.ptp(lfc_real) == 0 or np.ptp(lfc_edit) == 0
    spearman = float("nan") if constant else float(stats.spearmanr(lfc_real, lfc_edit).statistic)
    return [
        ("n_real_degs_fdr", float(n_sig)),
        ("deg_overlap_fdr", overlap(n_sig)),
        (f"deg_overlap_top{n}", overlap(n)),
        ("lfc_spearman", spearman),
        (
            "lfc_sign_agreement",
            float(np.mean(np.sign(lfc_real[moving]) == np.sign(lfc_edit[moving])))
            if moving.any()
            else float("nan"),
        ),
    ]


def distribution_rows(
    X_real: Matrix,
    L_edited: Matrix,
    L_real: Matrix,
    genes: pd.Index,
    *,
    n_estimators: int = 1000,
    max_cells: int | None = 5000,
    seed: int = 0,
) -> list[tuple[str, float]]:
    """How far the edited cells are, as a population, from the real target cells.

    - ``discriminator_auc``: protocol G2's random forest on 50 PCs of the pooled log1p(CP10k)
      cells, held-out ROC-AUC (0.5: indistinguishable);
    - ``mmd_rbf``: RBF-MMD (bandwidths 0.01-100) in 30 PCs of the 2,000 most variable genes,
      fit on the real target cells (protocol G1's embedding).
    """
    auc = pooled_rf_auc({"real": L_real, "generated": L_edited}, 50, n_estimators, seed, None)
    n_comps = max(2, min(30, L_real.shape[0] - 1, len(genes) - 1))
    emb = fit_reference_embedding(X_real, genes, n_comps=n_comps, seed=seed, lognorm=L_real)
    mmd = mmd_rbf(emb.real_coords, emb.transform_lognorm(L_edited), max_cells=max_cells, seed=seed)
    return [("discriminator_auc", float(auc)), ("mmd_rbf", float(mmd))]
