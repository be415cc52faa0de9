"""How ``model/`` and ``generated.npz`` were made: run with scgm_scvi 0.1 (commit b8256a7) on
``PYTHONPATH``, from the repository root of that commit:

    PYTHONPATH=. python tests/data/legacy_v0.1/make.py tests/data/legacy_v0.1

A tiny SCGM on the tests' synthetic data (``scvi.data.synthetic_iid``), saved by 0.1's
``SCGM.save`` (a pickled model file), and 16 cells it generated with ``seed=3``.
"""

import sys
import warnings
from pathlib import Path

import numpy as np
import scvi
import torch

import scgm_scvi

torch.set_num_threads(1)
out = Path(sys.argv[1])
scvi.settings.seed = 0
adata = scvi.data.synthetic_iid(batch_size=100, n_genes=100, n_batches=2, n_labels=3)
adata.obs_names = [f"cell_{i}" for i in range(adata.n_obs)]
scgm_scvi.SCGM.setup_anndata(adata, labels_key="labels", batch_key="batch")
model = scgm_scvi.SCGM(adata, n_latent=8, n_hidden=32, score_width=32, score_blocks=2)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model.train(max_epochs=4, diffusion_max_epochs=6, accelerator="cpu", enable_progress_bar=False)
model.save(str(out / "model"), overwrite=True)
cells = model.generate(n=None, cell_type={"label_0": 10, "label_2": 6}, seed=3)
np.savez_compressed(
    out / "generated.npz",
    X=cells.X.toarray(),
    z=cells.obsm["X_scgm"],
    var_names=np.asarray(model.var_names_, dtype=str),
)
