"""What the benchmark scripts share: the data, the split, the VAE architectures, the machine line.

The scripts run as ``python benchmarks/<name>.py`` from the repository root, so this folder is
``sys.path[0]`` and ``import _common`` finds this file.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import anndata as ad
import scvi
import torch

import scgm_scvi
from scgm_scvi import SCGM
from scgm_scvi.data import stratified_split
from scgm_scvi.model._constants import NORM_KWARGS

ROOT = Path(__file__).resolve().parents[1]
#: the real datasets shared next to the checkout (see their README)
SHARED = ROOT.parent / "shared" / "data"
#: bundled with the tutorials (tutorials/data/README.md: source and licence)
KANG_EDIT_DATA = ROOT / "tutorials" / "data" / "kang2018_ifnb_muscat1.5k.h5ad"


def load(name: str) -> tuple[ad.AnnData, str | None]:
    """A generation dataset and its batch key."""
    if name == "pbmc3k":
        return scgm_scvi.data.pbmc3k(), None
    if name == "kang12k":
        adata = ad.read_h5ad(SHARED / "kang2018_ctrl_pbmc12k.h5ad")
        adata.obs["donor"] = adata.obs["donor"].astype(str).astype("category")
        return adata, "donor"
    if name == "kang2k":  # 1,000 control + 1,000 IFN-beta cells, 9,015 genes, 8 types
        adata = ad.read_h5ad(SHARED / "kang2018_ifnb_harmony2k.h5ad")
        return adata, "condition"
    if name == "kang1.5k":  # muscat's example: 5 types, control + IFN-beta, 1,267 genes
        return ad.read_h5ad(KANG_EDIT_DATA), "condition"
    raise ValueError(f"Unknown dataset {name!r}; use pbmc3k, kang12k, kang2k or kang1.5k.")


def split(adata: ad.AnnData, seed: int = 0) -> tuple[ad.AnnData, ad.AnnData]:
    """80 % / 20 % of every cell type (the package's split; reports made before it used
    scikit-learn's ``train_test_split(stratify=...)``)."""
    tr, te = stratified_split(adata.obs["cell_type"], 0.2, seed)
    return adata[tr].copy(), adata[te].copy()


def vae_architecture(n_hidden: int | None, n_layers: int | None, norm: str | None) -> dict:
    """``SCGM`` keyword arguments of a VAE architecture; ``None`` keeps SCGM's default (scVI's
    1 x 128 with batch norm); ``norm="layer"`` is layer norm in place of batch norm."""
    kw = {k: v for k, v in (("n_hidden", n_hidden), ("n_layers", n_layers)) if v is not None}
    if norm is not None:
        kw.update(NORM_KWARGS[norm])
    return kw


def vae_norm(model: SCGM) -> str:
    """``"batch"`` or ``"layer"``: the normalisation in the model's VAE."""
    kinds = {type(m) for m in model.module.z_encoder.modules()}
    return "batch" if torch.nn.BatchNorm1d in kinds else "layer"


def machine_line() -> str:
    """The machine and library versions, for the head of a report."""
    return (
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
        f"scvi-tools {scvi.__version__}, scgm_scvi {scgm_scvi.__version__}, "
        f"CUDA: {torch.cuda.is_available()}."
    )
