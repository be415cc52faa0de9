"""Minibatches of precomputed latents for stage 2 (the score network never sees counts)."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler


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


class LatentDataModule(pl.LightningDataModule):
    """Train/validation loaders over a dict of equally long tensors (e.g. latents and conditions).

    The tensors may already live on the GPU, which makes an epoch a handful of gathers. Under a
    distributed strategy Lightning shards the batches across processes.

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
        n = len(next(iter(tensors.values())))
        perm = np.random.default_rng(seed).permutation(n)
        n_train = n if train_size >= 1 else max(1, int(round(train_size * n)))
        device = next(iter(tensors.values())).device
        self.train_idx = torch.as_tensor(perm[:n_train], device=device)
        self.val_idx = torch.as_tensor(perm[n_train:], device=device)
        self.n_train, self.n_val = len(self.train_idx), len(self.val_idx)

    def _loader(self, rows: torch.Tensor, shuffle: bool) -> DataLoader:
        dataset = _TensorDictDataset(self.tensors, rows)
        base = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        sampler = BatchSampler(base, batch_size=self.batch_size, drop_last=False)
        return DataLoader(dataset, sampler=sampler, batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_idx, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_idx, shuffle=False) if self.n_val > 0 else []
