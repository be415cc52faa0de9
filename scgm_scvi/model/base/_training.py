"""Training of both stages: the VAE (stage 1) and the score network (stage 2)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS, settings
from scvi.model._utils import get_max_epochs_heuristic
from scvi.model.base._archesmixin import _set_params_online_update
from scvi.train import TrainRunner

from scgm_scvi.data import LatentDataModule
from scgm_scvi.data._latent_datamodule import DiskTensor, RowWriter, latent_directory
from scgm_scvi.module import (
    COND_KEY,
    Z_LOC_KEY,
    Z_SCALE_KEY,
)

from .._conditions import BATCH_INDEX, LOG_LIBRARY, code_column, continuous_column
from .._constants import (
    CONDITION_TABLE_MAX,
    DIFFUSION_BATCH_SIZE,
    DIFFUSION_STEPS,
    MIN_TRAIN_CELLS,
)
from .._persist import (
    LAST_CKPT,
    checkpoint_state,
    load_checkpoint_weights,
    mark_stage_done,
    stage_checkpoint,
)
from .._plan import DiffusionTrainingPlan, load_weight_average
from .._query import (
    freeze_old_condition_rows,
)

logger = logging.getLogger(__name__)


class TrainingMixin:
    """``train``, ``train_vae`` and ``train_diffusion`` of :class:`~scgm_scvi.SCGM`."""

    def train(
        self,
        max_epochs: int | None = None,
        diffusion_max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        batch_size: int = 128,
        diffusion_batch_size: int = DIFFUSION_BATCH_SIZE,
        plan_kwargs: dict | None = None,
        diffusion_plan_kwargs: dict | None = None,
        checkpoint_dir: str | None = None,
        resume: bool = False,
        latent_storage: Literal["auto", "memory", "disk"] = "auto",
        **trainer_kwargs,
    ):
        """Train both stages: the VAE, then the latent diffusion model.

        Parameters
        ----------
        max_epochs, batch_size, plan_kwargs
            Stage 1, see :meth:`train_vae`.
        diffusion_max_epochs, diffusion_batch_size, diffusion_plan_kwargs, latent_storage
            Stage 2, see :meth:`train_diffusion`.
        accelerator, devices
            Lightning accelerator and devices for both stages. Several devices: pass
            ``strategy="ddp"`` (or ``"ddp_find_unused_parameters_true"``); see
            ``docs/scaling.md``.
        checkpoint_dir, resume
            Checkpoint both stages under ``checkpoint_dir`` (``vae/`` and ``diffusion/``);
            with ``resume=True`` an interrupted run continues where it stopped and finished
            stages are not trained again. See :meth:`train_vae`.
        **trainer_kwargs
            Passed to both stages' :class:`~scvi.train.Trainer`.
        """
        self.train_vae(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            batch_size=batch_size,
            plan_kwargs=plan_kwargs,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            **trainer_kwargs,
        )
        self.train_diffusion(
            max_epochs=diffusion_max_epochs,
            accelerator=accelerator,
            devices=devices,
            batch_size=diffusion_batch_size,
            plan_kwargs=diffusion_plan_kwargs,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            latent_storage=latent_storage,
            **trainer_kwargs,
        )

    def train_vae(
        self,
        max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        batch_size: int = 128,
        early_stopping: bool = False,
        plan_kwargs: dict | None = None,
        checkpoint_dir: str | None = None,
        resume: bool = False,
        checkpoint_every_n_epochs: int = 1,
        **trainer_kwargs,
    ):
        """Train stage 1, the NB-VAE, exactly as :meth:`scvi.model.SCVI.train` does.

        After :meth:`load_query_data` this fine-tunes the reference VAE. With scArches' freezing
        (``unfrozen=False``, the default for queries without new cell types) only the weights
        of new batches and covariates learn and the score network stays valid. Unfrozen (the
        default for queries with new cell types) every VAE weight learns from the reference's
        values; the latent space moves, so :meth:`train_diffusion` must follow (it then
        fine-tunes the whole score network from the reference's weights).

        Parameters
        ----------
        max_epochs
            Defaults to scVI's heuristic ``min(round(20000 / n_cells * 400), 400)``.
        accelerator, devices
            Lightning accelerator and devices (``strategy=...`` goes in ``trainer_kwargs``).
        batch_size
            Minibatch size.
        early_stopping
            Stop when the validation ELBO stops improving. Off by default, as in scVI: with
            scVI's KL warm-up over 400 epochs, a VAE stopped early never trains at the full KL
            weight.
        plan_kwargs
            Passed to :class:`~scvi.train.TrainingPlan` (learning rate, KL warm-up, ...).
        checkpoint_dir
            Write a full Lightning checkpoint (weights, optimiser state, epoch) to
            ``checkpoint_dir/vae/last.ckpt`` during training and mark it complete at the end.
        resume
            Continue from ``checkpoint_dir/vae/last.ckpt`` if it exists (an interrupted run
            resumes at its last saved epoch; a completed run only loads its final weights).
            Without a checkpoint there, training starts from scratch.
        checkpoint_every_n_epochs
            Checkpoint frequency.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer` and the data splitter (e.g. ``strategy``,
            or ``ckpt_path`` to resume from a checkpoint file of your own).
        """
        self._require_data()
        if self.adata.n_obs < MIN_TRAIN_CELLS:
            raise ValueError(
                f"Training needs at least {MIN_TRAIN_CELLS} cells; the registered data has "
                f"{self.adata.n_obs}."
            )
        stage_dir, finished = stage_checkpoint(
            checkpoint_dir, "vae", resume, checkpoint_every_n_epochs, trainer_kwargs
        )
        if trainer_kwargs.get("ckpt_path"):  # Lightning's own errors here are raw torch ones
            checkpoint_state(self.module, trainer_kwargs["ckpt_path"])
        self.module.set_stage("vae")
        if self.query_ is not None:
            self._apply_arches_freezing()
        if finished:
            load_checkpoint_weights(self.module, os.path.join(stage_dir, LAST_CKPT))
            logger.info("Stage 1 already completed in %s: weights loaded.", stage_dir)
            self.is_trained_ = True
        else:
            max_epochs = max_epochs or get_max_epochs_heuristic(self.adata.n_obs)
            super().train(
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=devices,
                batch_size=batch_size,
                early_stopping=early_stopping,
                plan_kwargs=plan_kwargs,
                **trainer_kwargs,
            )
            mark_stage_done(self.trainer, stage_dir)
        self.vae_trained_ = True
        if self.query_ is None or self.query_["freeze"].get("unfrozen"):
            self.diffusion_trained_ = False  # a new latent space invalidates the score network
        self.module.requires_grad_(True)
        self.module.eval()

    def _apply_arches_freezing(self) -> None:
        """Re-apply scArches' freezing and gradient hooks (lost by ``set_stage`` and load)."""
        from scvi.nn import FCLayers

        for mod in self.module.modules():
            if isinstance(mod, FCLayers):
                for handle in getattr(mod, "hooks", []):
                    handle.remove()
                mod.hooks = []
        _set_params_online_update(self.module, **self.query_["freeze"])

    def train_diffusion(
        self,
        max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        batch_size: int = DIFFUSION_BATCH_SIZE,
        train_size: float = 0.9,
        early_stopping: bool = False,
        early_stopping_patience: int = 50,
        plan_kwargs: dict | None = None,
        indices: Sequence[int] | None = None,
        finetune: Literal["new_conditions", "all"] | None = None,
        checkpoint_dir: str | None = None,
        resume: bool = False,
        checkpoint_every_n_epochs: int = 1,
        latent_storage: Literal["auto", "memory", "disk"] = "auto",
        **trainer_kwargs,
    ):
        """Train stage 2: the conditional score network over the VAE latent (VAE frozen).

        Latents are computed once in a streaming pass over the data (minibatches of 1,024
        cells, so a backed AnnData is never loaded whole) into ``n_cells x n_latent`` float32
        (1 GB per million cells at ``n_latent=256``). In memory, they move to the training GPU
        when they take at most a quarter of its free memory, and an epoch is a few tensor
        gathers; on disk, each minibatch is read from a temporary file.

        After :meth:`load_query_data` this fine-tunes the reference's score network on the
        query: the latent standardisation of the reference is kept, and the cells available
        to :meth:`generate` for drawing covariates are the reference's plus the query's.

        Parameters
        ----------
        max_epochs
            Defaults to about 4,000 optimisation steps, between 1 and 2,000 epochs (267 epochs
            for the 2,111 cells of the PBMC 3k benchmark at batch 128, one epoch from about
            half a million cells on).
        accelerator, devices
            Lightning accelerator and devices.
        batch_size
            Minibatch size of latents.
        train_size
            Share of cells for training; the rest gives the validation loss for early stopping.
        early_stopping, early_stopping_patience
            Stop when the validation denoising loss has not improved for this many epochs. Off
            by default: that loss is noisy (random noise levels), and on PBMC 3k it stopped
            training long before the score model was good.
        plan_kwargs
            Passed to the stage-2 plan (scVI's :class:`~scvi.train.TrainingPlan`, which logs
            the denoising loss as ``denoising_loss_train`` / ``denoising_loss_validation`` in
            ``diffusion_history_``): default learning rate ``3e-3``
            (on PBMC 3k it reached 0.93 label agreement in 600 epochs where ``1e-3`` reached
            0.89) and ``ema_decay=0.999``, an exponential moving average of the score
            network's weights that replaces them when training ends (``0``: off).
        indices
            Cells of the registered AnnData to train on (default: all).
        finetune
            Only for a model made by :meth:`load_query_data`. ``"new_conditions"`` learns only
            the embeddings of the categories the reference did not have (new batches, covariate
            values), so generation of the reference's cell types is unchanged; valid only while
            the VAE is the reference's (frozen surgery). ``"all"`` fine-tunes the whole score
            network, starting from the reference's weights (it can forget reference cell
            types that the query lacks). ``None`` (default): ``"all"`` if the query model was
            loaded with ``unfrozen=True`` (the default for new cell types), else
            ``"new_conditions"``.
        checkpoint_dir, resume, checkpoint_every_n_epochs
            As in :meth:`train_vae`, in ``checkpoint_dir/diffusion/``. A resumed run loads the
            checkpoint's weights before encoding the cells, so its latents match the run that
            was interrupted.
        latent_storage
            Where the latents live during training. ``"memory"``: host memory (and the GPU
            when they fit). ``"disk"``: a temporary directory (in ``$TMPDIR``), deleted after
            training, so memory does not grow with the number of cells. ``"auto"`` (default):
            ``"disk"`` when the registered AnnData is backed (``read_h5ad(backed="r")``),
            else ``"memory"``.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer` (e.g. ``strategy``).
        """
        self._require_data()
        finetune = self._resolve_finetune(finetune)
        if latent_storage not in ("auto", "memory", "disk"):
            raise ValueError(
                f"latent_storage must be 'auto', 'memory' or 'disk', got {latent_storage!r}."
            )
        stage_dir, finished = stage_checkpoint(
            checkpoint_dir, "diffusion", resume, checkpoint_every_n_epochs, trainer_kwargs
        )
        resume_from = trainer_kwargs.get("ckpt_path") or (
            os.path.join(stage_dir, LAST_CKPT) if finished else None
        )
        if resume_from is not None:  # the VAE of the interrupted run, hence the same latents
            checkpoint_state(self.module, resume_from)
            load_checkpoint_weights(self.module, resume_from)
            self.vae_trained_ = True
        if not self.vae_trained_:
            raise RuntimeError("Train the VAE first: call model.train_vae() or model.train().")
        # a temporary directory for latents on disk (None: in memory), removed after training
        tmp = latent_directory(latent_storage, self.adata)
        try:
            tensors, table, moments = self._latent_pass(indices, tmp and tmp.name)
            if self.query_ is None:
                self.module.fit_standardization(moments)
            self.condition_table_ = self._with_reference_table(table)
            self.module.fit_label_baselines(moments, *self._labels_to_fit(moments, finetune))
            if finished:  # the run ended on its weight average, saved beside the raw weights
                load_weight_average(self.module.score_net, resume_from)
                logger.info("Stage 2 already completed in %s: weights loaded.", stage_dir)
            else:
                dm = LatentDataModule(
                    tensors, train_size=train_size, batch_size=batch_size, seed=settings.seed or 0
                )
                self._fit_score_network(
                    dm, finetune, max_epochs, plan_kwargs, accelerator, devices,
                    early_stopping, early_stopping_patience, trainer_kwargs,
                )  # fmt: skip
                mark_stage_done(self.trainer, stage_dir)
        finally:
            if tmp is not None:
                tmp.cleanup()
        self.module.requires_grad_(True)  # as after load(); each stage re-applies its freezing
        self.module.eval()
        self.diffusion_trained_ = True

    def _resolve_finetune(self, finetune: str | None) -> str:
        """What stage 2 trains: ``"all"`` after an unfrozen VAE (the latent space moved),
        else (a query with a frozen VAE) only the new categories' embeddings."""
        if finetune not in (None, "new_conditions", "all"):
            raise ValueError(
                f"finetune must be None, 'new_conditions' or 'all', got {finetune!r}."
            )
        unfrozen = self.query_ is not None and bool(self.query_["freeze"].get("unfrozen"))
        if finetune is None:
            finetune = "all" if unfrozen else "new_conditions"
        if unfrozen and finetune == "new_conditions" and not self.diffusion_trained_:
            raise ValueError(
                "The VAE was fine-tuned unfrozen, so the latent space moved and the whole score "
                "network must be fine-tuned: pass finetune='all' (the default here)."
            )
        return finetune

    def _with_reference_table(self, table: pd.DataFrame) -> pd.DataFrame:
        """A query's table of training cells with the reference's rows in front: the
        reference's cells stay available to draw covariates and library sizes from."""
        ref_table = None if self.query_ is None else self.query_.get("reference_table")
        if ref_table is None:
            return table
        n_query = min(len(table), CONDITION_TABLE_MAX // 2)  # keep room for both
        n_ref = min(len(ref_table), CONDITION_TABLE_MAX - n_query)
        if n_ref < len(ref_table):  # subsample only when needed: keep the row order
            ref_table = ref_table.sample(n_ref, random_state=0)
        if len(table) + n_ref > CONDITION_TABLE_MAX:
            table = table.sample(CONDITION_TABLE_MAX - n_ref, random_state=0)
        return pd.concat([ref_table, table], ignore_index=True)

    def _fit_score_network(
        self, dm, finetune, max_epochs, plan_kwargs, accelerator, devices, early_stopping,
        early_stopping_patience, trainer_kwargs,
    ) -> None:  # fmt: skip
        """Train the score network on the latents of ``dm`` with Lightning (scvi's runner);
        its history goes to ``diffusion_history_``, the VAE's stays in ``history``."""
        if max_epochs is None:  # about DIFFUSION_STEPS optimisation steps, whatever the size
            steps_per_epoch = math.ceil(dm.n_train / dm.batch_size)
            max_epochs = int(np.clip(round(DIFFUSION_STEPS / steps_per_epoch), 1, 2000))
        plan_kwargs = {
            "lr": 3e-3,
            "weight_decay": 0.0,
            **(plan_kwargs or {}),
            "stage": "diffusion",
        }
        self.module.set_stage("diffusion")
        hooks = []
        if self.query_ is not None and finetune == "new_conditions":
            hooks = freeze_old_condition_rows(self.module, self.query_["condition_sizes"])
        trainer_kwargs.setdefault("early_stopping_monitor", "denoising_loss_validation")
        trainer_kwargs.setdefault("early_stopping_patience", early_stopping_patience)
        trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        # the latent data module shards rows over processes itself (see LatentDataModule)
        trainer_kwargs.setdefault("use_distributed_sampler", False)
        vae_history = dict(self.history_ or {})  # the runner appends to the dict in place
        runner = TrainRunner(
            self,
            training_plan=DiffusionTrainingPlan(self.module, **plan_kwargs),
            data_splitter=dm,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping and dm.n_val > 0,
            **trainer_kwargs,
        )
        try:
            runner()
        finally:
            for handle in hooks:
                handle.remove()
        # scvi-tools merges later runs into the first run's history keys: keep the stages apart
        stage2 = getattr(self.trainer.logger, "history", {}) or {}
        if not isinstance(stage2, dict):  # a dummy on non-zero ranks under DDP
            stage2 = {}
        self.diffusion_history_ = {k: v.reset_index(drop=True) for k, v in stage2.items()}
        self.history_ = vae_history

    def _require_data(self) -> None:
        if self.adata is None:
            raise ValueError(
                "This model has no AnnData attached (it was loaded without one). Load it with "
                "SCGM.load(dir_path, adata=adata) to train it further."
            )

    @torch.inference_mode()
    def _latent_pass(
        self, indices=None, directory: str | None = None
    ) -> tuple[dict[str, torch.Tensor | DiskTensor], pd.DataFrame, dict[str, torch.Tensor]]:
        """Encode the cells once: posterior loc/scale, condition codes and a covariate table.

        Streams over minibatches into preallocated arrays (in ``directory`` as
        :class:`~scgm_scvi.data.DiskTensor` files when given) and accumulates the latent
        moments on the way, so nothing holds more than the arrays themselves. The posterior
        scales are kept only when stage 2 trains on posterior samples (they would double the
        memory of an atlas's latents). The covariate table keeps at most
        ``CONDITION_TABLE_MAX`` cells, drawn uniformly.
        """
        keep_scale = self.module.diffusion_target == "sample"
        self.module.eval()
        n = self.adata.n_obs if indices is None else len(indices)
        loader = self._make_data_loader(adata=self.adata, indices=indices, batch_size=1024)
        n_latent, n_cond = self.module.n_latent, len(self.conditions_["columns"])
        writers = {
            Z_LOC_KEY: RowWriter(n, n_latent, np.float32, directory, Z_LOC_KEY),
            COND_KEY: RowWriter(n, n_cond, np.int64, directory, COND_KEY),
        }
        if keep_scale:
            writers[Z_SCALE_KEY] = RowWriter(n, n_latent, np.float32, directory, Z_SCALE_KEY)
        moments = {
            k: torch.zeros(n_latent, dtype=torch.float64, device=self.device)
            for k in ("sum", "sumsq", "scale_sq")
        }
        n_lab = self.module.condition_sizes[0]
        # per-label posterior variances (for the posterior noise) and cell counts
        moments["label_count"] = torch.zeros(n_lab, dtype=torch.float64, device=self.device)
        moments["label_scale_sq"] = torch.zeros(
            n_lab, n_latent, dtype=torch.float64, device=self.device
        )
        # for the Gaussian baseline and the library model
        for key, shape in (
            ("label_sum", (n_lab, n_latent)),
            ("label_outer", (n_lab, n_latent, n_latent)),
            ("label_lib_sum", (n_lab,)),
            ("label_lib_sq", (n_lab,)),
            ("label_lib_cross", (n_lab, n_latent)),
        ):
            moments[key] = torch.zeros(shape, dtype=torch.float64, device=self.device)
        table_rows = np.arange(n)
        if n > CONDITION_TABLE_MAX:
            table_rows = np.sort(np.random.default_rng(0).choice(n, CONDITION_TABLE_MAX, False))
        rows, start = [], 0
        for batch in loader:
            inf = self.module.inference(**self.module._get_inference_input(batch))
            loc = inf["qz"].loc
            cond = self._condition_codes_from_batch(batch)
            writers[Z_LOC_KEY].append(loc)
            writers[COND_KEY].append(cond)
            moments["sum"] += loc.double().sum(0)
            moments["sumsq"] += loc.double().square().sum(0)
            _add_label_moments(
                moments,
                loc.double(),
                inf["qz"].scale.double(),
                inf["library"].double().reshape(-1),
                cond[:, 0],
            )
            if keep_scale:
                writers[Z_SCALE_KEY].append(inf["qz"].scale)
                moments["scale_sq"] += inf["qz"].scale.double().square().sum(0)
            stop = start + len(loc)
            keep = table_rows[(table_rows >= start) & (table_rows < stop)] - start
            if len(keep):
                cols = [cond[keep], inf["library"][keep]]
                if REGISTRY_KEYS.CONT_COVS_KEY in batch:
                    cols.append(batch[REGISTRY_KEYS.CONT_COVS_KEY][keep])
                rows.append(torch.cat([c.double() for c in cols], dim=1).cpu().numpy())
            start = stop
        tensors = {key: writer.finish() for key, writer in writers.items()}
        columns = [code_column(j) for j in range(n_cond)] + [LOG_LIBRARY]
        columns += [continuous_column(k) for k in self.conditions_["cont_keys"]]
        table = pd.DataFrame(np.concatenate(rows), columns=columns)
        table[columns[:n_cond]] = table[columns[:n_cond]].astype(np.int64)
        # the decoder's batch index: the batch column of the codes (column 1), if any
        table[BATCH_INDEX] = table[code_column(1)] if self.summary_stats.n_batch > 1 else 0
        return tensors, table, {"n": n, **moments}

    def _condition_codes_from_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cols = [batch[REGISTRY_KEYS.LABELS_KEY]]
        if self.summary_stats.n_batch > 1:
            cols.append(batch[REGISTRY_KEYS.BATCH_KEY])
        if REGISTRY_KEYS.CAT_COVS_KEY in batch:
            cols.append(batch[REGISTRY_KEYS.CAT_COVS_KEY])
        return torch.cat(cols, dim=1).long()

    def _labels_to_fit(self, moments: dict, finetune: str) -> tuple[torch.Tensor, bool]:
        """Which cell types stage 2 fits its per-type statistics for, and whether the
        all-cells ones too: a reference fits every type (types without cells get the all-cells
        statistics); a query the types it has cells of (``finetune="all"``), or only its new
        types (``"new_conditions"``, which leaves the reference's types as they were)."""
        count = moments["label_count"]
        codes = torch.arange(len(count), device=count.device)
        if self.query_ is None:
            return codes, True
        codes = codes[count > 0]
        if finetune == "new_conditions":
            return codes[codes >= self.query_["condition_sizes"][0]], False
        return codes, True


def _add_label_moments(
    moments: dict,
    z: torch.Tensor,
    scale: torch.Tensor,
    log_library: torch.Tensor,
    labels: torch.Tensor,
) -> None:
    """Accumulate per label, for a block of latents: cell count, sum of posterior variances,
    sum and sum of outer products of the latents, and the log-library sums of the library
    model."""
    for c in torch.unique(labels).tolist():  # one host sync per block, outside any training
        rows = labels == c
        moments["label_count"][c] += rows.sum()  # a tensor: no host sync per label
        moments["label_scale_sq"][c] += scale[rows].square().sum(0)
        zc, lc = z[rows], log_library[rows]
        moments["label_sum"][c] += zc.sum(0)
        moments["label_outer"][c] += zc.T @ zc
        moments["label_lib_sum"][c] += lc.sum()
        moments["label_lib_sq"][c] += lc.square().sum()
        moments["label_lib_cross"][c] += lc @ zc
