"""Generation: sample latents with the reverse process, decode them to counts."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from scgm_scvi._names import DEFAULT_SAMPLER, Sampler
from scgm_scvi._progress import ProgressBar
from scgm_scvi.samplers import (
    ChunkedRun,
    check_guidance_interval,
    chunk_seed,
    classifier_free_guidance,
    plan_reverse,
)

from .._checks import (
    check_library_size,
    check_positive_int,
    check_sampling_args,
    check_seed,
    per_cell_values,
    resolve_group_sizes,
)
from .._conditions import (
    BATCH_INDEX,
    LOG_LIBRARY,
    Conditions,
    code_column,
    continuous_column,
    encode_names,
)
from .._constants import Precision
from .._stream import H5ADStreamWriter, stack_rows

logger = logging.getLogger(__name__)


class GenerationMixin:
    """``generate``, ``sample_latent`` and ``decode_latent`` of :class:`~scgm_scvi.SCGM`."""

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
        conditions = Conditions(self.conditions_)
        columns, label_col = conditions.columns, conditions.labels
        if cell_type is not None and not label_col["registered"]:
            raise ValueError(
                "cell_type was given but no labels_key was registered. Call "
                "SCGM.setup_anndata(adata, labels_key=...) and train again."
            )
        table = self.condition_table_
        label_counts = (
            table[code_column(0)]
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
        for key, value in covariates.items():
            if key in conditions.cont_keys:
                continue
            if key not in conditions.keys or key == label_col["key"]:
                valid = conditions.keys[1:] + conditions.cont_keys
                raise ValueError(
                    f"Unknown covariate {key!r}. Covariates registered with setup_anndata: "
                    f"{valid}; set the cell type with cell_type=."
                )
            j = conditions.column(key)
            values = per_cell_values(value, n_total, f"covariates[{key!r}]", dtype=object)
            fixed[j] = conditions.encode(j, values)

        # draw a training cell of the same type (matching fixed covariates where possible)
        drawn = np.empty(n_total, dtype=np.int64)
        groups = pd.DataFrame({"label": labels, **{f"f{j}": v for j, v in fixed.items()}})
        for key, idx in groups.groupby(list(groups.columns)).groups.items():
            key = key if isinstance(key, tuple) else (key,)
            mask = table[code_column(0)].to_numpy() == key[0]
            for (j, _), value in zip(fixed.items(), key[1:], strict=True):
                mask_j = mask & (table[code_column(j)].to_numpy() == value)
                mask = mask_j if mask_j.any() else mask
            candidates = np.flatnonzero(mask)
            if len(candidates) == 0:  # a label without training cells: any cell's covariates
                candidates = np.arange(len(table))
            drawn[np.asarray(idx)] = rng.choice(candidates, size=len(idx))
        cond = table[[code_column(j) for j in range(len(columns))]].to_numpy()[drawn]
        cond[:, 0] = labels
        for j, codes in fixed.items():
            cond[:, j] = codes
        decoder = table.iloc[drawn].reset_index(drop=True)
        if self.summary_stats.n_batch > 1:
            decoder[BATCH_INDEX] = cond[:, 1]  # a fixed batch overrides the drawn cell's
        for key in conditions.cont_keys:
            if key in covariates:
                values = per_cell_values(covariates[key], n_total, f"covariates[{key!r}]")
                if not np.all(np.isfinite(values)):
                    raise ValueError(f"covariates[{key!r}] must be finite numbers.")
                decoder[continuous_column(key)] = values.astype(np.float32)
        return decoder, cond

    @torch.inference_mode()
    def sample_latent(
        self,
        cond: pd.DataFrame | np.ndarray | torch.Tensor,
        sampler: Sampler = DEFAULT_SAMPLER,
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
            ``"dpmpp_2m_sde"`` (default: reverse SDE, SDE-DPM-Solver++(2M) steps),
            ``"dpmpp_2m"`` (probability-flow ODE, DPM-Solver++(2M) steps; deterministic),
            ``"ode"`` (the same ODE, Heun steps), ``"ode_euler"`` (DDIM-like),
            ``"euler_maruyama"`` (reverse SDE, Euler-Maruyama steps) or ``"pc"``
            (predictor-corrector).
        n_steps
            Time steps; default per sampler (10 for ``"dpmpp_2m_sde"`` and ``"dpmpp_2m"``, i.e.
            10 network evaluations; 25 Heun steps, 50 evaluations, for ``"ode"``).
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
        _check_precision(precision)
        check_guidance_interval(guidance_interval)
        self.module.eval()
        device = self.device
        cond = torch.as_tensor(np.asarray(cond), dtype=torch.long, device=device)
        sde = self.module.sde
        plan = plan_reverse(sde, sampler, n_steps, device=device)
        # generate() passes its own bar (one for all chunks): ``progress_bar`` is then that bar
        outer = progress_bar if isinstance(progress_bar, ProgressBar) else None
        run = ChunkedRun(
            len(cond),
            batch_size,
            plan.n_steps,
            f"Sampling ({sampler})",
            progress_bar,
            device,
            outer,
        )
        net = self.module.eps if precision == "32-true" else _bf16_autocast(self.module.eps)
        out = []
        with _seeded(seed, device):
            for rows in run:
                c = cond[rows]
                eps_fn = classifier_free_guidance(
                    net, c, self.module.null_condition(c, [0]), guidance_scale, guidance_interval
                )
                x = sde.prior_sample((len(rows), self.module.n_latent), device=device)
                x = plan.sample(eps_fn, sde, x, callback=run.callback())
                out.append(self.module.unstandardize(x))
        nfe = plan.network_evaluations(guided=guidance_scale != 1.0)
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
        covariates: Mapping[str, object] | None = None,
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
        covariates
            ``{obs key: value or per-cell values}`` for the registered categorical and
            continuous covariates the decoder takes; default: the first category, and the
            training mean of a continuous covariate.
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
        table = self._decoder_table(n, cell_type, library_size, batch, covariates)
        return self._decode(z, table, transform, seed, batch_size)

    def _decoder_table(self, n, cell_type, library_size, batch, covariates) -> pd.DataFrame:
        conditions = Conditions(self.conditions_)
        table = pd.DataFrame(index=range(n))
        table[code_column(0)] = 0
        if cell_type is not None:
            cell_type = per_cell_values(cell_type, n, "cell_type", dtype=object)
            table[code_column(0)] = conditions.encode(0, cell_type, "cell_type")
        lib = check_library_size(library_size, n)
        if lib is None:
            lib = np.full(n, np.exp(np.median(self.condition_table_[LOG_LIBRARY])))
        table[LOG_LIBRARY] = np.log(lib)
        table[BATCH_INDEX] = 0
        if batch is not None:
            table[BATCH_INDEX] = conditions.encode_batch(
                per_cell_values(batch, n, "batch", object)
            )
        covariates = dict(covariates or {})
        valid = [conditions.columns[j]["key"] for j in conditions.covariate_columns]
        valid += conditions.cont_keys
        for key in covariates:
            if key not in valid:
                raise ValueError(
                    f"Unknown covariate {key!r}. Covariates the decoder takes: {valid}; set the "
                    "cell type with cell_type= and the batch with batch=."
                )
        for j in conditions.covariate_columns:
            key = conditions.columns[j]["key"]
            values = covariates.get(key)
            table[code_column(j)] = 0
            if values is not None:
                values = per_cell_values(values, n, f"covariates[{key!r}]", dtype=object)
                table[code_column(j)] = conditions.encode(j, values)
        for key in conditions.cont_keys:
            column = continuous_column(key)
            if key in covariates:
                values = per_cell_values(covariates[key], n, f"covariates[{key!r}]")
                if not np.all(np.isfinite(values)):
                    raise ValueError(f"covariates[{key!r}] must be finite numbers.")
                table[column] = values.astype(np.float32)
            else:
                table[column] = self.condition_table_[column].mean()
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
        conditions = Conditions(self.conditions_)
        cat_cols = [code_column(j) for j in conditions.covariate_columns]
        cont_cols = [continuous_column(k) for k in conditions.cont_keys]

        def col(names, dtype):
            return torch.as_tensor(table[names].to_numpy(dtype=dtype), device=device)

        labels, library = col([code_column(0)], np.int64), col([LOG_LIBRARY], np.float32)
        batch_index = col([BATCH_INDEX], np.int64)
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
        sampler: Sampler = DEFAULT_SAMPLER,
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
            Total counts per cell (scalar or ``(n,)``); default: drawn given each cell's
            sampled latent from its type's model of log library size
            (:class:`~scgm_scvi.module.LibraryModel`), so that a cell's depth matches its state
            as in the training cells; models saved before that model existed draw it from a
            training cell of the same type.
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
            decoder[LOG_LIBRARY] = np.log(lib)
            library = "given"
        elif self.module.library_model.fitted:
            library = "latent"  # drawn chunk by chunk from the sampled latents
        else:  # a model saved before the library model: the drawn training cells'
            library = "training cells"
        _check_precision(precision)
        check_guidance_interval(guidance_interval)
        plan = plan_reverse(self.module.sde, sampler, n_steps)  # checks the sampler
        noise = self._resolve_posterior_noise(posterior_noise)
        obs = self._obs_from_codes(cond)
        obs["library_size"] = np.exp(decoder[LOG_LIBRARY].to_numpy()).round()
        for key in self.conditions_["cont_keys"]:
            obs[key] = decoder[continuous_column(key)].to_numpy()
        var = pd.DataFrame(index=self.var_names_.copy())
        uns = {
            "scgm": {
                "sampler": sampler,
                "n_steps": plan.n_steps,
                "guidance_scale": guidance_scale,
                "guidance_interval": "none"
                if guidance_interval is None
                else [float(v) for v in guidance_interval],
                "precision": precision,
                "posterior_noise": noise,
                "library_size": library,
                "seed": seed,
                "network_evaluations_per_cell": plan.network_evaluations(guidance_scale != 1),
            }
        }
        chunks = self._generate_chunks(
            cond, decoder, sampler, plan.n_steps, guidance_scale, seed, batch_size, progress_bar,
            precision, guidance_interval, noise, library == "latent",
        )  # fmt: skip
        if out is None:
            Xs, zs, libs = [], [], []
            for X, z, log_lib in chunks:
                Xs.append(X)
                libs.append(log_lib)
                if latent_key is not None:
                    zs.append(z)
            obs["library_size"] = np.exp(np.concatenate(libs)).round()
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
            for X, z, log_lib in chunks:  # obs goes chunk by chunk too: names are not kept
                names = [f"scgm{seed}_{i}" for i in range(start, start + X.shape[0])]
                chunk_obs = obs.iloc[start : start + X.shape[0]].set_axis(names)
                chunk_obs = chunk_obs.assign(library_size=np.exp(log_lib).round())
                writer.append(X, z, chunk_obs)
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
        precision, guidance_interval, posterior_noise, library_from_latent,
    ):  # fmt: skip
        """Yield ``(counts CSR, latents, log library sizes)`` per chunk of ``batch_size``
        cells, each chunk with its own seeds, so that the cells do not depend on how they are
        consumed. With ``library_from_latent`` the library sizes are drawn from the sampled
        latents (before the posterior noise: the library model describes the latents stage 2
        models); otherwise they are ``decoder``'s."""
        # one bar over every sampler step of every chunk: long single chunks show progress too
        run = ChunkedRun(len(cond), batch_size, n_steps, f"Generating ({sampler})", progress_bar)
        for i, chunk in enumerate(run):
            rows = slice(int(chunk[0]), int(chunk[-1]) + 1)
            z, _ = self.sample_latent(
                cond[rows],
                sampler,
                n_steps,
                guidance_scale,
                chunk_seed(seed, i, 0),
                batch_size,
                progress_bar=run.bar,
                precision=precision,
                guidance_interval=guidance_interval,
            )
            labels = torch.as_tensor(cond[rows][:, 0], device=z.device)
            table = decoder.iloc[rows]
            if library_from_latent:
                with _seeded(chunk_seed(seed, i, 3), z.device):
                    log_lib = self.module.library_model.sample(z, labels)
                table = table.assign(**{LOG_LIBRARY: log_lib.cpu().numpy()})
            if posterior_noise:
                with _seeded(chunk_seed(seed, i, 2), z.device):
                    z = self.module.posterior_noise.sample(z, labels)
            X = self._decode(z, table, "counts", chunk_seed(seed, i, 1), batch_size)
            yield X, z.cpu().numpy(), table[LOG_LIBRARY].to_numpy()

    def _codes_from_names(self, frame: pd.DataFrame) -> np.ndarray:
        """Condition codes from category names; columns left out get the "unknown" code."""
        conditions = Conditions(self.conditions_)
        unknown = [k for k in frame.columns if k not in conditions.keys]
        if unknown:
            raise ValueError(
                f"Unknown condition columns {unknown}. Valid columns: {conditions.keys}."
            )
        codes = np.empty((len(frame), len(conditions.columns)), dtype=np.int64)
        for j, key in enumerate(conditions.keys):
            codes[:, j] = self.module.condition_sizes[j]  # "unknown": unconditional
            if key in frame.columns:
                names = [str(c) for c in conditions.columns[j]["categories"]]
                codes[:, j] = encode_names(frame[key].astype(str).tolist(), names, key)
        return codes

    def _obs_from_codes(self, cond: np.ndarray) -> pd.DataFrame:
        """Names of the condition codes; categories are those present (as after subsetting
        real cells), so that plots and ``rank_genes_groups`` see no empty groups."""
        return Conditions(self.conditions_).decode_obs(cond)


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
