"""Speed and memory benchmark of SCGM (protocol "Speed" of docs/evaluation.md), CPU by default.

Measured in one run, on this machine, with ``--threads`` torch threads:

1. Stage-1 (VAE) training throughput in cells/s: stock ``scvi.model.SCVI`` (NB, default sizes)
   vs ``SCGM.train_vae`` (default sizes: scVI's 1 x 128 hidden layer, n_latent 256) and SCGM
   with all of scVI's sizes, n_latent 10 included (isolates the wrapper's overhead from the
   larger latent), on the same data and batch size. Every cell is a training cell
   (``train_size=1.0``), no validation, no early stopping; the first epoch is a warm-up and is
   not timed (a Lightning callback times each epoch).
2. Stage-2 (score network) training throughput in latents/s of ``SCGM.train_diffusion`` at the
   default batch of 128, at 0.1's 64 and at larger batches.
3. Sampling: seconds and network evaluations (NFE) per 1,000 generated cells for every sampler
   at its default number of steps, the Heun ODE at 5, 10 and 25 steps, DPM-Solver++(2M) at
   6 and 15 steps and SDE-DPM-Solver++(2M) at 20, split into latent sampling
   (``sample_latent``) and decoding + NB sampling (``decode_latent``).
4. Peak resident memory (``VmHWM``, reset before the call) of a fresh process that loads the
   saved model and generates n cells with ``batch_size=2048``, for two n, next to the size of
   the output itself.

Models are trained for a few epochs only: speed does not depend on quality.

Usage (from the repository root)::

    python benchmarks/speed.py --quick            # tiny settings, about 3 minutes
    python benchmarks/speed.py                    # full: ~20-40 minutes on an idle 2-core CPU

Writes ``report.md``, ``vae_training.csv``, ``diffusion_training.csv``, ``sampling.csv`` and
``memory.csv`` into ``--out`` (default ``benchmarks/results/speed``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # BLAS threads fight torch's on 2 cores
os.environ.setdefault("OMP_NUM_THREADS", "1")

import anndata as ad
import numpy as np
import pandas as pd
import scvi
import torch
from lightning.pytorch.callbacks import Callback

import scgm_scvi
from scgm_scvi import SCGM

SAMPLING_CONFIGS = [  # (sampler, n_steps); None = the sampler's default
    ("dpmpp_2m_sde", None),
    ("ode", None),
    ("ode_euler", None),
    ("euler_maruyama", None),
    ("pc", None),
    ("dpmpp_2m", None),
    ("ode", 5),
    ("ode", 10),
    ("ode", 25),
    ("dpmpp_2m", 6),
    ("dpmpp_2m", 15),
    ("dpmpp_2m_sde", 20),
]


class EpochTimer(Callback):
    """Wall-clock seconds of every training epoch (data loading and optimisation)."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds.append(time.perf_counter() - self._t)


def synthetic(adata: ad.AnnData, n: int, seed: int = 0) -> ad.AnnData:
    """``n`` cells resampled with replacement from ``adata`` (same genes, labels, sparsity)."""
    idx = np.random.default_rng(seed).choice(adata.n_obs, n, replace=True)
    out = adata[idx].copy()
    out.obs_names = [f"cell{i}" for i in range(n)]
    return out


def vae_throughput(adata, data_name, method, batch_size, epochs, warmup):
    """Train stage 1 for ``warmup + epochs`` epochs; cells/s over the timed epochs."""
    a = adata.copy()
    timer = EpochTimer()
    kw = dict(
        max_epochs=warmup + epochs,
        batch_size=batch_size,
        train_size=1.0,
        early_stopping=False,
        check_val_every_n_epoch=None,
        enable_progress_bar=False,
        callbacks=[timer],
    )
    if method == "scVI (defaults)":
        scvi.model.SCVI.setup_anndata(a, labels_key="cell_type")
        model = scvi.model.SCVI(a, gene_likelihood="nb")
        train = model.train
    else:
        SCGM.setup_anndata(a, labels_key="cell_type")
        sizes = {} if method == "SCGM (defaults)" else dict(n_latent=10, n_hidden=128, n_layers=1)
        model = SCGM(a, **sizes)
        train = model.train_vae
    t0 = time.perf_counter()
    train(**kw)
    total = time.perf_counter() - t0
    timed = float(np.sum(timer.seconds[warmup:]))
    n_params = sum(p.numel() for p in model.module.parameters() if p.requires_grad)
    row = {
        "data": data_name,
        "n_cells": a.n_obs,
        "n_genes": a.n_vars,
        "method": method,
        "n_params": n_params,
        "batch_size": batch_size,
        "timed_epochs": len(timer.seconds) - warmup,
        "timed_seconds": timed,
        "cells_per_s": a.n_obs * (len(timer.seconds) - warmup) / timed,
        "warmup_epoch_s": float(np.sum(timer.seconds[:warmup])),
        "total_call_s": total,
    }
    return row, model


def diffusion_throughput(model: SCGM, batch_size, epochs, warmup):
    timer = EpochTimer()
    t0 = time.perf_counter()
    model.train_diffusion(
        max_epochs=warmup + epochs,
        batch_size=batch_size,
        train_size=1.0,
        early_stopping=False,
        check_val_every_n_epoch=None,
        enable_progress_bar=False,
        callbacks=[timer],
    )
    total = time.perf_counter() - t0
    timed = float(np.sum(timer.seconds[warmup:]))
    n = model.adata.n_obs
    return {
        "n_latents": n,
        "n_latent": model.module.n_latent,
        "n_params_score": sum(p.numel() for p in model.module.score_net.parameters()),
        "batch_size": batch_size,
        "timed_epochs": len(timer.seconds) - warmup,
        "timed_seconds": timed,
        "latents_per_s": n * (len(timer.seconds) - warmup) / timed,
        "steps_per_s": np.ceil(n / batch_size) * (len(timer.seconds) - warmup) / timed,
        "total_call_s": total,
        "setup_s (latent pass etc.)": total - float(np.sum(timer.seconds)),
    }


def sampling_speed(model: SCGM, n: int, sampler: str, n_steps: int | None, seed: int = 0):
    cell_types = list(model.conditions_["columns"][0]["categories"])
    t0 = time.perf_counter()
    g = model.generate(n=n, cell_type=cell_types, sampler=sampler, n_steps=n_steps, seed=seed)
    gen_s = time.perf_counter() - t0
    cond = np.stack(
        [g.obs[c["key"]].cat.codes.to_numpy() for c in model.conditions_["columns"]], axis=1
    )
    t0 = time.perf_counter()
    z, nfe = model.sample_latent(cond, sampler=sampler, n_steps=n_steps, seed=seed)
    latent_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.decode_latent(
        z,
        cell_type=g.obs["cell_type"].astype(str).to_numpy(),
        library_size=g.obs["library_size"].to_numpy(),
        seed=seed,
    )
    decode_s = time.perf_counter() - t0
    k = 1000 / g.n_obs
    return {
        "sampler": sampler,
        "n_steps": g.uns["scgm"]["n_steps"],
        "nfe_per_cell": g.uns["scgm"]["network_evaluations_per_cell"],
        "n_cells": g.n_obs,
        "generate_s_per_1000": gen_s * k,
        "sample_latent_s_per_1000": latent_s * k,
        "decode_nb_s_per_1000": decode_s * k,
        "cells_per_s (generate)": g.n_obs / gen_s,
        "nfe_check": nfe,
    }


def _status_mib(field: str) -> float:
    """``VmRSS`` (current) or ``VmHWM`` (peak) resident memory of this process in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset the peak-RSS counter (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(model_dir: str, n: int, batch_size: int, n_steps: int, threads: int) -> None:
    """Run in a fresh process: load, warm up, generate n cells, print peak RSS as JSON."""
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    model = SCGM.load(model_dir)
    model.generate(n=64, sampler="ode", n_steps=2, seed=0)
    gc.collect()
    # ru_maxrss of a child started by fork + exec also counts the parent's RSS at the fork
    # (Linux keeps the pre-exec high-water mark), so the peak is read from VmHWM, the
    # high-water mark of this process's own memory, which clear_refs resets.
    process_peak = _status_mib("VmHWM")
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    reset = _reset_peak()  # so VmHWM below is the peak during generate() only
    before = _status_mib("VmRSS")
    t0 = time.perf_counter()
    g = model.generate(n=n, sampler="ode", n_steps=n_steps, seed=0, batch_size=batch_size)
    secs = time.perf_counter() - t0
    peak = _status_mib("VmHWM")
    X = g.X
    out_mib = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**20
    out_mib += g.obsm["X_scgm"].nbytes / 2**20
    print(
        "MEMORY_JSON "
        + json.dumps(
            {
                "n_cells": n,
                "batch_size": batch_size,
                "n_steps (ode)": n_steps,
                "ru_maxrss_before_generate_MiB": ru_maxrss,
                "peak_before_generate_MiB": process_peak,
                "rss_before_generate_MiB": before,
                "peak_during_generate_MiB": peak,
                "growth_MiB": peak - before,
                "output_MiB (X csr + latent)": out_mib,
                "growth_minus_output_MiB": peak - before - out_mib,
                "peak_reset": reset,
                "nnz_per_cell": X.nnz / n,
                "seconds": secs,
            }
        ),
        flush=True,
    )


def memory_run(model_dir, n, batch_size, n_steps, threads) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--_memory-child",
        model_dir,
        str(n),
        str(batch_size),
        str(n_steps),
        "--threads",
        str(threads),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in res.stdout.splitlines():
        if line.startswith("MEMORY_JSON "):
            return json.loads(line[len("MEMORY_JSON ") :])
    raise RuntimeError(f"memory child failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/speed")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--quick", action="store_true", help="tiny settings to check the script")
    p.add_argument(
        "--synthetic-cells",
        type=int,
        default=20_000,
        help="cells of the resampled PBMC set for stage 1 (0: skip; --quick: skip)",
    )
    p.add_argument("--epochs", type=int, default=5, help="timed epochs (after 1 warm-up epoch)")
    p.add_argument("--sample-cells", type=int, default=1000, help="cells per sampling config")
    p.add_argument("--memory-cells", type=int, nargs="+", default=[20_000, 100_000])
    p.add_argument(
        "--memory-steps",
        type=int,
        default=5,
        help="ODE steps in the memory runs (memory does not depend on it)",
    )
    p.add_argument("--_memory-child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args._memory_child:
        d, n, bs, steps = args._memory_child
        memory_child(d, int(n), int(bs), int(steps), args.threads)
        return
    if args.quick:
        args.synthetic_cells, args.epochs, args.sample_cells = 0, 1, 100
        args.memory_cells = [2_048, 8_192]
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("scvi").setLevel(logging.ERROR)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scvi.settings.seed = 0
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    warmup = 1
    diff_epochs = 3 if args.quick else 20

    pbmc = scgm_scvi.data.pbmc3k()
    datasets = {"pbmc3k": pbmc}
    if args.synthetic_cells:
        datasets[f"pbmc resampled {args.synthetic_cells // 1000}k"] = synthetic(
            pbmc, args.synthetic_cells
        )

    # 1. stage-1 throughput
    vae_rows, scgm_pbmc = [], None
    for data_name, adata in datasets.items():
        for batch_size in (128, 1024):
            for method in ("scVI (defaults)", "SCGM (defaults)", "SCGM (scVI sizes)"):
                row, model = vae_throughput(
                    adata, data_name, method, batch_size, args.epochs, warmup
                )
                vae_rows.append(row)
                print(
                    f"VAE {data_name} bs {batch_size} {method}: {row['cells_per_s']:.0f} cells/s",
                    flush=True,
                )
                if data_name == "pbmc3k" and method == "SCGM (defaults)" and batch_size == 128:
                    scgm_pbmc = model
    vae = pd.DataFrame(vae_rows)
    vae.to_csv(out / "vae_training.csv", index=False)

    # 2. stage-2 throughput (on the pbmc3k SCGM, default sizes, VAE from step 1)
    diff_rows = []
    for batch_size in (64, 128, 256, 1024):  # 128 is train_diffusion's default (0.1: 64)
        row = diffusion_throughput(scgm_pbmc, batch_size, diff_epochs, warmup)
        diff_rows.append(row)
        print(f"diffusion bs {batch_size}: {row['latents_per_s']:.0f} latents/s", flush=True)
    diff = pd.DataFrame(diff_rows)
    diff.to_csv(out / "diffusion_training.csv", index=False)

    # 3. sampling (the last train_diffusion call above left a trained score network)
    scgm_pbmc.generate(n=64, sampler="ode", n_steps=2, seed=0)  # warm-up
    samp_rows = []
    for sampler, n_steps in SAMPLING_CONFIGS:
        row = sampling_speed(scgm_pbmc, args.sample_cells, sampler, n_steps)
        row = {"config": "default steps" if n_steps is None else "step sweep", **row}
        samp_rows.append(row)
        print(
            f"sampling {sampler} {row['n_steps']} steps: "
            f"{row['generate_s_per_1000']:.2f} s / 1000 cells",
            flush=True,
        )
    samp = pd.DataFrame(samp_rows)
    assert (samp["nfe_check"] == samp["nfe_per_cell"]).all()
    samp = samp.drop(columns="nfe_check")
    samp.to_csv(out / "sampling.csv", index=False)

    # 4. peak memory in fresh processes
    mem_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scgm_pbmc.save(tmp, overwrite=True, save_anndata=False)
        for n in args.memory_cells:
            row = memory_run(tmp, n, 2048, args.memory_steps, args.threads)
            mem_rows.append(row)
            peak, growth = row["peak_during_generate_MiB"], row["growth_MiB"]
            print(f"memory {n} cells: peak {peak:.0f} MiB, growth {growth:.0f} MiB", flush=True)
    mem = pd.DataFrame(mem_rows)
    mem.to_csv(out / "memory.csv", index=False)

    load_end = os.getloadavg()
    elapsed = time.perf_counter() - t_start
    cmd = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    fmt = {"floatfmt": ".4g", "index": False}
    lines = [
        '# Speed and memory benchmark (protocol "Speed", docs/evaluation.md)',
        "",
        f"Command: `{cmd}`" + (" (quick settings)" if args.quick else ""),
        "",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({args.threads} thread(s), "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}), "
        f"scvi-tools {scvi.__version__}, scgm_scvi {scgm_scvi.__version__}, "
        f"Python {platform.python_version()}, model device {scgm_pbmc.device} "
        f"(CUDA available: {torch.cuda.is_available()}).",
        f"Load average (1, 5, 15 min) at start {tuple(round(x, 2) for x in load_start)}, "
        f"at end {tuple(round(x, 2) for x in load_end)}; the whole run took {elapsed:.0f} s.",
        "",
        "## 1. Stage-1 (NB-VAE) training throughput",
        "",
        f"{warmup} warm-up epoch, then {args.epochs} timed epoch(s); all cells train "
        "(`train_size=1.0`), no validation, no early stopping. cells/s = cells x timed epochs "
        "/ seconds of the timed epochs. `SCGM (scVI sizes)` = `SCGM(n_latent=10, n_hidden=128, "
        "n_layers=1)`, the stage-1 network of scVI's defaults inside SCGM.",
        "",
        vae.to_markdown(**fmt),
        "",
        "## 2. Stage-2 (score network) training throughput",
        "",
        f"pbmc3k, SCGM default sizes; {warmup} warm-up epoch then {diff_epochs} timed epochs, "
        "all latents train, no validation. The setup column is the rest of the call "
        "(the streaming latent pass over the data, trainer construction).",
        "",
        diff.to_markdown(**fmt),
        "",
        "## 3. Sampling (per 1,000 generated cells)",
        "",
        f"pbmc3k model (VAE {args.epochs + warmup} epochs at batch 128, score network "
        f"{diff_epochs + warmup} epochs: speed does not depend on quality), "
        f"{args.sample_cells} cells per configuration split evenly over the cell types, "
        "batch_size 2048. `generate` = the whole call; `sample_latent` and `decode_latent` "
        "(decoder + NB draws, 2,000 genes) were timed in separate calls on the same conditions.",
        "",
        samp.to_markdown(**fmt),
        "",
        "## 4. Peak memory of generation",
        "",
        "Each row is a fresh Python process: load the saved model (no AnnData), warm up, then "
        f"`generate(n, sampler='ode', n_steps={args.memory_steps}, batch_size=2048)`. "
        "The peak counter is reset after the warm-up (`/proc/self/clear_refs`, `peak_reset`), "
        "so `peak_during_generate` is the resident high-water mark (`VmHWM`) of the `generate` "
        "call alone (`ru_maxrss` is not used for it: after fork + exec it keeps the parent's "
        "RSS, shown as `ru_maxrss_before_generate`); `growth` = "
        "that peak minus the resident memory just before the call. The output (CSR counts + "
        "latent) is part of the peak and grows with n by construction; the working memory is "
        "the growth minus the output. `peak_before_generate` is the process peak of imports, "
        "loading and warm-up.",
        "",
        mem.to_markdown(**fmt),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
