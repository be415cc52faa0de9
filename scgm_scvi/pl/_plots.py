"""Plots comparing real with generated or edited cells (matplotlib; no ``plt.show()``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..metrics._edit import shared_means
from ..metrics._embedding import select_hvg
from ..metrics._realism import gene_stat_correlation, paired_lognorm
from ..metrics._utils import (
    align_genes,
    check_adata,
    check_counts,
    col_mean_var,
    get_labels,
    get_matrix,
    log1p_cp10k,
)

_SOURCE_COLORS = {"real": "#4C72B0", "generated": "#DD8452"}


def umap_real_vs_generated(
    real: AnnData,
    generated: AnnData,
    color: str | None = "cell_type",
    *,
    generated_color: str | None = None,
    layer: str | None = None,
    generated_layer: str | None = None,
    n_top_genes: int | None = 2000,
    n_comps: int = 30,
    n_neighbors: int = 15,
    seed: int = 0,
    point_size: float | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Joint UMAP of real and generated cells, coloured by source and by a label.

    On copies of the counts of the shared genes: ``normalize_total(1e4)``, ``log1p``,
    ``n_top_genes`` HVGs (``seurat_v3`` on the pooled counts), PCA, neighbours and UMAP
    (scanpy), all on the pooled cells, so that neither side defines the space. Points are drawn
    in a random (seeded) order so that neither side hides the other.

    Parameters
    ----------
    real, generated
        Cells with raw counts. Not modified.
    color
        Label column of ``real.obs`` (and ``generated.obs``) for the second panel; ``None``
        draws only the source panel.
    generated_color
        Label column of ``generated.obs`` if it differs from ``color``.
    layer, generated_layer
        Layers holding the counts of ``real`` / ``generated``; ``None`` uses ``.X``.
    n_top_genes, n_comps, n_neighbors
        HVGs, principal components and neighbours of the joint embedding.
    seed
        Seed of the PCA, UMAP and drawing order.
    point_size
        Marker area; default scales with the number of cells.
    figsize
        Figure size; default fits the number of panels.

    Returns
    -------
    The figure: one axes per panel (source, then ``color``).
    """
    check_adata(real, "real")
    check_adata(generated, "generated")
    genes = align_genes({"real": real, "generated": generated})
    Xr = get_matrix(real, genes, layer, "real")
    Xg = get_matrix(generated, genes, generated_layer, "generated")
    check_counts(Xr, "real")
    check_counts(Xg, "generated")
    source = np.r_[np.repeat("real", real.n_obs), np.repeat("generated", generated.n_obs)]
    labels = None
    if color is not None:
        labels = np.r_[
            get_labels(real, color, "real"),
            get_labels(generated, generated_color or color, "generated"),
        ]
    counts = _vstack(Xr, Xg)
    hvg = np.flatnonzero(select_hvg(counts, genes, n_top_genes))
    # Library sizes over all shared genes, then restricted to the HVGs.
    joint = AnnData(
        log1p_cp10k(counts)[:, hvg],
        obs=pd.DataFrame({"source": source}, index=np.arange(len(source)).astype(str)),
        var=pd.DataFrame(index=pd.Index(genes[hvg], dtype=str)),
    )
    n_pcs = max(2, min(n_comps, min(joint.shape) - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanpy/numba chatter
        sc.pp.pca(joint, n_comps=n_pcs, random_state=seed)
        sc.pp.neighbors(joint, n_neighbors=min(n_neighbors, joint.n_obs - 1), random_state=seed)
        sc.tl.umap(joint, random_state=seed)
    xy = joint.obsm["X_umap"]

    n_panels = 1 if labels is None else 2
    fig, axes = plt.subplots(
        1, n_panels, figsize=figsize or (5.5 * n_panels + 1.5, 4.5), squeeze=False
    )
    size = point_size or float(np.clip(3000 / len(source), 2, 30))
    order = np.random.default_rng(seed).permutation(len(source))
    _scatter_categories(axes[0, 0], xy, source, order, size, _SOURCE_COLORS)
    axes[0, 0].set_title("source")
    if labels is not None:
        _scatter_categories(axes[0, 1], xy, labels, order, size, None)
        axes[0, 1].set_title(color)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP1")
        ax.set_ylabel("UMAP2")
    fig.tight_layout()
    return fig


def gene_mean_scatter(
    real: AnnData,
    generated: AnnData,
    *,
    layer: str | None = None,
    generated_layer: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Per-gene mean log1p(CP10k) of generated vs real cells, with the Pearson r in the title.

    Parameters
    ----------
    real, generated
        Cells with raw counts (genes matched by name). Not modified.
    layer, generated_layer
        Layers holding the counts; ``None`` uses ``.X``.
    ax
        Axes to draw into; a new figure is made otherwise.

    Returns
    -------
    The figure holding the axes.
    """
    Lr, Lg = paired_lognorm(real, generated, layer, generated_layer)
    mr, mg = col_mean_var(Lr)[0], col_mean_var(Lg)[0]
    corr = gene_stat_correlation(mr, mg)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(mr, mg, s=6, alpha=0.6, color="#4C72B0", linewidths=0)
    hi = float(max(mr.max(), mg.max(), 1e-3)) * 1.05
    ax.plot([0, hi], [0, hi], color="0.5", lw=0.8, ls="--")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("real: mean log1p(CP10k)")
    ax.set_ylabel("generated: mean log1p(CP10k)")
    ax.set_title(f"Pearson r = {corr['pearson']:.3f}, Spearman = {corr['spearman']:.3f}")
    return ax.figure


def metric_bars(
    df: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    *,
    groups: Sequence[str] | None = None,
    hue: str | None = None,
    ncols: int = 3,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Bar chart per metric with one bar per group, from a tidy :func:`evaluate` table.

    Also accepts the output of :func:`~scgm_scvi.metrics.summarize_runs` (columns ``mean`` and
    ``sem``), drawing the s.e.m. as error bars.

    Parameters
    ----------
    df
        Tidy frame with columns ``group``, ``metric`` and ``value`` (or ``mean``/``sem``).
    metrics
        Metrics to draw, one panel each; default: all except the ``n_real`` / ``n_generated``
        counts.
    groups
        Groups to draw, in this order; default: all in the table's order.
    hue
        Optional column (e.g. ``"model"``) whose values become side-by-side bars in each group.
    ncols
        Panels per row.
    figsize
        Figure size; default scales with the panels.

    Returns
    -------
    The figure, with one axes per metric.
    """
    value_col = "mean" if "mean" in df and "value" not in df else "value"
    missing = [c for c in ("group", "metric", value_col) if c not in df]
    if missing:
        raise ValueError(
            f"`df` lacks the columns {missing}; pass the table returned by evaluate()."
        )
    if hue is not None and hue not in df:
        raise ValueError(f"`hue` column {hue!r} is not in `df`; columns: {list(df.columns)}.")
    if metrics is None:
        metrics = [m for m in pd.unique(df["metric"]) if m not in ("n_real", "n_generated")]
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in set(df["metric"])]
    if unknown or not metrics:
        raise ValueError(f"Metrics {unknown or metrics} are not in the table.")
    if groups is None:
        # Groups without any value for these metrics (e.g. too small to evaluate) are skipped.
        shown = df[df["metric"].isin(metrics) & df[value_col].notna()]
        groups = list(pd.unique(shown["group"]))
    groups = list(groups)
    hues = list(pd.unique(df[hue])) if hue is not None else [None]

    ncols = max(1, min(ncols, len(metrics)))
    nrows = int(np.ceil(len(metrics) / ncols))
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=figsize or (4.2 * ncols, 3.4 * nrows),
        squeeze=False,
    )
    width = 0.8 / len(hues)
    x = np.arange(len(groups))
    for ax, metric in zip(axes.ravel(), metrics, strict=False):
        sub = df[df["metric"] == metric]
        for k, h in enumerate(hues):
            part = sub if h is None else sub[sub[hue] == h]
            part = part.groupby("group", sort=False)
            vals = part[value_col].mean().reindex(groups)
            err = part["sem"].mean().reindex(groups) if "sem" in sub else None
            ax.bar(
                x + (k - (len(hues) - 1) / 2) * width,
                vals.to_numpy(dtype=float),
                width,
                yerr=None if err is None else err.to_numpy(dtype=float),
                label=None if h is None else str(h),
                capsize=2,
            )
        ax.set_title(metric)
        ax.set_xticks(x)
        ax.set_xticklabels(groups, rotation=45, ha="right", fontsize=8)
    for ax in axes.ravel()[len(metrics) :]:
        fig.delaxes(ax)
    if hue is not None:
        axes.ravel()[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def edit_plot(
    control: AnnData,
    edited: AnnData,
    real_target: AnnData,
    genes: Sequence[str],
    *,
    layer: str | None = None,
    edited_layer: str | None = None,
    figsize: tuple[float, float] = (11.0, 4.2),
) -> Figure:
    """Mean expression of control, edited and real target cells on selected genes.

    Left: per-gene mean log1p(CP10k) of the three datasets, genes sorted by the real change
    (target minus control). Right: predicted vs real change per gene, with Pearson r (the
    Pearson-delta metric) in the title. Means are normalised over the genes shared by the three
    datasets.

    Parameters
    ----------
    control
        Real control cells (raw counts), the input of the edit. Not modified.
    edited
        Edited cells (counts). Not modified.
    real_target
        Real cells of the target condition (raw counts). Not modified.
    genes
        Genes to show, e.g. ``evaluate_edit(...).attrs["degs"]`` or
        :func:`~scgm_scvi.metrics.top_degs`.
    layer, edited_layer
        Layers holding the counts of the real datasets / of ``edited``.
    figsize
        Figure size.

    Returns
    -------
    The figure, with two axes.
    """
    means = shared_means(
        {
            "control": (control, layer),
            "edited": (edited, edited_layer),
            "real": (real_target, layer),
        },
        genes,
    )
    genes = [str(g) for g in genes]
    d_real = means["real"] - means["control"]
    d_pred = means["edited"] - means["control"]
    order = np.argsort(-d_real, kind="stable")
    x = np.arange(len(genes))
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=figsize, gridspec_kw={"width_ratios": [2, 1]})
    for key, label, style in (
        ("control", "control", dict(color="0.5", marker="o")),
        ("edited", "edited", dict(color="#DD8452", marker="s")),
        ("real", "real target", dict(color="#4C72B0", marker="^")),
    ):
        ax0.plot(x, means[key][order], lw=0.8, ms=3.5, label=label, **style)
    ax0.set_ylabel("mean log1p(CP10k)")
    ax0.set_xlabel("genes (sorted by real change)")
    if len(genes) <= 40:
        ax0.set_xticks(x)
        ax0.set_xticklabels(np.asarray(genes)[order], rotation=90, fontsize=7)
    ax0.legend(fontsize=8)
    r = gene_stat_correlation(d_pred, d_real)["pearson"] if len(genes) > 1 else float("nan")
    ax1.scatter(d_real, d_pred, s=10, color="#DD8452", alpha=0.8, linewidths=0)
    lo = float(min(d_real.min(), d_pred.min(), 0.0))
    hi = float(max(d_real.max(), d_pred.max(), 0.0))
    ax1.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--")
    ax1.axhline(0, color="0.8", lw=0.6)
    ax1.axvline(0, color="0.8", lw=0.6)
    ax1.set_xlabel("real change (target - control)")
    ax1.set_ylabel("predicted change (edited - control)")
    ax1.set_title(f"Pearson delta = {r:.3f}")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _vstack(a, b):
    if sp.issparse(a) or sp.issparse(b):
        return sp.vstack([sp.csr_matrix(a), sp.csr_matrix(b)], format="csr")
    return np.vstack([a, b])


def _scatter_categories(ax, xy, labels, order, size, palette) -> None:
    cats = list(pd.unique(labels))
    if palette is None:
        cmap = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
        palette = {c: cmap(i % cmap.N) for i, c in enumerate(cats)}
    colors = np.array([palette[c] for c in labels], dtype=object)[order]
    ax.scatter(xy[order, 0], xy[order, 1], c=list(colors), s=size, linewidths=0, alpha=0.8)
    handles = [
        plt.Line2D([], [], ls="", marker="o", ms=5, color=palette[c], label=str(c)) for c in cats
    ]
    ax.legend(
        handles=handles,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        frameon=False,
        fontsize=7 if len(cats) > 10 else 8,
    )
