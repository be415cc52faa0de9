"""Minibatches of precomputed latents for stage 2 (the score network never sees counts)."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class _TensorDictDataset(Dataset):
    """Indexable by a whole list of rows, so one minibatch is one gather (no per-row collate)."""

    def __init__(self, tensors: dict[str, torch.Tensor], rows: torch.Tensor):
        self.tensors = tensors
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx) -> dict[str, torch.Tensor]:
        rows = self.rows[torch.as_tensor(idx, device=self.rows.device)]
        return {k: v[rows] for k, v in self.tensors.items()}


class _RowBatches(Sampler):
    """Batches of positions ``0 .. n-1``, shuffled per epoch, sharded over processes.

    Under a distributed strategy every process gets ``n // world_size`` positions (the same
    number, so that all processes take the same number of optimiser steps), a different share
    of a permutation that changes with the epoch and is the same on every process.
    """

    def __init__(self, n, batch_size, shuffle, seed=0, rank=0, world_size=1):
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of each epoch."""
        self.epoch = epoch

    def _positions(self) -> np.ndarray:
        if self.shuffle:
            pos = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            pos = np.arange(self.n)
        if self.world_size > 1:
            per_rank = self.n // self.world_size
            pos = pos[self.rank * per_rank : (self.rank + 1) * per_rank]
        return pos

    def __iter__(self):
        pos = self._positions()
        if self.shuffle and self.world_size == 1:
            self.epoch += 1  # without Lightning's set_epoch, still a new order each epoch
        for start in range(0, len(pos), self.batch_size):
            yield pos[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        n = self.n // self.world_size if self.world_size > 1 else self.n
        return -(-n // self.batch_size)


class LatentDataModule(pl.LightningDataModule):
    """Train/validation loaders over a dict of equally long tensors (e.g. latents and conditions).

    The tensors may already live on the GPU, which makes an epoch a handful of gathers. Under a
    distributed strategy (DDP) each process trains on its own equal share of the rows, drawn
    from a permutation that changes every epoch.

    Parameters
    ----------
    tensors
        Tensors with the same first dimension.
    train_size
        Share of rows used for training; the rest validates.
    batch_size
        Minibatch size.
    seed
        Seed of the train/validation split.
    """

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        train_size: float = 0.9,
        batch_size: int = 1024,
        seed: int = 0,
    ):
        super().__init__()
        self.tensors = tensors
        self.batch_size = batch_size
        self.seed = seed
        n = len(next(iter(tensors.values())))
        perm = np.random.default_rng(seed).permutation(n)
        n_train = n if train_size >= 1 else max(1, int(round(train_size * n)))
        device = next(iter(tensors.values())).device
        self.train_idx = torch.as_tensor(perm[:n_train], device=device)
        self.val_idx = torch.as_tensor(perm[n_train:], device=device)
        self.n_train, self.n_val = len(self.train_idx), len(self.val_idx)

    def _loader(self, rows: torch.Tensor, shuffle: bool) -> DataLoader:
        dataset = _TensorDictDataset(self.tensors, rows)
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        if world > 1 and len(rows) < world:  # too few rows to shard: every process sees all
            rank, world = 0, 1
        sampler = _RowBatches(len(rows), self.batch_size, shuffle, self.seed, rank, world)
        return DataLoader(dataset, sampler=sampler, batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_idx, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_idx, shuffle=False) if self.n_val > 0 else []
