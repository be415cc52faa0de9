"""Plots of real vs generated or edited cells, ending as scanpy's do (``show``, ``save``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

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
    show: bool | None = None,
    save: str | Path | bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Figure | list[Axes] | None:
    """Joint UMAP of real and generated cells, coloured by source and by a label.

    On copies of the counts of the shared genes: ``normalize_total(1e4)``, ``log1p``,
    ``n_top_genes`` HVGs (``seurat_v3`` on the pooled counts), PCA, neighbours and UMAP
    (scanpy), all on the pooled cells, so that neither side defines the space. Drawn with
    :func:`scanpy.pl.embedding` in a random (seeded) order of cells, so that neither side hides
    the other; the label keeps ``real``'s colours (``real.uns[f"{color}_colors"]``) when it has
    them.

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
    show
        Show the figure (``plt.show()``) and return ``None``; default
        ``scanpy.settings.autoshow`` (``True``).
    save
        Write the figure: a file name with its format's suffix (``"umap.png"``), or ``True`` for
        ``{scanpy.settings.figdir}/<function name>.{scanpy.settings.file_format_figs}``.
    return_fig
        Return the figure (not shown).
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (e.g. ``legend_loc``, ``wspace``, ``palette``).

    Returns
    -------
    With ``return_fig``, the figure; otherwise, when not shown, the axes (source, then
    ``color``).
    """
    check_adata(real, "real")
    check_adata(generated, "generated")
    genes = align_genes({"real": real, "generated": generated})
    Xr = get_matrix(real, genes, layer, "real")
    Xg = get_matrix(generated, genes, generated_layer, "generated")
    check_counts(Xr, "real")
    check_counts(Xg, "generated")
    source = np.r_[np.repeat("real", real.n_obs), np.repeat("generated", generated.n_obs)]
    obs = pd.DataFrame(
        {"source": pd.Categorical(source, categories=list(_SOURCE_COLORS))},
        index=np.arange(len(source)).astype(str),
    )
    panels = ["source"]
    uns = {"source_colors": list(_SOURCE_COLORS.values())}
    if color is not None:
        labels = np.r_[
            get_labels(real, color, "real"),
            get_labels(generated, generated_color or color, "generated"),
        ]
        categories = _label_categories(real, color, labels)
        obs[color] = pd.Categorical(labels, categories=categories)
        real_colors = _own_colors(real, color, categories)
        if real_colors is not None:
            uns[f"{color}_colors"] = real_colors
        panels.append(color)
    counts = _vstack(Xr, Xg)
    hvg = np.flatnonzero(select_hvg(counts, genes, n_top_genes))
    # Library sizes over all shared genes, then restricted to the HVGs.
    joint = AnnData(
        log1p_cp10k(counts)[:, hvg],
        obs=obs,
        var=pd.DataFrame(index=pd.Index(genes[hvg], dtype=str)),
        uns=uns,
    )
    n_pcs = max(2, min(n_comps, min(joint.shape) - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanpy/numba chatter
        sc.pp.pca(joint, n_comps=n_pcs, random_state=seed)
        sc.pp.neighbors(joint, n_neighbors=min(n_neighbors, joint.n_obs - 1), random_state=seed)
        sc.tl.umap(joint, random_state=seed)
    # scanpy draws categories in obs order: a seeded shuffle keeps either side from hiding
    joint = joint[np.random.default_rng(seed).permutation(joint.n_obs)]
    kwargs.setdefault("size", point_size or float(np.clip(12000 / joint.n_obs, 2, 120)))
    kwargs.setdefault(
        "wspace", 0.55 if any(len(str(c)) > 12 for c in obs[panels[-1]].cat.categories) else 0.35
    )
    fig = sc.pl.embedding(
        joint, basis="umap", color=panels, show=False, return_fig=True, frameon=False, **kwargs
    )
    return _finish(fig, "umap_real_vs_generated", show, save, return_fig)


def gene_mean_scatter(
    real: AnnData,
    generated: AnnData,
    *,
    layer: str | None = None,
    generated_layer: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes | None:
    """Per-gene mean log1p(CP10k) of generated vs real cells, with the Pearson r in the title.

    Parameters
    ----------
    real, generated
        Cells with raw counts (genes matched by name). Not modified.
    layer, generated_layer
        Layers holding the counts; ``None`` uses ``.X``.
    ax
        Axes to draw into; a new figure is made otherwise.
    show
        Show the figure (``plt.show()``) and return ``None``; default
        ``scanpy.settings.autoshow`` (``True``).
    save
        Write the figure: a file name with its format's suffix (``"umap.png"``), or ``True`` for
        ``{scanpy.settings.figdir}/<function name>.{scanpy.settings.file_format_figs}``.

    Returns
    -------
    The axes, when not shown.
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
    return _finish(ax, "gene_mean_scatter", show, save, False)


def metric_bars(
    df: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    *,
    groups: Sequence[str] | None = None,
    hue: str | None = None,
    ncols: int = 3,
    figsize: tuple[float, float] | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
    return_fig: bool = False,
) -> Figure | list[Axes] | None:
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
    show
        Show the figure (``plt.show()``) and return ``None``; default
        ``scanpy.settings.autoshow`` (``True``).
    save
        Write the figure: a file name with its format's suffix (``"umap.png"``), or ``True`` for
        ``{scanpy.settings.figdir}/<function name>.{scanpy.settings.file_format_figs}``.
    return_fig
        Return the figure (not shown).

    Returns
    -------
    With ``return_fig``, the figure; otherwise, when not shown, one axes per metric.
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
    return _finish(fig, "metric_bars", show, save, return_fig)


def edit_plot(
    control: AnnData,
    edited: AnnData,
    real_target: AnnData,
    genes: Sequence[str],
    *,
    layer: str | None = None,
    edited_layer: str | None = None,
    figsize: tuple[float, float] = (11.0, 4.2),
    show: bool | None = None,
    save: str | Path | bool | None = None,
    return_fig: bool = False,
) -> Figure | list[Axes] | None:
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
    show
        Show the figure (``plt.show()``) and return ``None``; default
        ``scanpy.settings.autoshow`` (``True``).
    save
        Write the figure: a file name with its format's suffix (``"umap.png"``), or ``True`` for
        ``{scanpy.settings.figdir}/<function name>.{scanpy.settings.file_format_figs}``.
    return_fig
        Return the figure (not shown).

    Returns
    -------
    With ``return_fig``, the figure; otherwise, when not shown, the two axes.
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
    return _finish(fig, "edit_plot", show, save, return_fig)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _vstack(a, b):
    if sp.issparse(a) or sp.issparse(b):
        return sp.vstack([sp.csr_matrix(a), sp.csr_matrix(b)], format="csr")
    return np.vstack([a, b])


def _finish(fig_or_ax, name: str, show: bool | None, save, return_fig: bool):
    """scanpy's ending of a plot: save, then return the figure, show it, or return the axes."""
    fig = fig_or_ax if isinstance(fig_or_ax, Figure) else fig_or_ax.figure
    if save:
        path = Path(save) if not isinstance(save, bool) else None
        if path is None:
            path = Path(sc.settings.figdir) / f"{name}.{sc.settings.file_format_figs}"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
    if return_fig:
        return fig
    if sc.settings.autoshow if show is None else show:
        plt.show()
        return None
    if isinstance(fig_or_ax, Axes):
        return fig_or_ax
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _label_categories(adata: AnnData, key: str, labels: np.ndarray) -> list[str]:
    """The label's categories in ``adata``'s order (when categorical), then any others."""
    present = set(labels)
    column = adata.obs[key]
    order = [str(c) for c in column.cat.categories] if hasattr(column, "cat") else []
    cats = [c for c in order if c in present]
    return cats + [c for c in pd.unique(labels) if c not in cats]


def _own_colors(adata: AnnData, key: str, categories: list[str]) -> list[str] | None:
    """``adata``'s colours of the categories (``uns[f"{key}_colors"]``), if it has them all."""
    colors = adata.uns.get(f"{key}_colors")
    column = adata.obs[key]
    if colors is None or not hasattr(column, "cat") or len(colors) != len(column.cat.categories):
        return None
    lookup = dict(zip((str(c) for c in column.cat.categories), colors, strict=True))
    if not all(c in lookup for c in categories):
        return None
    return [lookup[c] for c in categories]
