"""Does the VAE's latent size cost realism before the score model starts? (issue 16's ceiling)

``generation.py``'s error budget puts most of SCGM's distance to scVI's posterior resample in
stage 1: SCGM's 256-d VAE resampling its own training cells (``z ~ q(z|x)``, their own library)
is already further from the held-out cells than stock scVI (10-d) doing the same. The two VAEs
differ only in the latent size, so this script trains SCGM's VAE (package defaults otherwise)
at each ``--n-latent`` on the same split and scores, against the held-out cells (protocol of
``generation.py``: G1, RF / kNN discriminator AUC, novelty), for each size:

- ``z ~ q, own library``: budget row 2 (scVI's recipe with SCGM's VAE);
- ``a perfect latent model``: budget row 3d, the training cells' posterior means plus
  ``generate``'s posterior noise, library drawn by the library model, batch of another cell
  of the type (what a perfect stage 2 would reach with the package's decoding);
- ``Gaussian per type + posterior noise``: what a Gaussian stage 2 reaches;

beside the real floor and stock scVI's posterior resample. Active dimensions (std of the
posterior means above 0.1) and the held-out reconstruction error are reported per size.

Usage (from the repository root; ``--model-dir`` reuses ``generation.py``'s cached models:
its ``scgm`` for the package's default size and its ``scvi``; other sizes are saved there as
``vae_<d>``)::

    python benchmarks/vae_latent.py --data pbmc3k --n-latent 10 32 64 256 \\
        --model-dir benchmarks/_work/gen_pbmc3k --out benchmarks/results/vae_latent_pbmc3k
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pandas as pd
import scvi
import torch
from _common import load, machine_line, split  # noqa: E402
from generation import (  # noqa: E402
    FLOOR_ROW,
    ErrorBudget,
    fit_missing_statistics,
    headline_table,
    real_floor,
    score,
    scvi_posterior_resample,
)

from scgm_scvi import SCGM  # noqa: E402
from scgm_scvi.metrics import summarize_runs  # noqa: E402

DEFAULT_LATENT = inspect.signature(SCGM.__init__).parameters["n_latent"].default
ACTIVE_STD = 0.1


def vae_model(train, n_latent: int, model_dir: Path | None) -> tuple[SCGM, float]:
    """SCGM with the package's defaults at ``n_latent``; only its VAE is trained (stage 2 is
    not needed here). Loaded from ``model_dir`` when cached there."""
    cached = None
    if model_dir is not None:
        cached = model_dir / ("scgm" if n_latent == DEFAULT_LATENT else f"vae_{n_latent}")
    if cached is not None and cached.exists():
        return SCGM.load(str(cached), adata=train, allow_pickle=True), float("nan")
    model = SCGM(train, n_latent=n_latent)
    t0 = time.perf_counter()
    model.train_vae(enable_progress_bar=False)
    seconds = time.perf_counter() - t0
    if cached is not None:
        model.save(str(cached))
    return model, seconds


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="pbmc3k", choices=["pbmc3k", "kang12k", "kang2k", "kang1.5k"])
    p.add_argument("--n-latent", type=int, nargs="+", default=[10, 32, 64, DEFAULT_LATENT])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--model-dir", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = None if args.model_dir is None else Path(args.model_dir)
    if model_dir is not None:
        model_dir.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    scvi.settings.seed = 0

    adata, batch_key = load(args.data)
    train, test = split(adata)
    sizes = {k: int(v) for k, v in test.obs["cell_type"].value_counts().items() if v > 0}
    SCGM.setup_anndata(train, labels_key="cell_type", batch_key=batch_key)

    candidates, facts = {}, []
    scvi_sample, _, scvi_epochs = scvi_posterior_resample(
        train, sizes, batch_key, None, seed=0,
        model_dir=None if model_dir is None else model_dir / "scvi",
    )  # fmt: skip
    candidates["scVI posterior resample"] = scvi_sample
    for d in args.n_latent:
        model, seconds = vae_model(train, d, model_dir)
        fit_missing_statistics(model)  # posterior noise and library model of this VAE
        budget = ErrorBudget(model, train, test, sizes, batch_key)
        facts.append(
            {
                "n_latent": d,
                "active_dims": int((budget.train_mean.std(0) > ACTIVE_STD).sum()),
                "test_reconstruction_error": float(
                    model.get_reconstruction_error(test)["reconstruction_loss"]
                ),
                "vae_epochs": len(model.history["elbo_train"]),
                "vae_seconds": seconds,
            }
        )
        candidates[f"n_latent {d}: z ~ q, own library"] = budget.resample
        candidates[f"n_latent {d}: a perfect latent model (means + noise, library model)"] = (
            budget.means_with_library_model
        )
        candidates[f"n_latent {d}: Gaussian per type + posterior noise"] = lambda s, b=budget: (
            b.gaussian(s, posterior_noise=True)
        )

    rows = []
    for seed in args.seeds:
        runs = {FLOOR_ROW: lambda s: real_floor(train, sizes, s), **candidates}
        for method, make in runs.items():
            rows.append(score(method, make(seed), train, test, seed))
            print(f"seed {seed} {method}: done", flush=True)

    long = pd.concat(rows, ignore_index=True)
    long.to_csv(out / "metrics_long.csv", index=False)
    summary = summarize_runs(long, by=["method", "group", "metric", "protocol"])
    summary.to_csv(out / "summary.csv", index=False)
    facts = pd.DataFrame(facts).set_index("n_latent")
    facts.to_csv(out / "vae_facts.csv")
    table = headline_table(summary).reindex([FLOOR_ROW, *candidates])
    command = " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# SCGM's VAE at several latent sizes: {args.data}",
        "",
        f"Command: `python benchmarks/vae_latent.py {command}`",
        "",
        machine_line(),
        f"Data: {train.n_obs} train / {test.n_obs} test cells x {train.n_vars} genes; split "
        f"seed 0; generation seeds {args.seeds}. SCGM's VAE: package defaults but `n_latent` "
        f"(stage 2 not trained); scVI: stock, NB, {scvi_epochs} epochs.",
        "",
        "## Headline (mean ± s.e.m. over seeds)",
        "",
        "As in `generation.py`: G1 distances per cell type in 30 PCs, averaged over types; "
        "`rf_auc` / `knn_auc` 0.5 = indistinguishable; novelty against the training cells.",
        "",
        table.to_markdown(),
        "",
        "## The VAEs (nan seconds: loaded from --model-dir)",
        "",
        "Active dimensions: std of the training cells' posterior means > 0.1. Reconstruction "
        "error: mean negative log-likelihood of the held-out cells (z ~ q).",
        "",
        facts.to_markdown(floatfmt=".4g"),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
