"""Model files that load without running code.

scvi-tools pickles the model's attributes (DataFrames, numpy arrays, pandas indexes) into
``model.pt`` and reads it back with ``torch.load(weights_only=False)``: a shared model file can
then run any code on load. SCGM writes the same content as tensors and plain Python data only
(dicts, lists, tuples, strings, numbers), which ``torch.load(weights_only=True)`` reads without
executing anything; pandas and numpy objects are stored as tagged dicts and rebuilt on load.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import anndata
import mudata
import numpy as np
import pandas as pd
import torch
from scvi.model.base._constants import SAVE_KEYS

TAG = "__scgm__"

LEGACY_MESSAGE = (
    "{path} holds Python objects other than tensors and plain data (a model saved by "
    "scgm_scvi before 0.2, or a file made elsewhere). Loading it could run code from the file, "
    "so it was refused. If you trust where it comes from, load it once with "
    "SCGM.load(dir_path, allow_pickle=True) and save it again with model.save(new_dir): the new "
    "save is in the safe format."
)


# ------------------------------------------------------------------------------- encode / decode
def _encode_array(arr: np.ndarray, where: str) -> dict:
    if arr.dtype.kind in "biuf":
        return {TAG: "ndarray", "data": torch.from_numpy(np.ascontiguousarray(arr).copy())}
    if arr.dtype.kind in "OUS":
        return {
            TAG: "ndarray",
            "dtype": "object" if arr.dtype.kind == "O" else arr.dtype.str,
            "shape": list(arr.shape),
            "data": [encode(v, where) for v in arr.ravel().tolist()],
        }
    raise TypeError(f"{where}: numpy arrays of dtype {arr.dtype} cannot be saved safely.")


def _encode_index(index: pd.Index, where: str) -> dict:
    if isinstance(index, pd.RangeIndex):
        return {
            TAG: "RangeIndex",
            "args": [index.start, index.stop, index.step],
            "name": index.name,
        }
    return {TAG: "Index", "values": encode(index.to_numpy(), where), "name": index.name}


def encode(obj: Any, where: str = "model") -> Any:
    """``obj`` as tensors and plain Python data that ``torch.load(weights_only=True)`` reads.

    Raises
    ------
    TypeError
        For an object with no safe form (``where`` names the attribute).
    """
    if obj is None or isinstance(obj, bool | int | float | str | torch.Tensor):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):  # also defaultdict / OrderedDict: plain dicts on load
        if TAG in obj:
            raise TypeError(f"{where}: a dict key named {TAG!r} is reserved.")
        return {k: encode(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [encode(v, where) for v in obj]
    if isinstance(obj, tuple):
        return tuple(encode(v, where) for v in obj)
    if isinstance(obj, set | frozenset):
        return {TAG: "set", "values": [encode(v, where) for v in obj]}
    if isinstance(obj, slice):
        return {TAG: "slice", "args": [obj.start, obj.stop, obj.step]}
    if isinstance(obj, np.ndarray):
        return _encode_array(obj, where)
    if isinstance(obj, pd.Categorical):
        return {
            TAG: "Categorical",
            "codes": torch.from_numpy(obj.codes.astype(np.int64)),
            "categories": _encode_index(obj.categories, where),
            "ordered": bool(obj.ordered),
        }
    if isinstance(obj, pd.Index):
        return _encode_index(obj, where)
    if isinstance(obj, pd.DataFrame):
        columns = []
        for name in obj.columns:
            col = obj[name]
            if isinstance(col.dtype, pd.CategoricalDtype):
                columns.append(encode(col.array, f"{where}[{name!r}]"))
            else:
                columns.append(_encode_array(col.to_numpy(), f"{where}[{name!r}]"))
        return {
            TAG: "DataFrame",
            "columns": encode(list(obj.columns), where),
            "data": columns,
            "index": _encode_index(obj.index, where),
        }
    raise TypeError(
        f"{where}: objects of type {type(obj).__name__} cannot be saved safely; store tensors, "
        "numpy arrays, pandas tables or plain Python data in model attributes."
    )


def decode(obj: Any) -> Any:
    """Inverse of :func:`encode`; untagged data is returned as it is."""
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(decode(v) for v in obj)
    if not isinstance(obj, dict):
        return obj
    kind = obj.get(TAG)
    if kind is None:
        return {k: decode(v) for k, v in obj.items()}
    if kind == "ndarray":
        if torch.is_tensor(obj["data"]):
            return obj["data"].numpy()
        values = decode(obj["data"])
        if obj["dtype"] == "object":
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            return arr.reshape(obj["shape"])
        return np.array(values, dtype=obj["dtype"]).reshape(obj["shape"])
    if kind == "RangeIndex":
        return pd.RangeIndex(*obj["args"], name=obj["name"])
    if kind == "Index":
        return pd.Index(decode(obj["values"]), name=obj["name"])
    if kind == "Categorical":
        return pd.Categorical.from_codes(
            obj["codes"].numpy(), categories=decode(obj["categories"]), ordered=obj["ordered"]
        )
    if kind == "DataFrame":
        columns = decode(obj["columns"])
        data = {i: decode(col) for i, col in enumerate(obj["data"])}
        frame = pd.DataFrame(data, index=decode(obj["index"]))
        frame.columns = pd.Index(columns)
        return frame
    if kind == "set":
        return set(decode(obj["values"]))
    if kind == "slice":
        return slice(*obj["args"])
    raise ValueError(f"Unknown entry {kind!r} in the model file; was it saved by a newer version?")


# ------------------------------------------------------------------------------- files
def read_model_file(
    path: str, map_location: Any = "cpu", allow_pickle: bool = False
) -> dict[str, Any]:
    """Read a ``model.pt`` with ``torch.load(weights_only=True)`` and rebuild its content.

    Parameters
    ----------
    path
        The model file.
    map_location
        As in :func:`torch.load`.
    allow_pickle
        Read a file that needs Python's full unpickler (older saves) after a warning. Only for
        files from a source you trust: unpickling can run code.

    Raises
    ------
    ValueError
        The file needs the full unpickler and ``allow_pickle`` is ``False``.
    """
    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            raise ValueError(LEGACY_MESSAGE.format(path=repr(path))) from exc
        warnings.warn(
            f"Loading {path!r} with Python's full unpickler (allow_pickle=True): only do this "
            "for files you trust. Save the model again to convert it to the safe format.",
            UserWarning,
            stacklevel=3,
        )
        saved = torch.load(path, map_location=map_location, weights_only=False)
    return decode(saved)


def rewrite_safely(path: str) -> None:
    """Rewrite a ``model.pt`` just written by scvi-tools' ``save`` in the safe format."""
    # the file was written by this process a moment ago, so the full unpickler is safe here
    saved = torch.load(path, map_location="cpu", weights_only=False)
    tmp = f"{path}.safe"
    torch.save(encode(saved), tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def safe_scvi_loading(allow_pickle: bool = False) -> Iterator[None]:
    """Make scvi-tools' model loading (``load``, ``load_query_data``) read model files with
    :func:`read_model_file` instead of ``torch.load(weights_only=False)``."""
    from scvi.model.base import _archesmixin, _base_model

    def load_saved_files(dir_path, load_adata, prefix=None, map_location=None, backup_url=None):
        if backup_url is not None:
            raise ValueError("SCGM models are loaded from local directories only (backup_url).")
        pre = prefix or ""
        with warnings.catch_warnings():  # the allow_pickle warning was given by the check
            warnings.simplefilter("ignore", UserWarning)
            saved = read_model_file(
                os.path.join(dir_path, f"{pre}{SAVE_KEYS.MODEL_FNAME}"),
                map_location,
                allow_pickle,
            )
        attr_dict = saved[SAVE_KEYS.ATTR_DICT_KEY]
        adata = None
        if load_adata:  # the data saved beside the model, as scvi-tools reads it
            is_mudata = attr_dict["registry_"].get("setup_method_name") == "setup_mudata"
            fname = SAVE_KEYS.MDATA_FNAME if is_mudata else SAVE_KEYS.ADATA_FNAME
            data_path = os.path.join(dir_path, f"{pre}{fname}")
            adata = False
            if os.path.exists(data_path):
                adata = mudata.read_h5mu(data_path) if is_mudata else anndata.read_h5ad(data_path)
        return (
            attr_dict,
            saved[SAVE_KEYS.VAR_NAMES_KEY],
            saved[SAVE_KEYS.MODEL_STATE_DICT_KEY],
            adata,
        )

    with (
        _patched(_base_model, "_load_saved_files", load_saved_files),
        _patched(_archesmixin, "_load_saved_files", load_saved_files),
    ):
        yield


@contextlib.contextmanager
def _patched(module, name: str, value) -> Iterator[None]:
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)
