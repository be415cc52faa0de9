"""Precision and compilation benchmark: bfloat16 autocast and ``torch.compile``, speed and quality.

1. Score network alone (default sizes: n_latent 256, 4 blocks x 256), on this machine's CPU or
   GPU: milliseconds per training step (batch 256, forward + backward + Adam) and per sampling
   evaluation (batch 2048) in float32, under bfloat16 autocast, and after
   ``score_net.compile()`` (the compilation time is reported separately).
2. Quality, PBMC 3k as in ``generation.py`` (stratified 80/20 split, one VAE): stage 2 trained
   in float32 and with Lightning's ``precision="bf16-mixed"``, each sampled with the ODE
   (25 Heun steps) in float32 and with ``generate(precision="bf16-mixed")``; W2, RBF-MMD and
   label agreement (types with >= 100 cells) against the held-out cells, over generation seeds;
   training seconds and generation seconds per 1,000 cells (sampling + decoding).

Run from the repository root::

    python benchmarks/precision.py --out benchmarks/results/precision
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import _common  # noqa: E402  (the same data and split as generation.py)
import numpy as np
import pandas as pd
import scvi
import torch

from scgm_scvi import SCGM  # noqa: E402
from scgm_scvi.metrics import evaluate  # noqa: E402
from scgm_scvi.module import SCGMModule  # noqa: E402


def time_network(mode: str, device: str, steps: int) -> dict:
    """Milliseconds per training step and per sampling evaluation of the score network."""
    torch.manual_seed(0)
    module = SCGMModule(n_input=2000, n_labels=9).to(device)
    opt = torch.optim.Adam(module.score_net.parameters(), 1e-3)
    batch = {
        "z_loc": torch.randn(256, 256, device=device),
        "cond": torch.randint(0, 9, (256, 1), device=device),
    }
    x = torch.randn(2048, 256, device=device)
    t = torch.full((2048,), 0.5, device=device)
    cond = torch.randint(0, 9, (2048, 1), device=device)

    def autocast():
        return torch.autocast(device, dtype=torch.bfloat16, enabled=mode == "bf16 autocast")

    def train_step():
        module.train()
        with autocast():
            loss = module.diffusion_loss(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    def evaluation():
        module.eval()
        with torch.inference_mode(), autocast():
            module.eps(x, t, cond)

    compile_s = np.nan
    if mode == "torch.compile":
        t0 = time.perf_counter()
        module.score_net.compile()
        train_step()  # compiles the training graph
        evaluation()  # and the inference graph
        compile_s = time.perf_counter() - t0
    train_step()  # warm-up
    evaluation()
    ms = {}
    for name, fn, n in (("train", train_step, steps), ("sample", evaluation, steps // 2)):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        ms[name] = 1000 * (time.perf_counter() - t0) / n
    return {
        "mode": mode,
        "train_ms_per_step_b256": ms["train"],
        "sample_ms_per_eval_b2048": ms["sample"],
        "compile_s": compile_s,
    }


def network_speed(device: str, steps: int) -> pd.DataFrame:
    rows = []
    for mode in ("float32", "bf16 autocast", "torch.compile"):
        rows.append(time_network(mode, device, steps))
        print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def quality(args) -> pd.DataFrame:
    adata, _ = _common.load("pbmc3k")
    train, test = _common.split(adata)
    sizes = {k: int(v) for k, v in test.obs["cell_type"].value_counts().items() if v > 0}
    big = [k for k, v in adata.obs["cell_type"].value_counts().items() if v >= 100]
    scvi.settings.seed = 0
    SCGM.setup_anndata(train, labels_key="cell_type")
    model = SCGM(train)
    fit = {"accelerator": args.accelerator, "enable_progress_bar": False}
    model.train_vae(max_epochs=args.vae_epochs, **fit)
    vae = {k: v.clone() for k, v in model.module.state_dict().items()}
    rows = []
    for train_precision in ("32-true", "bf16-mixed"):
        model.module.load_state_dict(vae)
        scvi.settings.seed = 0
        t0 = time.perf_counter()
        model.train_diffusion(max_epochs=args.diffusion_epochs, precision=train_precision, **fit)
        train_s = time.perf_counter() - t0
        for sample_precision in ("32-true", "bf16-mixed"):
            for seed in args.seeds:
                t0 = time.perf_counter()
                g = model.generate(
                    n=None, cell_type=sizes, sampler="ode", seed=seed, precision=sample_precision
                )
                gen_s = time.perf_counter() - t0
                res = evaluate(test, g, "cell_type", train=train, seed=seed)
                mean = res[res["group"] == "mean"].set_index("metric")["value"]
                agreement = res[(res["metric"] == "label_agreement") & res["group"].isin(big)]
                rows.append(
                    {
                        "stage2_training": train_precision,
                        "sampling": sample_precision,
                        "seed": seed,
                        "w2": mean["w2"],
                        "mmd_rbf": mean["mmd_rbf"],
                        "label_agreement": agreement["value"].mean(),
                        "stage2_train_s": train_s,
                        "generate_s_per_1000_cells": 1000 * gen_s / g.n_obs,
                    }
                )
                print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/precision")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--steps", type=int, default=60, help="timed training steps")
    p.add_argument("--vae-epochs", type=int, default=None, help="default: scVI's heuristic")
    p.add_argument("--diffusion-epochs", type=int, default=600)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if args.accelerator == "gpu" else "cpu"

    speed = network_speed(device, args.steps)
    speed.to_csv(out / "network_speed.csv", index=False)
    long = quality(args)
    long.to_csv(out / "quality_long.csv", index=False)
    keys = ["stage2_training", "sampling"]
    metrics = ["w2", "mmd_rbf", "label_agreement", "stage2_train_s", "generate_s_per_1000_cells"]
    summary = long.groupby(keys, sort=False)[metrics].agg(["mean", "sem"])
    table = pd.DataFrame(index=summary.index)
    for m in metrics:
        table[m] = [
            f"{mu:.4g}" + ("" if m.endswith("_s") else f" ± {se:.2g}")
            for mu, se in zip(summary[(m, "mean")], summary[(m, "sem")], strict=True)
        ]
    cpu = platform.processor() or platform.machine()
    lines = [
        "# bfloat16 autocast and torch.compile",
        "",
        "Command: `python benchmarks/precision.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + "`",
        "",
        f"Machine: {platform.platform()} ({cpu}), {os.cpu_count()} CPUs, 1 torch thread, "
        f"device {device}, torch {torch.__version__}, scvi-tools {scvi.__version__}.",
        "",
        "## Score network alone (default sizes)",
        "",
        speed.to_markdown(index=False, floatfmt=".2f"),
        "",
        "## Quality on PBMC 3k (held-out 20 %), ODE sampler, 25 steps",
        "",
        f"Stage 2 trained {args.diffusion_epochs} epochs from the same VAE; mean ± s.e.m. over "
        f"generation seeds {args.seeds}. `generate_s_per_1000_cells` includes decoding and NB "
        "sampling (float32).",
        "",
        table.reset_index().to_markdown(index=False),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
