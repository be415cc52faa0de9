"""Hostile inputs and faults: each is refused with a message that names the fix, and no public
call changes the user's AnnData."""

from __future__ import annotations

import errno
import os
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import FIT, TINY, assert_unchanged, make_adata, snapshot

from scgm_scvi import SCGM, SCGEditor, cli, metrics
from scgm_scvi.model import _files, _stream


# ------------------------------------------------------------------------------ counts
@pytest.mark.parametrize(
    ("value", "match"), [(-1.0, "negative values"), (np.nan, "NaN or infinite")]
)
def test_edit_refuses_values_that_are_not_counts(trained, value, match):
    model, adata = trained
    cells = adata[:10].copy()
    X = (cells.X.toarray() if sp.issparse(cells.X) else cells.X).astype(np.float32)
    X[3, 5] = value
    cells.X = X
    with pytest.raises(ValueError, match=match):
        SCGEditor(model).edit(cells, {"batch": "batch_1"})


def test_edit_warns_on_log_normalised_cells(trained):
    model, adata = trained
    cells = adata[:10].copy()
    cells.X = np.log1p((cells.X.toarray() if sp.issparse(cells.X) else cells.X).astype(float))
    with pytest.warns(UserWarning, match="non-integer values"):
        SCGEditor(model).edit(cells, {"batch": "batch_1"})


def test_count_check_reads_every_row(monkeypatch):
    monkeypatch.setattr("scgm_scvi._counts.BLOCK_ROWS", 50)
    adata = make_adata()
    X = (adata.X.toarray() if sp.issparse(adata.X) else adata.X).astype(np.float32)
    X[180, 3] = -2  # in the fourth block
    adata.X = sp.csr_matrix(X)
    with pytest.raises(ValueError, match=r"negative values \(rows 150-199\)"):
        SCGM.setup_anndata(adata, labels_key="labels")
    # the metrics and the command line read the same scan
    with pytest.raises(ValueError, match="negative values"):
        metrics.evaluate(adata, adata, metrics=["g1"])


# ------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 1.5, "cell_type": "label_0"}, "n must be a positive integer"),
        ({"n": "10"}, "n must be a positive integer"),
        ({"n": 0}, "n must be a positive integer"),
        ({"n": None, "cell_type": {"label_0": 2.7}}, "integer cell counts"),
        ({"n": 5, "cell_type": 2}, r"Unknown cell_type \[2\]"),
        ({"n": 5, "guidance_scale": -1.0}, "guidance_scale must be a finite number >= 0"),
        ({"n": 5, "guidance_scale": float("nan")}, "guidance_scale must be a finite number"),
        ({"n": 5, "guidance_scale": float("inf")}, "guidance_scale must be a finite number"),
        ({"n": 5, "library_size": float("nan")}, "library_size must be finite and positive"),
        ({"n": 5, "library_size": -3.0}, "library_size must be finite and positive"),
        ({"n": 5, "library_size": [1000.0, 2000.0]}, "one per cell"),
        ({"n": 5, "library_size": "big"}, "library_size must be numbers"),
        ({"n": 5, "n_steps": 2.5}, "n_steps must be a positive integer"),
        ({"n": 5, "n_steps": 0}, "n_steps must be a positive integer"),
        ({"n": 5, "batch_size": 0}, "batch_size must be a positive integer"),
        ({"n": 5, "seed": "abc"}, "seed must be None or a non-negative integer"),
        ({"n": 5, "seed": -1}, "seed must be None or a non-negative integer"),
        ({"n": 5, "seed": 1.5}, "seed must be None or a non-negative integer"),
        ({"n": 5, "covariates": {"batch": ["batch_0"] * 3}}, r"one per cell \(5 values\)"),
    ],
)
def test_generate_refuses_bad_arguments(trained, kwargs, match):
    model, _ = trained
    with pytest.raises(ValueError, match=match):
        model.generate(**kwargs)


def test_decode_and_edit_refuse_bad_arguments(trained):
    model, adata = trained
    z = np.zeros((4, model.module.n_latent), dtype=np.float32)
    with pytest.raises(ValueError, match="z must have shape"):
        model.decode_latent(z[:, :2])
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.decode_latent(np.full_like(z, np.nan))
    with pytest.raises(ValueError, match="library_size must be finite"):
        model.decode_latent(z, library_size=np.inf)
    with pytest.raises(ValueError, match="seed must be"):
        model.decode_latent(z, seed=-2)
    editor = SCGEditor(model)
    cells = adata[:5].copy()
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        editor.edit(cells, {"batch": "batch_1"}, guidance_scale=float("nan"))
    with pytest.raises(ValueError, match="seed must be"):
        editor.edit(cells, {"batch": "batch_1"}, seed="x")
    with pytest.raises(ValueError, match="strength must be in"):
        editor.edit(cells, {"batch": "batch_1"}, strength=True)


def test_cli_refuses_nan_guidance(trained, tmp_path, capsys):
    model, _ = trained
    model.save(str(tmp_path / "m"))
    status = cli.main(
        ["generate", str(tmp_path / "m"), "--n", "3", "--guidance-scale", "nan",
         "--out", str(tmp_path / "g.h5ad")]
    )  # fmt: skip
    assert status == 2
    assert "guidance" in capsys.readouterr().err


# ------------------------------------------------------------------------------ setup and load
def test_setup_refuses_empty_duplicated_or_unlabelled_data():
    adata = make_adata()
    with pytest.raises(ValueError, match="has no cells"):
        SCGM.setup_anndata(adata[:0].copy(), labels_key="labels")
    dup = adata.copy()
    dup.var_names = ["g0"] * 2 + list(dup.var_names[2:])
    with pytest.raises(ValueError, match="var_names_make_unique"):
        SCGM.setup_anndata(dup, labels_key="labels")
    missing = adata.copy()
    missing.obs["labels"] = missing.obs["labels"].astype(object)
    missing.obs.iloc[3, missing.obs.columns.get_loc("labels")] = np.nan
    with pytest.raises(ValueError, match=r"\['labels'\] has 1 missing values"):
        SCGM.setup_anndata(missing, labels_key="labels")


def test_training_refuses_too_few_cells():
    adata = make_adata()[:2].copy()
    SCGM.setup_anndata(adata, labels_key="labels")
    with pytest.raises(ValueError, match="at least 3 cells"):
        SCGM(adata, **TINY).train(max_epochs=1, **FIT)


def test_load_with_other_genes_names_the_fix(trained, tmp_path):
    model, adata = trained
    model.save(str(tmp_path / "m"))
    with pytest.raises(ValueError, match=r"adata has 90 genes and the model 100 \(10 missing"):
        SCGM.load(str(tmp_path / "m"), adata=adata[:, 10:].copy())


def test_resume_from_damaged_or_foreign_checkpoint(tmp_path):
    adata = make_adata()
    SCGM.setup_anndata(adata, labels_key="labels")
    model = SCGM(adata, **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train_vae(max_epochs=2, checkpoint_dir=str(tmp_path / "ck"), **FIT)
    last = tmp_path / "ck" / "vae" / "last.ckpt"
    (tmp_path / "ck" / "vae" / "complete.json").unlink()  # as if interrupted
    other = SCGM(adata, **{**TINY, "n_hidden": 16})
    with pytest.raises(ValueError, match="another architecture"):
        other.train_vae(max_epochs=3, checkpoint_dir=str(tmp_path / "ck"), resume=True, **FIT)
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot be read"):
        model.train_vae(max_epochs=3, checkpoint_dir=str(tmp_path / "ck"), resume=True, **FIT)


# ------------------------------------------------------------------------------ full disk, files
def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_generate_to_a_full_disk_cleans_up(trained, tmp_path, monkeypatch):
    model, _ = trained
    monkeypatch.setattr(_stream, "write_elem", _no_space)
    with pytest.raises(OSError, match="No space left on the device while writing the cells"):
        model.generate(n=5, out=str(tmp_path / "g.h5ad"))
    assert os.listdir(tmp_path) == []


def test_save_to_a_full_disk_says_so(trained, tmp_path, monkeypatch):
    model, _ = trained
    monkeypatch.setattr(torch, "save", lambda *a, **k: _no_space())
    with pytest.raises(OSError, match="No space left on the device while writing the model"):
        model.save(str(tmp_path / "m"))
    assert os.listdir(tmp_path) == []


def test_leftovers_of_killed_runs_are_removed(trained, tmp_path):
    model, _ = trained
    dead = 2**22 + 12345  # above the default pid_max: no such process
    assert not _files.pid_alive(dead)
    (tmp_path / f".m.saving-{dead}-abc").mkdir()
    (tmp_path / f".g.h5ad.{dead}-xyz.partial").write_text("")
    (tmp_path / f".m.saving-{os.getpid()}-live").mkdir()  # a live process: kept
    model.save(str(tmp_path / "m"))
    model.generate(n=3, out=str(tmp_path / "g.h5ad"))
    live = f".m.saving-{os.getpid()}-live"
    assert sorted(os.listdir(tmp_path)) == sorted([live, "g.h5ad", "m"])
    shutil.rmtree(tmp_path / f".m.saving-{os.getpid()}-live")


def test_outputs_follow_the_umask(trained, tmp_path):
    model, _ = trained
    old = os.umask(0o022)
    try:
        model.save(str(tmp_path / "m"))
        model.generate(n=3, out=str(tmp_path / "g.h5ad"))
    finally:
        os.umask(old)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "m" / "model.pt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "g.h5ad").stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------------ no mutation
def test_no_public_call_changes_the_users_anndata(trained, tmp_path):
    """Fingerprint X, obs, var, obsm, layers and uns before and after each public call."""
    model, _ = trained
    data = make_adata(seed=1)
    real, fake = data[:100].copy(), data[100:].copy()
    calls = {
        "generate": lambda a: model.generate(n=5, seed=1),
        "edit": lambda a: SCGEditor(model).edit(a, {"batch": "batch_1"}, n_steps=2),
        "load_query_data": lambda a: SCGM.load_query_data(a, model),
        "evaluate": lambda a: metrics.evaluate(a, fake, "labels", train=a, metrics=["g1"]),
        "decode_latent": lambda a: model.decode_latent(
            np.zeros((2, model.module.n_latent), np.float32)
        ),
    }
    for name, call in calls.items():
        before = snapshot(real)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call(real)
        try:
            assert_unchanged(before, real)
        except AssertionError as exc:
            raise AssertionError(f"{name} changed its input: {exc}") from exc


def test_query_with_matching_genes_is_not_registered_in_place(trained):
    model, _ = trained
    query = make_adata(seed=2)
    columns, uns = list(query.obs.columns), dict(query.uns)
    query_model = SCGM.load_query_data(query, model)
    assert list(query.obs.columns) == columns and dict(query.uns) == uns
    assert query_model.adata is not query
    pd.testing.assert_index_equal(query_model.adata.var_names, query.var_names)
