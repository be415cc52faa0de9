"""Does augmenting rare cell types with generated cells help a cell-type classifier?

Stratified 80/20 split of the real cells (seed 0). SCGM (package defaults) and stock scVI are
trained on the training cells. For each seed, the training cells are augmented so that every
cell type has at least the median cell-type size (``--min-cells`` to change it), five ways:

- ``none``: the real training cells alone;
- ``oversample``: real cells of the rare types duplicated at random;
- ``scvi_resample``: scVI posterior-predictive cells of training cells of the rare types;
- ``scgm``: ``SCGM.augment`` (cells generated from noise);
- ``scgm_at_most_doubled``: the same with no more generated cells of a type than real ones.

Two annotators are trained on each set, as cell types are annotated in practice: a logistic
regression on standardised log1p(CP10k) of 2,000 HVGs (chosen on the real training cells, the
same for every set) and a 15-nearest-neighbour classifier on 50 PCs of those features (fit on
the training set). Both are scored on the held-out REAL cells only: F1 per type and macro-F1,
mean and s.e.m. over the seeds. Per augmented type, the report also gives the share of
generated cells that a classifier trained on the real cells recognises as their type.

    python benchmarks/augment.py --data pbmc3k --out benchmarks/results/augment_pbmc3k
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
import scvi
import torch
from _common import load, machine_line, split
from generation import counts_adata, fit_missing_statistics, scvi_posterior_resample
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from scgm_scvi import SCGM
from scgm_scvi.metrics import evaluate


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="pbmc3k", choices=["pbmc3k", "kang12k", "kang2k"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--min-cells", type=int, default=None, help="default: median type size")
    p.add_argument("--vae-epochs", type=int, default=None, help="default: the package's")
    p.add_argument("--diffusion-epochs", type=int, default=None, help="default: the package's")
    p.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="load scgm/ and scvi/ saved there (e.g. by generation.py on the same split) "
        "instead of training; models trained here are saved there",
    )
    p.add_argument("--out", type=Path, default=Path("/tmp/augment"))
    return p.parse_args(argv)


def lognorm(adata: ad.AnnData) -> sp.csr_matrix:
    a = ad.AnnData(sp.csr_matrix(adata.X, dtype=np.float32))
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a.X


def annotators(train: ad.AnnData, test: ad.AnnData, hvg: np.ndarray, seed: int) -> dict:
    """Predicted labels of the test cells by each annotator trained on ``train``."""
    Xtr = lognorm(train)[:, hvg].toarray()
    Xte = lognorm(test)[:, hvg].toarray()
    y = train.obs["cell_type"].astype(str).to_numpy()
    lr = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    lr.fit(Xtr, y)
    scaler = StandardScaler().fit(Xtr)
    pca = PCA(n_components=50, random_state=seed).fit(scaler.transform(Xtr))
    knn = KNeighborsClassifier(n_neighbors=15).fit(pca.transform(scaler.transform(Xtr)), y)
    return {
        "logistic_regression": lr.predict(Xte),
        "knn_on_pcs": knn.predict(pca.transform(scaler.transform(Xte))),
    }


def label_agreement(test: ad.AnnData, train: ad.AnnData, generated: dict) -> pd.DataFrame:
    """Per type: the share of cells a classifier trained on ``train`` gives their type, for
    the held-out real cells and for each set of generated cells."""
    real_test = counts_adata(test.X, test.obs["cell_type"].to_numpy(), test.var_names)
    real_train = counts_adata(train.X, train.obs["cell_type"].to_numpy(), train.var_names)
    out = {}
    for name, cells in {"real_held_out": real_test, **generated}.items():
        df = evaluate(real_test, cells, train=real_train, metrics=["label_agreement"], min_cells=1)
        df = df[(df["metric"] == "label_agreement") & ~df["group"].isin(["all", "mean"])]
        out[name] = df.set_index("group")["value"]
    return pd.DataFrame(out).rename_axis("cell_type")


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    adata, batch_key = load(args.data)
    train, test = split(adata)
    counts = train.obs["cell_type"].astype(str).value_counts()
    target = args.min_cells or int(np.median(counts.to_numpy()))
    sizes = {t: target - int(n) for t, n in counts.items() if n < target}
    # a variant that never generates more cells of a type than it has real ones
    caps = {t: min(n, int(counts[t])) for t, n in sizes.items()}
    print(f"target {target} cells per type; generated per type: {sizes}", flush=True)

    scvi.settings.seed = 0
    SCGM.setup_anndata(train, labels_key="cell_type", batch_key=batch_key)
    saved = None if args.model_dir is None else args.model_dir / "scgm"
    fitted = []  # statistics fitted to a cached model's VAE
    if saved is not None and saved.exists():
        model = SCGM.load(str(saved), adata=train, allow_pickle=True)  # a file we wrote
        fitted = fit_missing_statistics(model)
    else:
        model = SCGM(train)
        model.train(max_epochs=args.vae_epochs, diffusion_max_epochs=args.diffusion_epochs,
                    enable_progress_bar=False)  # fmt: skip
        if saved is not None:
            model.save(str(saved))
    scvi_sample, _, _ = scvi_posterior_resample(
        train, sizes, batch_key, args.vae_epochs, seed=0,
        model_dir=None if args.model_dir is None else args.model_dir / "scvi",
    )  # fmt: skip
    train_s = time.perf_counter() - t0
    trained = "trained once" if args.model_dir is None else f"from {args.model_dir}"
    if fitted:
        trained += " (" + "; ".join(fitted) + ")"

    real = counts_adata(train.X, train.obs["cell_type"].to_numpy(), train.var_names)
    probe = real.copy()
    sc.pp.highly_variable_genes(probe, n_top_genes=min(2000, probe.n_vars), flavor="seurat_v3")
    hvg = np.flatnonzero(probe.var["highly_variable"].to_numpy())
    truth = test.obs["cell_type"].astype(str).to_numpy()
    labels = sorted(counts.index)
    rows = []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        picks = np.concatenate(
            [rng.choice(np.flatnonzero(real.obs["cell_type"] == t), n) for t, n in sizes.items()]
        )
        aug = model.augment(train, min_cells=target, seed=seed)
        capped = model.augment(train, per_type=caps, seed=seed)
        scvi_cells = scvi_sample(seed)
        sets = {
            "none": real,
            "oversample": ad.concat([real, real[picks]], index_unique="-"),
            "scvi_resample": ad.concat([real, scvi_cells], index_unique="-"),
            "scgm": counts_adata(aug.X, aug.obs["cell_type"].to_numpy(), aug.var_names),
            "scgm_at_most_doubled": counts_adata(
                capped.X, capped.obs["cell_type"].to_numpy(), capped.var_names
            ),
        }
        if seed == args.seeds[0]:
            synthetic = aug[aug.obs["synthetic"].to_numpy()]
            generated = counts_adata(
                synthetic.X, synthetic.obs["cell_type"].to_numpy(), synthetic.var_names
            )
            agreement = label_agreement(
                test, train, {"scgm": generated, "scvi_resample": scvi_cells}
            )
        for name, cells in sets.items():
            for annotator, pred in annotators(cells, test, hvg, seed).items():
                f1 = f1_score(truth, pred, labels=labels, average=None, zero_division=0)
                rows.append(
                    {"seed": seed, "augmentation": name, "annotator": annotator,
                     "macro_f1": float(np.mean(f1)), **dict(zip(labels, f1, strict=True))}
                )  # fmt: skip
        print(f"seed {seed} done", flush=True)
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "f1.csv", index=False)
    cols = ["macro_f1", *sorted(sizes, key=lambda t: counts[t])]
    grouped = df.groupby(["annotator", "augmentation"], sort=False)[cols]
    mean, sem = grouped.mean(), grouped.sem()
    table = mean.round(3).astype(str) + " ± " + sem.round(3).astype(str)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# Augmenting rare cell types: {args.data}",
        "",
        f"Command: `python benchmarks/augment.py {command}`",
        "",
        machine_line(),
        f"Data: {train.n_obs} train / {test.n_obs} held-out real cells x {train.n_vars} genes "
        f"(split seed 0); target {target} cells per type; generated per type: {sizes}; "
        f"seeds {args.seeds}; SCGM and scVI {trained} ({train_s:.0f} s); total "
        f"{time.perf_counter() - t0:.0f} s.",
        "",
        "Macro-F1 over all types and F1 of the augmented types on the held-out REAL cells "
        "(mean ± s.e.m. over seeds: they draw the generated and duplicated cells and seed the "
        "kNN annotator's PCA; the logistic regression on `none` is deterministic). Few "
        "held-out cells of the rarest types make their F1 move in large steps.",
        "",
        table.reset_index().to_markdown(index=False),
        "",
        "Training cells per type: " + ", ".join(f"{t} {n}" for t, n in counts.items()) + ".",
        "`scgm_at_most_doubled`: `SCGM.augment(per_type=...)` with at most as many generated "
        "cells of a type as it has real ones.",
        "",
        "## Are the generated cells of each type recognisable as that type?",
        "",
        "Label agreement (`scgm_scvi.metrics.evaluate(..., metrics=['label_agreement'])`): the "
        "share of cells that a logistic regression trained on the real training cells assigns "
        "to their type; `real_held_out` is the same for the held-out real cells (the label's "
        "own ambiguity). Augmented types, first seed:",
        "",
        agreement.loc[list(sizes)].round(3).reset_index().to_markdown(index=False),
        "",
    ]
    (args.out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
