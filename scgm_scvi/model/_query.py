"""Fine-tuning on new data: gene alignment and surgery of the score network's embeddings."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData


def align_genes(adata: AnnData, reference_var_names: pd.Index) -> AnnData:
    """Return ``adata`` with the reference's genes, in the reference's order.

    As scvi-tools' ``prepare_query_anndata``: genes the query lacks are added as zero counts,
    genes the reference does not know are dropped. Unlike it, the input is never modified and
    the number of missing genes is always reported in a warning.

    Parameters
    ----------
    adata
        Query data.
    reference_var_names
        Genes of the reference model.

    Returns
    -------
    ``adata`` itself when the genes already match, else a new AnnData (counts in ``X``;
    ``obs``, ``obsm`` and ``uns`` kept, ``layers`` aligned as well).
    """
    ref = pd.Index(reference_var_names)
    if adata.var_names.equals(ref):
        return adata
    if not adata.var_names.is_unique:
        raise ValueError(
            "The query's var_names are not unique; call adata.var_names_make_unique() first."
        )
    present = ref.isin(adata.var_names)
    n_missing = int((~present).sum())
    if n_missing == len(ref):
        raise ValueError(
            "The query shares no gene with the reference model (compare adata.var_names with "
            "model.var_names_; gene symbols vs Ensembl ids?)."
        )
    n_extra = int((~adata.var_names.isin(ref)).sum())
    if n_missing:
        warnings.warn(
            f"The query lacks {n_missing} of the reference's {len(ref)} genes "
            f"({n_missing / len(ref):.1%}); they are filled with zero counts, which the encoder "
            "reads as no expression. Results degrade as this share grows (scArches advises "
            "at most 20%).",
            UserWarning,
            stacklevel=3,
        )
    # one indexing pass: missing genes point at an appended all-zero column
    src = adata.var_names.get_indexer(ref)
    idx = np.where(src >= 0, src, adata.n_vars)

    def take(X):
        if sp.issparse(X):
            zero = sp.csr_matrix((X.shape[0], 1), dtype=X.dtype)
            return sp.hstack([X, zero], format="csc")[:, idx].tocsr()
        X = np.asarray(X)
        return np.concatenate([X, np.zeros((X.shape[0], 1), X.dtype)], axis=1)[:, idx]

    out = AnnData(
        X=take(adata.X),
        obs=adata.obs.copy(),
        var=pd.DataFrame(index=ref.copy()),
        obsm={k: v.copy() for k, v in adata.obsm.items()},
        layers={k: take(v) for k, v in adata.layers.items()},
        uns=dict(adata.uns),
    )
    out.uns["scgm_gene_alignment"] = {"n_missing": n_missing, "n_dropped": n_extra}
    return out


def embedding_sizes(state_dict: dict[str, torch.Tensor]) -> list[int]:
    """Number of categories of each condition column of a saved score network."""
    sizes = []
    j = 0
    while f"score_net.condition_embedding.tables.{j}.weight" in state_dict:
        sizes.append(state_dict[f"score_net.condition_embedding.tables.{j}.weight"].shape[0] - 1)
        j += 1
    return sizes


@torch.no_grad()
def grow_condition_embeddings(
    module: torch.nn.Module, reference_state: dict[str, torch.Tensor]
) -> list[int]:
    """Copy the reference's condition embeddings into a module with more categories.

    Each table holds one row per category and, last, the "unknown" row used by condition
    dropout and guidance. Existing categories keep their rows (and codes); the unknown row moves
    to the new end; new categories start from the unknown row, i.e. from the unconditional
    model, and are learned by fine-tuning.

    Returns
    -------
    The reference's number of categories per condition column.
    """
    old_sizes = embedding_sizes(reference_state)
    tables = module.score_net.condition_embedding.tables
    if len(old_sizes) != len(tables):
        raise ValueError(
            f"The reference's score network has {len(old_sizes)} condition columns, the query "
            f"model {len(tables)}: a batch (or covariate) column cannot be added by fine-tuning. "
            "Register the same batch_key and covariates as the reference; a reference trained "
            "on a single batch cannot take new batches."
        )
    for j, (n_old, table) in enumerate(zip(old_sizes, tables, strict=True)):
        old = reference_state[f"score_net.condition_embedding.tables.{j}.weight"].to(
            table.weight.device
        )
        table.weight[:n_old] = old[:n_old]
        table.weight[n_old:] = old[n_old]  # new categories and the unknown row
    return old_sizes


@torch.no_grad()
def grow_label_gaussians(
    module: torch.nn.Module, reference_state: dict[str, torch.Tensor]
) -> None:
    """Copy the reference's cell-type Gaussians and posterior variances into a module with more
    cell types.

    As :func:`grow_condition_embeddings`: existing types keep their slots, the all-cells
    Gaussian (the "unknown" label) moves to the new end, and new types start from it until
    :meth:`~scgm_scvi.SCGM.train_diffusion` fits them.
    """
    for key, buf in module.label_buffers():
        if key not in reference_state:  # a reference saved before the posterior noise
            continue
        old = reference_state[key].to(buf.device)
        n_old = old.shape[-1] - 1
        buf[..., :n_old] = old[..., :n_old]
        buf[..., n_old:] = old[..., n_old:]


def freeze_old_condition_rows(
    module: torch.nn.Module, old_sizes: list[int]
) -> list[torch.utils.hooks.RemovableHandle]:
    """Train only the embedding rows of categories the reference did not have.

    Every other score-network parameter is frozen; gradient hooks zero the rows of the
    reference's categories and of the unknown row. Returns the hook handles (remove them after
    training).
    """
    for p in module.score_net.parameters():
        p.requires_grad_(False)
    handles = []
    for n_old, table in zip(old_sizes, module.score_net.condition_embedding.tables, strict=True):
        n_new = table.num_embeddings - 1
        if n_new == n_old:
            continue
        table.weight.requires_grad_(True)
        mask = torch.zeros(table.num_embeddings, 1, device=table.weight.device)
        mask[n_old:n_new] = 1.0
        handles.append(table.weight.register_hook(lambda g, m=mask: g * m))
    if not handles:
        raise ValueError(
            "The query brings no new cell type, batch or covariate category, so no score "
            "network parameter would be trained; pass finetune='all' to fine-tune the whole "
            "score network on the query."
        )
    return handles
