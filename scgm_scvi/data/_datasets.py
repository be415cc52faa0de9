"""Datasets bundled with the package (no network access)."""

from __future__ import annotations

from importlib.resources import as_file, files

import anndata as ad


def pbmc3k() -> ad.AnnData:
    """10x PBMC 3k: 2,638 QC-passed cells x 2,000 highly variable genes, raw UMI counts.

    ``obs["cell_type"]`` holds the 9 labels of the Seurat pbmc3k tutorial. The counts are the
    10x Genomics demonstration data (Zheng et al., Nat Commun 2017; CC BY 4.0); see
    ``scgm_scvi/data/LICENSE_pbmc3k.txt`` for the sources and licenses.

    Returns
    -------
    A new AnnData (``X`` CSR float32 counts) on every call.
    """
    with as_file(files("scgm_scvi.data") / "pbmc3k_2k_hvg.h5ad") as path:
        return ad.read_h5ad(path)
