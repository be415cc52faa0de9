"""One entry point that runs the generation protocols (docs: evaluation) on two AnnData."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import pandas as pd
from anndata import AnnData

from ._distances import frechet_distance, mmd_linear, mmd_rbf, wasserstein
from ._embedding import fit_reference_embedding
from ._realism import (
    ALL,
    LabelClassifier,
    gene_stat_correlation,
    library_size_stats,
    nearest_train_distance,
    novelty_stats,
    pooled_rf_auc,
    safe_discriminator_auc,
    zero_fraction_stats,
)
from ._utils import (
    align_genes,
    check_adata,
    check_counts,
    col_mean_var,
    get_labels,
    get_matrix,
    keep_torch_threads,
    log1p_cp10k,
    ordered_groups,
    to_dense,
)

#: Name of the group holding the average over groups in tables.
MEAN = "mean"

MetricFamily = Literal["g1", "fred", "g2", "stats", "label_agreement", "novelty"]
_FAMILIES: tuple[str, ...] = get_args(MetricFamily)
_NEEDS_TRAIN = ("label_agreement", "novelty")
_COLUMNS = ["group", "metric", "value", "protocol"]


@keep_torch_threads()
def evaluate(
    real: AnnData,
    generated: AnnData,
    groupby: str | None = "cell_type",
    *,
    train: AnnData | None = None,
    metrics: Sequence[MetricFamily] | None = None,
    generated_groupby: str | None = None,
    layer: str | None = None,
    generated_layer: str | None = None,
    n_top_genes: int | None = 2000,
    n_comps: int = 30,
    n_pcs_discriminator: int = 50,
    n_estimators: int = 1000,
    min_cells: int = 10,
    max_cells: int | None = 5000,
    dup_quantile: float = 0.01,
    seed: int = 0,
    n_jobs: int | None = None,
) -> pd.DataFrame:
    """Compare generated with real cells, per group and overall, with the protocols' metrics.

    Inputs are raw counts. Genes are matched by name (the shared genes are used, with a warning
    saying how many were dropped); CP10k normalisation is over the shared genes.

    Metric families (``metrics``) and the rows they add (``metric`` column, ``protocol`` column
    in parentheses):

    - ``"g1"`` (G1): ``w1``, ``w2`` (exact OT), ``mmd_linear``, ``mmd_rbf`` (mean over
      sigma in {0.01, 0.1, 1, 10, 100}) in the reference embedding: ``n_top_genes`` HVGs
      (``seurat_v3`` on the real counts), log1p(CP10k), ``n_comps`` PCs fit on ``real``.
    - ``"fred"`` (FReD): ``frechet`` in the same embedding.
    - ``"g2"`` (G2): ``scc`` / ``pcc`` of per-gene mean log1p(CP10k) over all shared genes;
      ``rf_auc``: random forest (``n_estimators`` trees, depth 5, balanced) on
      ``n_pcs_discriminator`` PCs of the pooled real and generated log1p(CP10k), held-out 25 %
      (``"all"`` only); ``knn_auc``: 5-NN on the log1p(CP10k) HVGs, held-out 25 %.
    - ``"stats"``: ``gene_var_pearson`` / ``gene_var_spearman`` (per-gene variances),
      ``zero_frac_pearson`` / ``zero_frac_mae`` (per-gene zero shares), ``libsize_ks``,
      ``libsize_w1_log``, ``libsize_median_ratio``.
    - ``"label_agreement"`` (conditional, needs ``train``): share of generated cells that a
      logistic regression trained on ``train`` assigns to their requested group.
    - ``"novelty"`` (needs ``train``): ``novelty_median_ratio``, ``near_duplicate_share``,
      ``nn_dist_generated``, ``nn_dist_test`` in the same recipe's PCA fit on ``train``; see
      :func:`~scgm_scvi.metrics.novelty`.

    Every group also gets ``n_real`` / ``n_generated`` rows (protocol ``counts``). Groups are
    evaluated when both sides have at least ``min_cells`` cells. Group ``"all"`` pools all cells
    (including groups present on one side only); group ``"mean"`` is the average over the
    evaluated groups (G1's headline numbers).

    Parameters
    ----------
    real
        Real cells with raw counts; in protocol G1 the held-out test cells. Not modified.
    generated
        Generated cells with counts. Not modified.
    groupby
        Label column of ``real.obs`` (and ``generated.obs``); ``None`` evaluates all cells as
        one group.
    train
        Real training cells with raw counts; needed by ``"label_agreement"`` and ``"novelty"``,
        which are included by default when it is given. Not modified.
    metrics
        Metric families to compute; default: all that the inputs allow.
    generated_groupby
        Label column of ``generated.obs`` if it differs from ``groupby``.
    layer, generated_layer
        Layers holding the counts of the real (``real``, ``train``) / generated cells; ``None``
        uses ``.X``.
    n_top_genes, n_comps
        HVGs and principal components of the reference embedding (protocol G1: 2000, 30).
    n_pcs_discriminator
        PCs of the random-forest discriminator (protocol G2: 50).
    n_estimators
        Trees of the random forest (protocol G2: 1000).
    min_cells
        Smallest group size (on both sides) evaluated per group.
    max_cells
        Subsampling cap (seeded) of the exact OT and the kernel MMD per comparison.
    dup_quantile
        Near-duplicate threshold of the novelty check.
    seed
        Seed of every random step (subsampling, PCA solvers, splits, forest).
    n_jobs
        Parallel jobs of the scikit-learn classifiers.

    Returns
    -------
    Tidy frame with columns ``group``, ``metric``, ``value``, ``protocol``.
    """
    families = _resolve_families(metrics, train, groupby)
    genes, X, L = _prepared(real, generated, train, layer, generated_layer)
    groups = _Groups(real, generated, groupby, generated_groupby, min_cells)
    rows = groups.count_rows()
    if {"g1", "fred", "g2"} & set(families):
        emb = fit_reference_embedding(
            X["real"], genes, n_top_genes=n_top_genes, n_comps=n_comps, seed=seed,
            lognorm=L["real"],
        )  # fmt: skip
        E = {"real": emb.real_coords, "generated": emb.transform_lognorm(L["generated"])}
        for g, mr, mg in groups.masks:
            er, eg = E["real"][mr], E["generated"][mg]
            if "g1" in families:
                rows += _g1_rows(g, er, eg, max_cells, seed)
            if "fred" in families:
                rows.append((g, "frechet", frechet_distance(er, eg), "FReD"))
        if "g2" in families:
            hvg_idx = genes.get_indexer(emb.hvg)
            rows += _g2_rows(groups, L, hvg_idx, n_pcs_discriminator, n_estimators, seed, n_jobs)
    if "stats" in families:
        rows += _stats_rows(groups, X, L)
    if "label_agreement" in families:
        rows += _label_rows(groups, train, groupby, X, L, genes, n_top_genes, seed)
    if "novelty" in families:
        rows += _novelty_family_rows(groups, X, L, genes, n_top_genes, n_comps, seed, dup_quantile)
    return groups.with_means(pd.DataFrame(rows, columns=_COLUMNS))


def summarize_runs(
    results: pd.DataFrame | Sequence[pd.DataFrame], by: Sequence[str] | None = None
) -> pd.DataFrame:
    """Mean and standard error of the mean over repeated runs (e.g. 3 generation seeds).

    Parameters
    ----------
    results
        Tidy frames from :func:`evaluate` (or one frame that stacks them).
    by
        Columns identifying a quantity; default: every column except ``value``, ``seed`` and
        ``run``.

    Returns
    -------
    Frame with the ``by`` columns and ``mean``, ``sem`` (NaN for a single run), ``n``.
    """
    df = results if isinstance(results, pd.DataFrame) else pd.concat(results, ignore_index=True)
    if "value" not in df:
        raise ValueError("Expected tidy frames with a `value` column, as returned by evaluate().")
    by = list(by) if by is not None else [c for c in df if c not in ("value", "seed", "run")]
    agg = df.groupby(by, sort=False, dropna=False)["value"].agg(["mean", "sem", "count"])
    return agg.rename(columns={"count": "n"}).reset_index()


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _prepared(real, generated, train, layer, generated_layer):
    """The shared genes, raw counts and log1p CP10k of every dataset (checked counts)."""
    check_adata(real, "real")
    check_adata(generated, "generated")
    datasets = {"real": real, "generated": generated}
    if train is not None:
        check_adata(train, "train")
        datasets["train"] = train
    genes = align_genes(datasets)
    layers = {"real": layer, "generated": generated_layer, "train": layer}
    X = {k: get_matrix(a, genes, layers[k], k) for k, a in datasets.items()}
    for k, mat in X.items():
        check_counts(mat, k)
    return genes, X, {k: log1p_cp10k(mat) for k, mat in X.items()}


class _Groups:
    """The groups of an evaluation: every group is reported, never silently dropped."""

    def __init__(self, real, generated, groupby, generated_groupby, min_cells):
        self.groupby = groupby
        self.n_real, self.n_generated = real.n_obs, generated.n_obs
        if groupby is not None:
            gen_key = generated_groupby or groupby
            self.lab_r = get_labels(real, groupby, "real")
            self.lab_g = get_labels(generated, gen_key, "generated")
            groups_r = ordered_groups(real, groupby, self.lab_r)
            groups_g = ordered_groups(generated, gen_key, self.lab_g)
        else:
            self.lab_r = np.full(real.n_obs, ALL)
            self.lab_g = np.full(generated.n_obs, ALL)
            groups_r, groups_g = [], []
        self.all = groups_r + [g for g in groups_g if g not in groups_r]
        self.evaluated = _check_groups(self.lab_r, self.lab_g, groups_r, groups_g, min_cells)
        #: (group, real mask, generated mask): all cells, then every evaluated group
        self.masks = [(ALL, np.ones(real.n_obs, bool), np.ones(generated.n_obs, bool))]
        self.masks += [(g, self.lab_r == g, self.lab_g == g) for g in self.evaluated]

    def count_rows(self) -> list[tuple[str, str, float, str]]:
        rows = []
        for g in [ALL, *self.all]:
            n_r = self.n_real if g == ALL else int((self.lab_r == g).sum())
            n_g = self.n_generated if g == ALL else int((self.lab_g == g).sum())
            rows += [(g, "n_real", float(n_r), "counts"), (g, "n_generated", float(n_g), "counts")]
        return rows

    def with_means(self, df: pd.DataFrame) -> pd.DataFrame:
        """``df`` plus the mean over the evaluated groups of every metric."""
        if not self.evaluated or self.groupby is None:
            return df
        per_group = df[df["group"].isin(self.evaluated) & (df["protocol"] != "counts")]
        means = per_group.groupby(["metric", "protocol"], sort=False)["value"].mean()
        mean_rows = pd.DataFrame(
            [(MEAN, m, v, p) for (m, p), v in means.items()], columns=_COLUMNS
        )
        return pd.concat([df, mean_rows], ignore_index=True)


def _g2_rows(groups, L, hvg_idx, n_pcs, n_estimators, seed, n_jobs):
    """Protocol G2: gene-mean correlations and the kNN AUC per group, the forest's overall."""
    rows = []
    H = {k: to_dense(L[k][:, hvg_idx]) for k in ("real", "generated")}
    for g, mr, mg in groups.masks:
        corr = gene_stat_correlation(
            col_mean_var(L["real"][mr])[0], col_mean_var(L["generated"][mg])[0]
        )
        rows += [(g, "scc", corr["spearman"], "G2"), (g, "pcc", corr["pearson"], "G2")]
        auc = safe_discriminator_auc(
            H["real"][mr], H["generated"][mg], "knn", seed=seed, n_jobs=n_jobs
        )
        rows.append((g, "knn_auc", auc, "G2"))
    rows.append((ALL, "rf_auc", pooled_rf_auc(L, n_pcs, n_estimators, seed, n_jobs), "G2"))
    return rows


def _stats_rows(groups, X, L):
    """Gene variances, zero fractions and library sizes of real against generated cells."""
    rows = []
    for g, mr, mg in groups.masks:
        var = gene_stat_correlation(
            col_mean_var(L["real"][mr])[1], col_mean_var(L["generated"][mg])[1]
        )
        zero = zero_fraction_stats(X["real"][mr], X["generated"][mg])
        lib = library_size_stats(X["real"][mr], X["generated"][mg])
        rows += [
            (g, "gene_var_pearson", var["pearson"], "stats"),
            (g, "gene_var_spearman", var["spearman"], "stats"),
            (g, "zero_frac_pearson", zero["pearson"], "stats"),
            (g, "zero_frac_mae", zero["mae"], "stats"),
            (g, "libsize_ks", lib["ks"], "stats"),
            (g, "libsize_w1_log", lib["w1_log"], "stats"),
            (g, "libsize_median_ratio", lib["median_ratio"], "stats"),
        ]
    return rows


def _label_rows(groups, train, groupby, X, L, genes, n_top_genes, seed):
    """The share of generated cells a classifier trained on real cells gives their label."""
    if groupby is None:
        raise ValueError("`label_agreement` needs labels: pass `groupby`.")
    lab_t = get_labels(train, groupby, "train")
    clf = LabelClassifier.fit(X["train"], L["train"], lab_t, genes, n_top_genes, seed=seed)
    unknown = sorted(set(groups.lab_g) - set(clf.classes))
    if unknown:
        warnings.warn(
            f"Generated groups absent from `train` can never be predicted: {unknown}.",
            UserWarning,
            stacklevel=3,
        )
    pred = clf.predict(L["generated"])
    return [
        (g, "label_agreement", float(np.mean(pred[mg] == groups.lab_g[mg])), "conditional")
        for g, _, mg in groups.masks
    ]


def _novelty_family_rows(groups, X, L, genes, n_top_genes, n_comps, seed, dup_quantile):
    """Nearest-training-cell distances of generated against held-out real cells."""
    # Fit on the training cells so that test and generated cells are both out-of-sample
    # (see `novelty`): the G1 embedding would favour the generated cells.
    emb_t = fit_reference_embedding(
        X["train"], genes, n_top_genes=n_top_genes, n_comps=n_comps, seed=seed,
        lognorm=L["train"],
    )  # fmt: skip
    d_test = nearest_train_distance(emb_t.real_coords, emb_t.transform_lognorm(L["real"]))
    d_gen = nearest_train_distance(emb_t.real_coords, emb_t.transform_lognorm(L["generated"]))
    rows = []
    for g, mr, mg in groups.masks:
        for k, v in novelty_stats(d_test[mr], d_gen[mg], dup_quantile).items():
            rows.append((g, k, v, "novelty"))
    return rows


def _resolve_families(metrics, train, groupby) -> list[str]:
    if metrics is None:
        fams = ["g1", "fred", "g2", "stats"]
        if train is not None:
            fams += ["novelty"] if groupby is None else list(_NEEDS_TRAIN)
        return fams
    if isinstance(metrics, str):
        metrics = [metrics]
    unknown = [m for m in metrics if m not in _FAMILIES]
    if unknown:
        raise ValueError(f"Unknown metric families {unknown}; choose from {list(_FAMILIES)}.")
    if train is None and (needs := [m for m in metrics if m in _NEEDS_TRAIN]):
        raise ValueError(f"{needs} need the real training cells: pass `train=`.")
    return list(dict.fromkeys(metrics))


def _check_groups(lab_r, lab_g, groups_r, groups_g, min_cells) -> list[str]:
    only_r = [g for g in groups_r if g not in groups_g]
    only_g = [g for g in groups_g if g not in groups_r]
    if only_r:
        warnings.warn(
            f"Groups present only in `real` (no generated cells): {only_r}. They get count rows "
            "only; generate cells for them to evaluate them.",
            UserWarning,
            stacklevel=3,
        )
    if only_g:
        warnings.warn(
            f"Groups present only in `generated` (no real cells): {only_g}. They get count rows "
            "only and are part of the pooled 'all' group.",
            UserWarning,
            stacklevel=3,
        )
    shared = [g for g in groups_r if g in groups_g]
    sizes = {g: (int((lab_r == g).sum()), int((lab_g == g).sum())) for g in shared}
    tiny = {g: s for g, s in sizes.items() if min(s) < min_cells}
    if tiny:
        warnings.warn(
            f"Groups with fewer than {min_cells} cells on one side are not evaluated per group "
            f"(n_real, n_generated): {tiny}. Lower `min_cells` to include them.",
            UserWarning,
            stacklevel=3,
        )
    return [g for g in shared if g not in tiny]


def _g1_rows(g, er, eg, max_cells, seed) -> list[tuple[str, str, float, str]]:
    return [
        (g, "w1", wasserstein(er, eg, p=1, max_cells=max_cells, seed=seed), "G1"),
        (g, "w2", wasserstein(er, eg, p=2, max_cells=max_cells, seed=seed), "G1"),
        (g, "mmd_linear", mmd_linear(er, eg), "G1"),
        (g, "mmd_rbf", mmd_rbf(er, eg, max_cells=max_cells, seed=seed), "G1"),
    ]
