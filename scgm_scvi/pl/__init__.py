"""Plots of real vs generated or edited cells (matplotlib figures; nothing is shown)."""

from ._plots import edit_plot, gene_mean_scatter, metric_bars, umap_real_vs_generated

__all__ = ["edit_plot", "gene_mean_scatter", "metric_bars", "umap_real_vs_generated"]
