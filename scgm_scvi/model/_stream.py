"""Write generated cells straight to an ``.h5ad`` file, chunk by chunk, in bounded memory."""

from __future__ import annotations

import os
import tempfile

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import sparse_dataset, write_elem

from ._files import disk_full_error, remove_stale, respect_umask


class H5ADStreamWriter:
    """Append blocks of rows (CSR counts, latents, ``obs``) to a new ``.h5ad``, then add ``var``.

    The file is written under a temporary name in the same directory and renamed into place by
    :meth:`close`, so an interrupted run never leaves a file that looks complete. Memory holds
    one block at a time.

    Parameters
    ----------
    path
        Target ``.h5ad`` path.
    n_obs, n_vars
        Final shape of ``X`` (``n_obs`` rows must be appended in total).
    latent_dim
        Width of ``obsm[latent_key]`` (0: no latent is written).
    latent_key
        ``obsm`` key of the latents.
    overwrite
        Replace an existing file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n_obs: int,
        n_vars: int,
        latent_dim: int = 0,
        latent_key: str = "X_scgm",
        overwrite: bool = False,
    ):
        self.path = os.path.abspath(os.fspath(path))
        if os.path.exists(self.path) and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it.")
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        prefix = f".{os.path.basename(self.path)}."
        remove_stale(parent, prefix)  # partial files of killed runs
        fd, self.tmp = tempfile.mkstemp(
            prefix=f"{prefix}{os.getpid()}-", suffix=".partial", dir=parent
        )
        os.close(fd)
        self.n_obs, self.n_vars = int(n_obs), int(n_vars)
        self.rows = 0
        self.file = None
        self._x = None
        self._latent = None
        try:
            respect_umask(self.tmp)
            self.file = h5py.File(self.tmp, "w")
            if latent_dim:
                write_elem(self.file, "obsm", {})
                self._latent = self.file["obsm"].create_dataset(
                    latent_key, shape=(self.n_obs, latent_dim), dtype=np.float32
                )
                self._latent.attrs["encoding-type"] = "array"
                self._latent.attrs["encoding-version"] = "0.2.0"
        except BaseException as exc:
            self.abort()
            raise self.explain_error(exc) from exc

    def explain_error(self, exc: BaseException) -> BaseException:
        """A full disk said in one line; other errors unchanged."""
        full = disk_full_error(exc, self.path, "the cells")
        return exc if full is None else full

    def append(
        self, X: sp.csr_matrix, latent: np.ndarray | None = None, obs: pd.DataFrame | None = None
    ) -> None:
        """Append a block of rows: CSR counts, their latents (if configured) and their ``obs``.

        ``obs`` is given with every block or with none (then whole to :meth:`close`); its
        columns and categories must be the same in every block.
        """
        X = sp.csr_matrix(X)
        if X.shape[1] != self.n_vars:
            raise ValueError(f"Expected {self.n_vars} columns, got {X.shape[1]}.")
        n = X.shape[0]
        if self.rows + n > self.n_obs:
            raise ValueError(f"More than the announced {self.n_obs} rows.")
        if obs is not None and len(obs) != n:
            raise ValueError(f"{len(obs)} obs rows for a block of {n} cells.")
        if obs is not None:
            self._append_obs(obs)
        if self._x is None:
            write_elem(self.file, "X", X)  # anndata makes the arrays resizable
            self._x = sparse_dataset(self.file["X"])
        else:
            self._x.append(X)
        if self._latent is not None:
            self._latent[self.rows : self.rows + n] = np.asarray(latent, dtype=np.float32)
        self.rows += n

    def _append_obs(self, obs: pd.DataFrame) -> None:
        if "obs" not in self.file:  # anndata's encoding, with columns that can grow
            write_elem(self.file, "obs", obs, dataset_kwargs={"maxshape": (None,)})
            return
        group = self.file["obs"]
        index_key = group.attrs["_index"]
        values = {index_key: obs.index.astype(str).to_numpy(dtype=object)}
        for col in group.attrs["column-order"]:
            series = obs[col]
            values[col] = series.cat.codes.to_numpy() if series.dtype == "category" else series
        for key, value in values.items():
            dataset = group[key]["codes"] if isinstance(group[key], h5py.Group) else group[key]
            start = dataset.shape[0]
            dataset.resize((start + len(value),))
            dataset[start:] = np.asarray(value)

    def close(self, obs: pd.DataFrame | None, var: pd.DataFrame, uns: dict | None = None) -> str:
        """Write ``obs`` (``None`` if it was appended with the blocks), ``var`` and ``uns``,
        then rename the file into place.

        Returns
        -------
        The final path.
        """
        if self.rows != self.n_obs:
            raise ValueError(f"{self.rows} rows were written, {self.n_obs} announced.")
        if self._x is None:  # no cells: an empty CSR matrix
            write_elem(self.file, "X", sp.csr_matrix((0, self.n_vars), dtype=np.float32))
        if self._latent is None:
            write_elem(self.file, "obsm", {})
        if obs is not None:
            write_elem(self.file, "obs", obs)
        elif "obs" not in self.file:
            raise ValueError("No obs: pass it to close() or with every block to append().")
        write_elem(self.file, "var", var)
        for key in ("layers", "obsp", "varm", "varp"):
            write_elem(self.file, key, {})
        write_elem(self.file, "uns", dict(uns or {}))
        self.file.attrs["encoding-type"] = "anndata"
        self.file.attrs["encoding-version"] = "0.1.0"
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file."""
        try:
            if self.file is not None:
                self.file.close()
        except Exception:  # noqa: BLE001 - a file on a full disk may not close cleanly
            pass
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)


def stack_rows(blocks: list) -> sp.csr_matrix | np.ndarray:
    """Stack row blocks (all CSR or all dense) into one matrix, emptying ``blocks`` as it goes.

    ``scipy.sparse.vstack`` and ``np.concatenate`` hold every block and the result at once, about
    twice the output at the end of an in-memory ``generate``. Here the result is allocated empty
    (the operating system commits its pages as they are written) and each block is released
    once copied, so the peak is about the output plus one block.

    Parameters
    ----------
    blocks
        Row blocks with equal column counts, all scipy sparse or all numpy arrays; emptied.

    Returns
    -------
    One CSR matrix (canonical: sorted, unique indices) or one array, rows in block order.
    """
    if not blocks:
        raise ValueError("stack_rows needs at least one block.")
    blocks.reverse()  # pop() from the end, in the original order
    n_rows = sum(b.shape[0] for b in blocks)
    if not sp.issparse(blocks[0]):
        out = np.empty((n_rows, *blocks[0].shape[1:]), dtype=blocks[0].dtype)
        start = 0
        while blocks:
            block = blocks.pop()
            out[start : start + len(block)] = block
            start += len(block)
        return out
    n_cols = blocks[0].shape[1]
    nnz = sum(b.nnz for b in blocks)
    index_dtype = np.int32 if max(nnz, n_cols) <= np.iinfo(np.int32).max else np.int64
    data = np.empty(nnz, dtype=blocks[0].dtype)
    indices = np.empty(nnz, dtype=index_dtype)
    indptr = np.zeros(n_rows + 1, dtype=index_dtype)
    row = pos = 0
    while blocks:
        block = blocks.pop().tocsr()
        block.sum_duplicates()  # canonical (sorted, unique) indices, as vstack would give
        end = pos + block.nnz
        data[pos:end] = block.data
        indices[pos:end] = block.indices
        indptr[row + 1 : row + 1 + block.shape[0]] = block.indptr[1:].astype(index_dtype) + pos
        row, pos = row + block.shape[0], end
    return sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols), copy=False)
