"""Not losing work and scaling up: atomic save, checked load, checkpoint resume, backed data,
generation to disk and DDP on two CPU processes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch
from conftest import FIT, make_adata, make_model
from lightning.pytorch.callbacks import Callback

import scgm_scvi
from scgm_scvi.data import LatentDataModule
from scgm_scvi.data._latent_datamodule import DiskTensor, RowWriter
from scgm_scvi.model._stream import stack_rows


def _state(model):
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def _leftovers(parent) -> list[str]:
    return [f for f in os.listdir(parent) if ".saving-" in f or ".old-" in f or "partial" in f]


# ---------------------------------------------------------------------------------- save / load
def test_save_is_atomic_under_a_crash(trained, tmp_path, monkeypatch):
    model, _ = trained
    target = tmp_path / "model"
    real_save = torch.save

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    # a crash during the first save leaves nothing behind
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        model.save(str(target))
    assert not target.exists() and _leftovers(tmp_path) == []

    # a crash while overwriting leaves the previous model intact and loadable
    monkeypatch.setattr(torch, "save", real_save)
    model.save(str(target))
    before = sorted(os.listdir(target))
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        model.save(str(target), overwrite=True)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(os.listdir(target)) == before and _leftovers(tmp_path) == []
    _assert_same_state(_state(scgm_scvi.SCGM.load(str(target))), _state(model))


def test_save_overwrite_semantics(trained, tmp_path):
    model, _ = trained
    target = tmp_path / "model"
    model.save(str(target))
    (target / "notes.txt").write_text("kept")
    with pytest.raises(ValueError, match="already exists"):
        model.save(str(target))
    model.save(str(target), overwrite=True, save_anndata=True)
    assert (target / "notes.txt").read_text() == "kept"  # other files survive an overwrite
    assert (target / "adata.h5ad").exists()
    model.save(str(target), overwrite=True)  # without the AnnData: the stale one goes
    assert not (target / "adata.h5ad").exists()
    assert _leftovers(tmp_path) == []
    loaded = scgm_scvi.SCGM.load(str(target))
    assert loaded.adata is None
    _assert_same_state(_state(loaded), _state(model))


def test_load_damaged_or_foreign(trained, tmp_path):
    model, _ = trained
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scgm_scvi.SCGM.load(str(tmp_path / "missing"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"not a saved SCGM model: it has no model.pt"):
        scgm_scvi.SCGM.load(str(foreign))
    # truncated model file: the manifest catches it
    target = tmp_path / "model"
    model.save(str(target))
    data = (target / "model.pt").read_bytes()
    (target / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"damaged: model.pt has \d+ bytes"):
        scgm_scvi.SCGM.load(str(target))
    # same size, changed bytes: the checksum catches it
    (target / "model.pt").write_bytes(data[:100] + bytes(10) + data[110:])
    with pytest.raises(ValueError, match="checksum of model.pt"):
        scgm_scvi.SCGM.load(str(target))
    # no manifest (older save) and a truncated file: torch's error, named
    (target / "scgm_manifest.json").unlink()
    (target / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot be read; the file is damaged"):
        scgm_scvi.SCGM.load(str(target))
    # a model of another class
    adata = make_adata()
    scvi.model.SCVI.setup_anndata(adata)
    other = scvi.model.SCVI(adata, n_latent=2, n_hidden=8)
    other.save(str(tmp_path / "scvi"))
    # scvi-tools pickles its model files: refused unless trusted, then named
    with pytest.raises(ValueError, match="could run code from the file"):
        scgm_scvi.SCGM.load(str(tmp_path / "scvi"))
    with pytest.raises(ValueError, match="holds a saved SCVI model, not SCGM"):
        scgm_scvi.SCGM.load(str(tmp_path / "scvi"), allow_pickle=True)


# ---------------------------------------------------------------------------------- checkpoints
class _Crash(Callback):
    """Simulated interruption at the end of an epoch (after the checkpoint was written)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("interrupted (simulated)")


def test_checkpoint_resume_both_stages(tmp_path, capsys):
    ckpt = str(tmp_path / "ckpt")
    adata = make_adata()
    fit = {**FIT, "early_stopping": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # stage 1 interrupted after epoch 2 of 4
        model = make_model(adata)
        with pytest.raises(RuntimeError, match="interrupted"):
            model.train_vae(max_epochs=4, checkpoint_dir=ckpt, callbacks=[_Crash(1)], **fit)
        assert os.path.isfile(os.path.join(ckpt, "vae", "last.ckpt"))
        assert not os.path.exists(os.path.join(ckpt, "vae", "complete.json"))
        # a new process: a fresh model resumes at epoch 3 (2 epochs left, 2 steps each)
        model = make_model(adata)
        model.train_vae(max_epochs=4, checkpoint_dir=ckpt, resume=True, **fit)
        assert model.trainer.current_epoch == 4
        assert model.trainer.global_step == 8
        assert len(model.history["elbo_train"]) == 2
        vae_state = _state(model)
        # stage 2 interrupted after epoch 2 of 5
        with pytest.raises(RuntimeError, match="interrupted"):
            model.train_diffusion(max_epochs=5, checkpoint_dir=ckpt, callbacks=[_Crash(1)], **FIT)
        # a new process runs the same script: stage 1 is done, stage 2 resumes
        model = make_model(adata)
        model.train(max_epochs=4, diffusion_max_epochs=5, checkpoint_dir=ckpt, resume=True, **fit)
        # 180 training latents at the default batch of 128: 2 steps per epoch
        assert model.trainer.current_epoch == 5 and model.trainer.global_step == 5 * 2
        assert len(model.diffusion_history_["train_loss"]) == 3
        assert model.vae_trained_ and model.diffusion_trained_
        state = _state(model)
        for k, v in vae_state.items():
            stage2 = ("score_net.", "latent_", "gaussians.", "posterior_noise.", "library_model.")
            if not k.startswith(stage2):
                torch.testing.assert_close(state[k], v, rtol=0, atol=0, msg=k)
        # everything finished: resuming only loads the final weights
        again = make_model(adata)
        again.train(max_epochs=4, diffusion_max_epochs=5, checkpoint_dir=ckpt, resume=True, **fit)
        _assert_same_state(_state(again), state)
        g = again.generate(n=10, seed=0)
        np.testing.assert_array_equal(g.X.toarray(), model.generate(n=10, seed=0).X.toarray())
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        make_model(adata).train_vae(max_epochs=1, resume=True, **FIT)


# ---------------------------------------------------------------------------------- big data
def test_train_from_backed_h5ad(tmp_path):
    adata = make_adata()
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    model = make_model(backed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=2, diffusion_max_epochs=2, **FIT)
    assert backed.isbacked  # never loaded into memory
    g = model.generate(n=12, cell_type="label_1", seed=0)
    assert g.X.shape == (12, 100) and g.X.sum() > 0
    # the streaming latent pass gives the same latents as in memory
    z_backed = model._latent_pass()[0]["z_loc"]
    inmem = model.get_latent_representation(adata)
    np.testing.assert_allclose(z_backed.numpy(), inmem, rtol=1e-4, atol=1e-5)


def test_row_writer_and_disk_tensor(tmp_path):
    values = np.arange(24, dtype=np.float32).reshape(8, 3)
    writer = RowWriter(8, 3, np.float32, str(tmp_path), "z")
    writer.append(torch.from_numpy(values[:5]))
    writer.append(torch.from_numpy(values[5:]))
    disk = writer.finish()
    assert isinstance(disk, DiskTensor) and len(disk) == 8 and disk.shape == (8, 3)
    rows = torch.tensor([6, 0, 3])
    np.testing.assert_array_equal(disk[rows].numpy(), values[[6, 0, 3]])
    assert disk[torch.tensor([], dtype=torch.long)].shape == (0, 3)
    with pytest.raises(RuntimeError, match="3 rows were written, 4 expected"):
        short = RowWriter(4, 3, np.float32)
        short.append(torch.zeros(3, 3))
        short.finish()


def test_stack_rows_equals_vstack_and_releases_blocks():
    rng = np.random.default_rng(0)
    dense = [rng.poisson(0.3, size=(n, 7)).astype(np.float32) for n in (5, 1, 9)]
    blocks = [sp.csr_matrix(b) for b in dense]
    expected = sp.vstack(blocks, format="csr")
    given = list(blocks)
    stacked = stack_rows(given)
    assert given == []  # each block is released once copied
    assert isinstance(stacked, sp.csr_matrix) and stacked.shape == (15, 7)
    assert stacked.dtype == np.float32 and stacked.has_sorted_indices
    np.testing.assert_array_equal(stacked.toarray(), expected.toarray())
    np.testing.assert_array_equal(stacked.indptr, expected.indptr)
    latents = [rng.normal(size=(n, 3)).astype(np.float32) for n in (4, 2)]
    np.testing.assert_array_equal(stack_rows(list(latents)), np.concatenate(latents))
    empty_rows = stack_rows([sp.csr_matrix((2, 7), dtype=np.float32), blocks[1]])
    np.testing.assert_array_equal(empty_rows.toarray()[2], dense[1][0])
    with pytest.raises(ValueError, match="at least one block"):
        stack_rows([])


def test_stage2_latents_on_disk_train_like_memory(tmp_path, monkeypatch):
    """``latent_storage="disk"`` reads minibatches from a temporary file that is removed after
    training, and trains exactly the same score network as in memory."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    reads, read = [], DiskTensor.__getitem__
    monkeypatch.setattr(DiskTensor, "__getitem__", lambda s, r: reads.append(1) or read(s, r))
    model = make_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train_vae(max_epochs=2, **FIT)
        vae = _state(model)
        states = {}
        for storage in ("memory", "disk"):
            model.module.load_state_dict(vae)
            scvi.settings.seed = 0
            model.train_diffusion(max_epochs=3, latent_storage=storage, **FIT)
            states[storage] = _state(model)
            assert (len(reads) > 0) == (storage == "disk")
    _assert_same_state(states["memory"], states["disk"])
    assert os.listdir(tmp) == []  # the latent files are gone
    with pytest.raises(ValueError, match="latent_storage must be"):
        model.train_diffusion(max_epochs=1, latent_storage="gpu", **FIT)


def test_latents_move_to_the_training_gpu_only_when_they_fit(monkeypatch):
    """The GPU branch of ``LatentDataModule.setup`` with the "meta" device standing in for a GPU
    (CI has none): moved when the latents take at most a quarter of the free memory."""
    from types import SimpleNamespace

    from scgm_scvi.data import _latent_datamodule as ldm

    tensors = {"z_loc": torch.zeros(10, 4), "cond": torch.zeros(10, 1, dtype=torch.long)}
    nbytes = 10 * 4 * 4 + 10 * 8
    meta = torch.device("meta")
    for free, moved in ((4 * nbytes, True), (4 * nbytes - 1, False)):
        monkeypatch.setattr(ldm, "_free_bytes", lambda device, free=free: free)
        dm = LatentDataModule(dict(tensors), train_size=0.8, batch_size=4)
        dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=meta))
        dm.setup("fit")
        assert all((v.device == meta) == moved for v in dm.tensors.values())
        assert (dm.train_idx.device == meta) == moved
    cpu = LatentDataModule(dict(tensors))
    cpu.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    cpu.setup("fit")
    assert cpu.tensors["z_loc"].device.type == "cpu"


def test_generate_to_disk_equals_in_memory(trained, tmp_path, monkeypatch):
    model, _ = trained
    out = tmp_path / "gen.h5ad"
    kwargs = {"n": 45, "seed": 5, "batch_size": 16, "sampler": "ode_euler", "n_steps": 4}
    path = model.generate(out=str(out), **kwargs)
    assert path == str(out) and _leftovers(tmp_path) == []
    mem = model.generate(**kwargs)
    disk = ad.read_h5ad(out)
    np.testing.assert_array_equal(disk.X.toarray(), mem.X.toarray())
    pd.testing.assert_frame_equal(disk.obs, mem.obs)
    np.testing.assert_array_equal(disk.obsm["X_scgm"], mem.obsm["X_scgm"])
    assert list(disk.var_names) == list(mem.var_names)
    assert disk.uns["scgm"]["seed"] == 5 and disk.uns["scgm"]["sampler"] == "ode_euler"
    backed = ad.read_h5ad(out, backed="r")
    assert backed.shape == (45, 100)
    # without latents (anndata loads obsm of a backed file into memory)
    bare = ad.read_h5ad(model.generate(out=str(tmp_path / "bare.h5ad"), latent_key=None, **kwargs))
    assert len(bare.obsm) == 0 and len(model.generate(latent_key=None, **kwargs).obsm) == 0
    np.testing.assert_array_equal(bare.X.toarray(), mem.X.toarray())
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.generate(out=str(out), **kwargs)
    # an interrupted run leaves neither a partial file nor a damaged target
    calls = {"n": 0}
    real = model._decode

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("interrupted (simulated)")
        return real(*args, **kw)

    monkeypatch.setattr(model, "_decode", flaky)
    with pytest.raises(RuntimeError, match="interrupted"):
        model.generate(out=str(tmp_path / "other.h5ad"), **kwargs)
    assert not (tmp_path / "other.h5ad").exists() and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------- DDP
DDP_SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    warnings.simplefilter("ignore")
    import torch
    torch.set_num_threads(1)
    import scvi
    import scgm_scvi
    from scgm_scvi.module import SCGMModule

    if __name__ == "__main__":
        rows = []
        loss = SCGMModule.diffusion_loss
        def counted(self, tensors):
            rows.append(len(tensors["z_loc"]))
            return loss(self, tensors)
        SCGMModule.diffusion_loss = counted
        scvi.settings.seed = 0
        adata = scvi.data.synthetic_iid(batch_size=100, n_genes=100, n_batches=2, n_labels=3)
        scgm_scvi.SCGM.setup_anndata(adata, labels_key="labels", batch_key="batch")
        model = scgm_scvi.SCGM(adata, n_latent=8, n_hidden=32, score_width=32, score_blocks=2)
        model.train(max_epochs=2, diffusion_max_epochs=2, accelerator="cpu", devices=2,
                    strategy="ddp_find_unused_parameters_true", enable_progress_bar=False,
                    latent_storage=sys.argv[2])
        rank = model.trainer.global_rank
        print(f"RANK {rank} world {model.trainer.world_size} rows {rows[0]}", flush=True)
        if rank == 0:
            model.save(sys.argv[1], overwrite=True)
    """
)


# ~12 s each on a quiet 2-core machine, 70-100 s when it is shared (two processes import torch and
# scvi-tools): run with `pytest -m slow`.
@pytest.mark.slow
@pytest.mark.parametrize("latent_storage", ["memory", "disk"])
def test_ddp_two_cpu_processes(tmp_path, latent_storage):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "model"), latent_storage],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    ranks = sorted(line for line in res.stdout.splitlines() if line.startswith("RANK"))
    # each process trains stage 2 on its own half of the 180 training latents
    assert ranks == ["RANK 0 world 2 rows 90", "RANK 1 world 2 rows 90"], res.stdout
    model = scgm_scvi.SCGM.load(str(tmp_path / "model"))
    g = model.generate(n=10, cell_type="label_0", seed=0)
    assert g.X.shape == (10, 100) and np.isfinite(g.obsm["X_scgm"]).all()
