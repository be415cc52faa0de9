"""``scgm-scvi demo``: train, generate and evaluate on the bundled PBMC 3k data."""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ._common import HelpFormatter, log, non_negative_int, positive_int, prepare_out_dir

#: Epochs of the demo: SCGM's defaults on PBMC 3k (the VAE for scVI's 400 epochs, its default
#: here; the score network for its default of about 4,000 steps, ``None``).
DEMO_MAX_EPOCHS = 400
DEMO_DIFFUSION_MAX_EPOCHS = None
#: ``--quick``: a smoke test of the whole pipeline, not a useful model.
QUICK_MAX_EPOCHS = 2
QUICK_DIFFUSION_MAX_EPOCHS = 3
QUICK_MODEL = {"n_latent": 16, "n_hidden": 64, "score_width": 64, "score_blocks": 2}
TEST_FRACTION = 0.2
LABELS_KEY = "cell_type"


def add_parser(sub) -> None:
    """Register ``demo``."""
    demo = sub.add_parser(
        "demo",
        formatter_class=HelpFormatter,
        help="train on 80%% of PBMC 3k, generate the held-out 20%%, plot and evaluate",
        description=(
            "Load the bundled PBMC 3k data, split it 80/20 stratified by cell type, train SCGM "
            "on the 80 %, generate as many cells per type as the 20 % holds, and write "
            "generated.h5ad, umap_real_vs_generated.png and metrics.md to --out."
        ),
    )
    demo.add_argument("--out", required=True, type=Path, help="output directory")
    demo.add_argument(
        "--max-epochs",
        type=positive_int,
        default=None,
        help=f"VAE epochs (default {DEMO_MAX_EPOCHS}; {QUICK_MAX_EPOCHS} with --quick)",
    )
    demo.add_argument(
        "--diffusion-max-epochs",
        type=positive_int,
        default=None,
        help=(
            "score-network epochs (default: SCGM's, about 4,000 steps; "
            f"{QUICK_DIFFUSION_MAX_EPOCHS} with --quick)"
        ),
    )
    demo.add_argument(
        "--n-cells",
        type=positive_int,
        default=None,
        help="cells to generate, split over types as in the test set (default: test-set size)",
    )
    demo.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    demo.add_argument(
        "--threads",
        type=non_negative_int,
        default=1,
        help=(
            "torch CPU threads (default 1: on a shared or busy CPU more threads can be many "
            "times slower; 0 keeps torch's default)"
        ),
    )
    demo.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty --out directory"
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="a few epochs and small networks: checks the pipeline in seconds (poor model)",
    )
    demo.set_defaults(func=run)


def stratified_split(
    labels: Sequence, test_fraction: float = TEST_FRACTION, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`scgm_scvi.data.stratified_split` (here since 0.1; imported when called, so that
    ``--help`` does not load torch)."""
    from scgm_scvi.data import stratified_split as split

    return split(labels, test_fraction, seed)


def split_counts(proportions: pd.Series, total: int) -> dict[str, int]:
    """Split ``total`` cells over groups proportionally (largest remainder), dropping zeros."""
    weights = proportions.to_numpy(dtype=float)
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return {str(k): int(c) for k, c in zip(proportions.index, counts, strict=True) if c > 0}


def _log1p_cp10k_means(X) -> np.ndarray:
    import scipy.sparse as sp

    X = sp.csr_matrix(X, dtype=np.float64)
    totals = np.asarray(X.sum(axis=1)).ravel()
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
    normed = sp.diags(scale) @ X
    normed.data = np.log1p(normed.data)
    return np.asarray(normed.mean(axis=0)).ravel()


def gene_mean_pearson(real, generated) -> float:
    """Pearson r of per-gene mean log1p(CP10k) between two AnnData with the same genes."""
    a, b = _log1p_cp10k_means(real.X), _log1p_cp10k_means(generated.X)
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _markdown_table(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    cols = [str(frame.index.name or "")] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, *row in frame.itertuples(name=None):  # keeps each column's dtype
        cells = [str(idx)]
        for value in row:
            if isinstance(value, float | np.floating):
                cells.append("" if np.isnan(value) else format(value, floatfmt))
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot_umap(real, generated, path: Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scgm_scvi import pl

    fig = pl.umap_real_vs_generated(real, generated, LABELS_KEY, seed=seed, return_fig=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _write_metrics(real, generated, path: Path, info: dict, seed: int) -> pd.DataFrame:
    from scgm_scvi import metrics

    counts = (
        pd.DataFrame(
            {
                "real (test)": real.obs[LABELS_KEY].value_counts(),
                "generated": generated.obs[LABELS_KEY].value_counts(),
            }
        )
        .fillna(0)
        .astype(int)
    )
    counts.index.name = "cell type"
    types = [t for t in counts.index if counts.loc[t].min() > 0]
    pearson = pd.Series(
        {
            t: gene_mean_pearson(
                real[(real.obs[LABELS_KEY] == t).to_numpy()],
                generated[(generated.obs[LABELS_KEY] == t).to_numpy()],
            )
            for t in types
        },
        dtype=float,
    )
    counts["gene-mean Pearson r"] = pearson.reindex(counts.index)
    overall = gene_mean_pearson(real, generated)

    lines = [
        "# SCGM demo: PBMC 3k",
        "",
        f"- training cells: {info['n_train']}, held-out test cells: {real.n_obs}, "
        f"generated cells: {generated.n_obs}",
        f"- epochs: VAE {info['max_epochs']}, score network {info['diffusion_max_epochs']}"
        f"{' (--quick)' if info['quick'] else ''}; seed {seed}",
        f"- training time: {info['train_s']:.0f} s, generation time: {info['generate_s']:.1f} s",
        "",
        "## Cells per type",
        "",
        "Pearson r of the per-gene mean log1p(CP10k) expression, real test vs generated cells.",
        "",
        _markdown_table(counts),
        "",
        f"All cells: Pearson r = {overall:.3f}.",
        "",
    ]
    table = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = metrics.evaluate(
                real, generated, groupby=LABELS_KEY, metrics=["g1"], seed=seed
            )
        table = result[result["metric"].isin(["mmd_rbf", "w2"])].pivot(
            index="group", columns="metric", values="value"
        )
        table.index.name = "cell type"
        lines += [
            "## Distribution distances (protocol G1)",
            "",
            "RBF-MMD (mean over bandwidths) and exact W2 in a 30-PC embedding of the real test "
            "cells; types with fewer than 10 cells on either side are skipped; `mean` averages "
            "over types. Lower is better.",
            "",
            _markdown_table(table[[c for c in ("mmd_rbf", "w2") if c in table.columns]]),
            "",
        ]
    except Exception as exc:  # noqa: BLE001 - the summary above is still useful
        lines += [f"_scgm_scvi.metrics.evaluate failed: {type(exc).__name__}: {exc}_", ""]
    path.write_text("\n".join(lines))
    return counts


# ---------------------------------------------------------------------------------- demo
def run(args: argparse.Namespace) -> int:
    """Run ``scgm-scvi demo``."""
    out: Path = args.out
    prepare_out_dir(out, args.overwrite)
    max_epochs = args.max_epochs or (QUICK_MAX_EPOCHS if args.quick else DEMO_MAX_EPOCHS)
    diffusion_max_epochs = args.diffusion_max_epochs or (
        QUICK_DIFFUSION_MAX_EPOCHS if args.quick else DEMO_DIFFUSION_MAX_EPOCHS
    )
    start = time.perf_counter()

    import scvi
    import torch

    import scgm_scvi

    if args.threads:
        torch.set_num_threads(args.threads)

    # quieter Lightning: one line per stage from us instead of its banners
    for name in ("lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.WARNING)
    scvi.settings.seed = args.seed

    log("loading PBMC 3k (bundled)")
    adata = scgm_scvi.data.pbmc3k()
    train_idx, test_idx = stratified_split(adata.obs[LABELS_KEY], TEST_FRACTION, args.seed)
    train = adata[train_idx].copy()
    test = adata[test_idx].copy()
    log(
        f"{adata.n_obs} cells x {adata.n_vars} genes; stratified split: {train.n_obs} train, "
        f"{test.n_obs} test (seed {args.seed})"
    )

    scgm_scvi.SCGM.setup_anndata(train, labels_key=LABELS_KEY)
    model = scgm_scvi.SCGM(train, **(QUICK_MODEL if args.quick else {}))
    log(
        f"training SCGM: VAE {max_epochs} epochs, then score network "
        + (f"{diffusion_max_epochs} epochs" if diffusion_max_epochs else "(default length)")
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*logging interval.*")
        model.train_vae(max_epochs=max_epochs, enable_progress_bar=False)
        t_vae = time.perf_counter() - t0
        log(f"VAE done in {t_vae:.0f} s ({len(model.history['train_loss'])} epochs)")
        model.train_diffusion(max_epochs=diffusion_max_epochs, enable_progress_bar=False)
    train_s = time.perf_counter() - t0
    n_diff = len(model.diffusion_history_.get("train_loss", []))
    log(f"score network done in {train_s - t_vae:.0f} s ({n_diff} epochs)")

    test_counts = test.obs[LABELS_KEY].value_counts()
    test_counts = test_counts[test_counts > 0]
    total = args.n_cells or int(test_counts.sum())
    sizes = split_counts(test_counts, total)
    log(f"generating {total} cells over {len(sizes)} cell types")
    t0 = time.perf_counter()
    generated = model.generate(n=None, cell_type=sizes, seed=args.seed, progress_bar=False)
    generate_s = time.perf_counter() - t0
    generated.write_h5ad(out / "generated.h5ad")
    log(f"wrote {out / 'generated.h5ad'} ({generate_s:.1f} s)")

    log("joint UMAP of real test and generated cells")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _plot_umap(test, generated, out / "umap_real_vs_generated.png", args.seed)
    log(f"wrote {out / 'umap_real_vs_generated.png'}")

    info = {
        "n_train": train.n_obs,
        "max_epochs": max_epochs,
        "diffusion_max_epochs": n_diff,
        "quick": args.quick,
        "train_s": train_s,
        "generate_s": generate_s,
    }
    _write_metrics(test, generated, out / "metrics.md", info, args.seed)
    log(f"wrote {out / 'metrics.md'}")
    log(f"done in {time.perf_counter() - start:.0f} s")
    return 0
