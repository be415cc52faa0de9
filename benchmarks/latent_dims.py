"""Which latent dimensions carry the cells, and does the score network reproduce them?

A diagnostic for the KL warm-up trade-off in ``docs/concepts.md``. On the PBMC 3k split of
``generation.py`` (protocol G1 against the held-out 20 %), it trains SCGM's VAE, then counts

- active dimensions: standard deviation of the training cells' posterior means above 0.1
  (Burda et al. 2016);
- informative dimensions: that standard deviation above the mean posterior standard deviation;

and scores, over generation seeds, five sets of decoded cells (NB counts; the training cells'
library sizes for their own latents, drawn ones for the score network's):

- ``train posterior means``: the training cells' own latents, decoded (stage 2's ceiling);
- ``train posterior means, unused dims at their mean``: the same with the inactive dimensions
  replaced by their mean (do they matter to the decoder?);
- ``SCGM ode``: the score network's samples (ODE sampler, guidance 1);
- ``SCGM ode, unused dims at their mean``;
- ``train posterior samples``: ``z ~ q(z|x)`` of the training cells, decoded (the recipe of
  ``generation.py``'s scVI baseline, here with SCGM's VAE).

Usage (from the repository root). The committed runs below were made before the package's
defaults became scVI's VAE architecture with global scaling (check out commit 9a021be to rerun
them as they were), and all but the last before the Gaussian score baseline (add
``--score-baseline none`` there)::

    python benchmarks/latent_dims.py --out benchmarks/results/latent_dims/default
    python benchmarks/latent_dims.py --vae-epochs 400 --no-early-stopping \\
        --out benchmarks/results/latent_dims/full_kl
    python benchmarks/latent_dims.py --n-hidden 128 --n-layers 1 --diffusion-batch-size 64 \\
        --out benchmarks/results/latent_dims/scvi_width
    python benchmarks/latent_dims.py --n-hidden 128 --n-layers 1 --diffusion-batch-size 64 \\
        --latent-scaling global --out benchmarks/results/latent_dims/scvi_width_global
    python benchmarks/latent_dims.py --n-hidden 128 --n-layers 1 --norm batch --vae-epochs 400 \\
        --no-early-stopping --diffusion-batch-size 64 --latent-scaling global \\
        --out benchmarks/results/latent_dims/scvi_arch_global
    python benchmarks/latent_dims.py --n-hidden 128 --n-layers 1 --norm batch --vae-epochs 400 \\
        --no-early-stopping --diffusion-batch-size 64 --latent-scaling global \\
        --out benchmarks/results/latent_dims/scvi_arch_global_gaussian
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scvi
import torch
from _common import load, split, vae_architecture, vae_norm  # noqa: E402
from generation import counts_adata  # noqa: E402

from scgm_scvi import SCGM  # noqa: E402
from scgm_scvi.metrics import evaluate  # noqa: E402

ACTIVE_STD = 0.1


def score(test, train, X, cell_types, var_names, big, seed) -> dict:
    res = evaluate(
        test, counts_adata(X, cell_types, var_names), "cell_type", train=train, seed=seed
    )
    mean = res[res["group"] == "mean"].set_index("metric")["value"]
    agree = res[(res["metric"] == "label_agreement") & res["group"].isin(big)]["value"].mean()
    return {"w2": mean["w2"], "mmd_rbf": mean["mmd_rbf"], "label_agreement": agree}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vae-epochs", type=int, default=None, help="default: scVI's heuristic")
    p.add_argument("--early-stopping", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--kl-warmup", type=int, default=None, help="default: scVI's 400 epochs")
    p.add_argument("--diffusion-epochs", type=int, default=600)
    p.add_argument("--diffusion-batch-size", type=int, default=64)
    p.add_argument("--n-hidden", type=int, default=None, help="VAE width (default: SCGM's)")
    p.add_argument("--n-layers", type=int, default=None, help="VAE depth (default: SCGM's)")
    p.add_argument("--latent-scaling", choices=["per_dim", "global"], default="global")
    p.add_argument("--score-baseline", choices=["gaussian", "none"], default="gaussian")
    p.add_argument(
        "--norm",
        choices=["layer", "batch"],
        default=None,
        help="VAE normalisation (default: SCGM's, stock scVI's batch norm)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/latent_dims/default"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)

    adata, _ = load("pbmc3k")
    train, test = split(adata)
    sizes = {k: int(v) for k, v in test.obs["cell_type"].value_counts().items() if v > 0}
    big = adata.obs["cell_type"].value_counts().loc[lambda s: s >= 100].index
    scvi.settings.seed = 0
    SCGM.setup_anndata(train, labels_key="cell_type")
    sizes_kw = vae_architecture(args.n_hidden, args.n_layers, args.norm)
    model = SCGM(
        train,
        latent_scaling=args.latent_scaling,
        score_baseline=args.score_baseline,
        **sizes_kw,
    )
    warmup = None if args.kl_warmup is None else {"n_epochs_kl_warmup": args.kl_warmup}
    t0 = time.perf_counter()
    model.train_vae(
        max_epochs=args.vae_epochs,
        early_stopping=args.early_stopping,
        plan_kwargs=warmup,
        enable_progress_bar=False,
    )
    vae_seconds = time.perf_counter() - t0
    vae_epochs = len(model.history["elbo_train"])
    loc, var = model.get_latent_representation(return_dist=True)
    spread = loc.std(0)
    active = spread > ACTIVE_STD
    informative = spread > np.sqrt(var).mean(0)
    centre = loc.mean(0)
    model.train_diffusion(
        max_epochs=args.diffusion_epochs,
        batch_size=args.diffusion_batch_size,
        enable_progress_bar=False,
    )

    library = np.asarray(train.X.sum(1)).ravel()
    labels = train.obs["cell_type"].astype(str).to_numpy()
    rows = []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        idx = np.concatenate(
            [rng.choice(np.flatnonzero(labels == ct), n) for ct, n in sizes.items()]
        )
        generated = model.generate(n=None, cell_type=sizes, sampler="ode", seed=seed)
        gen_types = generated.obs["cell_type"].astype(str).to_numpy()
        sets = {
            "train posterior means": (loc[idx], labels[idx], library[idx]),
            "SCGM ode": (generated.obsm["X_scgm"], gen_types, generated.obs["library_size"]),
        }
        for name, (z, types, lib) in list(sets.items()):
            z = z.copy()
            z[:, ~active] = centre[~active]
            sets[f"{name}, unused dims at their mean"] = (z, types, lib)
        # z ~ q(z|x) of training cells: the recipe of generation.py's scVI baseline
        z = loc[idx] + np.sqrt(var[idx]) * rng.standard_normal(loc[idx].shape)
        sets["train posterior samples"] = (z, labels[idx], library[idx])
        for name, (z, types, lib) in sets.items():
            X = model.decode_latent(
                z.astype(np.float32),
                cell_type=list(types),
                library_size=np.asarray(lib),
                seed=seed,
            )
            rows.append(
                {
                    "cells": name,
                    "seed": seed,
                    **score(test, train, X, types, model.var_names_, big, seed),
                }
            )
            print(rows[-1], flush=True)

    long = pd.DataFrame(rows)
    long.to_csv(args.out / "metrics_long.csv", index=False)
    summary = long.groupby("cells", sort=False)[["w2", "mmd_rbf", "label_agreement"]]
    summary = summary.agg(["mean", "sem"])
    command = " ".join(sys.argv[1:] if argv is None else argv)
    arch = model.init_params_["non_kwargs"]
    report = [
        "# Latent dimensions of SCGM's VAE and what the score network makes of them",
        "",
        f"Command: `python benchmarks/latent_dims.py {command}`",
        "",
        f"PBMC 3k split of `generation.py`; VAE {arch['n_layers']} x {arch['n_hidden']} hidden "
        f"({vae_norm(model)} norm), "
        f"{vae_epochs} epochs ({vae_seconds:.0f} s, early "
        f"stopping {'on' if args.early_stopping else 'off'}, KL warm-up "
        f"{args.kl_warmup or 400} epochs), score network {args.diffusion_epochs} epochs "
        f"(batch {args.diffusion_batch_size}, {args.latent_scaling} latent scaling, "
        f"{args.score_baseline} score baseline); "
        f"generation seeds {args.seeds}; protocol G1 against the held-out cells, label agreement "
        "over the types with >= 100 cells.",
        "",
        f"- active dimensions (std of posterior means > {ACTIVE_STD}): {int(active.sum())} of "
        f"{len(active)}",
        f"- informative dimensions (std of posterior means > mean posterior std): "
        f"{int(informative.sum())} of {len(active)}",
        "",
        summary.to_markdown(floatfmt=".4g"),
        "",
    ]
    (args.out / "report.md").write_text("\n".join(report))
    print("\n".join(report))


if __name__ == "__main__":
    main()
