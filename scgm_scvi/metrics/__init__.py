"""Evaluation of generated and edited cells against real cells.

Implements the protocols of the documentation's evaluation page: G1 (CFGen: distances in a fixed
reference PCA), G2 (scDiffusion: gene-mean correlations and discriminators), FReD (Fréchet
distance), the novelty check, conditional label agreement, and the editing metrics (scGen R2,
Pearson delta, E-distance on top DEGs).
"""

from ._distances import (
    G1_SIGMAS,
    energy_distance,
    frechet_distance,
    mmd_linear,
    mmd_rbf,
    wasserstein,
)
from ._edit import evaluate_edit, mean_expression, pearson_delta, r2_mean, top_degs
from ._embedding import ReferenceEmbedding, reference_embedding
from ._evaluate import evaluate, summarize_runs
from ._realism import (
    discriminator_auc,
    gene_mean_correlation,
    gene_variance_correlation,
    label_agreement,
    library_size_comparison,
    novelty,
    zero_fraction_comparison,
)

__all__ = [
    "G1_SIGMAS",
    "ReferenceEmbedding",
    "discriminator_auc",
    "energy_distance",
    "evaluate",
    "evaluate_edit",
    "frechet_distance",
    "gene_mean_correlation",
    "gene_variance_correlation",
    "label_agreement",
    "library_size_comparison",
    "mean_expression",
    "mmd_linear",
    "mmd_rbf",
    "novelty",
    "pearson_delta",
    "r2_mean",
    "reference_embedding",
    "summarize_runs",
    "top_degs",
    "wasserstein",
    "zero_fraction_comparison",
]
