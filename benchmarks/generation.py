"""Cell-type-conditional generation benchmark (G1, G2, FReD, novelty; docs/evaluation.md).

Split: stratified by cell type, 80 % train / 20 % test (seed 0). SCGM and the baselines see only
the train cells. For every cell type, as many cells are generated as the test split holds.
Compared in the same run, for each generation seed:

- real floor: train cells vs test cells (a random subsample of train of the test's size per type,
  without replacement: repeated cells would inflate the RBF-MMD);
  its ``label_agreement`` is the classifier's accuracy on the real TEST cells (cells it did not
  see), the ceiling that generated cells can be expected to reach;
- scVI posterior resample: stock ``scvi.model.SCVI`` (NB) on the train cells with scVI's own
  training defaults (epoch heuristic, no early stopping; ``--vae-epochs`` fixes the same number
  of epochs for both models), train cells of the type encoded, z ~ q(z|x), decoded, NB counts
  sampled; with ``--kl-warmup`` (SCGM's VAE warms its KL weight up over that many epochs
  instead of scVI's 400) also a scVI trained the same way;
- Gaussian prior baseline: a Gaussian per cell type fit to SCGM's own VAE latents (posterior
  means), decoded by the same decoder (isolates what the score model adds);
- SCGM with each sampler at guidance weight 1 (seconds and network evaluations per 1,000 cells
  are recorded), and the ODE sampler at the extra guidance weights of ``--extra-guidance``
  (at every time, and with ``--guidance-interval`` also only inside that interval of times).

Usage (from the repository root)::

    python benchmarks/generation.py --data pbmc3k --seeds 0 1 2 --out benchmarks/results/pbmc3k

Writes ``report.md``, ``metrics_long.csv`` (every metric, group, method, seed), ``summary.csv``
(mean and s.e.m. over seeds) and ``speed.csv`` into ``--out``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # BLAS threads fight torch's on 2 cores

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import scvi
import torch
from _common import load, machine_line, split, vae_architecture, vae_norm  # noqa: E402

from scgm_scvi import SCGM
from scgm_scvi.metrics import evaluate, label_agreement, summarize_runs
from scgm_scvi.model._constants import NORM_KWARGS

DEFAULT_DIFFUSION_BATCH = inspect.signature(SCGM.train_diffusion).parameters["batch_size"].default
HEADLINE = [
    "w2", "mmd_rbf", "w1", "mmd_linear", "frechet", "label_agreement", "pcc", "rf_auc", "knn_auc",
    "novelty_median_ratio", "near_duplicate_share",
]  # fmt: skip
#: G1's distances: headline value = the mean over cell types of per-type values (group "mean");
#: the other metrics are over all cells (group "all")
PER_TYPE = {"w2", "mmd_rbf", "w1", "mmd_linear", "frechet"}
DEFAULTS_ROW = "SCGM (defaults)"


def headline_table(summary: pd.DataFrame) -> pd.DataFrame:
    """``method x metric`` table of "mean ± s.e.m." over seeds: G1's distances averaged over
    cell types, the other metrics over all cells (or their mean over types if not pooled)."""
    has_all = set(summary.loc[summary["group"] == "all", "metric"])
    head = summary[summary["metric"].isin(HEADLINE)]
    pooled = head["metric"].isin(has_all) & ~head["metric"].isin(PER_TYPE)
    head = head[head["group"] == np.where(pooled, "all", "mean")]
    table = head.assign(
        value=lambda d: d["mean"].map("{:.4g}".format) + " ± " + d["sem"].map("{:.2g}".format)
    ).pivot(index="method", columns="metric", values="value")
    return table[[m for m in HEADLINE if m in table.columns]]


_GEN = inspect.signature(SCGM.generate).parameters
DEFAULT_RUN = (_GEN["sampler"].default, _GEN["guidance_scale"].default, None)


def counts_adata(X, cell_types, var_names) -> ad.AnnData:
    X = sp.csr_matrix(np.asarray(X, dtype=np.float32)) if not sp.issparse(X) else X.tocsr()
    obs = pd.DataFrame({"cell_type": pd.Categorical(cell_types)})
    obs.index = obs.index.astype(str)
    return ad.AnnData(X, obs=obs, var=pd.DataFrame(index=var_names))


FLOOR_ROW = "real floor (train vs test)"


def real_floor(train: ad.AnnData, sizes: dict, seed: int) -> ad.AnnData:
    """Training cells, as many of each type as the test split holds, drawn without replacement
    (repeated cells would inflate the RBF-MMD)."""
    rng = np.random.default_rng(seed)
    labels = train.obs["cell_type"].to_numpy()
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(labels == ct), n, replace=False) for ct, n in sizes.items()]
    )
    return train[idx].copy()


def score(method: str, generated, train, test, seed: int) -> pd.DataFrame:
    """``evaluate`` of ``generated`` against the test cells, rows labelled with the method and
    seed; for the real floor, label agreement is the classifier's accuracy on the test cells
    (in-sample accuracy would be ~1; the honest ceiling is on unseen real cells)."""
    res = evaluate(test, generated, "cell_type", train=train, seed=seed)
    if method == FLOOR_ROW:
        held_out = label_agreement(train, test, "cell_type", seed=seed)
        types = res.loc[~res["group"].isin(["all", "mean"]), "group"].unique()
        held_out["mean"] = held_out.reindex(types).mean()
        is_la = res["metric"] == "label_agreement"
        res.loc[is_la, "value"] = res.loc[is_la, "group"].map(held_out).to_numpy()
    res["method"], res["seed"] = method, seed
    return res


def scvi_posterior_resample(
    train, sizes, batch_key, max_epochs, seed, plan_kwargs=None, model_dir=None
):
    """Stock scVI baseline: resample train cells of each type through q(z|x) and the decoder.

    With ``model_dir``, a model saved there is loaded instead of trained (and a trained one is
    saved there)."""
    a = train.copy()
    scvi.model.SCVI.setup_anndata(a, labels_key="cell_type", batch_key=batch_key)
    t0 = time.perf_counter()
    if model_dir is not None and Path(model_dir).exists():
        model = scvi.model.SCVI.load(str(model_dir), adata=a)
    else:
        model = scvi.model.SCVI(a, gene_likelihood="nb")
        model.train(max_epochs=max_epochs, enable_progress_bar=False, plan_kwargs=plan_kwargs)
        if model_dir is not None:
            model.save(str(model_dir))
    seconds = time.perf_counter() - t0
    epochs = len(model.history["elbo_train"])

    def sample(gen_seed):
        rng = np.random.default_rng(gen_seed)
        idx = np.concatenate(
            [rng.choice(np.flatnonzero(a.obs["cell_type"] == ct), n) for ct, n in sizes.items()]
        )
        scvi.settings.seed = gen_seed
        x = model.posterior_predictive_sample(a, indices=idx, n_samples=1)
        x = x.todense() if hasattr(x, "todense") else x
        x = np.asarray(x).reshape(len(idx), -1)
        return counts_adata(x, a.obs["cell_type"].to_numpy()[idx], a.var_names)

    return sample, seconds, epochs


def _draw_cells(labels: np.ndarray, sizes: dict, rng: np.random.Generator) -> np.ndarray:
    """Indices of training cells, ``sizes[ct]`` of each type, drawn with replacement."""
    return np.concatenate([rng.choice(np.flatnonzero(labels == ct), n) for ct, n in sizes.items()])


def fit_missing_statistics(model: SCGM) -> list[str]:
    """Fit the posterior noise and the library model of a model cached before they existed to
    its own VAE, as training fits them; returns notes for the report."""
    module, notes = model.module, []
    if module.posterior_noise.fitted and module.library_model.fitted:
        return notes
    _, _, moments = model._latent_pass()
    count = moments["label_count"]
    labels = torch.arange(len(count), device=count.device)
    if not module.posterior_noise.fitted:
        module.posterior_noise.fit(count, moments["label_scale_sq"], labels)
        notes.append("posterior variances fitted to the cached model's VAE")
    if not module.library_model.fitted:
        module.library_model.fit(moments, labels)
        notes.append("library model fitted to the cached model's VAE")
    return notes


TRAINING_LIBRARY_ROW = "SCGM (defaults), library drawn from a training cell of the type"


def generate_with_training_libraries(model: SCGM, sizes: dict, seed: int) -> ad.AnnData:
    """``generate`` with the defaults but library sizes drawn from training cells of the type
    (independent of the latent), as before the library model."""
    library = model.module.library_model
    fitted = library.std.clone()
    library.std.zero_()  # "not fitted": generate falls back to training cells
    try:
        return model.generate(n=None, cell_type=sizes, seed=seed, progress_bar=False)
    finally:
        library.std.copy_(fitted)


class ErrorBudget:
    """Rows that walk from the real floor to SCGM changing one thing at a time (issue 16).

    Each sampler returns counts decoded by SCGM's own decoder; ``lib`` and ``batch`` are the
    log library size and batch name of each decoded cell (a training cell's own, or those of an
    independently drawn training cell of the same type, as :meth:`SCGM.generate` drew them
    before its library model).
    """

    def __init__(self, model: SCGM, train: ad.AnnData, test: ad.AnnData, sizes: dict, batch_key):
        self.model, self.sizes, self.batch_key = model, sizes, batch_key
        self.train_mean, train_var = model.get_latent_representation(train, return_dist=True)
        self.train_std = np.sqrt(train_var)
        self.test_mean, test_var = model.get_latent_representation(test, return_dist=True)
        self.test_std = np.sqrt(test_var)
        self.labels = train.obs["cell_type"].to_numpy()
        self.test_labels = test.obs["cell_type"].to_numpy()
        self.lib = np.asarray(train.X.sum(1)).ravel()
        self.test_lib = np.asarray(test.X.sum(1)).ravel()
        self.batch = None if batch_key is None else train.obs[batch_key].astype(str).to_numpy()
        self.test_batch = None if batch_key is None else test.obs[batch_key].astype(str).to_numpy()

    def _decode(self, z, labels, lib, batch, seed):
        X = self.model.decode_latent(
            z.astype(np.float32), cell_type=labels, library_size=lib, batch=batch, seed=seed
        )
        return counts_adata(X, labels, self.model.var_names_)

    def reconstruct_test(self, seed):
        rng = np.random.default_rng(seed)
        z = self.test_mean + self.test_std * rng.standard_normal(self.test_mean.shape)
        return self._decode(z, self.test_labels, self.test_lib, self.test_batch, seed)

    def resample(self, seed, posterior: str = "sample", drawn_covariates: bool = False):
        """Training cells decoded from ``z ~ q(z|x)`` (``"sample"``), their posterior means
        (``"mean"``) or their means plus ``generate``'s per-type noise (``"mean_noise"``)."""
        rng = np.random.default_rng(seed)
        idx = _draw_cells(self.labels, self.sizes, rng)
        z = self.train_mean[idx]
        if posterior == "sample":
            z = z + self.train_std[idx] * rng.standard_normal(z.shape)
        elif posterior == "mean_noise":  # generate's noise: the type's mean posterior variance
            z = self._posterior_noise(z, self.labels[idx], rng)
        # library and batch of the cell itself, or of another cell of its type (as generate drew
        # them before the library model)
        cov = _draw_cells(self.labels, self.sizes, rng) if drawn_covariates else idx
        batch = None if self.batch is None else self.batch[cov]
        return self._decode(z, self.labels[idx], self.lib[cov], batch, seed)

    def means_with_library_model(self, seed):
        """Posterior means plus ``generate``'s noise, decoded with a library size drawn given
        the mean from the library model and the batch of another cell of the type (as
        ``generate`` decodes): a perfect latent model's ceiling now."""
        rng = np.random.default_rng(seed)
        idx = _draw_cells(self.labels, self.sizes, rng)
        cats = list(self.model.conditions_["columns"][0]["categories"])
        module = self.model.module
        codes = torch.as_tensor([cats.index(c) for c in self.labels[idx]], device=module.device)
        z = torch.as_tensor(self.train_mean[idx], dtype=torch.float32, device=module.device)
        gen = torch.Generator(device=module.device).manual_seed(seed)
        lib = np.exp(module.library_model.sample(z, codes, generator=gen).cpu().numpy())
        z = self._posterior_noise(self.train_mean[idx], self.labels[idx], rng)
        cov = _draw_cells(self.labels, self.sizes, rng)
        batch = None if self.batch is None else self.batch[cov]
        return self._decode(z, self.labels[idx], lib, batch, seed)

    def gaussian(self, seed, posterior_noise: bool = False):
        """A Gaussian per type fit to the posterior means; with ``posterior_noise`` decoded as
        ``SCGM.generate`` decodes (the type's mean posterior variance added)."""
        rng = np.random.default_rng(seed)
        cats = list(self.model.conditions_["columns"][0]["categories"])
        var = self.model.module.posterior_noise.var.cpu().numpy()
        zs = []
        for ct, n in self.sizes.items():
            zc = self.train_mean[self.labels == ct]
            cov = np.cov(zc, rowvar=False) + 1e-4 * np.eye(zc.shape[1])
            if posterior_noise:
                cov += np.diag(var[:, cats.index(ct)])
            zs.append(rng.multivariate_normal(zc.mean(0), cov, size=n, method="eigh"))
        cov_idx = _draw_cells(self.labels, self.sizes, rng)
        batch = None if self.batch is None else self.batch[cov_idx]
        return self._decode(
            np.concatenate(zs), self.labels[cov_idx], self.lib[cov_idx], batch, seed
        )

    def _posterior_noise(self, z, cts, rng):
        """``z`` plus each type's mean posterior variance, as ``generate`` adds it."""
        var = self.model.module.posterior_noise.var.cpu().numpy()
        cats = list(self.model.conditions_["columns"][0]["categories"])
        std = np.sqrt(var[:, [cats.index(c) for c in cts]].T)
        return z + std * rng.standard_normal(z.shape)

    def scgm_without_noise(self, seed):
        return self.model.generate(
            n=None, cell_type=self.sizes, seed=seed, posterior_noise=False, progress_bar=False
        )

    def rows(self) -> dict:
        return {
            "budget 1: VAE reconstructs test cells (z ~ q, own library)": self.reconstruct_test,
            "budget 2: VAE resamples train cells (z ~ q, own library)": self.resample,
            "budget 2b: z ~ q, library + batch of another cell of the type": lambda s: (
                self.resample(s, drawn_covariates=True)
            ),
            "budget 3: posterior means, own library": lambda s: self.resample(s, "mean"),
            "budget 3b: posterior means + generate's posterior noise, own library": lambda s: (
                self.resample(s, "mean_noise")
            ),
            "budget 3c: the same, library + batch drawn (a perfect latent model's ceiling)": (
                lambda s: self.resample(s, "mean_noise", drawn_covariates=True)
            ),
            "budget 3d: the same, library drawn given the mean (the ceiling with the library "
            "model)": self.means_with_library_model,
            "budget 4: posterior means, library + batch of another cell of the type": lambda s: (
                self.resample(s, "mean", drawn_covariates=True)
            ),
            "budget 5: Gaussian per type (library + batch drawn)": self.gaussian,
            "budget 6: SCGM score model, no posterior noise": self.scgm_without_noise,
            "Gaussian per type + posterior noise (decoded as SCGM)": lambda s: self.gaussian(
                s, posterior_noise=True
            ),
        }


def write_figures(out: Path) -> None:
    """Per-cell-type bars (mean ± s.e.m. over seeds) of the headline metrics, from summary.csv."""
    import matplotlib

    matplotlib.use("Agg")
    from scgm_scvi.pl import metric_bars

    summary = pd.read_csv(out / "summary.csv")
    summary = summary[~summary["group"].isin(["all", "mean"])]
    fig = metric_bars(
        summary,
        ["w2", "mmd_rbf", "label_agreement"],
        hue="method",
        ncols=1,
        figsize=(11, 10),
        return_fig=True,
    )
    fig.savefig(out / "per_type_metrics.png", dpi=72, bbox_inches="tight")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="pbmc3k", choices=["pbmc3k", "kang12k", "kang2k", "kang1.5k"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--vae-epochs", type=int, default=None, help="default: scVI's heuristic")
    p.add_argument("--diffusion-epochs", type=int, default=None)
    p.add_argument(
        "--kl-warmup",
        type=int,
        default=None,
        help="VAE KL warm-up epochs (default: scVI's 400); also adds a scVI row trained so",
    )
    p.add_argument(
        "--samplers",
        nargs="+",
        default=["dpmpp_2m_sde", "dpmpp_2m", "ode", "ode_euler", "euler_maruyama", "pc"],
    )
    p.add_argument(
        "--extra-guidance",
        type=float,
        nargs="*",
        default=[2.0],
        help="guidance weights for extra ODE rows (the sampler rows use weight 1)",
    )
    p.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        default=None,
        metavar=("T_LO", "T_HI"),
        help="also the --extra-guidance rows with guidance only at these times",
    )
    p.add_argument(
        "--score-baseline",
        choices=["gaussian", "none"],
        default="gaussian",
        help="SCGM(score_baseline=...): what the score network corrects",
    )
    p.add_argument("--n-hidden", type=int, default=None, help="VAE width (default: SCGM's)")
    p.add_argument("--n-layers", type=int, default=None, help="VAE depth (default: SCGM's)")
    p.add_argument(
        "--norm",
        choices=list(NORM_KWARGS),
        default=None,
        help="VAE normalisation (default: SCGM's, stock scVI's batch norm)",
    )
    p.add_argument(
        "--latent-scaling", choices=["per_dim", "global"], default=None, help="default: SCGM's"
    )
    p.add_argument(
        "--early-stopping",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="stop the VAE when its validation ELBO stalls (default off, as SCGM and scVI)",
    )
    p.add_argument("--diffusion-batch-size", type=int, default=None, help="default: the package's")
    p.add_argument(
        "--model-dir",
        default=None,
        help="save the trained SCGM and scVI here, or load them from here when present",
    )
    p.add_argument(
        "--budget",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the error-budget rows (real floor -> VAE -> Gaussian -> SCGM)",
    )
    p.add_argument("--out", default=None)
    p.add_argument(
        "--figures-only", action="store_true", help="redraw the figure from --out's summary.csv"
    )
    args = p.parse_args(argv)
    out = Path(args.out or f"benchmarks/results/{args.data}")
    out.mkdir(parents=True, exist_ok=True)
    if args.figures_only:
        write_figures(out)
        return
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)  # 2 threads on a busy 2-core machine are far slower
    scvi.settings.seed = 0

    adata, batch_key = load(args.data)
    train, test = split(adata)
    sizes = test.obs["cell_type"].value_counts()
    sizes = {k: int(v) for k, v in sizes.items() if v > 0}

    SCGM.setup_anndata(train, labels_key="cell_type", batch_key=batch_key)
    model_dir = None if args.model_dir is None else Path(args.model_dir)
    notes = []
    warmup = None if args.kl_warmup is None else {"n_epochs_kl_warmup": args.kl_warmup}
    vae_seconds = diffusion_seconds = float("nan")  # nan: loaded from --model-dir
    if model_dir is not None and (model_dir / "scgm").exists():
        # a file this script wrote (older runs: pickled)
        model = SCGM.load(str(model_dir / "scgm"), adata=train, allow_pickle=True)
        notes += fit_missing_statistics(model)
    else:
        arch = vae_architecture(args.n_hidden, args.n_layers, args.norm)
        scaling = {} if args.latent_scaling is None else {"latent_scaling": args.latent_scaling}
        model = SCGM(train, score_baseline=args.score_baseline, **scaling, **arch)
        t0 = time.perf_counter()
        model.train_vae(
            max_epochs=args.vae_epochs,
            early_stopping=args.early_stopping,
            enable_progress_bar=False,
            plan_kwargs=warmup,
        )
        vae_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        diffusion_batch = (
            {} if args.diffusion_batch_size is None else {"batch_size": args.diffusion_batch_size}
        )
        model.train_diffusion(
            max_epochs=args.diffusion_epochs, enable_progress_bar=False, **diffusion_batch
        )
        diffusion_seconds = time.perf_counter() - t0
        if model_dir is not None:
            model.save(str(model_dir / "scgm"))
    vae_epochs = len(model.history["elbo_train"])
    # scVI as a user runs it: its own epoch heuristic, no early stopping (unless --vae-epochs
    # fixes the same budget for both)
    scvi_sample, scvi_seconds, scvi_epochs = scvi_posterior_resample(
        train, sizes, batch_key, args.vae_epochs, seed=0,
        model_dir=None if model_dir is None else model_dir / "scvi",
    )  # fmt: skip
    baselines = {"scVI posterior resample": scvi_sample}
    if warmup is not None:
        baselines[f"scVI posterior resample (KL warm-up {args.kl_warmup})"] = (
            scvi_posterior_resample(train, sizes, batch_key, args.vae_epochs, 0, warmup)[0]
        )
    budget = ErrorBudget(model, train, test, sizes, batch_key)
    if args.budget:
        baselines.update(budget.rows())
    else:
        baselines["Gaussian per type + posterior noise (decoded as SCGM)"] = lambda s: (
            budget.gaussian(s, posterior_noise=True)
        )

    rows, speed = [], []
    for seed in args.seeds:
        candidates = {FLOOR_ROW: lambda s: real_floor(train, sizes, s), **baselines}
        runs = [(sampler, 1.0, None) for sampler in args.samplers]
        runs += [("ode", w, None) for w in args.extra_guidance]
        if args.guidance_interval:
            runs += [("ode", w, tuple(args.guidance_interval)) for w in args.extra_guidance]
        for sampler, w, interval in runs:
            name = DEFAULTS_ROW if (sampler, w, interval) == DEFAULT_RUN else f"SCGM {sampler}"
            if w != 1.0:
                where = "every t" if interval is None else "t in [{:g}, {:g}]".format(*interval)
                name += f" (guidance {w:g}, {where})"

            def gen(s, sampler=sampler, w=w, interval=interval, name=name):
                t = time.perf_counter()
                g = model.generate(
                    n=None,
                    cell_type=sizes,
                    sampler=sampler,
                    seed=s,
                    guidance_scale=w,
                    guidance_interval=interval,
                )
                secs = time.perf_counter() - t
                speed.append(
                    {
                        "method": name,
                        "seed": s,
                        "n_steps": g.uns["scgm"]["n_steps"],
                        "nfe_per_cell": g.uns["scgm"]["network_evaluations_per_cell"],
                        "seconds_per_1000_cells": 1000 * secs / g.n_obs,
                    }
                )
                return g

            candidates[name] = gen
        candidates[TRAINING_LIBRARY_ROW] = lambda s: generate_with_training_libraries(
            model, sizes, s
        )
        for method, make in candidates.items():
            rows.append(score(method, make(seed), train, test, seed))
            print(f"seed {seed} {method}: done", flush=True)

    long = pd.concat(rows, ignore_index=True)
    long.to_csv(out / "metrics_long.csv", index=False)
    summary = summarize_runs(long, by=["method", "group", "metric", "protocol"])
    summary.to_csv(out / "summary.csv", index=False)
    speed = pd.DataFrame(speed)
    speed_summary = (
        speed.groupby("method", sort=False).mean(numeric_only=True).drop(columns="seed")
    )
    speed_summary.to_csv(out / "speed.csv")

    table = headline_table(summary)
    big = adata.obs["cell_type"].value_counts()
    big = big[big >= 100].index
    la = long[(long["metric"] == "label_agreement") & long["group"].isin(big)]
    la_big = la.groupby(["method", "seed"])["value"].mean().groupby("method").agg(["mean", "sem"])
    per_type = summary[summary["metric"].isin(["w2", "mmd_rbf", "label_agreement"])]
    per_type = per_type[~per_type["group"].isin(["all", "mean"])]
    per_type = per_type.pivot_table(index=["group", "method"], columns="metric", values="mean")
    command = " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# Generation benchmark: {args.data}",
        "",
        f"Command: `python benchmarks/generation.py {command}`",
        "",
        machine_line(),
        f"Data: {train.n_obs} train / {test.n_obs} test cells x {train.n_vars} genes; "
        f"split seed 0; generation seeds {args.seeds}; guidance weight 1 unless named.",
        f"Model: {model._model_summary_string}; VAE {vae_norm(model)} norm, early stopping "
        f"{'on' if args.early_stopping else 'off'}; score-network batch "
        f"{args.diffusion_batch_size or f'default ({DEFAULT_DIFFUSION_BATCH})'}.",
        f"Training: SCGM VAE {vae_epochs} epochs ({vae_seconds:.0f} s), diffusion "
        f"{len(model.diffusion_history_['train_loss'])} epochs ({diffusion_seconds:.0f} s, "
        f"score baseline {args.score_baseline}); "
        f"scVI baseline {scvi_epochs} epochs ({scvi_seconds:.0f} s). KL warm-up: "
        f"{args.kl_warmup or 400} epochs (scVI's default: 400)."
        + (
            f" Models loaded from {model_dir}: " + "; ".join(notes or ["as saved"]) + "."
            if vae_seconds != vae_seconds
            else ""
        ),  # nan: loaded
        "",
        "## Headline (mean ± s.e.m. over seeds)",
        "",
        "G1 distances (`w2`, `mmd_rbf`, `w1`, `mmd_linear`) and `frechet` are averages over cell "
        "types of per-type values in 30 PCs fit on the test cells (lower is better); "
        "`label_agreement`, `pcc` (gene-mean Pearson) and `rf_auc` (0.5 = indistinguishable) "
        "are over all cells. The real floor's `label_agreement` is the classifier's accuracy on "
        "the held-out real test cells.",
        "",
        table.to_markdown(),
        "",
        f"Label agreement averaged over the {len(big)} cell types with >= 100 cells in the "
        "data (mean ± s.e.m. over seeds):",
        "",
        la_big.to_markdown(floatfmt=".4f"),
        "",
        "## Sampling speed (this machine)",
        "",
        f"Load average at the end of the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
        "CPUs; on a shared machine these wall times are inflated (see `benchmarks/speed.py`).",
        "",
        speed_summary.to_markdown(floatfmt=".3g"),
        "",
        "## Per cell type (mean over seeds)",
        "",
        per_type.to_markdown(floatfmt=".4g"),
        "",
        "![per-type metrics](per_type_metrics.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    write_figures(out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
