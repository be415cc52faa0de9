"""SCGM: an NB-VAE with a conditional score-based diffusion model over its latent space."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import numpy as np
import pandas as pd
import rich.pretty  # noqa: F401 - scvi-tools' view_anndata_setup uses it unimported (rich 15)
import scipy.sparse as sp
import torch
from anndata import AnnData
from mudata import MuData
from scvi import REGISTRY_KEYS, settings
from scvi.data import AnnDataManager
from scvi.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
)
from scvi.model._utils import get_max_epochs_heuristic
from scvi.model.base import (
    ArchesMixin,
    BaseModelClass,
    RNASeqMixin,
    UnsupervisedTrainingMixin,
    VAEMixin,
)
from scvi.model.base._archesmixin import _get_loaded_data, _set_params_online_update
from scvi.model.base._constants import SAVE_KEYS
from scvi.train import TrainingPlan, TrainRunner
from scvi.utils import setup_anndata_dsp

from scgm_scvi._progress import ProgressBar
from scgm_scvi.data import LatentDataModule
from scgm_scvi.data._latent_datamodule import DiskTensor, RowWriter, latent_directory
from scgm_scvi.module import (
    COND_KEY,
    Z_LOC_KEY,
    Z_SCALE_KEY,
    DiffusionTarget,
    LatentScaling,
    SCGMModule,
    ScoreBaseline,
)
from scgm_scvi.samplers import (
    EVALS_PER_STEP,
    SAMPLERS,
    check_guidance_interval,
    classifier_free_guidance,
)

from ._checks import (
    check_category_columns,
    check_cells_and_genes,
    check_counts,
    check_library_size,
    check_positive_int,
    check_sampling_args,
    check_seed,
    per_cell_values,
    resolve_group_sizes,
)
from ._persist import (
    LAST_CKPT,
    atomic_save,
    check_model_dir,
    checkpoint_state,
    load_checkpoint_weights,
    mark_stage_done,
    stage_checkpoint,
)
from ._plan import DiffusionTrainingPlan
from ._query import (
    align_genes,
    freeze_old_condition_rows,
    grow_condition_embeddings,
    grow_label_gaussians,
)
from ._safe_state import rewrite_safely, safe_scvi_loading
from ._stream import H5ADStreamWriter, stack_rows

logger = logging.getLogger(__name__)

Sampler = Literal["ode", "ode_euler", "euler_maruyama", "pc"]
Precision = Literal["32-true", "bf16-mixed"]  # Lightning's names
# default steps per sampler: the ODE reaches its quality in tens of evaluations, SDEs need more
DEFAULT_STEPS = {"ode": 25, "ode_euler": 50, "euler_maruyama": 500, "pc": 250}
# fewer cells fail inside scvi-tools' data splitter (no training minibatch)
MIN_TRAIN_CELLS = 3
# default length of stage 2, in optimisation steps
DIFFUSION_STEPS = 20_000
# at most this many training cells are kept to draw covariates and library sizes from
CONDITION_TABLE_MAX = 50_000


class SCGM(RNASeqMixin, VAEMixin, ArchesMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """Single-cell generative model: NB-VAE + latent score SDE, conditioned on cell type.

    Stage 1 is scVI's negative-binomial VAE (``n_latent``-dimensional latent). Stage 2 learns the
    score of the standardised latent distribution with a variance-preserving SDE (Song et al.
    2021), conditioned on the cell-type label, the batch and registered categorical covariates,
    with condition dropout so that classifier-free guidance works at sampling time.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    registry
        Registry of a saved model, used by :meth:`load` when no AnnData is given.
    n_latent
        Latent dimension.
    n_hidden
        Width of the VAE's hidden layers (scVI's 128 by default).
    n_layers
        Number of hidden layers of the encoder and decoder (scVI's 1 by default). On PBMC 3k
        this architecture, trained as scVI trains, gave generated cells closer to held-out cells
        than a 2 x 512 layer-norm VAE (documentation: Benchmarks).
    use_batch_norm, use_layer_norm
        Normalisation in the VAE, as in :class:`~scvi.module.VAE`. ``None``: scVI's, batch norm
        (``"both"``) and no layer norm (``"none"``); pass ``use_batch_norm="none",
        use_layer_norm="both"`` for layer norm, which edited Kang cells with lower E-distances
        (documentation: Benchmarks). A model saved by an earlier development version, which did not
        record them, loads with the layer norm it was trained with.
    dropout_rate
        Dropout in the VAE.
    gene_likelihood
        Count distribution of the decoder.
    score_width
        Hidden width of the score network.
    score_blocks
        Number of residual blocks of the score network.
    p_uncond
        Per-condition dropout probability during stage 2 (classifier-free guidance).
    diffusion_target
        Train the score on the encoder's posterior means (``"mean"``, default) or on posterior
        samples (``"sample"``). Measured on PBMC 3k (200 score epochs): means gave 0.56 label
        agreement of generated cells, samples 0.13; with a 256-d latent most of a posterior
        sample is encoder noise that the score network must model as well.
    latent_scaling
        How the latent is scaled for the SDE: all dimensions by one factor (``"global"``,
        default), so that dimensions the VAE hardly uses stay small instead of being blown up
        to the scale of the informative ones, or every dimension to unit standard deviation
        (``"per_dim"``).
    score_baseline
        ``"gaussian"`` (default): fit a Gaussian to each cell type's latents (mean and a
        covariance of rank ``gaussian_rank`` plus an isotropic rest) and let the score network
        learn only the correction to its exact score. ``"none"``: the network learns the whole
        score (velocity prediction).
    gaussian_rank
        Covariance eigenpairs kept per cell type by the Gaussian baseline.
    **module_kwargs
        Passed to :class:`~scgm_scvi.module.SCGMModule` (and so to :class:`~scvi.module.VAE`).

    Examples
    --------
    >>> adata = scgm_scvi.data.pbmc3k()
    >>> scgm_scvi.SCGM.setup_anndata(adata, labels_key="cell_type")
    >>> model = scgm_scvi.SCGM(adata)
    >>> model.train()
    >>> generated = model.generate(n=1000, cell_type="B")
    """

    _module_cls = SCGMModule
    _training_plan_cls = TrainingPlan

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        n_latent: int = 256,
        n_hidden: int = 128,
        n_layers: int = 1,
        use_batch_norm: Literal["encoder", "decoder", "none", "both"] | None = None,
        use_layer_norm: Literal["encoder", "decoder", "none", "both"] | None = None,
        dropout_rate: float = 0.1,
        gene_likelihood: Literal["nb", "zinb", "poisson"] = "nb",
        score_width: int = 256,
        score_blocks: int = 4,
        p_uncond: float = 0.1,
        diffusion_target: DiffusionTarget = "mean",
        latent_scaling: LatentScaling = "global",
        score_baseline: ScoreBaseline = "gaussian",
        gaussian_rank: int = 64,
        **module_kwargs,
    ):
        super().__init__(adata, registry)
        if registry is not None and use_batch_norm is None and use_layer_norm is None:
            # a save that did not record the norm options predates them: its VAE had layer norm
            use_batch_norm, use_layer_norm = "none", "both"
        use_batch_norm = "both" if use_batch_norm is None else use_batch_norm
        use_layer_norm = "none" if use_layer_norm is None else use_layer_norm
        n_cats_per_cov = (
            self.get_state_registry(REGISTRY_KEYS.CAT_COVS_KEY).n_cats_per_key
            if self.get_setup_arg("categorical_covariate_keys")
            else None
        )
        self.module = self._module_cls(
            n_input=self.summary_stats.n_vars,
            n_batch=self.summary_stats.n_batch,
            n_labels=self.summary_stats.n_labels,
            n_continuous_cov=self.summary_stats.get("n_extra_continuous_covs", 0),
            n_cats_per_cov=n_cats_per_cov,
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            use_batch_norm=use_batch_norm,
            use_layer_norm=use_layer_norm,
            dropout_rate=dropout_rate,
            gene_likelihood=gene_likelihood,
            score_width=score_width,
            score_blocks=score_blocks,
            p_uncond=p_uncond,
            diffusion_target=diffusion_target,
            latent_scaling=latent_scaling,
            score_baseline=score_baseline,
            gaussian_rank=gaussian_rank,
            **module_kwargs,
        )
        # everything generation needs without the training AnnData; saved with the model
        self.conditions_ = self._condition_spec()
        # the registered count matrix's genes (for a MuData: the RNA modality's)
        self.var_names_ = pd.Index(self.get_state_registry(REGISTRY_KEYS.X_KEY).column_names)
        self.vae_trained_ = False
        self.diffusion_trained_ = False
        self.diffusion_history_: dict[str, pd.DataFrame] = {}
        self.condition_table_: pd.DataFrame | None = None
        # set by load_query_data: the reference's condition sizes and scArches freezing options
        self.query_: dict | None = None
        norm = "batch norm" if use_batch_norm != "none" else "layer norm"
        if use_batch_norm == use_layer_norm == "none":
            norm = "no norm"
        self._model_summary_string = (
            f"SCGM: n_latent {n_latent}, VAE {n_layers}x{n_hidden} ({gene_likelihood}, {norm}), "
            f"score net {score_blocks}x{score_width}, VP-SDE on {diffusion_target}s "
            f"({latent_scaling} scaling, {score_baseline} baseline)"
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ setup
    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        labels_key: str | None = None,
        batch_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        **kwargs,
    ):
        """%(summary)s.

        Counts are checked first: negative, NaN or infinite values raise a ``ValueError``;
        non-integer values warn (SCGM models counts with a negative binomial).

        Parameters
        ----------
        %(param_adata)s
        %(param_layer)s
        labels_key
            ``adata.obs`` column with the cell type; generation is conditioned on it.
        %(param_batch_key)s
        %(param_cat_cov_keys)s
        %(param_cont_cov_keys)s
        """
        keys = [labels_key, batch_key, *(categorical_covariate_keys or [])]
        keys += list(continuous_covariate_keys or [])
        missing = [k for k in keys if k is not None and k not in adata.obs]
        if missing:
            raise ValueError(
                f"{missing} not found in adata.obs. Available columns: {list(adata.obs.columns)}."
            )
        if layer is not None and layer not in adata.layers:
            raise ValueError(
                f"Layer {layer!r} not found; adata.layers has {list(adata.layers.keys())}. "
                "Pass layer=None to use adata.X."
            )
        check_cells_and_genes(adata)
        check_category_columns(
            adata.obs, [labels_key, batch_key, *(categorical_covariate_keys or [])]
        )
        check_counts(
            adata.X if layer is None else adata.layers[layer],
            where="X" if layer is None else f"layers[{layer!r}]",
        )
        setup_method_args = cls._get_setup_method_args(**locals())
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @classmethod
    @setup_anndata_dsp.dedent
    def setup_mudata(
        cls,
        mdata: MuData,
        rna_layer: str | None = None,
        labels_key: str | None = None,
        batch_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        modalities: dict[str, str] | None = None,
        **kwargs,
    ):
        """%(summary_mdata)s.

        SCGM models the RNA modality: the model then trains, generates and edits as with an
        AnnData (pass the MuData to :class:`~scgm_scvi.SCGEditor` as well). The counts are
        checked as in :meth:`setup_anndata`.

        Parameters
        ----------
        %(param_mdata)s
        rna_layer
            Layer of the RNA modality with the raw counts; ``None`` uses its ``.X``.
        labels_key
            Column with the cell type; generation is conditioned on it.
        %(param_batch_key)s
        %(param_cat_cov_keys)s
        %(param_cont_cov_keys)s
        modalities
            ``{setup argument: modality}``, e.g. ``{"rna_layer": "rna", "labels_key": "rna"}``:
            ``"rna_layer"`` names the RNA modality (default: the modality ``"rna"``, or the only
            one); ``obs`` keys whose argument is not mapped are read from ``mdata.obs``, as in
            scvi-tools.

        Examples
        --------
        >>> SCGM.setup_mudata(mdata, labels_key="cell_type", modalities={"rna_layer": "rna"})
        >>> model = SCGM(mdata)
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        from scvi.data.fields import (
            MuDataCategoricalJointObsField,
            MuDataCategoricalObsField,
            MuDataLayerField,
            MuDataNumericalJointObsField,
        )

        from ._mudata import check_obs_keys, obs_frame, resolve_modalities

        mods = resolve_modalities(mdata, modalities)
        keys = {
            "labels_key": [labels_key] if labels_key is not None else [],
            "batch_key": [batch_key] if batch_key is not None else [],
            "categorical_covariate_keys": list(categorical_covariate_keys or []),
            "continuous_covariate_keys": list(continuous_covariate_keys or []),
        }
        check_obs_keys(mdata, keys, mods)
        rna = mdata.mod[mods["rna_layer"]]
        if rna_layer is not None and rna_layer not in rna.layers:
            raise ValueError(
                f"Layer {rna_layer!r} not found in mdata[{mods['rna_layer']!r}]; it has "
                f"{list(rna.layers.keys())}. Pass rna_layer=None to use its .X."
            )
        check_cells_and_genes(rna, f"mdata[{mods['rna_layer']!r}]")
        for arg in ("labels_key", "batch_key", "categorical_covariate_keys"):
            mod = mods.get(arg)
            where = "mdata.obs" if mod is None else f"mdata[{mod!r}].obs"
            check_category_columns(obs_frame(mdata, mod), keys[arg], where)
        check_counts(
            rna.X if rna_layer is None else rna.layers[rna_layer],
            where=f"mod[{mods['rna_layer']!r}]." + ("X" if rna_layer is None else rna_layer),
        )
        # saved with the model: where every key was read from
        setup_method_args["setup_args"]["modalities"] = {
            k: v for k, v in mods.items() if v is not None
        }
        mudata_fields = [
            MuDataLayerField(
                REGISTRY_KEYS.X_KEY,
                rna_layer,
                mod_key=mods["rna_layer"],
                is_count_data=True,
                mod_required=True,
            ),
            MuDataCategoricalObsField(
                REGISTRY_KEYS.BATCH_KEY, batch_key, mod_key=mods["batch_key"]
            ),
            MuDataCategoricalObsField(
                REGISTRY_KEYS.LABELS_KEY, labels_key, mod_key=mods["labels_key"]
            ),
            MuDataCategoricalJointObsField(
                REGISTRY_KEYS.CAT_COVS_KEY,
                categorical_covariate_keys,
                mod_key=mods["categorical_covariate_keys"],
            ),
            MuDataNumericalJointObsField(
                REGISTRY_KEYS.CONT_COVS_KEY,
                continuous_covariate_keys,
                mod_key=mods["continuous_covariate_keys"],
            ),
        ]
        adata_manager = AnnDataManager(fields=mudata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(mdata, **kwargs)
        cls.register_manager(adata_manager)

    def _condition_spec(self) -> dict:
        """Names and categories of every condition, in the column order of the score network."""
        setup_args = self.registry_["setup_args"]
        reg = self.get_state_registry
        labels_key = setup_args.get("labels_key")
        columns = [
            {
                "name": "labels",
                "key": labels_key or "cell_type",
                "categories": list(reg(REGISTRY_KEYS.LABELS_KEY).categorical_mapping),
                "registered": labels_key is not None,
            }
        ]
        if self.summary_stats.n_batch > 1:
            columns.append(
                {
                    "name": "batch",
                    "key": setup_args["batch_key"],
                    "categories": list(reg(REGISTRY_KEYS.BATCH_KEY).categorical_mapping),
                }
            )
        cat_keys = setup_args.get("categorical_covariate_keys") or []
        if cat_keys:
            mappings = reg(REGISTRY_KEYS.CAT_COVS_KEY).mappings
            columns += [
                {"name": "cat_cov", "key": k, "categories": list(mappings[k])} for k in cat_keys
            ]
        return {
            "columns": columns,
            "batch_categories": list(reg(REGISTRY_KEYS.BATCH_KEY).categorical_mapping),
            "batch_key": setup_args.get("batch_key"),
            "cont_keys": list(setup_args.get("continuous_covariate_keys") or []),
        }

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        diffusion_max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        batch_size: int = 128,
        diffusion_batch_size: int = 64,
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
        batch_size: int = 64,
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
            Defaults to about 20,000 optimisation steps, between 1 and 2,000 epochs (667 epochs
            for the 2,110 cells of the PBMC 3k benchmark at batch 64, one epoch from about a
            million cells on).
        accelerator, devices
            Lightning accelerator and devices.
        batch_size
            Minibatch size of latents. On PBMC 3k, 64 (more, smaller steps) gave better cells
            than 256 for the same number of epochs.
        train_size
            Share of cells for training; the rest gives the validation loss for early stopping.
        early_stopping, early_stopping_patience
            Stop when the validation denoising loss has not improved for this many epochs. Off
            by default: that loss is noisy (random noise levels), and on PBMC 3k it stopped
            training long before the score model was good.
        plan_kwargs
            Passed to the stage-2 plan (scVI's :class:`~scvi.train.TrainingPlan`, which logs
            the denoising loss as ``denoising_loss_train`` / ``denoising_loss_validation`` in
            ``diffusion_history_``); default learning rate ``3e-3`` (on PBMC 3k it reached 0.93
            label agreement in 600 epochs where ``1e-3`` reached 0.89).
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
        if resume_from is not None:
            checkpoint_state(self.module, resume_from)
        if resume_from is not None:  # the VAE of the interrupted run, hence the same latents
            load_checkpoint_weights(self.module, resume_from)
            self.vae_trained_ = True
        if not self.vae_trained_:
            raise RuntimeError("Train the VAE first: call model.train_vae() or model.train().")
        # a temporary directory for latents on disk (None: in memory), removed after training
        tmp = latent_directory(latent_storage, self.adata)
        tensors, table, moments = self._latent_pass(indices, tmp and tmp.name)
        if self.query_ is None:
            self._fit_latent_statistics(moments)
        elif self.query_.get("reference_table") is not None:
            # the reference's cells stay available to draw covariates and library sizes from
            ref_table = self.query_["reference_table"]
            n_query = min(len(table), CONDITION_TABLE_MAX // 2)  # keep room for both
            n_ref = min(len(ref_table), CONDITION_TABLE_MAX - n_query)
            if n_ref < len(ref_table):  # subsample only when needed: keep the row order
                ref_table = ref_table.sample(n_ref, random_state=0)
            if len(table) + n_ref > CONDITION_TABLE_MAX:
                table = table.sample(CONDITION_TABLE_MAX - n_ref, random_state=0)
            table = pd.concat([ref_table, table], ignore_index=True)
        self.condition_table_ = table
        self._fit_label_gaussians(moments, finetune)
        self._fit_posterior_noise(moments, finetune)
        if finished:
            logger.info("Stage 2 already completed in %s: weights loaded.", stage_dir)
            if tmp is not None:
                tmp.cleanup()
            self.module.requires_grad_(True)
            self.module.eval()
            self.diffusion_trained_ = True
            return
        dm = LatentDataModule(
            tensors, train_size=train_size, batch_size=batch_size, seed=settings.seed or 0
        )
        if max_epochs is None:
            steps_per_epoch = math.ceil(dm.n_train / batch_size)
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
        plan = DiffusionTrainingPlan(self.module, **plan_kwargs)
        if dm.n_val == 0:
            early_stopping = False
        trainer_kwargs.setdefault("early_stopping_monitor", "denoising_loss_validation")
        trainer_kwargs.setdefault("early_stopping_patience", early_stopping_patience)
        trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        # the latent data module shards rows over processes itself (see LatentDataModule)
        trainer_kwargs.setdefault("use_distributed_sampler", False)
        vae_history = dict(self.history_ or {})  # the runner appends to the dict in place
        runner = TrainRunner(
            self,
            training_plan=plan,
            data_splitter=dm,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping,
            **trainer_kwargs,
        )
        try:
            runner()
        finally:
            for handle in hooks:
                handle.remove()
            if tmp is not None:
                tmp.cleanup()
        mark_stage_done(self.trainer, stage_dir)
        # scvi-tools merges later runs into the first run's history keys: keep the stages apart
        stage2 = getattr(self.trainer.logger, "history", {}) or {}
        if not isinstance(stage2, dict):  # a dummy on non-zero ranks under DDP
            stage2 = {}
        self.diffusion_history_ = {k: v.reset_index(drop=True) for k, v in stage2.items()}
        self.history_ = vae_history
        self.module.requires_grad_(True)  # as after load(); each stage re-applies its freezing
        self.module.eval()
        self.diffusion_trained_ = True

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
        if self.module.gaussians is not None:  # per-label moments for the Gaussian baseline
            moments["label_sum"] = torch.zeros(
                n_lab, n_latent, dtype=torch.float64, device=self.device
            )
            moments["label_outer"] = torch.zeros(
                n_lab, n_latent, n_latent, dtype=torch.float64, device=self.device
            )
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
            _add_label_moments(moments, loc.double(), inf["qz"].scale.double(), cond[:, 0])
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
        columns = [f"cond_{j}" for j in range(n_cond)] + ["log_library"]
        columns += [f"cont_{k}" for k in self.conditions_["cont_keys"]]
        table = pd.DataFrame(np.concatenate(rows), columns=columns)
        table[columns[:n_cond]] = table[columns[:n_cond]].astype(np.int64)
        table["batch_index"] = table["cond_1"] if self.summary_stats.n_batch > 1 else 0
        return tensors, table, {"n": n, **moments}

    def _condition_codes_from_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cols = [batch[REGISTRY_KEYS.LABELS_KEY]]
        if self.summary_stats.n_batch > 1:
            cols.append(batch[REGISTRY_KEYS.BATCH_KEY])
        if REGISTRY_KEYS.CAT_COVS_KEY in batch:
            cols.append(batch[REGISTRY_KEYS.CAT_COVS_KEY])
        return torch.cat(cols, dim=1).long()

    def _fit_latent_statistics(self, moments: dict) -> None:
        """Per-dimension mean and the scale (per dimension or global, see ``latent_scaling``) of
        the training latents (of samples, if trained on them).

        ``moments`` are the sums over cells accumulated by :meth:`_latent_pass`.
        """
        n = moments["n"]
        mean = moments["sum"] / n
        var = (moments["sumsq"] - n * mean**2) / max(n - 1, 1)  # unbiased, as torch.var
        if self.module.diffusion_target == "sample":
            var = var + moments["scale_sq"] / n
        device = self.module.latent_mean.device
        self.module.latent_mean.copy_(mean.float().to(device))
        var = var.clamp_min(0)
        std = (
            var.mean().sqrt().expand_as(var)
            if self.module.latent_scaling == "global"
            else var.sqrt()
        )
        # floor: dimensions the VAE ignores must not be blown up into pure noise
        self.module.latent_std.copy_(std.clamp_min(1e-2).float().to(device))

    def _fit_label_gaussians(self, moments: dict, finetune: str) -> None:
        """Fit the score network's Gaussian baseline from the moments of :meth:`_latent_pass`.

        A reference fits every cell type (types without cells get the all-cells Gaussian). A
        query fits the types it has cells of (``finetune="all"``), or only its new types
        (``"new_conditions"``, which leaves generation of the reference's types unchanged).
        """
        gaussians = self.module.gaussians
        if gaussians is None:
            return
        m, s = self.module.latent_mean.double(), self.module.latent_std.double()
        count, total, outer = (moments[k] for k in ("label_count", "label_sum", "label_outer"))
        # moments of the standardised latents (z - m) / s
        outer = (
            outer
            - total[:, :, None] * m[None, None, :]
            - m[None, :, None] * total[:, None, :]
            + count[:, None, None] * (m[:, None] * m[None, :])
        ) / (s[:, None] * s[None, :])
        total = (total - count[:, None] * m) / s
        extra = None
        if self.module.diffusion_target == "sample":
            extra = moments["scale_sq"] / moments["n"] / s**2
        codes = torch.arange(len(count), device=count.device)
        if self.query_ is None:
            gaussians.fit(count, total, outer, codes, extra)
        elif finetune == "all":
            gaussians.fit(count, total, outer, codes[count > 0], extra)
        else:
            new = (codes >= self.query_["condition_sizes"][0]) & (count > 0)
            gaussians.fit(count, total, outer, codes[new], extra, refit_all_cells=False)

    def _fit_posterior_noise(self, moments: dict, finetune: str) -> None:
        """Fit each cell type's mean posterior variance (see
        :class:`~scgm_scvi.module.PosteriorNoise`); for a query, the types as in
        :meth:`_fit_label_gaussians`."""
        count, scale_sq = moments["label_count"], moments["label_scale_sq"]
        codes = torch.arange(len(count), device=count.device)
        refit_all = True
        if self.query_ is not None:
            codes = codes[count > 0]
            if finetune == "new_conditions":
                codes = codes[codes >= self.query_["condition_sizes"][0]]
                refit_all = False
        self.module.posterior_noise.fit(count, scale_sq, codes, refit_all_cells=refit_all)

    # ------------------------------------------------------------------ generation
    def _resolve_conditions(
        self,
        n: int | None,
        cell_type: str | Sequence[str] | Mapping[str, int] | None,
        covariates: Mapping[str, object] | None,
        rng: np.random.Generator,
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """Condition codes and decoder inputs (library, batch, continuous) for every new cell.

        Unspecified covariates and library sizes are drawn jointly from training cells of the
        requested type, so generated cells follow the training distribution of that type.
        """
        if not self.diffusion_trained_:
            raise RuntimeError("The diffusion model is not trained: call model.train() first.")
        columns = self.conditions_["columns"]
        label_col = columns[0]
        if cell_type is not None and not label_col["registered"]:
            raise ValueError(
                "cell_type was given but no labels_key was registered. Call "
                "SCGM.setup_anndata(adata, labels_key=...) and train again."
            )
        table = self.condition_table_
        label_counts = (
            table["cond_0"]
            .value_counts()
            .reindex(range(len(label_col["categories"])), fill_value=0)
        )
        if cell_type is None:
            check_positive_int(n, "n")
            probs = label_counts.to_numpy() / label_counts.sum()
            labels = rng.choice(len(probs), size=n, p=probs)
        else:
            sizes = resolve_group_sizes(n, cell_type, label_col["categories"], "cell_type")
            labels = np.repeat(
                [label_col["categories"].index(k) for k in sizes], list(sizes.values())
            )
        n_total = len(labels)

        covariates = dict(covariates or {})
        fixed: dict[int, np.ndarray] = {}
        keys = {c["key"]: j for j, c in enumerate(columns)}
        for key, value in covariates.items():
            if key in self.conditions_["cont_keys"]:
                continue
            if key not in keys or key == label_col["key"]:
                valid = [c["key"] for c in columns[1:]] + self.conditions_["cont_keys"]
                raise ValueError(
                    f"Unknown covariate {key!r}. Covariates registered with setup_anndata: "
                    f"{valid}; set the cell type with cell_type=."
                )
            j = keys[key]
            values = per_cell_values(value, n_total, f"covariates[{key!r}]", dtype=object)
            cats = columns[j]["categories"]
            unknown = sorted({str(v) for v in values if v not in cats})
            if unknown:
                raise ValueError(f"Unknown {key} values {unknown}. Valid values: {cats}.")
            fixed[j] = np.array([cats.index(v) for v in values])

        # draw a training cell of the same type (matching fixed covariates where possible)
        drawn = np.empty(n_total, dtype=np.int64)
        groups = pd.DataFrame({"label": labels, **{f"f{j}": v for j, v in fixed.items()}})
        for key, idx in groups.groupby(list(groups.columns)).groups.items():
            key = key if isinstance(key, tuple) else (key,)
            mask = table["cond_0"].to_numpy() == key[0]
            for (j, _), value in zip(fixed.items(), key[1:], strict=True):
                mask_j = mask & (table[f"cond_{j}"].to_numpy() == value)
                mask = mask_j if mask_j.any() else mask
            candidates = np.flatnonzero(mask)
            if len(candidates) == 0:  # a label without training cells: any cell's covariates
                candidates = np.arange(len(table))
            drawn[np.asarray(idx)] = rng.choice(candidates, size=len(idx))
        cond = table[[f"cond_{j}" for j in range(len(columns))]].to_numpy()[drawn]
        cond[:, 0] = labels
        for j, codes in fixed.items():
            cond[:, j] = codes
        decoder = table.iloc[drawn].reset_index(drop=True)
        if self.summary_stats.n_batch > 1:
            decoder["batch_index"] = cond[:, 1]  # a fixed batch overrides the drawn cell's
        for key in self.conditions_["cont_keys"]:
            if key in covariates:
                values = per_cell_values(covariates[key], n_total, f"covariates[{key!r}]")
                if not np.all(np.isfinite(values)):
                    raise ValueError(f"covariates[{key!r}] must be finite numbers.")
                decoder[f"cont_{key}"] = values.astype(np.float32)
        return decoder, cond

    @torch.inference_mode()
    def sample_latent(
        self,
        cond: pd.DataFrame | np.ndarray | torch.Tensor,
        sampler: Sampler = "ode",
        n_steps: int | None = None,
        guidance_scale: float = 1.0,
        seed: int | None = None,
        batch_size: int = 2048,
        progress_bar: bool | None = None,
        precision: Precision = "32-true",
        guidance_interval: tuple[float, float] | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Sample VAE latents given condition codes (one row per cell).

        Parameters
        ----------
        cond
            One row per cell: a DataFrame of category names whose columns are the registered
            obs keys (cell type, batch, categorical covariates; a key left out is
            unconditional, as in classifier-free guidance), e.g.
            ``pd.DataFrame({"cell_type": ["B cells"] * 100})``; or integer codes of shape
            ``(n, n_conditions)`` in the column order of ``model.conditions_["columns"]``.
        sampler
            ``"ode"`` (probability-flow ODE, Heun; deterministic), ``"ode_euler"`` (DDIM-like),
            ``"euler_maruyama"`` (reverse SDE) or ``"pc"`` (predictor-corrector).
        n_steps
            Time steps; default per sampler (25 for the ODE, i.e. 50 network evaluations).
        guidance_scale
            Classifier-free guidance weight on the cell type (1 = plain conditional model).
        seed
            Random seed; ``None`` (default) draws from torch's global generator, which
            ``scvi.settings.seed`` seeds.
        batch_size
            Cells sampled at once.
        progress_bar
            Show a progress bar (``scvi.settings.progress_bar_style``); default: on a terminal
            and in Jupyter, not when output goes to a file.
        precision
            ``"bf16-mixed"`` runs the score network under bfloat16 autocast (the sampler's
            state and arithmetic stay float32): faster where the hardware has bfloat16 matrix
            units (see the Benchmarks page of the documentation). ``"32-true"``: float32
            throughout.
        guidance_interval
            ``(t_lo, t_hi)``: guidance applies only at these times of the reverse process (SDE
            time: data at 0, noise at ``T = 1``), the plain conditional model elsewhere
            (Kynkaanniemi et al. 2024); ``None`` (default): at every time. On PBMC 3k an interval
            moved the cells along the same trade-off between label agreement and RBF-MMD as a
            smaller weight does, no better (documentation: Benchmarks). Unused when
            ``guidance_scale == 1``.

        Returns
        -------
        Latents ``(n, n_latent)`` on the model device, and the network evaluations per cell.

        Raises
        ------
        ValueError
            An unknown column or category name (the message lists the valid ones).
        """
        check_sampling_args(n_steps, guidance_scale, seed, batch_size)
        if isinstance(cond, pd.DataFrame):
            cond = self._codes_from_names(cond)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}.")
        _check_precision(precision)
        check_guidance_interval(guidance_interval)
        n_steps = DEFAULT_STEPS[sampler] if n_steps is None else n_steps
        self.module.eval()
        device = self.device
        cond = torch.as_tensor(np.asarray(cond), dtype=torch.long, device=device)
        sde = self.module.sde
        spacing = "karras" if sampler.startswith("ode") else "uniform"
        ts = sde.time_grid(n_steps, spacing=spacing, device=device)
        chunks = list(torch.split(torch.arange(len(cond), device=device), batch_size))
        # generate() passes its own bar (one for all chunks): ``progress_bar`` is then that bar
        own_bar = not isinstance(progress_bar, ProgressBar)
        bar = (
            ProgressBar(n_steps * len(chunks), f"Sampling ({sampler})", progress_bar)
            if own_bar
            else progress_bar
        )
        net = self.module.eps if precision == "32-true" else _bf16_autocast(self.module.eps)
        out = []
        with _seeded(seed, device):
            for rows in chunks:
                c = cond[rows]
                eps_fn = classifier_free_guidance(
                    net, c, self.module.null_condition(c, [0]), guidance_scale, guidance_interval
                )
                x = sde.prior_sample((len(rows), self.module.n_latent), device=device)
                x = SAMPLERS[sampler](eps_fn, sde, x, ts, callback=lambda *_: bar.update())
                out.append(self.module.unstandardize(x))
        if own_bar:
            bar.close()
        nfe = EVALS_PER_STEP[sampler] * n_steps * (1 if guidance_scale == 1.0 else 2)
        return torch.cat(out), nfe

    @torch.inference_mode()
    def decode_latent(
        self,
        z: torch.Tensor | np.ndarray,
        cell_type: Sequence[str] | None = None,
        library_size: float | np.ndarray | None = None,
        batch: Sequence[str] | None = None,
        transform: Literal["counts", "normalized"] = "counts",
        seed: int | None = None,
        batch_size: int = 2048,
    ) -> sp.csr_matrix | np.ndarray:
        """Decode VAE latents to NB-sampled counts or to normalised expression.

        Parameters
        ----------
        z
            Latents ``(n, n_latent)``.
        cell_type
            Cell-type name per cell (only used by ``dispersion="gene-label"`` decoders).
        library_size
            Total counts per cell (scalar or ``(n,)``); default: the median training library.
        batch
            Batch name per cell when a ``batch_key`` was registered (default: the first batch).
        transform
            ``"counts"``: NB samples as a CSR matrix; ``"normalized"``: decoder means scaled to
            sum to one per cell (as ``get_normalized_expression``), dense.
        seed
            Random seed for the NB draws; ``None`` (default) draws from torch's global
            generator, which ``scvi.settings.seed`` seeds.
        batch_size
            Cells decoded at once.
        """
        check_seed(seed)
        check_positive_int(batch_size, "batch_size")
        z = torch.as_tensor(np.asarray(z) if not torch.is_tensor(z) else z, dtype=torch.float32)
        if z.ndim != 2 or z.shape[1] != self.module.n_latent:
            raise ValueError(
                f"z must have shape (n_cells, {self.module.n_latent}), got {tuple(z.shape)}."
            )
        if not torch.isfinite(z).all():
            raise ValueError("z contains NaN or infinite values.")
        n = len(z)
        table = self._decoder_table(n, cell_type, library_size, batch)
        return self._decode(z, table, transform, seed, batch_size)

    def _decoder_table(self, n, cell_type, library_size, batch) -> pd.DataFrame:
        columns = self.conditions_["columns"]
        table = pd.DataFrame(index=range(n))
        cats = columns[0]["categories"]
        labels = np.zeros(n, dtype=np.int64)
        if cell_type is not None:
            cell_type = per_cell_values(cell_type, n, "cell_type", dtype=object)
            unknown = sorted({str(c) for c in cell_type if c not in cats})
            if unknown:
                raise ValueError(f"Unknown cell types {unknown}. Valid values: {cats}.")
            labels = np.array([cats.index(c) for c in cell_type])
        table["cond_0"] = labels
        lib = check_library_size(library_size, n)
        if lib is None:
            lib = np.full(n, np.exp(np.median(self.condition_table_["log_library"])))
        table["log_library"] = np.log(lib)
        bcats = self.conditions_["batch_categories"]
        table["batch_index"] = 0
        if batch is not None:
            batch = per_cell_values(batch, n, "batch", dtype=object)
            unknown = sorted({str(b) for b in batch if b not in bcats})
            if unknown:
                raise ValueError(f"Unknown batches {unknown}. Valid values: {bcats}.")
            table["batch_index"] = [bcats.index(b) for b in batch]
        for j, col in enumerate(columns[1:], start=1):
            if col["name"] == "cat_cov":
                table[f"cond_{j}"] = 0
        for key in self.conditions_["cont_keys"]:
            table[f"cont_{key}"] = self.condition_table_[f"cont_{key}"].mean()
        return table

    def _decode(
        self,
        z: torch.Tensor,
        table: pd.DataFrame,
        transform: Literal["counts", "normalized"],
        seed: int | None,
        batch_size: int,
    ):
        if transform not in ("counts", "normalized"):
            raise ValueError(f"transform must be 'counts' or 'normalized', got {transform!r}.")
        self.module.eval()
        device = self.device
        columns = self.conditions_["columns"]
        cat_cols = [f"cond_{j}" for j, c in enumerate(columns) if c["name"] == "cat_cov"]
        cont_cols = [f"cont_{k}" for k in self.conditions_["cont_keys"]]

        def col(names, dtype):
            return torch.as_tensor(table[names].to_numpy(dtype=dtype), device=device)

        labels, library = col(["cond_0"], np.int64), col(["log_library"], np.float32)
        batch_index = col(["batch_index"], np.int64)
        cat_covs = col(cat_cols, np.int64) if cat_cols else None
        cont_covs = col(cont_cols, np.float32) if cont_cols else None
        z = z.to(device)
        out = []
        with _seeded(seed, device):
            for rows in torch.split(torch.arange(len(z), device=device), batch_size):
                px = self.module.decode(
                    z[rows],
                    library[rows],
                    batch_index[rows],
                    labels[rows],
                    None if cat_covs is None else cat_covs[rows],
                    None if cont_covs is None else cont_covs[rows],
                )
                if transform == "counts":
                    out.append(_to_csr(px.sample()))
                else:
                    out.append(px.scale.cpu().numpy())
        return stack_rows(out)

    @torch.inference_mode()
    def generate(
        self,
        n: int | None = 1000,
        cell_type: str | Sequence[str] | Mapping[str, int] | None = None,
        covariates: Mapping[str, object] | None = None,
        library_size: float | np.ndarray | None = None,
        sampler: Sampler = "ode",
        n_steps: int | None = None,
        guidance_scale: float = 1.0,
        seed: int | None = None,
        batch_size: int = 2048,
        progress_bar: bool | None = None,
        out: str | os.PathLike | None = None,
        overwrite: bool = False,
        latent_key: str | None = "X_scgm",
        precision: Precision = "32-true",
        guidance_interval: tuple[float, float] | None = None,
        posterior_noise: bool | None = None,
    ) -> AnnData | str:
        """Generate new cells: sample latents with the reverse process and decode NB counts.

        Cells are made in chunks of ``batch_size``; each chunk has its own random stream
        derived from ``(seed, chunk index)``, so the same ``seed`` and ``batch_size`` give the
        same cells in memory and on disk (``out=``). With ``out`` the memory use does not grow
        with ``n`` beyond the cell types, covariates and library sizes drawn up front (tens of
        bytes per cell): counts, latents and ``obs`` are appended to the file chunk by chunk,
        and nothing leaves the model's device except each finished chunk.

        Parameters
        ----------
        n
            Number of cells. With a ``{name: count}`` dict in ``cell_type`` it may be ``None``.
        cell_type
            One name (``n`` cells of it), a list of names (``n`` cells split evenly), a
            ``{name: count}`` dict, or ``None`` (types drawn in training proportions).
        covariates
            ``{obs key: value or per-cell values}`` for the batch and registered covariates;
            unspecified ones are drawn from training cells of the same type.
        library_size
            Total counts per cell (scalar or ``(n,)``); default: drawn from training cells of
            the same type.
        sampler, n_steps, guidance_scale, guidance_interval, precision
            See :meth:`sample_latent`.
        seed
            Random seed of everything drawn (cell types, covariates, library sizes, latents,
            posterior noise, NB counts): the same seed gives the same cells. ``None`` (default)
            draws a seed from torch's global generator, so that successive calls give new
            cells and ``scvi.settings.seed`` makes a session reproducible; the seed used is
            recorded in ``uns["scgm"]["seed"]`` and in the cell names.
        batch_size, progress_bar
            See :meth:`sample_latent`.
        out
            Write the cells to this ``.h5ad`` file instead of returning them (for millions of
            cells). The file is written under a temporary name and renamed when complete;
            read it with ``anndata.read_h5ad(out, backed="r")``.
        overwrite
            Replace an existing ``out`` file.
        posterior_noise
            Add each cell type's mean posterior variance to the sampled latents before
            decoding (:class:`~scgm_scvi.module.PosteriorNoise`), so that generated cells carry
            the variability a posterior sample of a real cell has; without it they are
            decoded like posterior means, smoother than real cells. ``None`` (default): on when
            the score model was trained on posterior means (``diffusion_target="mean"``, the
            default) and the model has the variances (models saved before they existed do
            not).
        latent_key
            ``obsm`` key of the latents (those decoded, noise included); ``None`` leaves them
            out. For millions of cells that
            will be read with ``read_h5ad(backed="r")``, leave them out: anndata loads
            ``obsm`` into memory (1 GB per million cells at ``n_latent=256``), only ``X``
            stays on disk.

        Returns
        -------
        AnnData with ``X`` = integer NB counts (CSR, float32), ``obs`` = cell type, covariates
        and library size, ``obsm[latent_key]`` = latent, ``var`` = the model's genes and
        ``uns["scgm"]`` = the generation settings; with ``out``, the path of the written file
        (same content).
        """
        if out is not None and os.path.exists(out) and not overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=True to replace it.")
        check_sampling_args(n_steps, guidance_scale, seed, batch_size)
        if seed is None:  # from the global generator: scvi.settings.seed governs it
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        rng = np.random.default_rng(seed)
        decoder, cond = self._resolve_conditions(n, cell_type, covariates, rng)
        lib = check_library_size(library_size, len(cond))
        if lib is not None:
            decoder["log_library"] = np.log(lib)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}.")
        _check_precision(precision)
        check_guidance_interval(guidance_interval)
        steps = DEFAULT_STEPS[sampler] if n_steps is None else n_steps
        noise = self._resolve_posterior_noise(posterior_noise)
        obs = self._obs_from_codes(cond)
        obs["library_size"] = np.exp(decoder["log_library"].to_numpy()).round()
        for key in self.conditions_["cont_keys"]:
            obs[key] = decoder[f"cont_{key}"].to_numpy()
        var = pd.DataFrame(index=self.var_names_.copy())
        uns = {
            "scgm": {
                "sampler": sampler,
                "n_steps": steps,
                "guidance_scale": guidance_scale,
                "guidance_interval": "none"
                if guidance_interval is None
                else [float(v) for v in guidance_interval],
                "precision": precision,
                "posterior_noise": noise,
                "seed": seed,
                "network_evaluations_per_cell": EVALS_PER_STEP[sampler]
                * steps
                * (1 if guidance_scale == 1.0 else 2),
            }
        }
        chunks = self._generate_chunks(
            cond, decoder, sampler, n_steps, guidance_scale, seed, batch_size, progress_bar,
            precision, guidance_interval, noise,
        )  # fmt: skip
        if out is None:
            Xs, zs = [], []
            for X, z in chunks:
                Xs.append(X)
                if latent_key is not None:
                    zs.append(z)
            obs.index = [f"scgm{seed}_{i}" for i in range(len(obs))]
            adata = AnnData(X=stack_rows(Xs), obs=obs, var=var)
            if latent_key is not None:
                adata.obsm[latent_key] = stack_rows(zs)
            adata.uns.update(uns)
            return adata
        writer = H5ADStreamWriter(
            out,
            len(cond),
            len(var),
            0 if latent_key is None else self.module.n_latent,
            latent_key or "",
            overwrite=overwrite,
        )
        try:
            start = 0
            for X, z in chunks:  # obs too goes chunk by chunk: cell names are not kept
                names = [f"scgm{seed}_{i}" for i in range(start, start + X.shape[0])]
                writer.append(X, z, obs.iloc[start : start + X.shape[0]].set_axis(names))
                start += X.shape[0]
            return writer.close(None if start else obs, var, uns)
        except BaseException as exc:
            writer.abort()
            reason = writer.explain_error(exc)
            if reason is exc:
                raise
            raise reason from exc

    def _resolve_posterior_noise(self, posterior_noise: bool | None) -> bool:
        available = self.module.posterior_noise.fitted
        if posterior_noise is None:
            return available and self.module.diffusion_target == "mean"
        if not isinstance(posterior_noise, bool):
            raise ValueError(
                f"posterior_noise must be True, False or None, got {posterior_noise!r}."
            )
        if posterior_noise and not available:
            raise ValueError(
                "This model has no posterior variances (saved before scgm_scvi 0.2): train stage "
                "2 again (model.train_diffusion()) or pass posterior_noise=False."
            )
        return posterior_noise

    def _generate_chunks(
        self, cond, decoder, sampler, n_steps, guidance_scale, seed, batch_size, progress_bar,
        precision, guidance_interval, posterior_noise,
    ):  # fmt: skip
        """Yield ``(counts CSR, latents)`` per chunk of ``batch_size`` cells, each chunk with
        its own seeds, so that the cells do not depend on how they are consumed."""
        starts = range(0, len(cond), batch_size)
        steps = DEFAULT_STEPS[sampler] if n_steps is None else n_steps
        # one bar over every sampler step of every chunk: long single chunks show progress too
        bar = ProgressBar(steps * len(starts), f"Generating ({sampler})", progress_bar)
        for i, start in enumerate(starts):
            rows = slice(start, start + batch_size)
            z, _ = self.sample_latent(
                cond[rows],
                sampler,
                n_steps,
                guidance_scale,
                _chunk_seed(seed, i, 0),
                batch_size,
                progress_bar=bar,
                precision=precision,
                guidance_interval=guidance_interval,
            )
            if posterior_noise:
                labels = torch.as_tensor(cond[rows][:, 0], device=z.device)
                with _seeded(_chunk_seed(seed, i, 2), z.device):
                    z = self.module.posterior_noise.sample(z, labels)
            X = self._decode(z, decoder.iloc[rows], "counts", _chunk_seed(seed, i, 1), batch_size)
            yield X, z.cpu().numpy()
        bar.close()

    def _codes_from_names(self, frame: pd.DataFrame) -> np.ndarray:
        """Condition codes from category names; columns left out get the "unknown" code."""
        columns = self.conditions_["columns"]
        keys = [c["key"] for c in columns]
        unknown = [k for k in frame.columns if k not in keys]
        if unknown:
            raise ValueError(f"Unknown condition columns {unknown}. Valid columns: {keys}.")
        codes = np.empty((len(frame), len(columns)), dtype=np.int64)
        for j, col in enumerate(columns):
            codes[:, j] = self.module.condition_sizes[j]  # "unknown": unconditional
            if col["key"] in frame.columns:
                values = frame[col["key"]].astype(str)
                bad = sorted(set(values) - set(col["categories"]))
                if bad:
                    raise ValueError(
                        f"Unknown {col['key']} values {bad}. Valid values: {col['categories']}."
                    )
                lookup = {c: i for i, c in enumerate(col["categories"])}
                codes[:, j] = values.map(lookup).to_numpy()
        return codes

    def _obs_from_codes(self, cond: np.ndarray) -> pd.DataFrame:
        """Names of the condition codes; categories are those present (as after subsetting
        real cells), so that plots and ``rank_genes_groups`` see no empty groups."""
        obs = {}
        for j, col in enumerate(self.conditions_["columns"]):
            codes = pd.Categorical.from_codes(cond[:, j], categories=col["categories"])
            obs[col["key"]] = codes.remove_unused_categories()
        return pd.DataFrame(obs)

    # ------------------------------------------------------------------ persistence
    @classmethod
    def load(
        cls,
        dir_path: str,
        adata: AnnData | None = None,
        allow_pickle: bool = False,
        **kwargs,
    ) -> SCGM:
        """Load a saved model; ``adata`` is optional (generation needs no training data).

        The model file is read with ``torch.load(weights_only=True)``: tensors and plain data
        only, so loading a model never runs code from the file.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            AnnData (or MuData) to attach (same genes); ``None`` loads the saved data if
            :meth:`save` wrote it, else the model alone, which can generate and decode.
        allow_pickle
            Also read model files that need Python's full unpickler: saves made before
            scgm_scvi 0.2 (save them again to convert them). Unpickling can run code from the
            file: pass ``True`` only for files from a source you trust.
        **kwargs
            Passed to :meth:`scvi.model.base.BaseModelClass.load`.

        Raises
        ------
        FileNotFoundError
            ``dir_path`` does not exist.
        ValueError
            ``dir_path`` is not a complete SCGM save: no ``model.pt``, a file whose size or
            checksum differs from the manifest written by :meth:`save`, an unreadable file, or
            a model of another class, or a file that needs the full unpickler while
            ``allow_pickle`` is ``False``.
        """
        saved = check_model_dir(dir_path, kwargs.get("prefix"), cls.__name__, allow_pickle)
        genes = saved[SAVE_KEYS.VAR_NAMES_KEY]
        if isinstance(adata, AnnData) and not np.array_equal(adata.var_names, genes):
            missing = pd.Index(genes).difference(adata.var_names)
            raise ValueError(
                f"adata has {adata.n_vars} genes and the model {len(genes)}"
                + (f" ({len(missing)} missing, e.g. {list(missing[:5])})" if len(missing) else "")
                + ": pass the model's genes in its order, adata[:, model_genes] with "
                "model_genes from SCGM.load(dir_path).var_names_, or use "
                "SCGM.load_query_data for data with other genes."
            )
        # scvi-tools saves the data as "<prefix>adata.h5ad" or, for MuData, "<prefix>mdata.h5mu"
        prefix = kwargs.get("prefix") or ""
        saved_data = (os.path.join(dir_path, f"{prefix}{f}") for f in ("adata.h5ad", "mdata.h5mu"))
        if adata is None and not any(os.path.exists(f) for f in saved_data):
            adata = False
        with safe_scvi_loading(allow_pickle):
            model = super().load(dir_path, adata=adata, **kwargs)
        model.module.eval()
        return model

    def save(
        self,
        dir_path: str,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **kwargs,
    ) -> None:
        """Save the model (both stages, generation state) to ``dir_path``, atomically.

        The files are written to a temporary directory next to ``dir_path`` and moved in place
        when complete, with a manifest of file sizes and the model file's checksum that
        :meth:`load` verifies: an interrupted save leaves the previous model (or nothing), never
        a half-written model that loads. The model file holds tensors and plain data only (no
        pickled Python objects), so that loading it cannot run code.

        Parameters
        ----------
        dir_path
            Target directory.
        prefix
            Prefix of the file names.
        overwrite
            Replace an existing save; otherwise an existing ``dir_path`` is an error.
        save_anndata
            Also write the registered AnnData.
        **kwargs
            Passed to :meth:`scvi.model.base.BaseModelClass.save`.
        """
        parent_save = super().save

        def save_safely(tmp: str) -> None:
            parent_save(tmp, prefix=prefix, overwrite=True, save_anndata=save_anndata, **kwargs)
            rewrite_safely(os.path.join(tmp, f"{prefix or ''}{SAVE_KEYS.MODEL_FNAME}"))

        atomic_save(save_safely, dir_path, prefix, overwrite)

    @classmethod
    def load_query_data(
        cls,
        adata: AnnData,
        reference_model: str | os.PathLike | SCGM,
        unfrozen: bool | None = None,
        allow_pickle: bool = False,
        **kwargs,
    ) -> SCGM:
        """A model for new data (a query) from a trained reference, by scArches surgery.

        As :meth:`scvi.model.SCVI.load_query_data`: the query is registered with the
        reference's setup, new batches and covariate values extend the categories, and the VAE
        grows input weights for them. Existing cell types keep their codes and embeddings, new
        ones get new rows in the score network's label embedding (started at the "unknown"
        label). Then fine-tune with :meth:`train_vae` and :meth:`train_diffusion` (or
        :meth:`train`) and generate the new cell types by name.

        Two cases (see the how-to guide "Fine-tune on new data"):

        - **New batches of known cell types**: scArches' frozen surgery (``unfrozen=False``,
          the default when the query has no new cell type). Only the new batches' weights
          learn, the latent space stays the reference's, and ``train_diffusion`` learns only
          the new categories' embeddings.
        - **New cell types**: a frozen VAE never learned their genes and cannot encode or decode
          them (reconstructed real B cells of PBMC 3k through a VAE trained without B cells are
          mostly not recognised as B cells), so the
          VAE must be fine-tuned unfrozen (the default when the query has a cell type the
          reference lacks). Pass the reference's cells together with the new ones as
          ``adata``: fine-tuning on the new cells alone moves the latent space away from the
          reference's types, which the score network then forgets. ``train_vae`` and
          ``train_diffusion`` (``finetune="all"``) start from the reference's weights, so a
          fraction of the reference's epochs is used (the report compares the quality and time
          with training from scratch).

        Parameters
        ----------
        adata
            Query AnnData with the reference's ``obs`` columns (cell type, batch, covariates).
            Its genes are aligned to the reference's by name, as ``prepare_query_anndata``
            does (missing genes become zero counts, with a warning that gives their number;
            extra genes are dropped); the input is not modified: the model then holds an
            aligned copy in ``model.adata``.
        reference_model
            Trained SCGM, or the directory of a saved one.
        unfrozen
            Fine-tune every VAE weight instead of scArches' new-covariate weights only (the
            latent space then moves and :meth:`train_diffusion` fine-tunes the whole score
            network, ``finetune="all"``). ``None`` (default): ``True`` when the query has a cell
            type that the reference lacks, else ``False``. ``False`` with a new cell type warns.
        allow_pickle
            As in :meth:`load`, for a ``reference_model`` directory.
        **kwargs
            Passed to :meth:`scvi.model.base.ArchesMixin.load_query_data` (``accelerator``,
            ``device``, ``freeze_dropout``, ``freeze_expression``, ...).

        Returns
        -------
        A new SCGM holding the query, with the reference's weights.
        """
        if adata is None:
            raise ValueError("load_query_data needs the query AnnData.")
        if isinstance(reference_model, str | os.PathLike):
            reference_model = os.fspath(reference_model)
            check_model_dir(reference_model, None, cls.__name__, allow_pickle)
        elif not isinstance(reference_model, cls):
            raise TypeError(
                f"reference_model must be a {cls.__name__} or the directory of a saved one, "
                f"got {type(reference_model).__name__}."
            )
        with safe_scvi_loading(allow_pickle):
            attr_dict, var_names, ref_state, _ = _get_loaded_data(reference_model, device="cpu")
        if not attr_dict.get("vae_trained_"):
            raise ValueError("The reference model is not trained; train it before querying.")
        setup_args = attr_dict["registry_"]["setup_args"]
        keys = [setup_args.get("labels_key"), setup_args.get("batch_key")]
        keys += list(setup_args.get("categorical_covariate_keys") or [])
        keys += list(setup_args.get("continuous_covariate_keys") or [])
        missing = [k for k in keys if k is not None and k not in adata.obs]
        if missing:
            raise ValueError(
                f"The query lacks the obs columns {missing} that the reference was set up with."
            )
        aligned = align_genes(adata, pd.Index(var_names))
        # scvi-tools registers (writes into) the AnnData it is given: never the user's own
        adata = aligned.copy() if aligned is adata else aligned
        new_types, lacking = [], []
        if setup_args.get("labels_key") is not None:
            known = attr_dict["registry_"]["field_registries"][REGISTRY_KEYS.LABELS_KEY]
            known = list(known["state_registry"]["categorical_mapping"])
            query_types = set(adata.obs[setup_args["labels_key"]].dropna().unique())
            new_types = sorted(str(t) for t in query_types if t not in set(known))
            lacking = [str(t) for t in known if t not in query_types]
        if unfrozen is None:
            unfrozen = bool(new_types)
            if unfrozen:
                logger.info(
                    "The query has cell types the reference lacks (%s): the whole VAE will be "
                    "fine-tuned (unfrozen=True).",
                    ", ".join(new_types),
                )
        elif not unfrozen and new_types:
            warnings.warn(
                f"The query has cell types the reference lacks ({', '.join(new_types)}) but "
                "the VAE is frozen (unfrozen=False): the reference VAE never learned these "
                "cells' genes and generates them poorly. Pass unfrozen=True (or leave the "
                "default) with the reference's cells and the new ones together.",
                UserWarning,
                stacklevel=2,
            )
        if unfrozen and lacking:
            warnings.warn(
                f"The query lacks {len(lacking)} of the reference's cell types "
                f"({', '.join(lacking[:5])}{', ...' if len(lacking) > 5 else ''}) and the VAE "
                "is unfrozen: fine-tuning on this query alone moves the latent space away from "
                "them and the model forgets them. Pass the reference's cells together with the "
                "new ones.",
                UserWarning,
                stacklevel=2,
            )
        freeze = {
            "unfrozen": unfrozen,
            "freeze_decoder_first_layer": kwargs.get("freeze_decoder_first_layer", True),
            "freeze_batchnorm_encoder": kwargs.get("freeze_batchnorm_encoder", True),
            "freeze_batchnorm_decoder": kwargs.get("freeze_batchnorm_decoder", False),
            "freeze_dropout": kwargs.get("freeze_dropout", False),
            "freeze_expression": kwargs.get("freeze_expression", True),
            "freeze_classifier": kwargs.get("freeze_classifier", True),
        }
        with safe_scvi_loading(allow_pickle):
            model = super().load_query_data(adata, reference_model, unfrozen=unfrozen, **kwargs)
        sizes = grow_condition_embeddings(model.module, ref_state)
        grow_label_gaussians(model.module, ref_state)
        model.conditions_ = model._condition_spec()
        model.query_ = {
            "condition_sizes": sizes,
            "freeze": freeze,
            "reference_table": attr_dict.get("condition_table_"),
        }
        model.diffusion_history_ = {}
        return model


def _add_label_moments(
    moments: dict, z: torch.Tensor, scale: torch.Tensor, labels: torch.Tensor
) -> None:
    """Accumulate per-label count and sum of posterior variances of a block of latents, and
    (for the Gaussian baseline) their sum and sum of outer products."""
    for c in torch.unique(labels).tolist():  # one host sync per block, outside any training
        rows = labels == c
        moments["label_count"][c] += rows.sum()  # a tensor: no host sync per label
        moments["label_scale_sq"][c] += scale[rows].square().sum(0)
        if "label_sum" in moments:
            zc = z[rows]
            moments["label_sum"][c] += zc.sum(0)
            moments["label_outer"][c] += zc.T @ zc


def _chunk_seed(seed: int | None, chunk: int, stream: int) -> int | None:
    """An independent seed per (seed, chunk, stream), e.g. stream 0 latents, 1 counts."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, chunk, stream]).generate_state(1)[0])


def _check_precision(precision: str) -> None:
    if precision not in get_args(Precision):
        raise ValueError(
            f"precision must be one of {list(get_args(Precision))}, got {precision!r}."
        )


def _bf16_autocast(fn):
    """``fn`` with its matrix products in bfloat16 (its float32 inputs and outputs unchanged)."""

    def wrapped(x: torch.Tensor, *args) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return fn(x, *args).float()

    return wrapped


def _to_csr(x: torch.Tensor) -> sp.csr_matrix:
    """Dense counts to a scipy CSR matrix, compressed on their device: only the non-zeros are
    copied to the host, and it is several times faster than scipy's dense conversion."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        csr = x.to_sparse_csr()
    parts = (csr.values(), csr.col_indices().int(), csr.crow_indices())
    return sp.csr_matrix(tuple(p.cpu().numpy() for p in parts), shape=tuple(x.shape))


class _seeded:
    """Seed torch's RNG for a block without touching the caller's global random state."""

    def __init__(self, seed: int | None, device: torch.device):
        self.seed = seed
        devices = [device] if torch.device(device).type == "cuda" else []
        self._fork = torch.random.fork_rng(devices=devices, enabled=seed is not None)

    def __enter__(self):
        self._fork.__enter__()
        if self.seed is not None:
            torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)
