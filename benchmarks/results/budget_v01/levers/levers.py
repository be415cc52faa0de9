# ruff: noqa: E402 - environment set before the imports
"""Evaluation-only lever rows on cached models (no retraining)."""

import os
import sys
import warnings

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "benchmarks"))
warnings.filterwarnings("ignore")
import numpy as np
import pandas as pd
import torch

torch.set_num_threads(1)
import generation as G

from scgm_scvi import SCGM
from scgm_scvi.metrics import evaluate

data, rows_wanted, out = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
adata, batch_key = G.load(data)
train, test = G.split(adata)
sizes = {k: int(v) for k, v in test.obs["cell_type"].value_counts().items() if v > 0}
SCGM.setup_anndata(train, labels_key="cell_type", batch_key=batch_key)
model = SCGM.load(
    str(ROOT / f"benchmarks/_work/{data}_models/scgm"), adata=train, allow_pickle=True
)
B = G.ErrorBudget(model, train, test, sizes, batch_key)


def type_noise(seed):
    """SCGM's latents plus the cell type's mean posterior variance as Gaussian noise."""
    rng = np.random.default_rng(seed)
    g = B.model.generate(n=None, cell_type=sizes, seed=seed, progress_bar=False)
    z, cts = g.obsm["X_scgm"].copy(), g.obs["cell_type"].astype(str).to_numpy()
    for ct in np.unique(cts):
        rows = cts == ct
        std = np.sqrt(np.mean(B.train_std[B.labels == ct] ** 2, axis=0))
        z[rows] += std * rng.standard_normal((rows.sum(), z.shape[1]))
    lib = g.obs["library_size"].to_numpy(dtype=float).clip(1)
    batch = None if B.batch_key is None else g.obs[B.batch_key].astype(str).to_numpy()
    return B._decode(z, cts, lib, batch, seed)


def knn_plus_type_noise(seed):
    g = B.model.generate(n=None, cell_type=sizes, seed=seed, progress_bar=False)
    from sklearn.neighbors import NearestNeighbors

    z, cts = g.obsm["X_scgm"].copy(), g.obs["cell_type"].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    nn = np.empty(len(z), dtype=int)
    for ct in np.unique(cts):
        pool = np.flatnonzero(B.labels == ct)
        r = np.flatnonzero(cts == ct)
        nn[r] = pool[
            NearestNeighbors(n_neighbors=1)
            .fit(B.train_mean[pool])
            .kneighbors(z[r], return_distance=False)[:, 0]
        ]
        std = np.sqrt(np.mean(B.train_std[pool] ** 2, axis=0))
        z[r] += std * rng.standard_normal((len(r), z.shape[1]))
    batch = None if B.batch is None else B.batch[nn]
    return B._decode(z, cts, B.lib[nn], batch, seed)


def reg_lib_type_noise(seed):
    rng = np.random.default_rng(seed + 100)
    gen = B.model.generate(n=None, cell_type=sizes, seed=seed, progress_bar=False)
    z, cts = gen.obsm["X_scgm"].copy(), gen.obs["cell_type"].astype(str).to_numpy()
    log_lib = np.empty(len(z))
    for ct in np.unique(cts):
        pool, r = B.labels == ct, cts == ct
        X = np.c_[np.ones(pool.sum()), B.train_mean[pool]]
        y = np.log(B.lib[pool])
        ridge = np.eye(X.shape[1])
        ridge[0, 0] = 0
        coef = np.linalg.solve(X.T @ X + ridge, X.T @ y)
        log_lib[r] = np.c_[np.ones(r.sum()), z[r]] @ coef + np.std(
            y - X @ coef
        ) * rng.standard_normal(r.sum())
        std = np.sqrt(np.mean(B.train_std[pool] ** 2, axis=0))
        z[r] += std * rng.standard_normal((r.sum(), z.shape[1]))
    batch = None if B.batch_key is None else gen.obs[B.batch_key].astype(str).to_numpy()
    return B._decode(z, cts, np.exp(log_lib), batch, seed)


def samples_drawn(seed):
    return B.resample(seed, "sample", drawn_covariates=True)


ROWS = {
    "scgm": lambda s: model.generate(n=None, cell_type=sizes, seed=s, progress_bar=False),
    "knn_lib": B.neighbour_covariates,
    "reg_lib": B.regressed_library,
    "type_noise": type_noise,
    "knn_lib+type_noise": knn_plus_type_noise,
    "samples_drawn_lib": samples_drawn,
    "reg_lib+type_noise": reg_lib_type_noise,
    "samples_own": B.resample,
    "means_own": lambda s: B.resample(s, "mean"),
}
res = []
for seed in (0, 1, 2):
    for name in rows_wanted:
        r = evaluate(test, ROWS[name](seed), "cell_type", train=train, seed=seed)
        r["method"], r["seed"] = name, seed
        res.append(r)
        print(seed, name, flush=True)
long = pd.concat(res)
long.to_csv(out, index=False)
keep = ["rf_auc", "knn_auc", "w2", "mmd_rbf", "label_agreement"]
has_all = set(long.loc[long.group == "all", "metric"])
sel = long[long.metric.isin(keep)]
sel = sel[sel.group == np.where(sel.metric.isin(has_all), "all", "mean")]
t = sel.groupby(["method", "metric"])["value"].agg(["mean", "sem"]).reset_index()
t["v"] = t["mean"].map("{:.4g}".format) + "±" + t["sem"].map("{:.2g}".format)
print(t.pivot(index="method", columns="metric", values="v").to_markdown())
