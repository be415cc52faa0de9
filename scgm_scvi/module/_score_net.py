"""Noise-prediction network over the (standardised) VAE latent.

Deliberately not built from ``scvi.nn.FCLayers``: scArches surgery hooks every ``FCLayers`` by
name, and the score network has its own rules for fine-tuning.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn


class ConditionGroups(NamedTuple):
    """The distinct condition rows of a batch of cells that share one time, computed once per
    sampling run (one host synchronisation) and reused at every step.

    The network then computes its time/condition modulation once per distinct row instead of
    once per cell, and the cell-type Gaussian baseline runs one dense product per cell type
    instead of gathering a basis per cell. Made by :func:`condition_groups`.
    """

    codes: torch.Tensor  #: ``(k, n_conditions)`` distinct condition rows
    inverse: torch.Tensor  #: ``(n,)`` row of ``codes`` of each cell
    order: torch.Tensor  #: cells sorted by cell type (first condition column)
    labels: list[int]  #: cell types present, in that order
    counts: list[int]  #: cells of each


def condition_groups(cond: torch.Tensor) -> ConditionGroups:
    """:class:`ConditionGroups` of the condition codes ``cond``, shape ``(n, n_conditions)``."""
    codes, inverse = torch.unique(cond, dim=0, return_inverse=True)
    sorted_labels, order = torch.sort(cond[:, 0], stable=True)
    labels, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
    return ConditionGroups(codes, inverse, order, labels.tolist(), counts.tolist())


class TimeEmbedding(nn.Module):
    """Sinusoidal features of ``t`` in ``[0, 1]`` followed by a small MLP."""

    def __init__(self, dim: int, n_freqs: int = 64):
        super().__init__()
        # frequencies 1 ... 1000 on a log scale; t*1000 plays the role of DDPM's step index
        self.register_buffer(
            "freqs", torch.exp(torch.linspace(0, math.log(1000.0), n_freqs)), persistent=False
        )
        self.mlp = nn.Sequential(nn.Linear(2 * n_freqs, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.freqs[None, :]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))


class ConditionEmbedding(nn.Module):
    """Sum of one embedding per categorical condition; the last code of each is "unknown".

    Column ``j`` of the condition matrix takes codes ``0 .. n_j - 1`` for its categories and
    ``n_j`` for "no condition", which training uses for label dropout (classifier-free guidance).
    """

    def __init__(self, n_categories: list[int], dim: int):
        super().__init__()
        self.n_categories = list(n_categories)
        self.tables = nn.ModuleList(nn.Embedding(n + 1, dim) for n in self.n_categories)

    @property
    def null_codes(self) -> list[int]:
        """The "no condition" code of each column."""
        return list(self.n_categories)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return sum(table(cond[:, j]) for j, table in enumerate(self.tables))


class AdaLNBlock(nn.Module):
    """Pre-norm residual MLP block whose LayerNorm scale/shift depend on time and condition."""

    def __init__(self, width: int, cond_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Linear(cond_dim, 3 * width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(2 * width, width),
        )
        # start as the identity so that deep stacks train from the first step
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(
        self, h: torch.Tensor, c: torch.Tensor, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``c``: conditioning per cell, or per distinct row with ``index`` mapping cells to
        rows."""
        modulation = self.modulation(c)
        if index is not None:
            modulation = modulation[index]
        shift, scale, gate = modulation.chunk(3, dim=-1)
        return h + gate * self.mlp(self.norm(h) * (1 + scale) + shift)


class ScoreNetwork(nn.Module):
    """The learned part of the noise prediction, given the noisy latent, the time and the
    categorical conditions (see :meth:`~scgm_scvi.module.SCGMModule.eps`).

    Parameters
    ----------
    n_latent
        Latent dimension.
    n_categories
        Number of categories of each condition column (cell type first, then batch and other
        categorical covariates).
    width
        Hidden width of the residual stack.
    n_blocks
        Number of residual blocks.
    dropout
        Dropout inside the blocks.
    """

    def __init__(
        self,
        n_latent: int,
        n_categories: list[int],
        width: int = 256,
        n_blocks: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.time_embedding = TimeEmbedding(width)
        self.condition_embedding = ConditionEmbedding(n_categories, width)
        self.cond_act = nn.SiLU()
        self.input = nn.Linear(n_latent, width)
        self.blocks = nn.ModuleList(AdaLNBlock(width, width, dropout) for _ in range(n_blocks))
        self.out_norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, n_latent)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        groups: ConditionGroups | None = None,
    ) -> torch.Tensor:
        """Network output at ``x`` (``(n, n_latent)``), times ``t`` (``(n,)``) and condition
        codes ``cond``; with ``groups`` (of ``cond``) all cells must share the time ``t[0]``."""
        if groups is None:
            c, index = self.condition_embedding(cond), None
            c = self.cond_act(self.time_embedding(t) + c)
        else:  # one conditioning row per distinct condition
            c, index = self.condition_embedding(groups.codes), groups.inverse
            c = self.cond_act(self.time_embedding(t[:1]) + c)
        h = self.input(x)
        for block in self.blocks:
            h = block(h, c, index)
        return self.output(self.out_norm(h))
