"""Fine-tuning benchmark: teach a trained SCGM a cell type it never saw, vs training from scratch.

PBMC 3k, stratified 80/20 split (seed 0). A reference SCGM is trained on the train cells without
one cell type (default ``B``); the train cells of that type then come as new data through
``SCGM.load_query_data``, fine-tuned three ways:

- frozen VAE (scArches surgery, as for a new batch), then
  ``train_diffusion(finetune="new_conditions")``: only the new label's embedding learns;
- unfrozen VAE fine-tuned on the new cells only, then ``finetune="all"``;
- the recommended path: unfrozen VAE fine-tuned on the reference's cells plus the new ones
  (the defaults of ``load_query_data`` / ``train_diffusion`` for a new cell type), then
  ``finetune="all"``, both stages warm-started from the reference.

Compared with SCGMs trained from scratch on all train cells (full epochs, and the fine-tuning's
epochs), on the held-out test cells: protocol G1 (W1, W2, linear and RBF MMD in 30 PCs fit on the
test cells) and label agreement for the new type and for the reference's types; label agreement
of test cells passed through each VAE (encode, decode); wall time.

Run from the repository root::

    python benchmarks/finetune.py --out benchmarks/results/finetune
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# numba (scanpy HVGs in the metrics) otherwise resets the shared OpenMP pool to all cores,
# which slowed later torch training about 20x on a loaded 2-core machine
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scvi  # noqa: E402
import torch  # noqa: E402
from _common import split  # noqa: E402

import scgm_scvi  # noqa: E402
from scgm_scvi.metrics import evaluate, label_agreement  # noqa: E402

METRICS = ["w1", "w2", "mmd_linear", "mmd_rbf", "label_agreement"]


def score(test: ad.AnnData, generated: ad.AnnData, train: ad.AnnData, seed: int) -> dict:
    """G1 + label agreement, averaged over the cell types present (group ``mean``)."""
    generated = generated.copy()
    generated.obs = generated.obs.rename(columns={"labels": "cell_type"})
    res = evaluate(
        test, generated, "cell_type", train=train, metrics=["g1", "label_agreement"], seed=seed
    )
    mean = res[res["group"] == "mean"].set_index("metric")["value"]
    return {m: float(mean[m]) for m in METRICS if m in mean.index}


def generate_like(model, test: ad.AnnData, seed: int) -> ad.AnnData:
    """As many cells of each type as ``test`` holds."""
    sizes = test.obs["cell_type"].value_counts()
    sizes = {k: int(v) for k, v in sizes.items() if v > 0}
    return model.generate(n=None, cell_type=sizes, seed=seed, progress_bar=False)


def reconstruction_agreement(model, cells: ad.AnnData, train: ad.AnnData) -> float:
    """Label agreement of ``cells`` encoded and decoded by the model's VAE (own library sizes).

    Shows whether the VAE can represent a cell type at all; the cells' labels are replaced by a
    known one for encoding (the encoder does not read labels).
    """
    c = cells.copy()
    known = model.conditions_["columns"][0]["categories"]
    true = c.obs["cell_type"].astype(str).to_numpy()
    c.obs["cell_type"] = [t if t in known else known[0] for t in true]
    z = model.get_latent_representation(c)
    lib = np.asarray(cells.X.sum(axis=1)).ravel()
    recon = ad.AnnData(
        X=model.decode_latent(z, library_size=lib, seed=0),
        obs=pd.DataFrame({"cell_type": pd.Categorical(true)}, index=cells.obs_names),
        var=pd.DataFrame(index=model.var_names_),
    )
    return float(label_agreement(train, recon, "cell_type")["all"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--held-out", default="B", help="cell type missing from the reference")
    p.add_argument("--vae-epochs", type=int, default=80, help="from scratch")
    p.add_argument("--diffusion-epochs", type=int, default=320, help="from scratch")
    p.add_argument("--finetune-vae-epochs", type=int, default=20)
    p.add_argument("--finetune-epochs", type=int, default=160, help="stage 2 fine-tuning")
    p.add_argument("--n-latent", type=int, default=64)
    p.add_argument("--n-hidden", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=1)
    p.add_argument("--score-blocks", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="split, training and generation seed")
    p.add_argument("--out", default="benchmarks/results/finetune")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    os.makedirs(args.out, exist_ok=True)
    fit = {"accelerator": "cpu", "enable_progress_bar": False}
    arch = {
        "n_latent": args.n_latent,
        "n_hidden": args.n_hidden,
        "n_layers": args.n_layers,
        "score_width": 256,
        "score_blocks": args.score_blocks,
    }

    adata = scgm_scvi.data.pbmc3k()
    train, test = split(adata, args.seed)
    new = args.held_out
    if new not in set(train.obs["cell_type"]):
        raise SystemExit(
            f"Unknown cell type {new!r}; choose from {sorted(set(train.obs.cell_type))}"
        )
    is_new = (train.obs["cell_type"] == new).to_numpy()
    ref_train = train[~is_new].copy()
    query = train[is_new].copy()
    test_new = test[test.obs["cell_type"] == new].copy()
    test_old = test[test.obs["cell_type"] != new].copy()
    parts = ((f"new type ({new})", test_new), ("reference types", test_old))
    rows, recon, times = [], [], {}

    def add(method, model, cells=parts):
        torch.set_num_threads(1)
        for name, part in cells:
            rows.append(
                {
                    "method": method,
                    "cells": name,
                    **score(part, generate_like(model, part, args.seed), train, args.seed),
                }
            )

    def add_recon(method, model):
        recon.append(
            {
                "VAE": method,
                **{name: reconstruction_agreement(model, part, train) for name, part in parts},
            }
        )

    def train_full(data, vae_epochs, diffusion_epochs):
        scvi.settings.seed = args.seed
        torch.set_num_threads(1)
        scgm_scvi.SCGM.setup_anndata(data, labels_key="cell_type")
        model = scgm_scvi.SCGM(data, **arch)
        t0 = time.perf_counter()
        model.train_vae(max_epochs=vae_epochs, **fit)
        model.train_diffusion(max_epochs=diffusion_epochs, **fit)
        return model, time.perf_counter() - t0

    def finetune(data, unfrozen):
        scvi.settings.seed = args.seed
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        q = scgm_scvi.SCGM.load_query_data(data, ref, unfrozen=unfrozen)
        if q.query_["freeze"]["unfrozen"]:  # unfrozen=None: unfrozen for a new cell type
            q.train_vae(max_epochs=args.finetune_vae_epochs, **fit)
        q.train_diffusion(max_epochs=args.finetune_epochs, **fit)  # default finetune mode
        return q, time.perf_counter() - t0

    # 1. reference without the held-out type
    ref, times["reference (both stages, without the new type)"] = train_full(
        ref_train, args.vae_epochs, args.diffusion_epochs
    )
    add("reference (no fine-tuning)", ref, parts[1:])
    add_recon("reference (never saw the new type)", ref)

    # 2. frozen VAE (scArches surgery): only the new label's embedding learns
    q, times[f"frozen VAE, finetune='new_conditions' ({query.n_obs} new cells)"] = finetune(
        query, unfrozen=False
    )
    add("frozen VAE, finetune='new_conditions', new cells", q)

    # 3. unfrozen VAE on the new cells only, then the whole score network
    q, times[f"unfrozen VAE + finetune='all' ({query.n_obs} new cells)"] = finetune(
        query, unfrozen=True
    )
    add("unfrozen VAE + finetune='all', new cells only", q)
    add_recon("fine-tuned on the new cells only", q)

    # 4. recommended: unfrozen, on the reference's cells plus the new ones
    q, times[f"recommended: unfrozen VAE + finetune='all' ({train.n_obs} cells)"] = finetune(
        train.copy(), unfrozen=None
    )
    add("recommended: unfrozen VAE + finetune='all', reference + new cells", q)
    add_recon("fine-tuned on reference + new cells (recommended)", q)

    # 5. from scratch on all train cells: full epochs, and the fine-tuning's epochs
    full, times["from scratch (both stages, all train cells)"] = train_full(
        train.copy(), args.vae_epochs, args.diffusion_epochs
    )
    add("from scratch", full)
    add_recon("from scratch", full)
    short, times["from scratch, fine-tuning's epochs"] = train_full(
        train.copy(), args.finetune_vae_epochs, args.finetune_epochs
    )
    add("from scratch, fine-tuning's epochs", short)

    # real floor: train vs test cells; its label agreement is the classifier's accuracy on the
    # held-out test cells (on its own training cells it would be ~1)
    for cells, part in parts:
        real = train[train.obs["cell_type"].isin(set(part.obs["cell_type"]))].copy()
        real.obs = real.obs[["cell_type"]].rename(columns={"cell_type": "labels"})
        floor = score(part, real, train, args.seed)
        held_out = label_agreement(train, part, "cell_type")
        floor["label_agreement"] = float(held_out.drop("all").mean())
        rows.append({"method": "real floor (train vs test cells)", "cells": cells, **floor})

    table = pd.DataFrame(rows)
    table.to_csv(os.path.join(args.out, "metrics.csv"), index=False)
    rt = pd.DataFrame(recon)
    rt.to_csv(os.path.join(args.out, "reconstruction.csv"), index=False)
    tt = pd.DataFrame({"step": list(times), "seconds": [round(v, 1) for v in times.values()]})
    tt.to_csv(os.path.join(args.out, "times.csv"), index=False)
    cmd = "python benchmarks/finetune.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"# Fine-tuning benchmark: PBMC 3k, new cell type {new!r}",
        "",
        f"Command: `{cmd.strip()}`",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, 1 torch thread, "
        f"Python {platform.python_version()}, torch {torch.__version__}, scvi-tools "
        f"{scvi.__version__}, anndata {ad.__version__}, scgm_scvi {scgm_scvi.__version__}.",
        "",
        f"Data: PBMC 3k, {train.n_obs} train / {test.n_obs} test cells (stratified split, seed "
        f"{args.seed}); reference trained on {ref_train.n_obs} train cells without {new!r}; "
        f"new data = the {query.n_obs} train cells of {new!r} (alone, or with the reference's "
        f"cells); evaluated on {test_new.n_obs} test cells of {new!r} and {test_old.n_obs} test "
        "cells of the other types.",
        "",
        f"Settings: SCGM(n_latent={args.n_latent}, n_hidden={args.n_hidden}, "
        f"n_layers={args.n_layers}, score_width=256, score_blocks={args.score_blocks}), the "
        "package's other defaults (batch norm, global latent scaling, Gaussian score baseline). "
        f"From scratch: VAE {args.vae_epochs} epochs (no early stopping), diffusion "
        f"{args.diffusion_epochs} epochs. Fine-tuning: VAE "
        f"{args.finetune_vae_epochs} epochs (unfrozen rows only), diffusion "
        f"{args.finetune_epochs} epochs, both from the reference's weights. Training seed "
        f"{args.seed} (`scvi.settings.seed`), generation seed {args.seed}, sampler `ode` "
        "(25 steps).",
        "",
        "## Quality on held-out test cells",
        "",
        "G1 metrics (lower is better) are averages over the cell types of each row in 30 PCs fit "
        "on the test cells; `label_agreement` = share of generated cells that a classifier "
        "trained on all train cells assigns to the requested type (for the real floor: its "
        "accuracy on the held-out test cells).",
        "",
        table.to_markdown(index=False, floatfmt=".4g"),
        "",
        "## Can the VAE represent the cells? (test cells encoded and decoded)",
        "",
        "Label agreement of the held-out test cells passed through each model's VAE (posterior "
        "mean, NB sample at the cell's own library size), with the same classifier. The frozen "
        "path keeps the reference's VAE.",
        "",
        rt.to_markdown(index=False, floatfmt=".3g"),
        "",
        "## Wall time (this machine)",
        "",
        tt.to_markdown(index=False),
        "",
    ]
    with open(os.path.join(args.out, "report.md"), "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
