"""Not losing work: atomic model saves, checked loads and resumable training checkpoints."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable

import torch
from lightning.pytorch.callbacks import Callback
from scvi.model.base._constants import SAVE_KEYS

from ._files import disk_full_error, remove_stale, respect_umask
from ._safe_state import read_model_file

logger = logging.getLogger(__name__)

#: Written last into every model directory by :func:`atomic_save`; sizes and checksums.
MANIFEST_FNAME = "scgm_manifest.json"
#: Files of a stage checkpoint directory (see :func:`stage_checkpoint`).
LAST_CKPT = "last.ckpt"
DONE_FNAME = "complete.json"


def _sha256(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def atomic_save(
    save_fn: Callable[[str], None], dir_path: str, prefix: str | None, overwrite: bool
) -> None:
    """Run ``save_fn(tmp_dir)`` in a fresh directory next to ``dir_path``, then move it in place.

    A crash (or an exception) before the final rename leaves ``dir_path`` as it was: either
    absent or holding the previous model. With ``overwrite=True`` the old directory is renamed
    away, the new one renamed in and the old one deleted; files of the old directory that the
    new save does not write (other ``prefix`` saves, user files) are carried over.

    Parameters
    ----------
    save_fn
        Writes the model files into the directory it is given.
    dir_path
        Target directory.
    prefix
        File-name prefix of this save (scvi-tools' ``prefix``).
    overwrite
        Replace an existing ``dir_path``; otherwise an existing directory is an error.
    """
    dir_path = os.path.abspath(dir_path)
    if os.path.exists(dir_path) and not overwrite:
        raise ValueError(
            f"{dir_path} already exists. Please provide another directory for saving, or pass "
            "overwrite=True."
        )
    parent, name = os.path.split(dir_path)
    os.makedirs(parent, exist_ok=True)
    remove_stale(parent, f".{name}.saving-")  # left by a save that was killed
    tmp = tempfile.mkdtemp(prefix=f".{name}.saving-{os.getpid()}-", dir=parent)
    respect_umask(tmp)
    old = None
    try:
        try:
            save_fn(tmp)
        except Exception as exc:
            full = disk_full_error(exc, dir_path, "the model")
            if full is not None:
                raise full from exc
            raise
        pre = prefix or ""
        files = sorted(os.listdir(tmp))
        manifest = {
            "format": "scgm_scvi",
            "files": {
                f: {
                    "size": os.path.getsize(os.path.join(tmp, f)),
                    # the model file is small: checksum it; big AnnData files only by size
                    **(
                        {"sha256": _sha256(os.path.join(tmp, f))}
                        if f.endswith(SAVE_KEYS.MODEL_FNAME)
                        else {}
                    ),
                }
                for f in files
            },
        }
        for f in files:  # torch and anndata write with the umask already; tempfiles do not
            respect_umask(os.path.join(tmp, f))
        with open(os.path.join(tmp, f"{pre}{MANIFEST_FNAME}"), "w") as fh:
            json.dump(manifest, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        if os.path.isdir(dir_path):
            stale = {f"{pre}{SAVE_KEYS.ADATA_FNAME}", f"{pre}{SAVE_KEYS.MDATA_FNAME}"}
            for f in os.listdir(dir_path):  # keep what this save does not replace
                src, dst = os.path.join(dir_path, f), os.path.join(tmp, f)
                if os.path.exists(dst) or f in stale:
                    continue
                if os.path.isdir(src):
                    shutil.copytree(src, dst)
                else:
                    try:
                        os.link(src, dst)
                    except OSError:
                        shutil.copy2(src, dst)
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.rmdir(old)
            os.rename(dir_path, old)
        elif os.path.exists(dir_path):
            raise ValueError(f"{dir_path} exists and is not a directory.")
        os.rename(tmp, dir_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.exists(dir_path):
            os.rename(old, dir_path)  # put the previous model back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_model_dir(
    dir_path: str,
    prefix: str | None = None,
    model_name: str = "SCGM",
    allow_pickle: bool = False,
) -> dict:
    """Raise a clear error when ``dir_path`` is not a complete, undamaged model directory;
    return the content of its model file.

    Checks, in order: the directory exists; it holds ``model.pt``; the sizes and checksum in
    the manifest (written by :func:`atomic_save`) match; ``model.pt`` can be read without
    running code from it (see :func:`~scgm_scvi.model._safe_state.read_model_file`; older
    saves need ``allow_pickle``) and holds a model of class ``model_name``.
    """
    pre = prefix or ""
    if not os.path.exists(dir_path):
        raise FileNotFoundError(f"No saved model at {dir_path!r}: the directory does not exist.")
    if not os.path.isdir(dir_path):
        raise ValueError(f"{dir_path!r} is a file, not a model directory written by save().")
    model_file = os.path.join(dir_path, f"{pre}{SAVE_KEYS.MODEL_FNAME}")
    contents = sorted(os.listdir(dir_path))
    if not os.path.isfile(model_file):
        raise ValueError(
            f"{dir_path!r} is not a saved {model_name} model: it has no "
            f"{pre}{SAVE_KEYS.MODEL_FNAME} (it contains {contents[:10]})."
        )
    manifest_file = os.path.join(dir_path, f"{pre}{MANIFEST_FNAME}")
    if os.path.isfile(manifest_file):
        try:
            with open(manifest_file) as fh:
                manifest = json.load(fh)
            files = manifest["files"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"The manifest {manifest_file!r} is damaged: {exc}.") from exc
        for fname, meta in files.items():
            path = os.path.join(dir_path, fname)
            if not os.path.isfile(path):
                raise ValueError(
                    f"The saved model at {dir_path!r} is incomplete: {fname} is missing."
                )
            size = os.path.getsize(path)
            if size != meta["size"]:
                raise ValueError(
                    f"The saved model at {dir_path!r} is damaged: {fname} has {size} bytes, "
                    f"{meta['size']} were written (truncated or modified file)."
                )
            if "sha256" in meta and _sha256(path) != meta["sha256"]:
                raise ValueError(
                    f"The saved model at {dir_path!r} is damaged: the checksum of {fname} "
                    "does not match the one written at save time."
                )
    try:
        saved = read_model_file(model_file, "cpu", allow_pickle)
    except ValueError as exc:
        if "safe format" in str(exc):  # refused as unsafe: say so, not "damaged"
            raise
        raise ValueError(
            f"{model_file!r} cannot be read; the file is damaged or not a saved model "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    except Exception as exc:  # truncated zip, not a torch file
        raise ValueError(
            f"{model_file!r} cannot be read; the file is damaged or not a saved model "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    keys = (SAVE_KEYS.MODEL_STATE_DICT_KEY, SAVE_KEYS.VAR_NAMES_KEY, SAVE_KEYS.ATTR_DICT_KEY)
    if not isinstance(saved, dict) or any(k not in saved for k in keys):
        raise ValueError(
            f"{model_file!r} is not an scvi-tools model file (expected the keys {list(keys)})."
        )
    registry = (saved[SAVE_KEYS.ATTR_DICT_KEY] or {}).get("registry_", {})
    saved_name = registry.get("model_name")
    if saved_name is not None and saved_name != model_name:
        raise ValueError(
            f"{dir_path!r} holds a saved {saved_name} model, not {model_name}; load it with "
            f"{saved_name}.load."
        )
    return saved


# ---------------------------------------------------------------------------------- checkpoints
class LastCheckpoint(Callback):
    """Write a full Lightning checkpoint (weights, optimiser, epoch) to one file every epoch.

    A plain :class:`~lightning.pytorch.callbacks.Callback` rather than a ``ModelCheckpoint``,
    so that scvi-tools' trainer adds no ``SaveCheckpoint`` of its own and Lightning's
    ``enable_checkpointing`` can stay off. ``trainer.save_checkpoint`` writes on rank 0 only
    and to a temporary file first.

    Parameters
    ----------
    path
        Checkpoint file, overwritten at each save.
    every_n_epochs
        Save after every this many epochs (and always at the end of training).
    """

    def __init__(self, path: str, every_n_epochs: int = 1):
        super().__init__()
        self.path = path
        self.every_n_epochs = max(1, int(every_n_epochs))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            trainer.save_checkpoint(self.path)


def stage_checkpoint(
    checkpoint_dir: str | None,
    stage: str,
    resume: bool,
    every_n_epochs: int,
    trainer_kwargs: dict,
) -> tuple[str | None, bool]:
    """Add a :class:`LastCheckpoint` to ``trainer_kwargs`` and find where to resume from.

    Returns
    -------
    ``(directory of this stage, finished)``. ``finished`` is ``True`` when ``resume`` and a
    previous run of the stage completed (its final weights are in ``last.ckpt``); otherwise
    ``trainer_kwargs["ckpt_path"]`` is set to ``last.ckpt`` when resuming from one.
    """
    if checkpoint_dir is None:
        if resume:
            raise ValueError("resume=True needs checkpoint_dir, where the checkpoints are.")
        return None, False
    stage_dir = os.path.join(os.path.abspath(checkpoint_dir), stage)
    os.makedirs(stage_dir, exist_ok=True)
    last = os.path.join(stage_dir, LAST_CKPT)
    finished = False
    if resume and os.path.isfile(last):
        finished = os.path.isfile(os.path.join(stage_dir, DONE_FNAME))
        if not finished:
            trainer_kwargs.setdefault("ckpt_path", last)
            logger.info("Resuming %s training from %s", stage, last)
    elif not resume:  # a fresh run must not be taken for a finished one later
        for f in (DONE_FNAME, LAST_CKPT):
            if os.path.exists(os.path.join(stage_dir, f)):
                os.remove(os.path.join(stage_dir, f))
    callbacks = list(trainer_kwargs.get("callbacks") or [])
    trainer_kwargs["callbacks"] = [LastCheckpoint(last, every_n_epochs), *callbacks]
    return stage_dir, finished


def mark_stage_done(trainer, stage_dir: str | None) -> None:
    """Save the final state to ``last.ckpt`` and mark the stage as finished."""
    if stage_dir is None:
        return
    trainer.save_checkpoint(os.path.join(stage_dir, LAST_CKPT))
    if trainer.is_global_zero:
        with open(os.path.join(stage_dir, DONE_FNAME), "w") as fh:
            json.dump({"epochs": trainer.current_epoch, "global_step": trainer.global_step}, fh)


def checkpoint_state(module: torch.nn.Module, path: str) -> dict[str, torch.Tensor]:
    """The module weights of a Lightning checkpoint file of a training stage, checked against
    ``module``: a clear error for a damaged file or one written by another architecture.

    Checkpoints are the user's own training files (``checkpoint_dir``); Lightning's resume
    reads them with the full unpickler, so they are read the same way here.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        saved = ckpt["state_dict"]
    except Exception as exc:  # truncated zip, not a checkpoint
        raise ValueError(
            f"The checkpoint {path!r} cannot be read (a truncated or damaged file: "
            f"{type(exc).__name__}). Delete it to train from scratch, or pass resume=False."
        ) from None
    state = {k.removeprefix("module."): v for k, v in saved.items() if k.startswith("module.")}
    own = module.state_dict()
    differ = [k for k in own if k not in state or state[k].shape != own[k].shape]
    differ += [k for k in state if k not in own]
    if differ:
        raise ValueError(
            f"The checkpoint {path!r} was written by a model of another architecture or data "
            f"(e.g. {differ[:3]} differ): resume with the same model settings and data, or "
            "pass resume=False (or another checkpoint_dir) to train from scratch."
        )
    return state


def load_checkpoint_weights(module: torch.nn.Module, path: str) -> None:
    """Load the module weights of a Lightning checkpoint file of a training stage."""
    module.load_state_dict(checkpoint_state(module, path))
