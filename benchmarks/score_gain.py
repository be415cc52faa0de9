"""How much does the score network add to its Gaussian baseline? (issue 16)

SCGM's noise prediction is ``eps = baseline + alpha * network``, the baseline being the exact
``eps`` of a Gaussian per cell type (``score_baseline="gaussian"``). For a trained model this
script noises the latents of the training cells and of the held-out cells of
``generation.py``'s split at a few diffusion times ``t`` (same noise for both predictions) and
reports the squared error of the full prediction relative to the baseline's alone:
``100 * (err(full) / err(baseline) - 1)`` in percent. Negative: the network improves on a
Gaussian per type; about 0: it adds nothing the sampler could use.

Usage (from the repository root), for models saved by ``stage2.py`` or ``generation.py``::

    python benchmarks/score_gain.py --data pbmc3k --model benchmarks/_work/gen_pbmc3k/scgm \\
        --out benchmarks/results/score_gain_pbmc3k
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pandas as pd
import torch
from _common import load, machine_line, split  # noqa: E402

from scgm_scvi import SCGM

TIMES = (0.01, 0.05, 0.1, 0.2, 0.4, 0.7)


def condition_codes(model: SCGM, adata, keys: list[str]) -> torch.Tensor:
    """Integer codes of the cell type (and batch) of ``adata``'s cells, as the model has them."""
    columns = model.conditions_["columns"]
    codes = [
        [list(col["categories"]).index(v) for v in adata.obs[key].astype(str)]
        for col, key in zip(columns, keys, strict=False)
    ]
    return torch.as_tensor(codes).T


@torch.inference_mode()
def relative_gain(model: SCGM, adata, keys: list[str], seed: int = 0) -> dict[float, float]:
    """Per time: 100 * (squared error of the full eps / that of the baseline alone - 1)."""
    module = model.module
    module.eval()
    x0 = module.standardize(torch.as_tensor(model.get_latent_representation(adata)))
    cond = condition_codes(model, adata, keys)
    out = {}
    for t_value in TIMES:
        torch.manual_seed(seed)
        t = torch.full((len(x0),), t_value)
        noise = torch.randn_like(x0)
        alpha, sigma = module.sde.marginal(t)
        xt = alpha[:, None] * x0 + sigma[:, None] * noise
        base = ((module.baseline_eps(xt, t, cond) - noise) ** 2).sum(1).mean()
        full = ((module.eps(xt, t, cond) - noise) ** 2).sum(1).mean()
        out[t_value] = float(100 * (full / base - 1))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="pbmc3k", choices=["pbmc3k", "kang12k", "kang2k", "kang1.5k"])
    p.add_argument("--model", nargs="+", required=True, help="saved model directories")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    adata, batch_key = load(args.data)
    train, test = split(adata)
    keys = ["cell_type"] + ([batch_key] if batch_key else [])
    SCGM.setup_anndata(train, labels_key="cell_type", batch_key=batch_key)
    rows = []
    for path in args.model:
        model = SCGM.load(path, adata=train)
        for cells, data in (("training cells", train), ("held-out cells", test.copy())):
            gain = {f"t={t:g}": v for t, v in relative_gain(model, data, keys).items()}
            rows.append({"model": path, "cells": cells, **gain})
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "score_gain.csv", index=False)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# Score network against its Gaussian baseline: {args.data}",
        "",
        f"Command: `python benchmarks/score_gain.py {command}`",
        "",
        machine_line(),
        "",
        "Squared error of the noise prediction, full model relative to the cell-type Gaussian "
        "baseline alone, in percent (negative: the network helps), at diffusion time t "
        "(data at 0, noise at 1), on the split of `generation.py`.",
        "",
        table.to_markdown(index=False, floatfmt="+.1f"),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
