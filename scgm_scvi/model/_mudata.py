"""MuData support: which modality holds the RNA counts and where each ``obs`` key lives."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from anndata import AnnData
from mudata import MuData

#: ``setup_mudata`` arguments that ``modalities`` may map to a modality.
MODALITY_ARGS = (
    "rna_layer",
    "labels_key",
    "batch_key",
    "categorical_covariate_keys",
    "continuous_covariate_keys",
)


def resolve_modalities(mdata: MuData, modalities: Mapping[str, str] | None) -> dict[str, str]:
    """Check ``modalities`` and fill in the RNA modality when it is unambiguous.

    ``None`` (or a mapping without ``"rna_layer"``) picks the modality named ``"rna"``, else the
    only modality. Keys that are not mapped are read from ``mdata.obs``, as in scvi-tools.
    """
    if not isinstance(mdata, MuData):
        raise TypeError(f"mdata must be a MuData object, got {type(mdata).__name__}.")
    modalities = dict(modalities or {})
    extra = sorted(set(modalities) - set(MODALITY_ARGS))
    if extra:
        raise ValueError(
            f"Unknown modalities entries {extra}; SCGM.setup_mudata maps {list(MODALITY_ARGS)}."
        )
    mods = list(mdata.mod)
    if modalities.get("rna_layer") is None:
        if "rna" in mods:
            modalities["rna_layer"] = "rna"
        elif len(mods) == 1:
            modalities["rna_layer"] = mods[0]
        else:
            raise ValueError(
                f"Which modality holds the RNA counts? The MuData has {mods}: pass "
                "modalities={'rna_layer': <name>}."
            )
    for arg, mod in modalities.items():
        if mod is not None and mod not in mods:
            raise ValueError(
                f"modalities[{arg!r}] = {mod!r} is not a modality of the MuData; it has {mods}."
            )
    rna = mdata.mod[modalities["rna_layer"]]
    if rna.n_obs != mdata.n_obs or not rna.obs_names.equals(mdata.obs_names):
        raise ValueError(
            f"The RNA modality {modalities['rna_layer']!r} must hold every cell of the MuData in "
            f"the same order ({rna.n_obs} vs {mdata.n_obs} cells); subset the MuData to the "
            "cells with RNA first (e.g. mudata.pp.intersect_obs(mdata))."
        )
    return {arg: modalities.get(arg) for arg in MODALITY_ARGS}


def obs_frame(mdata: MuData, mod: str | None) -> pd.DataFrame:
    """``mdata.obs`` (``mod=None``) or the ``obs`` of modality ``mod``."""
    return mdata.obs if mod is None else mdata.mod[mod].obs


def check_obs_keys(mdata: MuData, keys: Mapping[str, list[str]], modalities: dict) -> None:
    """Raise a ``ValueError`` naming where a registered ``obs`` key was looked for."""
    for arg, names in keys.items():
        mod = modalities.get(arg)
        frame = obs_frame(mdata, mod)
        where = "mdata.obs" if mod is None else f"mdata[{mod!r}].obs"
        for name in names:
            if name in frame:
                continue
            hint = ""
            others = [m for m in mdata.mod if name in mdata.mod[m].obs and m != mod]
            if mod is None and others:
                hint = f"; it is in mdata[{others[0]!r}].obs: pass modalities={{{arg!r}: "
                hint += f"{others[0]!r}}}"
            elif mod is not None and name in mdata.obs:
                hint = f"; it is in mdata.obs: drop {arg!r} from modalities"
            raise ValueError(
                f"{name!r} ({arg}) not found in {where}. Available columns: "
                f"{list(frame.columns)}{hint}."
            )


def rna_anndata(mdata: MuData, setup_args: Mapping, name: str = "mdata") -> AnnData:
    """The RNA modality of a MuData as an AnnData set up like the model's training data.

    ``X`` holds the RNA counts (of the registered ``rna_layer``, if any, which is also kept
    under its name in ``layers``); ``obs`` is the RNA
    modality's ``obs`` with every registered key (cell type, batch, covariates) read from where
    ``setup_mudata`` registered it, so that :class:`~scgm_scvi.SCGEditor` and the metrics can
    use it as an AnnData. The counts are shared with the MuData, not copied.
    """
    modalities = resolve_modalities(mdata, setup_args.get("modalities"))
    mod = modalities["rna_layer"]
    rna = mdata.mod[mod]
    layer = setup_args.get("rna_layer")
    if layer is not None and layer not in rna.layers:
        raise ValueError(
            f"`{name}`[{mod!r}] lacks the layer {layer!r} the model was trained on; it has "
            f"{list(rna.layers.keys())}."
        )
    # scvi-tools' bookkeeping columns of a registered modality are not the user's data
    obs = rna.obs.loc[:, [c for c in rna.obs.columns if not str(c).startswith("_scvi_")]].copy()
    keys = {
        "labels_key": [setup_args.get("labels_key")],
        "batch_key": [setup_args.get("batch_key")],
        "categorical_covariate_keys": list(setup_args.get("categorical_covariate_keys") or []),
        "continuous_covariate_keys": list(setup_args.get("continuous_covariate_keys") or []),
    }
    keys = {arg: [k for k in names if k is not None] for arg, names in keys.items()}
    check_obs_keys(mdata, keys, modalities)
    for arg, names in keys.items():
        frame = obs_frame(mdata, modalities.get(arg))
        for key in names:
            obs[key] = frame[key].to_numpy()
            if isinstance(frame[key].dtype, pd.CategoricalDtype):
                obs[key] = pd.Categorical(obs[key], categories=frame[key].cat.categories)
    if layer is None:
        return AnnData(X=rna.X, obs=obs, var=rna.var.copy())
    # the counts in X and, for code that reads the registered layer, under its name too
    counts = rna.layers[layer]
    return AnnData(X=counts, obs=obs, var=rna.var.copy(), layers={layer: counts})


def as_registered_mudata(data, obs: pd.DataFrame, var: pd.DataFrame, setup_args) -> MuData:
    """A MuData laid out as ``setup_mudata`` registered it, from counts and ``obs`` columns.

    The RNA modality (under its registered name) holds ``data`` in ``X``, or in the registered
    ``rna_layer`` with an all-zero sparse ``X``; each ``obs`` column goes to ``mdata.obs`` or to
    the modality's ``obs``, wherever its setup argument was read from.
    """
    import numpy as np
    import scipy.sparse as sp

    modalities = dict(setup_args.get("modalities") or {})
    mod = modalities.get("rna_layer") or "rna"
    layer = setup_args.get("rna_layer")
    index = pd.DataFrame(index=obs.index.copy())
    if layer is None:
        rna = AnnData(X=data, obs=index.copy(), var=var)
    else:
        empty = sp.csr_matrix(data.shape, dtype=np.float32)
        rna = AnnData(X=empty, obs=index.copy(), var=var, layers={layer: data})
    mdata = MuData({mod: rna})
    where = {}
    for arg in MODALITY_ARGS[1:]:
        value = setup_args.get(arg)
        names = [value] if isinstance(value, str) else list(value or [])
        for name in names:
            where[name] = modalities.get(arg)
    for key in obs.columns:
        target = mdata.obs if where.get(key) is None else mdata.mod[where[key]].obs
        target[key] = obs[key].to_numpy()
    return mdata
