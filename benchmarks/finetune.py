"""Fine-tuning benchmark: teach a trained SCGM a cell type it never saw, vs training from scratch.

PBMC 3k, stratified 80/20 split (seed 0). A reference SCGM is trained on the train cells without
one cell type (default ``B``); the train cells of that type then come as a query
(``SCGM.load_query_data``) and only stage 2 is fine-tuned on them (the query brings no new batch,
so scArches' VAE surgery has no weight to train). Compared with an SCGM trained from scratch on
all train cells, on the held-out test cells: protocol G1 (W1, W2, linear and RBF MMD in 30 PCs
fit on the test cells) and label agreement for the new type, the same for the reference's types
(to see whether fine-tuning changed them), and wall time.

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

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scvi  # noqa: E402
import torch  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import scgm_scvi  # noqa: E402
from scgm_scvi.metrics import evaluate  # noqa: E402

METRICS = ["w1", "w2", "mmd_linear", "mmd_rbf", "label_agreement"]


def split(adata: ad.AnnData, seed: int = 0) -> tuple[ad.AnnData, ad.AnnData]:
    """Stratified 80/20 split by cell type (as ``benchmarks/generation.py``)."""
    idx = np.arange(adata.n_obs)
    tr, te = train_test_split(
        idx, test_size=0.2, stratify=adata.obs["cell_type"], random_state=seed
    )
    return adata[np.sort(tr)].copy(), adata[np.sort(te)].copy()


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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--held-out", default="B", help="cell type missing from the reference")
    p.add_argument("--vae-epochs", type=int, default=100)
    p.add_argument("--diffusion-epochs", type=int, default=400)
    p.add_argument("--finetune-epochs", type=int, default=600)
    p.add_argument("--seed", type=int, default=0, help="split, training and generation seed")
    p.add_argument("--out", default="benchmarks/results/finetune")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    os.makedirs(args.out, exist_ok=True)
    fit = {"accelerator": "cpu", "enable_progress_bar": False}

    adata = scgm_scvi.data.pbmc3k()
    train, test = split(adata, args.seed)
    new = args.held_out
    if new not in set(train.obs["cell_type"]):
        raise SystemExit(
            f"Unknown cell type {new!r}; choose from {sorted(set(train.obs.cell_type))}"
        )
    ref_train = train[train.obs["cell_type"] != new].copy()
    query = train[train.obs["cell_type"] == new].copy()
    test_new = test[test.obs["cell_type"] == new].copy()
    test_old = test[test.obs["cell_type"] != new].copy()
    rows, times = [], {}

    def train_full(data):
        scvi.settings.seed = args.seed
        scgm_scvi.SCGM.setup_anndata(data, labels_key="cell_type")
        model = scgm_scvi.SCGM(data)
        t0 = time.perf_counter()
        model.train_vae(max_epochs=args.vae_epochs, **fit)
        model.train_diffusion(max_epochs=args.diffusion_epochs, **fit)
        return model, time.perf_counter() - t0

    # 1. reference without the held-out type
    ref, times["reference training (both stages, without the new type)"] = train_full(ref_train)
    rows.append(
        {
            "method": "reference (no fine-tuning)",
            "cells": "reference types",
            **score(test_old, generate_like(ref, test_old, args.seed), train, args.seed),
        }
    )

    # 2. fine-tune: only the new label's embedding, then the whole score network
    for mode in ("new_conditions", "all"):
        scvi.settings.seed = args.seed
        t0 = time.perf_counter()
        q = scgm_scvi.SCGM.load_query_data(query, ref)
        q.train_diffusion(max_epochs=args.finetune_epochs, finetune=mode, **fit)
        times[f"fine-tuning, finetune={mode!r} (stage 2 on {query.n_obs} query cells)"] = (
            time.perf_counter() - t0
        )
        name = f"query fine-tuned, finetune={mode!r}"
        rows.append(
            {
                "method": name,
                "cells": f"new type ({new})",
                **score(test_new, generate_like(q, test_new, args.seed), train, args.seed),
            }
        )
        rows.append(
            {
                "method": name,
                "cells": "reference types",
                **score(test_old, generate_like(q, test_old, args.seed), train, args.seed),
            }
        )

    # 3. from scratch on all train cells
    full, times["from scratch (both stages, all train cells)"] = train_full(train.copy())
    for cells, part in ((f"new type ({new})", test_new), ("reference types", test_old)):
        rows.append(
            {
                "method": "from scratch",
                "cells": cells,
                **score(part, generate_like(full, part, args.seed), train, args.seed),
            }
        )

    # real floor: train vs test cells
    for cells, part in ((f"new type ({new})", test_new), ("reference types", test_old)):
        real = train[train.obs["cell_type"].isin(set(part.obs["cell_type"]))].copy()
        real.obs = real.obs[["cell_type"]].rename(columns={"cell_type": "labels"})
        rows.append(
            {
                "method": "real floor (train vs test cells)",
                "cells": cells,
                **score(part, real, train, args.seed),
            }
        )

    table = pd.DataFrame(rows)
    table.to_csv(os.path.join(args.out, "metrics.csv"), index=False)
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
        f"query = the {query.n_obs} train cells of {new!r}; evaluated on {test_new.n_obs} test "
        f"cells of {new!r} and {test_old.n_obs} test cells of the other types.",
        "",
        f"Settings: default SCGM architecture; VAE {args.vae_epochs} epochs (scVI early "
        f"stopping on), diffusion {args.diffusion_epochs} epochs, fine-tuning "
        f"{args.finetune_epochs} epochs; training seed {args.seed} (`scvi.settings.seed`), "
        f"generation seed {args.seed}, sampler `ode` (25 steps). Only stage 2 is fine-tuned: "
        "the query has no new batch, so scArches leaves no VAE weight to train, and the new "
        "type is encoded by the reference's VAE as it is.",
        "",
        "## Quality on held-out test cells",
        "",
        "G1 metrics (lower is better) are averages over the cell types of each row in 30 PCs fit "
        "on the test cells; `label_agreement` = share of generated cells that a classifier "
        "trained on all train cells assigns to the requested type.",
        "",
        table.to_markdown(index=False, floatfmt=".4g"),
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
