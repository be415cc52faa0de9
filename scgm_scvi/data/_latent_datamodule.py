"""Minibatches of precomputed latents for stage 2 (the score network never sees counts)."""

from __future__ import annotations

import os
import tempfile

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

# keep in-memory latents on a GPU only when they take at most this share of its free memory
_DEVICE_SHARE = 0.25


def _free_bytes(device: torch.device) -> int:
    """Free memory of a GPU; 0 where unknown (the tensors then stay in host memory)."""
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0


class DiskTensor:
    """A 2-D array in a raw file that is read a minibatch of rows at a time.

    Rows are read into a new array: the file is never mapped into the process, so its pages
    stay in the kernel's cache and out of the process's resident memory (a mapping would keep
    the pages of every row an epoch touches in the process).

    Parameters
    ----------
    path
        File of ``shape[0] * shape[1]`` values of ``dtype``, row-major, no header.
    shape, dtype
        Layout of the file.
    """

    device = torch.device("cpu")

    def __init__(self, path: str, shape: tuple[int, int], dtype: np.dtype):
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        row_bytes = out.itemsize * self.shape[1]
        with open(self.path, "rb", buffering=0) as fh:
            for i, row in enumerate(rows.tolist()):
                fh.seek(row * row_bytes)
                fh.readinto(out[i])
        return torch.from_numpy(out)


class RowWriter:
    """Fill an ``(n, width)`` array block by block, in memory or in a :class:`DiskTensor` file.

    Parameters
    ----------
    n, width, dtype
        Shape and numpy dtype of the result.
    directory
        Write to a raw file in this directory; ``None`` keeps the array in memory.
    name
        File name (without extension) in ``directory``.
    """

    def __init__(self, n: int, width: int, dtype, directory: str | None = None, name: str = ""):
        self.n, self.width, self.dtype = n, width, np.dtype(dtype)
        self.row = 0
        self.path = None if directory is None else os.path.join(directory, f"{name}.bin")
        if self.path is None:
            self._array = torch.from_numpy(np.empty((n, width), dtype=self.dtype))
        else:
            self._file = open(self.path, "wb")  # noqa: SIM115 (closed in finish)

    def append(self, block: torch.Tensor) -> None:
        """Write the next rows (any device)."""
        block = block.detach().cpu()
        if self.path is None:
            self._array[self.row : self.row + len(block)] = block
        else:
            block.numpy().astype(self.dtype, copy=False).tofile(self._file)
        self.row += len(block)

    def finish(self) -> torch.Tensor | DiskTensor:
        """The filled array: a tensor, or a :class:`DiskTensor` over the closed file."""
        if self.row != self.n:
            raise RuntimeError(f"{self.row} rows were written, {self.n} expected.")
        if self.path is None:
            return self._array
        self._file.close()
        return DiskTensor(self.path, (self.n, self.width), self.dtype)


def latent_directory(storage: str, adata) -> tempfile.TemporaryDirectory | None:
    """Where stage 2 keeps its latents: a new temporary directory (``"disk"``) or ``None``.

    ``storage`` is ``"auto"``, ``"memory"`` or ``"disk"``; ``"auto"`` picks the disk for a
    backed AnnData (data larger than memory), else memory.
    """
    if storage == "auto":
        storage = "disk" if getattr(adata, "isbacked", False) else "memory"
    return tempfile.TemporaryDirectory(prefix="scgm_latents_") if storage == "disk" else None


class _TensorDictDataset(Dataset):
    """Indexable by a whole list of rows, so one minibatch is one gather (no per-row collate)."""

    def __init__(self, tensors: dict[str, torch.Tensor | DiskTensor], rows: torch.Tensor):
        self.tensors = tensors
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx) -> dict[str, torch.Tensor]:
        # in row order: a file is read fastest so, and the order within a minibatch does not
        # matter (sorted everywhere, so memory and disk give the same minibatches)
        rows = self.rows[torch.as_tensor(idx, device=self.rows.device)].sort().values
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

    In-memory tensors are moved to the training GPU when they take at most a quarter of its
    free memory, which makes an epoch a handful of gathers; :class:`DiskTensor` values (data
    larger than memory) are read one minibatch at a time. Under a distributed strategy (DDP)
    each process trains on its own equal share of the rows, drawn from a permutation that
    changes every epoch.

    Parameters
    ----------
    tensors
        Tensors (or :class:`DiskTensor`) with the same first dimension.
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

    def setup(self, stage: str | None = None) -> None:
        """Move in-memory tensors to the training GPU when they fit (called by Lightning)."""
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else None
        if device is None or device.type == "cpu":
            return
        values = self.tensors.values()
        if any(isinstance(v, DiskTensor) or v.device == device for v in values):
            return
        nbytes = sum(v.element_size() * v.nelement() for v in values)
        if nbytes > _DEVICE_SHARE * _free_bytes(device):
            return
        self.tensors = {k: v.to(device) for k, v in self.tensors.items()}
        self.train_idx, self.val_idx = self.train_idx.to(device), self.val_idx.to(device)

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
