"""Stage-2 choices on one VAE: which way of training and sampling the score model gives cells
closest to real ones (issues 16 and 21).

One SCGM VAE is trained with the package's defaults on the split of ``generation.py``; then the
score network is trained once per variant of ``train_diffusion`` (same VAE, same latents), and
each model generates with each sampler setting. In the same run, for every generation seed:
the real floor, scVI posterior resample and the Gaussian per cell type with posterior noise
(``generation.py``'s baselines), scored with ``scgm_scvi.metrics.evaluate`` (G1, G2, novelty;
``docs/evaluation.md``).

Usage (from the repository root)::

    python benchmarks/stage2.py --data pbmc3k --out benchmarks/results/stage2_pbmc3k \\
        --model-dir benchmarks/_work/stage2_pbmc3k

``--model-dir`` caches the VAE, each variant's model and scVI (a rerun only evaluates). With
``--vae-from DIR`` the VAE is that of a saved model (e.g. ``generation.py``'s cached one, so the
variants compare with its report), stage 2 starting afresh.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from functools import partial
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # BLAS threads fight torch's on 2 cores

import numpy as np
import pandas as pd
import scvi
import torch
from _common import load, machine_line, split  # noqa: E402
from generation import ErrorBudget, headline_table, scvi_posterior_resample  # noqa: E402

from scgm_scvi import SCGM
from scgm_scvi.metrics import evaluate, summarize_runs

#: stage-2 variants: name -> train_diffusion keyword arguments, given the number of cells
VARIANTS = {
    # 0.1's length, the default when the committed reports ran (names kept: they key the cache)
    "EMA 0.999 (defaults)": lambda n: _budget(n, 20_000, 64),
    "no EMA (0.1)": lambda n: {**_budget(n, 20_000, 64), "plan_kwargs": {"ema_decay": 0.0}},
    # half the default optimisation steps (batch 64 on the 90 % training share)
    "EMA 0.999, 10,000 steps": lambda n: _budget(n, 10_000, 64),
    "EMA 0.999, batch 256, 4,000 steps": lambda n: _budget(n, 4_000, 256),
    "EMA 0.999, batch 128, 4,000 steps": lambda n: _budget(n, 4_000, 128),
    "EMA 0.999, batch 256, 8,000 steps": lambda n: _budget(n, 8_000, 256),
    "package defaults": lambda n: {},
    # the package's default length with another setting of the module (MODULE_SETTINGS)
    "per-dimension latent scaling": lambda n: {},
    "score on posterior samples": lambda n: {},
}
#: module attributes a variant changes (set before stage 2 trains and again after loading)
MODULE_SETTINGS = {
    "per-dimension latent scaling": {"latent_scaling": "per_dim"},
    "score on posterior samples": {"diffusion_target": "sample"},
}
#: sampler settings: name -> generate keyword arguments
SAMPLERS = {
    "generate's defaults": {},
    "ode 25 steps": {"sampler": "ode", "n_steps": 25},
    "dpmpp_2m 6 steps": {"sampler": "dpmpp_2m", "n_steps": 6},
    "dpmpp_2m 10 steps": {"sampler": "dpmpp_2m", "n_steps": 10},
    "dpmpp_2m 15 steps": {"sampler": "dpmpp_2m", "n_steps": 15},
}


def _budget(n_cells: int, steps: int, batch_size: int) -> dict:
    """``train_diffusion`` arguments for about ``steps`` optimisation steps (the 90 % training
    share in minibatches of ``batch_size``)."""
    per_epoch = -(-int(0.9 * n_cells) // batch_size)
    return {"batch_size": batch_size, "max_epochs": max(1, round(steps / per_epoch))}


HEADLINE_NOTE = (
    "`w2`, `mmd_rbf`, `w1`, `mmd_linear`, `frechet`: per cell type in 30 PCs, averaged over "
    "cell types; `rf_auc` / `knn_auc` (0.5 = indistinguishable), `pcc` and `label_agreement` "
    "over all cells (the real floor's label agreement is in-sample, hence 1); novelty against "
    "the training cells."
)


def rewrite_headline(out: Path) -> None:
    """Rewrite the headline table of ``out/report.md`` from ``out/summary.csv``."""
    report = (out / "report.md").read_text()
    head, rest = report.split("## Headline (mean ± s.e.m. over seeds)\n", 1)
    tail = rest[rest.index("## Training time") :]
    table = headline_table(pd.read_csv(out / "summary.csv"))
    body = f"\n{HEADLINE_NOTE}\n\n{table.to_markdown()}\n\n"
    (out / "report.md").write_text(f"{head}## Headline (mean ± s.e.m. over seeds)\n{body}{tail}")


def _trained(path: Path, train, fit) -> tuple[SCGM, float]:
    """The model saved at ``path``, or ``fit()``'s, saved there; and the seconds spent."""
    if path.exists():
        return SCGM.load(str(path), adata=train), float("nan")
    t0 = time.perf_counter()
    model = fit()
    seconds = time.perf_counter() - t0
    model.save(str(path))
    return model, seconds


def _vae_of(path: str, train) -> SCGM:
    """The saved model at ``path`` with an untrained score network (its VAE and nothing else
    of stage 2 is used: ``train_diffusion`` refits the rest)."""
    model = SCGM.load(path, adata=train, allow_pickle=True)
    fresh = SCGM(train, **model.init_params_["non_kwargs"])
    model.module.score_net.load_state_dict(fresh.module.score_net.state_dict())
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="pbmc3k", choices=["pbmc3k", "kang12k", "kang2k", "kang1.5k"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument(
        "--samplers",
        nargs="+",
        default=["ode 25 steps"],
        choices=list(SAMPLERS),
        help="sampler settings for the first variant; the others use the first setting",
    )
    p.add_argument("--vae-epochs", type=int, default=None, help="default: scVI's heuristic")
    p.add_argument("--n-latent", type=int, default=None, help="VAE latent size (default SCGM's)")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--vae-from", default=None, help="a saved model whose VAE to use")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--rewrite-headline", action="store_true", help="redo --out's headline from summary.csv"
    )
    args = p.parse_args(argv)
    out, model_dir = Path(args.out), Path(args.model_dir)
    if args.rewrite_headline:
        rewrite_headline(out)
        return
    out.mkdir(parents=True, exist_ok=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    scvi.settings.seed = 0

    adata, batch_key = load(args.data)
    train, test = split(adata)
    sizes = {k: int(v) for k, v in test.obs["cell_type"].value_counts().items() if v > 0}
    SCGM.setup_anndata(train, labels_key="cell_type", batch_key=batch_key)

    def fit_vae():
        model = SCGM(train, **({} if args.n_latent is None else {"n_latent": args.n_latent}))
        model.train_vae(max_epochs=args.vae_epochs, enable_progress_bar=False)
        return model

    if args.vae_from is not None and not (model_dir / "vae").exists():
        fit_vae = partial(_vae_of, args.vae_from, train)
    vae, vae_seconds = _trained(model_dir / "vae", train, fit_vae)
    timings = [{"stage": "VAE", "seconds": vae_seconds}]
    models = {}
    for name in args.variants:
        slug = "".join(c if c.isalnum() else "_" for c in name)

        settings = MODULE_SETTINGS.get(name, {})

        def fit(kwargs=VARIANTS[name], settings=settings):
            scvi.settings.seed = 0
            model = SCGM.load(str(model_dir / "vae"), adata=train)
            for key, value in settings.items():
                setattr(model.module, key, value)
            model.train_diffusion(enable_progress_bar=False, **kwargs(train.n_obs))
            return model

        models[name], seconds = _trained(model_dir / slug, train, fit)
        for key, value in settings.items():  # saved models keep their constructor's settings
            setattr(models[name].module, key, value)
        timings.append({"stage": f"score network: {name}", "seconds": seconds})
    scvi_sample, scvi_seconds, _ = scvi_posterior_resample(
        train, sizes, batch_key, args.vae_epochs, seed=0, model_dir=model_dir / "scvi"
    )
    timings.append({"stage": "scVI", "seconds": scvi_seconds})
    # the Gaussian baseline needs the posterior noise that stage 2 fits (same VAE for all)
    budget = ErrorBudget(next(iter(models.values())), train, test, sizes, batch_key)

    rows = []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        floor_idx = np.concatenate([
            rng.choice(np.flatnonzero(train.obs["cell_type"] == ct), n, replace=False)
            for ct, n in sizes.items()
        ])  # fmt: skip
        candidates = {
            "real floor (train vs test)": lambda s, idx=floor_idx: train[idx].copy(),
            "scVI posterior resample": scvi_sample,
            "Gaussian per type + posterior noise": lambda s: budget.gaussian(s, True),
        }
        for k, (name, model) in enumerate(models.items()):
            for sampler in args.samplers if k == 0 else args.samplers[:1]:
                candidates[f"{name}, {sampler}"] = lambda s, m=model, kw=SAMPLERS[sampler]: (
                    m.generate(n=None, cell_type=sizes, seed=s, **kw)
                )
        for method, make in candidates.items():
            t0 = time.perf_counter()
            generated = make(seed)
            seconds = time.perf_counter() - t0
            res = evaluate(test, generated, "cell_type", train=train, seed=seed)
            res["method"], res["seed"] = method, seed
            rows.append(res)
            print(f"seed {seed} {method}: {seconds:.1f} s", flush=True)

    long = pd.concat(rows, ignore_index=True)
    long.to_csv(out / "metrics_long.csv", index=False)
    summary = summarize_runs(long, by=["method", "group", "metric", "protocol"])
    summary.to_csv(out / "summary.csv", index=False)
    table = headline_table(summary)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# Stage-2 choices on one VAE: {args.data}",
        "",
        f"Command: `python benchmarks/stage2.py {command}`",
        "",
        machine_line(),
        f"Data: {train.n_obs} train / {test.n_obs} test cells x {train.n_vars} genes; split "
        f"seed 0; generation seeds {args.seeds}. Model: {vae._model_summary_string}.",
        "",
        "## Headline (mean ± s.e.m. over seeds)",
        "",
        HEADLINE_NOTE,
        "",
        table.to_markdown(),
        "",
        "## Training time (this machine; nan: loaded from --model-dir)",
        "",
        pd.DataFrame(timings).to_markdown(index=False, floatfmt=".0f"),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
