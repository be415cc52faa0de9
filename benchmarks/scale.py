"""Scale benchmark: generate N cells straight to disk, then train a fresh SCGM on that file backed.

For every N, two fresh Python processes (so that each peak resident memory belongs to one step):

1. ``generate``: load a small SCGM trained on PBMC 3k and write N cells to an ``.h5ad`` with
   ``model.generate(n=N, out=path, sampler="ode_euler", n_steps=...)`` (chunks of
   ``--batch-size`` cells appended to the file);
2. ``train``: open that file with ``anndata.read_h5ad(path, backed="r")`` and train a new SCGM on
   it (``--vae-epochs`` / ``--diffusion-epochs``): minibatches are read from disk, the stage-2
   latent pass streams over the file.

Reported per step: wall time, cells per second and the process's peak RSS
(``VmHWM`` from ``/proc/self/status``). If memory does not grow with N, the chunked
paths work. What does grow, by design: ``obs`` (anndata keeps it in memory, also when backed)
and, in ``generate``, the cell types and library sizes drawn up front (tens of bytes per
cell). Stage 2 keeps its latents on disk for a backed AnnData (``latent_storage="auto"``).
The generated file has no ``obsm`` latents unless ``--latents``: anndata would load them into
memory when the file is opened backed (1 GB per million cells).

Run from the repository root::

    python benchmarks/scale.py --n 20000 100000 --out benchmarks/results/scale
    # on a GPU machine
    python benchmarks/scale.py --n 100000 1000000 --accelerator gpu --out /tmp/scale_gpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _status_mb(field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (current) of this process from ``/proc/self/status``.

    Unlike ``ru_maxrss``, ``VmHWM`` belongs to this process's own address space: it does not
    inherit the parent's peak through fork + exec.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: best effort


def _peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def _child(args) -> dict:
    """One measured step, run in its own process; prints a JSON line."""
    import anndata as ad
    import torch

    import scgm_scvi

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    fit = {"accelerator": args.accelerator, "enable_progress_bar": False}
    n = args.n[0]
    base = _peak_rss_mb()
    if args.step == "fit-model":
        import scvi

        scvi.settings.seed = args.seed
        adata = scgm_scvi.data.pbmc3k()
        scgm_scvi.SCGM.setup_anndata(adata, labels_key="cell_type")
        model = scgm_scvi.SCGM(adata)
        model.train_vae(max_epochs=5, **fit)
        model.train_diffusion(max_epochs=20, **fit)
        model.save(args.model, overwrite=True)
        return {"step": args.step}
    t0 = time.perf_counter()
    if args.step == "generate":
        model = scgm_scvi.SCGM.load(args.model, accelerator=args.accelerator)
        base = _peak_rss_mb()
        t0 = time.perf_counter()
        model.generate(
            n=n,
            sampler="ode_euler",
            n_steps=args.n_steps,
            seed=args.seed,
            batch_size=args.batch_size,
            out=args.file,
            overwrite=True,
            progress_bar=False,
            latent_key="X_scgm" if args.latents else None,
        )
        size = os.path.getsize(args.file) / 2**20
        out = {"file_mb": round(size, 1)}
    elif args.step == "train":
        import scvi

        scvi.settings.seed = args.seed
        adata = ad.read_h5ad(args.file, backed="r")
        assert adata.isbacked
        scgm_scvi.SCGM.setup_anndata(adata, labels_key="cell_type")
        model = scgm_scvi.SCGM(adata)
        base = _peak_rss_mb()
        t0 = time.perf_counter()
        model.train_vae(
            max_epochs=args.vae_epochs,
            batch_size=args.train_batch_size,
            early_stopping=False,
            **fit,
        )
        t_vae = time.perf_counter() - t0
        model.train_diffusion(
            max_epochs=args.diffusion_epochs, batch_size=args.train_batch_size, **fit
        )
        out = {"vae_s": round(t_vae, 1)}
    seconds = time.perf_counter() - t0
    return {
        "step": args.step,
        "n": n,
        "seconds": round(seconds, 1),
        "cells_per_s": round(n * (1 if args.step == "generate" else args.vae_epochs) / seconds, 1),
        "rss_before_mb": round(base, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        **out,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[20_000, 100_000], help="cells per run")
    p.add_argument("--n-steps", type=int, default=5, help="ode_euler steps")
    p.add_argument("--batch-size", type=int, default=4096, help="generation chunk")
    p.add_argument("--train-batch-size", type=int, default=1024)
    p.add_argument("--vae-epochs", type=int, default=1)
    p.add_argument("--diffusion-epochs", type=int, default=2)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--malloc-check",
        action="store_true",
        help="repeat both steps with MALLOC_MMAP_THRESHOLD_=1048576 (glibc fragmentation)",
    )
    p.add_argument(
        "--latents",
        action="store_true",
        help="also write obsm['X_scgm'] (anndata loads obsm of a backed file into memory)",
    )
    p.add_argument("--out", default="benchmarks/results/scale")
    p.add_argument("--work", default=None, help="scratch directory (default: OUT/_work)")
    # internal: one measured step
    p.add_argument("--step", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--file", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.step is not None:
        print("RESULT " + json.dumps(_child(args)), flush=True)
        return

    import pandas as pd  # the heavy imports come after the measured child processes

    work = args.work or os.path.join(args.out, "_work")
    os.makedirs(work, exist_ok=True)
    model_dir = os.path.join(work, "model")
    common = [
        "--n-steps", str(args.n_steps), "--batch-size", str(args.batch_size),
        "--train-batch-size", str(args.train_batch_size), "--vae-epochs", str(args.vae_epochs),
        "--diffusion-epochs", str(args.diffusion_epochs), "--accelerator", args.accelerator,
        "--threads", str(args.threads), "--seed", str(args.seed), "--model", model_dir,
        *(["--latents"] if args.latents else []),
    ]  # fmt: skip

    def run(step, n=0, file="", env=None):
        cmd = [sys.executable, __file__, "--step", step, "--n", str(n), "--file", file, *common]
        res = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}
        )
        lines = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
        if res.returncode != 0 or not lines:
            sys.stderr.write(res.stdout[-3000:] + res.stderr[-5000:])
            raise SystemExit(f"step {step} (n={n}) failed")
        return json.loads(lines[-1][len("RESULT ") :])

    t0 = time.perf_counter()
    fitted = not os.path.isdir(model_dir)
    if fitted:
        run("fit-model")
    fit_s = time.perf_counter() - t0
    fit_note = f"{fit_s:.0f} s" if fitted else f"reused from {model_dir}"
    rows = []
    malloc_env = {"MALLOC_MMAP_THRESHOLD_": "1048576"}
    for n in args.n:
        file = os.path.join(work, f"generated_{n}.h5ad")
        rows.append(run("generate", n, file))
        print(rows[-1], flush=True)
        rows.append(run("train", n, file))
        print(rows[-1], flush=True)
        if args.malloc_check:  # the same steps with glibc's mmap threshold fixed
            for step in ("generate", "train"):
                rows.append({**run(step, n, file, malloc_env), "step": f"{step} (mmap 1M)"})
                print(rows[-1], flush=True)
        os.remove(file)
    import anndata as ad
    import scvi
    import torch

    import scgm_scvi

    table = pd.DataFrame(rows)
    os.makedirs(args.out, exist_ok=True)
    table.to_csv(os.path.join(args.out, "scale.csv"), index=False)
    cmd = "python benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Scale benchmark: generate to disk, train from a backed file",
        "",
        f"Command: `{cmd.strip()}`",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs (shared with other jobs while "
        f"this ran), {args.threads} torch thread(s), accelerator {args.accelerator}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, scvi-tools "
        f"{scvi.__version__}, anndata {ad.__version__}, scgm_scvi {scgm_scvi.__version__}.",
        "",
        f"Model: default SCGM architecture (n_latent 256) trained on PBMC 3k for 5 VAE + 20 "
        f"diffusion epochs ({fit_note}, seed {args.seed}), only as a source of cells: the "
        "quality of these cells is not the point here.",
        "",
        f"`generate`: `model.generate(n=N, out=file, sampler='ode_euler', n_steps={args.n_steps}, "
        f"batch_size={args.batch_size}, seed={args.seed}, "
        f"latent_key={'X_scgm' if args.latents else None!r})`, cells/s = N / seconds. "
        f"`train`: a new SCGM on `anndata.read_h5ad(file, backed='r')`, {args.vae_epochs} VAE "
        f"epoch(s) (batch {args.train_batch_size}, `vae_s`) then {args.diffusion_epochs} "
        "diffusion epochs including the streaming latent pass; cells/s = N x VAE epochs / "
        "seconds of both stages. `rss_before_mb` = peak RSS (`VmHWM`) after imports and "
        "loading, before the measured step; `peak_rss_mb` = peak RSS of the process at the "
        "end; each row is a fresh process.",
        "",
        table.to_markdown(index=False),
        "",
        "What grows with N by design: in `generate`, the cell types, covariates and library "
        "sizes drawn up front (tens of bytes per cell); in `train`, anndata's in-memory `obs` "
        "of the backed file (in `rss_before_mb`). Stage 2 reads its latents from a temporary "
        "file (`latent_storage='auto'` for a backed AnnData). Rows marked `(mmap 1M)` "
        "(`--malloc-check`) repeat the step in a process started with "
        "`MALLOC_MMAP_THRESHOLD_=1048576`: glibc then keeps serving buffers of 1 MB and more "
        "with mmap instead of raising that threshold and serving them from its heap, where the "
        "per-minibatch buffers fragment it.",
        "",
    ]
    with open(os.path.join(args.out, "report.md"), "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
