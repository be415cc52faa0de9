"""Rebuild the bundled PBMC 3k demo file from ``../shared/data/pbmc3k.h5ad``.

Run from the repository root: ``python tools/make_pbmc3k.py``. Keeps the 2,638 cells that pass the
Seurat tutorial QC, their 9 labels, and 2,000 highly variable genes (``seurat_v3`` on raw counts).
"""

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp

src = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/pbmc3k.h5ad")
dst = Path("scgm_scvi/data/pbmc3k_2k_hvg.h5ad")

adata = ad.read_h5ad(src)
adata = adata[adata.obs["seurat_qc_pass"].to_numpy()].copy()
adata.obs["cell_type"] = adata.obs["cell_type"].cat.remove_unused_categories()
sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat_v3")
adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
out = ad.AnnData(
    X=adata.X,
    obs=adata.obs[["cell_type", "n_counts", "n_genes"]].copy(),
    var=adata.var[["gene_ids"]].copy(),
)
out.uns["dataset"] = {
    "name": "pbmc3k_2k_hvg",
    "description": "10x PBMC 3k (Zheng et al. 2017), 2,638 QC-passed cells, 2,000 seurat_v3 HVGs, "
    "raw UMI counts, Seurat pbmc3k tutorial labels.",
    "label_key": "cell_type",
    "license": "10x Genomics demonstration data, CC BY 4.0; counts via hmumme/scToolbox (MIT); "
    "labels via zdebruine/RcppML (GPL>=3). See scgm_scvi/data/LICENSE_pbmc3k.txt.",
}
out.write_h5ad(dst, compression="gzip", compression_opts=9)
print(out, dst.stat().st_size)
