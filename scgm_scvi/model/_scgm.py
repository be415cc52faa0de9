"""SCGM: an NB-VAE with a conditional score-based diffusion model over its latent space."""

from __future__ import annotations

import logging
from typing import Literal

import pandas as pd
import rich.pretty  # noqa: F401 - scvi-tools' view_anndata_setup uses it unimported (rich 15)
from anndata import AnnData
from mudata import MuData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
)
from scvi.model.base import (
    ArchesMixin,
    BaseModelClass,
    RNASeqMixin,
    UnsupervisedTrainingMixin,
    VAEMixin,
)
from scvi.train import TrainingPlan
from scvi.utils import setup_anndata_dsp

from scgm_scvi.module import (
    DiffusionTarget,
    LatentScaling,
    SCGMModule,
    ScoreBaseline,
)

from ._checks import (
    check_category_columns,
    check_cells_and_genes,
    check_counts,
)
from .base import (
    AugmentMixin,
    EncodingMixin,
    GenerationMixin,
    QueryMixin,
    SaveLoadMixin,
    TrainingMixin,
)

logger = logging.getLogger(__name__)


class SCGM(
    TrainingMixin,
    GenerationMixin,
    EncodingMixin,
    AugmentMixin,
    SaveLoadMixin,
    QueryMixin,
    RNASeqMixin,
    VAEMixin,
    ArchesMixin,
    UnsupervisedTrainingMixin,
    BaseModelClass,
):
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
