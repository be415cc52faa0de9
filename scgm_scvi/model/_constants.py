"""Names and defaults shared by the model's parts."""

from __future__ import annotations

from typing import Literal

Precision = Literal["32-true", "bf16-mixed"]  # Lightning's names
# fewer cells fail inside scvi-tools' data splitter (no training minibatch)
MIN_TRAIN_CELLS = 3
# default length of stage 2, in optimisation steps of DIFFUSION_BATCH_SIZE latents: on PBMC 3k
# and Kang 12k as good as 20,000 steps of 64 with the weight average, in a fifth of the time
DIFFUSION_STEPS = 4_000
DIFFUSION_BATCH_SIZE = 128
# at most this many training cells are kept to draw covariates and library sizes from
CONDITION_TABLE_MAX = 50_000
#: the VAE's normalisation by name (``scgm-scvi train --norm``): scVI's batch norm or layer norm
NORM_KWARGS = {
    "batch": {"use_batch_norm": "both", "use_layer_norm": "none"},
    "layer": {"use_batch_norm": "none", "use_layer_norm": "both"},
}
