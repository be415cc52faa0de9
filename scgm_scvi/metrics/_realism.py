"""Realism of generated cells: discriminators, summary statistics, label agreement, novelty."""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData
from scipy import stats
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ._embedding import ReferenceEmbedding, fit_reference_embedding, select_hvg
from ._utils import (
    Matrix,
    align_genes,
    as_points,
    check_adata,
    check_counts,
    col_mean_var,
    get_labels,
    get_matrix,
    keep_torch_threads,
    library_size,
    log1p_cp10k,
    ordered_groups,
    to_dense,
    zero_fraction,
)

#: Name of the group that pools all cells in tables.
ALL = "all"


# --------------------------------------------------------------------------------------------
# Discriminators (protocol G2)
# --------------------------------------------------------------------------------------------


@keep_torch_threads()
def discriminator_auc(
    real_X: np.ndarray,
    gen_X: np.ndarray,
    method: Literal["rf", "knn"] = "rf",
    *,
    n_estimators: int = 1000,
    max_depth: int = 5,
    n_neighbors: int = 5,
    test_size: float = 0.25,
    cv: int | None = None,
    seed: int = 0,
    n_jobs: int | None = None,
) -> float:
    """ROC-AUC of a classifier that tells real from generated cells (0.5: indistinguishable).

    Protocol G2: a random forest (``n_estimators=1000``, ``max_depth=5``,
    ``class_weight="balanced"``) on 50 PCs, and a kNN classifier (``k=5``) on log-normalised
    genes, each scored on a held-out 25 % of the cells. The features are the caller's choice;
    :func:`~scgm_scvi.metrics.evaluate` builds them as the protocol says.

    Parameters
    ----------
    real_X, gen_X
        Feature matrices (cells x features) of the real and the generated cells.
    method
        ``"rf"`` (random forest) or ``"knn"`` (k-nearest neighbours, uniform weights).
    n_estimators, max_depth
        Random-forest size (protocol: 1000 trees of depth 5).
    n_neighbors
        ``k`` of the kNN classifier (protocol: 5).
    test_size
        Held-out share, stratified by class, when ``cv`` is ``None`` (protocol: 0.25).
    cv
        If given, ``cv``-fold stratified cross-validation instead: the AUC of the pooled
        out-of-fold scores (less noisy for small groups; not the protocol).
    seed
        Seed of the split and of the forest.
    n_jobs
        Parallel jobs for the forest / neighbour search (scikit-learn convention).

    Returns
    -------
    The ROC-AUC for scoring generated cells as generated. Values below 0.5 are kept.
    """
    real_X = as_points(real_X, "real_X")
    gen_X = as_points(gen_X, "gen_X")
    if real_X.shape[1] != gen_X.shape[1]:
        raise ValueError(
            f"`real_X` and `gen_X` have different numbers of features ({real_X.shape[1]} vs "
            f"{gen_X.shape[1]}); build both in the same feature space."
        )
    if method not in ("rf", "knn"):
        raise ValueError(f"`method` must be 'rf' or 'knn', got {method!r}.")
    X = np.vstack([real_X, gen_X])
    y = np.r_[np.zeros(len(real_X), dtype=int), np.ones(len(gen_X), dtype=int)]

    def make_clf():
        if method == "rf":
            return RandomForestClassifier(
                n_estimators=n_estimators,
                max_depth=max_depth,
                class_weight="balanced",
                random_state=seed,
                n_jobs=n_jobs,
            )
        return KNeighborsClassifier(n_neighbors=n_neighbors, n_jobs=n_jobs)

    def fit_predict(train_idx, test_idx):
        if method == "knn" and len(train_idx) < n_neighbors:
            raise ValueError(
                f"Only {len(train_idx)} training cells for a kNN with k={n_neighbors}; "
                "use more cells or a smaller `n_neighbors`."
            )
        clf = make_clf().fit(X[train_idx], y[train_idx])
        return clf.predict_proba(X[test_idx])[:, 1]

    n_min = min(len(real_X), len(gen_X))
    if cv is None:
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"`test_size` must be in (0, 1), got {test_size}.")
        if n_min * test_size < 1 or n_min * (1 - test_size) < 1:
            raise ValueError(
                f"Too few cells ({len(real_X)} real, {len(gen_X)} generated) for a held-out "
                "split; pass more cells."
            )
        train_idx, test_idx = train_test_split(
            np.arange(len(y)), test_size=test_size, stratify=y, random_state=seed
        )
        return float(roc_auc_score(y[test_idx], fit_predict(train_idx, test_idx)))
    if cv < 2 or n_min < cv:
        raise ValueError(f"`cv` must be >= 2 and <= the smaller class size ({n_min}).")
    scores = np.empty(len(y))
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    for train_idx, test_idx in folds.split(X, y):
        scores[test_idx] = fit_predict(train_idx, test_idx)
    return float(roc_auc_score(y, scores))


# --------------------------------------------------------------------------------------------
# Summary statistics in gene space
# --------------------------------------------------------------------------------------------


def gene_mean_correlation(
    real: AnnData,
    generated: AnnData,
    *,
    layer: str | None = None,
    generated_layer: str | None = None,
) -> dict[str, float]:
    """Spearman (SCC) and Pearson (PCC) correlation of per-gene mean log1p(CP10k) (protocol G2).

    Genes are aligned by name; all shared genes are used (CP10k over the shared genes).

    Parameters
    ----------
    real, generated
        Cells with raw counts. Not modified.
    layer, generated_layer
        Layers holding the counts of ``real`` / ``generated``; ``None`` uses ``.X``.

    Returns
    -------
    ``{"spearman": ..., "pearson": ...}``.
    """
    Lr, Lg = paired_lognorm(real, generated, layer, generated_layer)
    return gene_stat_correlation(col_mean_var(Lr)[0], col_mean_var(Lg)[0])


def gene_variance_correlation(
    real: AnnData,
    generated: AnnData,
    *,
    layer: str | None = None,
    generated_layer: str | None = None,
) -> dict[str, float]:
    """Spearman and Pearson correlation of per-gene variances of log1p(CP10k).

    Parameters
    ----------
    real, generated
        Cells with raw counts. Not modified.
    layer, generated_layer
        Layers holding the counts; ``None`` uses ``.X``.

    Returns
    -------
    ``{"spearman": ..., "pearson": ...}``.
    """
    Lr, Lg = paired_lognorm(real, generated, layer, generated_layer)
    return gene_stat_correlation(col_mean_var(Lr)[1], col_mean_var(Lg)[1])


def zero_fraction_comparison(
    real: AnnData,
    generated: AnnData,
    *,
    layer: str | None = None,
    generated_layer: str | None = None,
) -> dict[str, float]:
    """Compare the per-gene share of zero counts of real and generated cells.

    Parameters
    ----------
    real, generated
        Cells with raw counts. Not modified.
    layer, generated_layer
        Layers holding the counts; ``None`` uses ``.X``.

    Returns
    -------
    ``pearson``: correlation of the per-gene zero shares; ``mae``: their mean absolute
    difference; ``real`` / ``generated``: overall share of zero entries.
    """
    Xr, Xg = _paired_counts(real, generated, layer, generated_layer)
    return zero_fraction_stats(Xr, Xg)


def library_size_comparison(
    real: AnnData,
    generated: AnnData,
    *,
    layer: str | None = None,
    generated_layer: str | None = None,
) -> dict[str, float]:
    """Compare the distributions of library sizes (total counts per cell, shared genes).

    Parameters
    ----------
    real, generated
        Cells with raw counts. Not modified.
    layer, generated_layer
        Layers holding the counts; ``None`` uses ``.X``.

    Returns
    -------
    ``ks``: two-sample Kolmogorov-Smirnov statistic; ``w1_log``: Wasserstein-1 distance between
    the ``log1p`` library sizes; ``median_ratio``: generated over real median library size.
    """
    Xr, Xg = _paired_counts(real, generated, layer, generated_layer)
    return library_size_stats(Xr, Xg)


def gene_stat_correlation(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Spearman and Pearson correlation of two per-gene statistics (NaN when constant)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"spearman": float("nan"), "pearson": float("nan")}
    return {
        "spearman": float(stats.spearmanr(a, b).statistic),
        "pearson": float(stats.pearsonr(a, b).statistic),
    }


def zero_fraction_stats(Xr: Matrix, Xg: Matrix) -> dict[str, float]:
    """Array-level core of :func:`zero_fraction_comparison`."""
    zr, zg = zero_fraction(Xr), zero_fraction(Xg)
    return {
        "pearson": gene_stat_correlation(zr, zg)["pearson"],
        "mae": float(np.abs(zr - zg).mean()),
        "real": float(zr.mean()),
        "generated": float(zg.mean()),
    }


def library_size_stats(Xr: Matrix, Xg: Matrix) -> dict[str, float]:
    """Array-level core of :func:`library_size_comparison`."""
    lr, lg = library_size(Xr), library_size(Xg)
    med_r = np.median(lr)
    return {
        "ks": float(stats.ks_2samp(lr, lg).statistic),
        "w1_log": float(stats.wasserstein_distance(np.log1p(lr), np.log1p(lg))),
        "median_ratio": float(np.median(lg) / med_r) if med_r > 0 else float("nan"),
    }


# --------------------------------------------------------------------------------------------
# Conditional fidelity
# --------------------------------------------------------------------------------------------


@keep_torch_threads()
def label_agreement(
    real_train: AnnData,
    generated: AnnData,
    labels_key: str,
    *,
    generated_labels_key: str | None = None,
    n_top_genes: int | None = 2000,
    C: float = 0.1,
    layer: str | None = None,
    generated_layer: str | None = None,
    seed: int = 0,
) -> pd.Series:
    """Share of generated cells that a classifier of real cells assigns to the requested label.

    A multinomial logistic regression (L2, inverse strength ``C``) is trained on the real
    training cells: log1p(CP10k) of ``n_top_genes`` HVGs (``seurat_v3`` on the training counts),
    standardised per gene. It labels the generated cells; the score is the share whose
    prediction equals the label they were generated for. Chance level is about
    ``sum_k p_k q_k`` for predicted / requested label shares ``p`` and ``q``.

    Parameters
    ----------
    real_train
        Real training cells with raw counts and labels. Not modified.
    generated
        Generated cells with raw counts and their requested labels. Not modified.
    labels_key
        Column of ``real_train.obs`` (and of ``generated.obs``) with the labels.
    generated_labels_key
        Column of ``generated.obs`` if different from ``labels_key``.
    n_top_genes
        Number of HVGs used as features; ``None`` uses all shared genes.
    C
        Inverse L2 regularisation strength of the logistic regression.
    layer, generated_layer
        Layers holding the counts; ``None`` uses ``.X``.
    seed
        Random state of the classifier.

    Returns
    -------
    Series named ``"label_agreement"``, indexed by ``"all"`` followed by each requested label.
    """
    check_adata(real_train, "real_train")
    check_adata(generated, "generated")
    genes = align_genes({"real_train": real_train, "generated": generated})
    Xt = get_matrix(real_train, genes, layer, "real_train")
    Xg = get_matrix(generated, genes, generated_layer, "generated")
    check_counts(Xt, "real_train")
    check_counts(Xg, "generated")
    y_train = get_labels(real_train, labels_key, "real_train")
    gen_key = generated_labels_key or labels_key
    y_gen = get_labels(generated, gen_key, "generated")
    clf = LabelClassifier.fit(Xt, log1p_cp10k(Xt), y_train, genes, n_top_genes, C, seed)
    pred = clf.predict(log1p_cp10k(Xg))
    groups = ordered_groups(generated, gen_key, y_gen)
    values = {ALL: float(np.mean(pred == y_gen))}
    for g in groups:
        mask = y_gen == g
        values[g] = float(np.mean(pred[mask] == g))
    return pd.Series(values, name="label_agreement")


class LabelClassifier:
    """Logistic regression on standardised log1p(CP10k) HVGs, fit on real training cells."""

    def __init__(self, hvg_idx: np.ndarray, model, classes: np.ndarray) -> None:
        self.hvg_idx = hvg_idx
        self.model = model
        self.classes = classes

    @classmethod
    def fit(
        cls,
        counts: Matrix,
        lognorm: Matrix,
        labels: np.ndarray,
        genes: pd.Index,
        n_top_genes: int | None = 2000,
        C: float = 0.1,
        seed: int = 0,
    ) -> LabelClassifier:
        """Select HVGs on ``counts`` and fit the classifier on ``lognorm``."""
        classes = np.unique(labels)
        if classes.size < 2:
            raise ValueError("The real training cells need at least 2 distinct labels.")
        hvg_idx = np.flatnonzero(select_hvg(counts, genes, n_top_genes))
        model = make_pipeline(
            StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed)
        )
        model.fit(to_dense(lognorm[:, hvg_idx]), labels)
        return cls(hvg_idx, model, classes)

    def predict(self, lognorm: Matrix) -> np.ndarray:
        """Predicted labels of cells given as log1p(CP10k) over the same genes."""
        return self.model.predict(to_dense(lognorm[:, self.hvg_idx])).astype(str)


# --------------------------------------------------------------------------------------------
# Novelty (memorisation check)
# --------------------------------------------------------------------------------------------


@keep_torch_threads()
def novelty(
    train: AnnData,
    test: AnnData,
    generated: AnnData,
    *,
    groupby: str | None = None,
    generated_groupby: str | None = None,
    embedding: ReferenceEmbedding | None = None,
    n_top_genes: int | None = 2000,
    n_comps: int = 30,
    dup_quantile: float = 0.01,
    layer: str | None = None,
    generated_layer: str | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Do generated cells sit closer to the training cells than unseen real cells do?

    In a G1-style embedding (``n_top_genes`` HVGs, log1p(CP10k), ``n_comps`` PCs) each generated
    cell and each held-out test cell gets the Euclidean distance to its nearest *training* cell
    (any label). Reported per group and for ``"all"`` cells:

    - ``nn_dist_generated`` / ``nn_dist_test``: median of those distances;
    - ``novelty_median_ratio``: their ratio; a generator that does not copy its training cells
      reaches about 1, memorisation gives values well below 1;
    - ``near_duplicate_share``: share of generated cells closer to a training cell than the
      ``dup_quantile`` quantile of the test cells' distances (computed within the same group).
      Held-out real cells score ``dup_quantile`` by construction (1 % by default), so values
      well above it flag near-copies.

    The embedding is fit on the *training* cells, not on the test cells as in G1: a PCA fit on
    the test cells places them in-sample and the generated cells out-of-sample, which inflates
    the test cells' distances. On PBMC3K (60/20/20 random split, 30 PCs) a fresh real sample
    then scores a median ratio of 0.69 and 33 % "near-duplicates"; fit on the training cells it
    scores 0.98 and 1.3 %.

    Parameters
    ----------
    train, test, generated
        Raw counts of the training cells, the held-out test cells and the generated cells. Not
        modified.
    groupby, generated_groupby
        Label column of ``test`` (and of ``generated`` if named differently); ``None`` only
        reports ``"all"``.
    embedding
        A fitted :class:`ReferenceEmbedding`; default: fit on ``train`` (see above). Pass one
        fit on cells that are neither test nor generated cells.
    n_top_genes, n_comps
        Settings of the default embedding.
    dup_quantile
        Quantile of the test cells' distances used as near-duplicate threshold.
    layer, generated_layer
        Layers holding the counts of the real (train and test) and generated cells.
    seed
        Random state of the PCA.

    Returns
    -------
    Tidy frame with columns ``group``, ``metric``, ``value``.
    """
    if not 0.0 <= dup_quantile < 1.0:
        raise ValueError(f"`dup_quantile` must be in [0, 1), got {dup_quantile}.")
    for name, a in (("train", train), ("test", test), ("generated", generated)):
        check_adata(a, name)
    if embedding is None:
        genes = align_genes({"test": test, "generated": generated, "train": train})
    else:
        genes = embedding.genes  # get_matrix raises if a dataset lacks some of them
    X = {
        "test": get_matrix(test, genes, layer, "test"),
        "generated": get_matrix(generated, genes, generated_layer, "generated"),
        "train": get_matrix(train, genes, layer, "train"),
    }
    for name, mat in X.items():
        check_counts(mat, name)
    if embedding is None:
        embedding = fit_reference_embedding(
            X["train"], genes, n_top_genes=n_top_genes, n_comps=n_comps, seed=seed
        )
    emb = {k: embedding.transform_counts(v) for k, v in X.items()}
    d_test = nearest_train_distance(emb["train"], emb["test"])
    d_gen = nearest_train_distance(emb["train"], emb["generated"])
    rows = _novelty_rows(ALL, d_test, d_gen, dup_quantile)
    if groupby is not None:
        lab_test = get_labels(test, groupby, "test")
        lab_gen = get_labels(generated, generated_groupby or groupby, "generated")
        for g in ordered_groups(test, groupby, lab_test):
            if (lab_gen == g).any():
                rows += _novelty_rows(g, d_test[lab_test == g], d_gen[lab_gen == g], dup_quantile)
    return pd.DataFrame(rows, columns=["group", "metric", "value"])


def nearest_train_distance(train_emb: np.ndarray, query_emb: np.ndarray) -> np.ndarray:
    """Euclidean distance from each query point to its nearest training point."""
    nn = NearestNeighbors(n_neighbors=1).fit(train_emb)
    return nn.kneighbors(query_emb, return_distance=True)[0][:, 0]


def novelty_stats(
    d_test: np.ndarray, d_gen: np.ndarray, dup_quantile: float = 0.01
) -> dict[str, float]:
    """Novelty statistics from nearest-training-cell distances (see :func:`novelty`)."""
    med_test, med_gen = float(np.median(d_test)), float(np.median(d_gen))
    if med_test == 0.0:
        warnings.warn(
            "The median test cell has an exact copy among the training cells; check that the "
            "train/test split does not share cells.",
            UserWarning,
            stacklevel=2,
        )
    threshold = float(np.quantile(d_test, dup_quantile))
    return {
        "nn_dist_generated": med_gen,
        "nn_dist_test": med_test,
        "novelty_median_ratio": med_gen / med_test if med_test > 0 else float("nan"),
        "near_duplicate_share": float(np.mean(d_gen <= threshold)),
    }


def _novelty_rows(group, d_test, d_gen, dup_quantile) -> list[tuple[str, str, float]]:
    return [(group, k, v) for k, v in novelty_stats(d_test, d_gen, dup_quantile).items()]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _paired_counts(real, generated, layer, generated_layer) -> tuple[Matrix, Matrix]:
    check_adata(real, "real")
    check_adata(generated, "generated")
    genes = align_genes({"real": real, "generated": generated})
    Xr = get_matrix(real, genes, layer, "real")
    Xg = get_matrix(generated, genes, generated_layer, "generated")
    check_counts(Xr, "real")
    check_counts(Xg, "generated")
    return Xr, Xg


def paired_lognorm(real, generated, layer, generated_layer) -> tuple[Matrix, Matrix]:
    Xr, Xg = _paired_counts(real, generated, layer, generated_layer)
    return log1p_cp10k(Xr), log1p_cp10k(Xg)


def safe_discriminator_auc(xr, xg, method, **kwargs) -> float:
    """Discriminator AUC, or NaN (with a warning) when a group is too small to split."""
    try:
        return discriminator_auc(xr, xg, method, **kwargs)
    except ValueError as err:
        warnings.warn(f"Discriminator AUC skipped: {err}", UserWarning, stacklevel=3)
        return float("nan")


def pooled_rf_auc(L, n_pcs, n_estimators, seed, n_jobs) -> float:
    """Protocol G2's forest: PCA of the pooled log1p(CP10k) cells ``L["real"]`` and
    ``L["generated"]``, then the held-out AUC."""
    if sp.issparse(L["real"]) or sp.issparse(L["generated"]):
        pooled = sp.vstack([sp.csr_matrix(L["real"]), sp.csr_matrix(L["generated"])], "csr")
    else:
        pooled = np.vstack([L["real"], L["generated"]])
    n_pcs = min(n_pcs, min(pooled.shape) - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pcs = sc.pp.pca(pooled, n_comps=n_pcs, svd_solver="arpack", random_state=seed)
    n_r = L["real"].shape[0]
    return safe_discriminator_auc(
        pcs[:n_r], pcs[n_r:], "rf", n_estimators=n_estimators, seed=seed, n_jobs=n_jobs
    )
