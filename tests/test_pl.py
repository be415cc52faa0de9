"""Tests of scgm_scvi.pl: figures with the expected panels, inputs untouched, nothing shown."""

from __future__ import annotations

import anndata as ad
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from matplotlib.figure import Figure
from threadpoolctl import threadpool_limits

from scgm_scvi import metrics as M
from scgm_scvi import pl

matplotlib.use("Agg")

N_GENES = 120


def _profiles() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    base = rng.gamma(0.8, 1.0, N_GENES) + 0.05
    out = {}
    for i, t in enumerate("ABC"):
        p = base.copy()
        p[i * 10 : (i + 1) * 10] *= 6.0
        out[t] = p / p.sum()
    return out


PROFILES = _profiles()


def make_counts(n_per_type: dict[str, int], seed: int = 0, profiles=None) -> ad.AnnData:
    """Negative-binomial counts with cell-type structure (sparse AnnData)."""
    profiles = profiles or PROFILES
    rng = np.random.default_rng(seed)
    blocks, labels = [], []
    for t, n in n_per_type.items():
        mu = rng.lognormal(np.log(1500), 0.3, n)[:, None] * profiles[t][None, :]
        blocks.append(rng.negative_binomial(5.0, 5.0 / (5.0 + mu)))
        labels += [t] * n
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(labels)}, index=[f"c{seed}_{i}" for i in range(len(labels))]
    )
    var = pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)])
    return ad.AnnData(sp.csr_matrix(np.vstack(blocks).astype(np.float32)), obs=obs, var=var)


def assert_unchanged(a: ad.AnnData, before: ad.AnnData) -> None:
    assert a.shape == before.shape
    assert (a.X != before.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, before.obs)
    pd.testing.assert_frame_equal(a.var, before.var)
    assert set(a.uns) == set(before.uns) and set(a.obsm) == set(before.obsm)


@pytest.fixture(autouse=True)
def _no_show_and_close(monkeypatch):
    def _fail(*args, **kwargs):
        raise AssertionError("plotting functions must not call plt.show()")

    monkeypatch.setattr(plt, "show", _fail)
    with threadpool_limits(1):
        yield
    plt.close("all")


@pytest.fixture(scope="module")
def pair():
    real = make_counts({"A": 40, "B": 40, "C": 40}, seed=0)
    gen = make_counts({"A": 40, "B": 40, "C": 40}, seed=1)
    return real, gen


def test_umap_real_vs_generated_panels(pair):
    real, gen = pair
    before = real.copy(), gen.copy()
    real.obs["cell_type"] = real.obs["cell_type"].astype("category")
    real.uns["cell_type_colors"] = ["#111111", "#222222", "#333333"]  # the data's own colours
    before = real.copy(), gen.copy()
    kw = {"n_top_genes": 60, "n_neighbors": 10}
    fig = pl.umap_real_vs_generated(real, gen, "cell_type", return_fig=True, **kw)
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["source", "cell_type"]
    # One point per cell in each panel, drawn by scanpy in the real data's colours.
    assert all(ax.collections[0].get_offsets().shape[0] == 240 for ax in axes)
    legend = [t.get_text() for t in axes[1].get_legend().get_texts()]
    assert legend == ["A", "B", "C"]
    drawn = {tuple(np.round(c[:3], 3)) for c in axes[1].collections[0].get_facecolors()}
    assert drawn == {(round(k * 0x11 / 255, 3),) * 3 for k in (1, 2, 3)}
    # Not shown: the axes, as scanpy returns them
    panels = pl.umap_real_vs_generated(real, gen, None, show=False, **kw)
    assert len(panels) == 1 and panels[0].get_title() == "source"
    assert_unchanged(real, before[0])
    assert_unchanged(gen, before[1])


def test_gene_mean_scatter_reports_pearson(pair):
    real, gen = pair
    ax = pl.gene_mean_scatter(real, gen, show=False)
    r = M.gene_mean_correlation(real, gen)["pearson"]
    assert ax.get_title().startswith(f"Pearson r = {r:.3f}")
    # Drawing into a given axes returns that axes.
    _, axes = plt.subplots(1, 2)
    assert pl.gene_mean_scatter(real, gen, ax=axes[1], show=False) is axes[1]


def test_metric_bars_one_panel_per_metric(pair):
    real, gen = pair
    df = M.evaluate(real, gen, metrics=["g1", "fred"])
    fig = pl.metric_bars(df, return_fig=True)
    assert [ax.get_title() for ax in fig.axes] == ["w1", "w2", "mmd_linear", "mmd_rbf", "frechet"]
    # Groups: all, A, B, C, mean -> five bars per panel.
    assert len(fig.axes[0].patches) == 5
    # Several models side by side, with s.e.m. error bars from summarize_runs.
    runs = pd.concat(
        [df.assign(model="m1", seed=0), df.assign(model="m1", seed=1), df.assign(model="m2")]
    )
    fig2 = pl.metric_bars(M.summarize_runs(runs), ["w2", "frechet"], hue="model", return_fig=True)
    assert len(fig2.axes) == 2
    assert len(fig2.axes[0].patches) == 2 * 5
    with pytest.raises(ValueError, match="lacks the columns"):
        pl.metric_bars(df.drop(columns="metric"))
    with pytest.raises(ValueError, match="not in the table"):
        pl.metric_bars(df, ["nope"])


def test_edit_plot_two_panels():
    stim_profile = PROFILES["A"].copy()
    stim_profile[40:50] *= np.linspace(3.0, 12.0, 10)
    stim_profile /= stim_profile.sum()
    ctrl = make_counts({"A": 50}, seed=0)
    stim = make_counts({"A": 50}, seed=1, profiles={"A": stim_profile})
    edited = make_counts({"A": 50}, seed=2, profiles={"A": stim_profile})
    before = ctrl.copy()
    genes = M.top_degs(stim, ctrl, n=10)
    fig = pl.edit_plot(ctrl, edited, stim, genes, return_fig=True)
    assert len(fig.axes) == 2
    r = M.pearson_delta(edited, stim, ctrl, genes)
    assert fig.axes[1].get_title() == f"Pearson delta = {r:.3f}"
    # Three lines (control, edited, real target) with one point per gene.
    assert [len(line.get_xdata()) for line in fig.axes[0].lines] == [10, 10, 10]
    assert_unchanged(ctrl, before)


def test_plots_end_as_scanpy_plots(pair, monkeypatch, tmp_path):
    """Shown by default (scanpy's autoshow) and then nothing returned: no second rendering."""
    import scanpy as sc

    real, gen = pair
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(1))
    saved = sc.settings.autoshow, sc.settings.figdir, sc.settings.file_format_figs
    try:
        sc.settings.autoshow = True
        assert pl.gene_mean_scatter(real, gen) is None and shown == [1]
        df = M.evaluate(real, gen, metrics=["g1"])
        assert pl.metric_bars(df, ["w2"], save=tmp_path / "bars.png") is None
        assert len(shown) == 2 and (tmp_path / "bars.png").stat().st_size > 0
        sc.settings.autoshow = False
        sc.settings.figdir = tmp_path / "figs"
        sc.settings.file_format_figs = "svg"
        axes = pl.metric_bars(df, ["w2", "w1"], save=True)
        assert len(axes) == 2 and len(shown) == 2
        assert (tmp_path / "figs" / "metric_bars.svg").exists()
    finally:
        sc.settings.autoshow, sc.settings.figdir, sc.settings.file_format_figs = saved
