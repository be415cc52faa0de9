"""SCGEditor: SDEdit / DDIB-style editing of real cells with a trained :class:`~scgm_scvi.SCGM`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from mudata import MuData

from scgm_scvi._names import DEFAULT_SAMPLER
from scgm_scvi.model._checks import check_finite, check_sampling_args
from scgm_scvi.model._conditions import (
    BATCH_INDEX,
    LOG_LIBRARY,
    Conditions,
    code_column,
    continuous_column,
)
from scgm_scvi.model._mudata import rna_anndata
from scgm_scvi.samplers import (
    ODE_SAMPLERS,
    ChunkedRun,
    Sampler,
    check_guidance_interval,
    check_sampler,
    chunk_generator,
    classifier_free_guidance,
    gene_guidance,
    plan_reverse,
)

if TYPE_CHECKING:
    from scgm_scvi.model import SCGM

logger = logging.getLogger(__name__)

Method = Literal["sdedit", "ode", "latent_shift"]
Init = Literal["source", "latent_shift"]
GuidanceReference = Literal["null", "source"]
EDITED_KEY = "X_scgm_edited"
SOURCE_KEY = "X_scgm_source"
UNS_KEY = "scgm_edit"
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None]


class SCGEditor:
    """Edit real cells toward a target condition with a trained :class:`~scgm_scvi.SCGM`.

    Three methods share one call, :meth:`edit`:

    - ``"sdedit"`` (SDEdit, Meng et al. 2022): encode the cells, noise their latents to
      ``t0 = strength * T`` and run the reverse SDE from ``t0`` under the target condition
      (by default with :meth:`~scgm_scvi.SCGM.generate`'s sampler, SDE-DPM-Solver++).
      Small ``strength`` keeps the cells close to the source (faithful); large ``strength``
      lets the model replace more of the cell by what it learnt of the target (realistic).
    - ``"ode"`` (DDIB, Su et al. 2023): integrate the probability-flow ODE from the source
      latent up to ``t0`` under the source condition (inversion), then back down under the
      target condition. Deterministic and invertible: editing back to the source condition
      returns the source latent up to the ODE discretisation error.
    - ``"latent_shift"`` (scGen-style baseline, Lotfollahi et al. 2019): add the difference of
      the mean latents of reference cells with the target and with the source value, taken
      within each stratum of the other conditions (e.g. each cell type) and averaged over the
      strata that hold both values, so that a cell type missing from one side (the held-out
      type of a leave-one-out study) does not bias the shift.

    ``"sdedit"`` and ``"ode"`` can also start from the shifted latent (``init="latent_shift"``).

    All methods decode the edited latents under the target covariates, with each source cell's
    observed library size, and draw negative-binomial counts.

    Parameters
    ----------
    model
        A trained :class:`~scgm_scvi.SCGM` (both stages).

    Examples
    --------
    >>> scgm_scvi.SCGM.setup_anndata(adata, labels_key="cell_type",
    ...                              categorical_covariate_keys=["condition"])
    >>> model = scgm_scvi.SCGM(adata)
    >>> model.train()
    >>> editor = scgm_scvi.SCGEditor(model)
    >>> ctrl = adata[adata.obs["condition"] == "ctrl"]
    >>> stim = editor.edit(ctrl, {"condition": "stim"}, strength=0.5)
    >>> knock_down = editor.edit(ctrl, {"condition": "ctrl"}, strength=0.3, genes={"CD19": 0})
    """

    # scGen-style balancing of the latent shift over strata of the other conditions; False gives
    # the pooled difference of means (kept for comparisons)
    _balance_shift = True

    def __init__(self, model: SCGM):
        if not getattr(model, "diffusion_trained_", False):
            raise RuntimeError(
                "The model's diffusion stage is not trained: call model.train() before editing."
            )
        self.model = model

    def __repr__(self) -> str:
        return f"SCGEditor({self.model.__class__.__name__}, n_genes={len(self.model.var_names_)})"

    # ------------------------------------------------------------------ public API
    @torch.no_grad()  # not inference_mode: gene guidance needs autograd inside the sampler
    def edit(
        self,
        adata: AnnData | MuData,
        target: str | Mapping[str, str],
        strength: float = 0.5,
        method: Method = "sdedit",
        sampler: Sampler | None = None,
        n_steps: int | None = None,
        guidance_scale: float = 1.0,
        guidance_interval: tuple[float, float] | None = None,
        genes: Mapping[str, float | Literal["up", "down"]] | None = None,
        gene_guidance_scale: float = 1.0,
        n_samples: int = 1,
        seed: int | None = None,
        reference: AnnData | None = None,
        store_latent: bool = False,
        init: Init = "source",
        guidance_reference: GuidanceReference = "null",
        step_callback: StepCallback | None = None,
        batch_size: int = 1024,
        progress_bar: bool | None = None,
    ) -> AnnData:
        """Edit the cells of ``adata`` toward ``target``.

        Parameters
        ----------
        adata
            Count data with the model's genes (matched by name, any order; extra genes are
            dropped with a warning) and the ``obs`` columns registered with
            :meth:`~scgm_scvi.SCGM.setup_anndata`, or a MuData whose RNA modality and ``obs``
            are laid out as in :meth:`~scgm_scvi.SCGM.setup_mudata`. Never modified, except
            ``adata.obsm["X_scgm_edited"]`` when ``store_latent=True``.
        target
            ``{obs key: value}`` for the registered covariates to change (cell type, batch or a
            categorical covariate), e.g. ``{"condition": "stim"}``; a bare string sets the
            cell type. Covariates not named keep each source cell's value.
        strength
            ``t0 / T`` in ``(0, 1]``: how far into the diffusion the source is pushed before
            being brought back under the target (SDEdit's realism-faithfulness trade-off). Values
            at or below the SDE's ``eps`` return (nearly) the source latent. Unused by
            ``"latent_shift"``.
        method
            ``"sdedit"``, ``"ode"`` or ``"latent_shift"`` (see the class description).
        sampler
            Reverse-process sampler, as in :meth:`~scgm_scvi.SCGM.generate`. Default:
            ``"dpmpp_2m_sde"`` (as ``generate``) for ``"sdedit"`` and ``"ode"`` (Heun) for
            ``"ode"``, which only accepts the deterministic ``"ode"``, ``"ode_euler"`` and
            ``"dpmpp_2m"``.
        n_steps
            Steps from ``t0`` down to ``eps``; default: the sampler's default density over the
            full time range scaled by ``strength`` (e.g. 5 SDE-DPM-Solver++ steps at 0.5).
        guidance_scale
            Classifier-free guidance weight on the target columns (1 = plain conditional model,
            > 1 pushes harder toward the target).
        guidance_interval
            ``(t_lo, t_hi)``: times at which guidance applies, as in
            :meth:`~scgm_scvi.SCGM.generate` (an edit from ``t0 = strength`` only meets the part
            below ``t0``); ``None``: at every time.
        genes
            Gene-level constraints applied at every reverse step through the decoder
            (reconstruction guidance): ``"up"`` / ``"down"`` push the decoded expression of a
            gene, a number steers the decoded mean count of the gene in each edited cell
            toward it (``0`` for an in-silico knock-down). Limits: the gene can only move as far
            as the VAE's latent space lets it, so co-regulated genes move with it, and a value
            far outside what the model has seen is approached but not reached.
        gene_guidance_scale
            Strength of the gene-level guidance.
        n_samples
            Edited cells per source cell (for uncertainty); ``"ode"`` and ``"latent_shift"`` are
            deterministic in latent space, so their samples differ only in the NB counts.
        seed
            Random seed of the noise and the NB draws: the same seed and ``batch_size`` give
            the same cells (one random stream per chunk of cells, as in
            :meth:`~scgm_scvi.SCGM.generate`); ``None`` (default) draws from torch's global
            generator, which ``scvi.settings.seed`` seeds.
        reference
            For ``"latent_shift"``: cells whose mean latents give the shift (default: the
            model's training data); an AnnData or a MuData, like ``adata``.
        store_latent
            Also write the edited latents (mean over ``n_samples``) to
            ``adata.obsm["X_scgm_edited"]``.
        init
            Where the reverse process of ``"sdedit"`` / ``"ode"`` starts: ``"source"`` (the source
            latent, plain SDEdit / DDIB) or ``"latent_shift"`` (the source latent moved by the
            ``"latent_shift"`` difference of means first, then noised to ``t0`` and brought back
            under the target, i.e. SDEdit from a better initial guess; with ``"ode"`` the shifted
            latent is inverted under the source condition). Uses ``reference`` like
            ``"latent_shift"``. Ignored by ``method="latent_shift"``.
        guidance_reference
            What classifier-free guidance pushes away from when ``guidance_scale != 1``:
            ``"null"`` (the target's changed columns set to "unknown", standard guidance) or
            ``"source"`` (the source cell's own values, ``eps_src + w (eps_tgt - eps_src)``,
            which moves along the source-to-target direction only).
        step_callback
            Optional per-step hook ``callback(i, t, x) -> x or None`` passed to the sampler of
            the target pass; ``x`` is the standardised latent. A returned tensor replaces
            ``x`` (user interventions).
        batch_size
            Cells processed at once.
        progress_bar
            Show a progress bar (``scvi.settings.progress_bar_style``); default: on a terminal
            and in Jupyter, not when output goes to a file.

        Returns
        -------
        AnnData with ``X`` = edited NB counts (CSR, float32 integers), ``obs`` = the source
        ``obs`` with the target columns set, ``source_<key>`` holding the source values,
        ``source_cell`` and ``library_size`` (count summaries ``n_counts``, ``total_counts``,
        ``n_genes``, ``n_genes_by_counts``, where present, recomputed from the edited counts);
        ``obsm["X_scgm_source"]`` and
        ``obsm["X_scgm_edited"]`` = source and edited VAE latents; ``uns["scgm_edit"]`` = the
        edit parameters.
        """
        model, module = self.model, self.model.module
        method, plan, t0, init = self._check_arguments(
            method, sampler, n_steps, strength, init, guidance_scale, guidance_interval,
            guidance_reference, gene_guidance_scale, n_samples, seed, batch_size,
        )  # fmt: skip
        target = self._resolve_target(target)
        gene_idx, gene_target, gene_dir = self._resolve_genes(genes)
        if gene_idx is not None and method == "latent_shift":
            raise ValueError("Gene-level guidance needs a reverse process: use 'sdedit' or 'ode'.")
        needs_shift = method == "latent_shift" or init == "latent_shift"
        if needs_shift and reference is None and model.adata is None:
            option = "method" if method == "latent_shift" else "init"
            raise ValueError(
                f"{option}='latent_shift' needs reference cells for the latent means, but the "
                "model was loaded without its training AnnData. Pass reference=<AnnData set up "
                "like the training data> or load the model with its AnnData."
            )

        module.eval()
        device = model.device
        source = adata  # where store_latent writes
        if isinstance(adata, MuData):
            adata = rna_anndata(adata, model.registry_["setup_args"], "adata")
        src = model.encode(adata, batch_size, name="adata")
        n = len(src["z"])
        cond_tgt, batch_tgt = self._target_codes(src, target)

        rep = np.repeat(np.arange(n), n_samples)
        rep_t = torch.as_tensor(rep, device=device)
        z_src = src["z"][rep_t]
        if needs_shift:
            delta = self._latent_shift(target, src["cond"], reference, batch_size)
            z_start = z_src + delta[rep_t]
        else:
            z_start = z_src
        if method == "latent_shift":
            z_edit = z_start
            nfe = 0
        else:
            z_edit, nfe = self._sample(
                x0=module.standardize(z_start),
                cond_src=src["cond"][rep_t],
                cond_tgt=cond_tgt[rep_t],
                changed=list(target),
                decoder=(
                    src["log_library"][rep_t],
                    batch_tgt[rep_t, None],
                    cond_tgt[rep_t],
                    None if src["cont"] is None else src["cont"][rep_t],
                ),
                method=method,
                plan=plan,
                guidance=(guidance_scale, guidance_interval, guidance_reference),
                genes=(gene_idx, gene_target, gene_dir, gene_guidance_scale),
                seed=seed,
                step_callback=step_callback,
                batch_size=batch_size,
                progress_bar=progress_bar,
            )
            z_edit = module.unstandardize(z_edit)

        table = self._decoder_table(
            cond_tgt[rep_t], batch_tgt[rep_t], src["log_library"][rep_t], src["cont"], rep
        )
        X = self._decode(z_edit, table, None if seed is None else seed + 1, batch_size)
        out = self._output(adata, X, rep, n_samples, target, table, z_src, z_edit)
        guidance = _guidance_record(guidance_scale, guidance_interval, guidance_reference)
        out.uns[UNS_KEY] = {
            "method": method,
            "target": {model.conditions_["columns"][j]["key"]: v for j, v in self._names(target)},
            "strength": float(strength),
            "t0": float(t0),
            "sampler": "none" if plan is None else plan.sampler,
            "n_steps": 0 if plan is None else plan.n_steps,
            **guidance,
            "init": init,
            **_genes_record(genes, gene_guidance_scale),
            "n_samples": int(n_samples),
            "seed": -1 if seed is None else int(seed),
            "network_evaluations_per_cell": int(nfe),
        }
        if store_latent:
            edited = z_edit.cpu().numpy().reshape(n, n_samples, -1).mean(axis=1)
            source.obsm[EDITED_KEY] = edited
        return out

    # ------------------------------------------------------------------ argument checks
    def _check_arguments(
        self, method, sampler, n_steps, strength, init, guidance_scale, guidance_interval,
        guidance_reference, gene_guidance_scale, n_samples, seed, batch_size,
    ):  # fmt: skip
        """Every argument of :meth:`edit` that needs no data; the reverse-process plan."""
        check_sampling_args(n_steps, guidance_scale, seed, batch_size)
        check_finite(gene_guidance_scale, "gene_guidance_scale", minimum=0.0)
        method, plan, t0 = self._check_options(method, sampler, n_steps, strength)
        if init not in ("source", "latent_shift"):
            raise ValueError(f"init must be 'source' or 'latent_shift', got {init!r}.")
        check_guidance_interval(guidance_interval)
        if guidance_reference not in ("null", "source"):
            raise ValueError(
                f"guidance_reference must be 'null' or 'source', got {guidance_reference!r}."
            )
        if not isinstance(n_samples, int | np.integer) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        # the latent shift is the edit itself
        return method, plan, t0, "source" if method == "latent_shift" else init

    def _check_options(self, method, sampler, n_steps, strength):
        if method not in ("sdedit", "ode", "latent_shift"):
            raise ValueError(f"method must be 'sdedit', 'ode' or 'latent_shift', got {method!r}.")
        if (
            not isinstance(strength, int | float | np.floating)
            or isinstance(strength, bool)
            or not 0 < strength <= 1
        ):
            raise ValueError(f"strength must be in (0, 1], got {strength!r}.")
        sde = self.model.module.sde
        t0 = max(float(strength) * sde.T, sde.eps)  # below eps the reverse grid would increase
        if method == "latent_shift":
            return method, None, t0
        if sampler is None:
            sampler = "ode" if method == "ode" else DEFAULT_SAMPLER
        check_sampler(sampler)
        if method == "ode":  # it inverts the probability-flow ODE
            check_sampler(sampler, ODE_SAMPLERS, " (an ODE sampler: method='ode' inverts the ODE)")
        return method, plan_reverse(sde, sampler, n_steps, t0, self.model.device), t0

    def _resolve_target(self, target) -> dict[int, int]:
        """``{column index of the score network: category code}`` for the target."""
        conditions = Conditions(self.model.conditions_)
        columns = conditions.columns
        if isinstance(target, str):
            if not columns[0]["registered"]:
                raise ValueError(
                    "A bare string target sets the cell type, but no labels_key was registered; "
                    "pass a dict such as {'condition': 'stim'}."
                )
            target = {columns[0]["key"]: target}
        if not isinstance(target, Mapping) or len(target) == 0:
            raise ValueError(
                f"target must be a non-empty dict {{obs key: value}} or a cell-type name, got "
                f"{target!r}."
            )
        valid = conditions.editable()
        out = {}
        for key, value in target.items():
            j = conditions.column(key, valid, "target key")
            out[j] = int(conditions.encode(j, [value])[0])
        return out

    def _names(self, target: dict[int, int]):
        columns = self.model.conditions_["columns"]
        return [(j, columns[j]["categories"][code]) for j, code in target.items()]

    def _resolve_genes(self, genes):
        if not genes:
            return None, None, None
        var_names = self.model.var_names_
        missing = [g for g in genes if g not in var_names]
        if missing:
            raise ValueError(
                f"Genes {missing} are not among the model's {len(var_names)} genes "
                f"(e.g. {list(var_names[:5])})."
            )
        target, direction = [], []
        for gene, value in genes.items():
            if isinstance(value, str):
                if value not in ("up", "down"):
                    raise ValueError(
                        f"genes[{gene!r}] must be 'up', 'down' or a non-negative number, got "
                        f"{value!r}."
                    )
                target.append(0.0)
                direction.append(1.0 if value == "up" else -1.0)
            else:
                if not np.isfinite(value) or value < 0:
                    raise ValueError(f"genes[{gene!r}] must be non-negative, got {value!r}.")
                target.append(float(value))
                direction.append(0.0)
        device = self.model.device
        idx = torch.as_tensor(var_names.get_indexer(list(genes)), device=device)
        return idx, torch.tensor(target, device=device), torch.tensor(direction, device=device)

    def _target_codes(self, src: dict, target: dict[int, int]):
        """The source cells' condition codes with the target's set, and their batch index."""
        cond_tgt = src["cond"].clone()
        for j, code in target.items():
            cond_tgt[:, j] = code
        batch_col = Conditions(self.model.conditions_).batch_column
        batch_tgt = cond_tgt[:, batch_col] if batch_col in target else src["batch_index"][:, 0]
        return cond_tgt, batch_tgt

    # ------------------------------------------------------------------ data in
    # ------------------------------------------------------------------ latent math
    def _latent_shift(
        self,
        target: dict[int, int],
        cond_src: torch.Tensor,
        reference: AnnData | None,
        batch_size: int,
    ) -> torch.Tensor:
        """scGen-style shift per source cell: mean latent (target value) - mean (source value).

        The difference is taken within each stratum of the other condition columns (e.g. within
        each cell type) that has reference cells with both values, and averaged over those strata
        with equal weights, as scGen balances cell types: a pooled difference would also carry
        the difference in cell-type composition between the two groups (e.g. a cell type whose
        target cells are missing). Without such a stratum the pooled difference is used.
        """
        model = self.model
        if reference is None:
            ref = model.encode(batch_size=batch_size)  # the training cells
            ref_z, ref_cond = ref["z"], ref["cond"]
        else:
            ref = model.encode(reference, batch_size, name="reference")
            ref_z, ref_cond = ref["z"], ref["cond"]
        columns = model.conditions_["columns"]
        delta = torch.zeros(len(cond_src), ref_z.shape[1], device=model.device)
        others = [k for k in range(ref_cond.shape[1]) if k not in target]
        if others and self._balance_shift:
            _, stratum = torch.unique(ref_cond[:, others], dim=0, return_inverse=True)
        else:
            stratum = torch.zeros(len(ref_cond), dtype=torch.long, device=model.device)
        n_strata = int(stratum.max()) + 1
        for j, code in target.items():
            n_cats = len(columns[j]["categories"])
            group = stratum * n_cats + ref_cond[:, j]
            counts = torch.bincount(group, minlength=n_strata * n_cats).float()
            sums = torch.zeros(n_strata * n_cats, ref_z.shape[1], device=model.device)
            sums.index_add_(0, group, ref_z)
            means = (sums / counts.clamp_min(1)[:, None]).view(n_strata, n_cats, -1)
            counts = counts.view(n_strata, n_cats)
            if counts[:, code].sum() == 0:
                raise ValueError(
                    f"No reference cells with {columns[j]['key']}="
                    f"{columns[j]['categories'][code]!r} to compute the latent shift from."
                )
            for value in torch.unique(cond_src[:, j]).tolist():
                if counts[:, value].sum() == 0:
                    raise ValueError(
                        f"No reference cells with {columns[j]['key']}="
                        f"{columns[j]['categories'][value]!r} (a source value)."
                    )
                both = (counts[:, code] > 0) & (counts[:, value] > 0)
                if both.any():
                    d = (means[both, code] - means[both, value]).mean(dim=0)
                else:  # no stratum holds both values: fall back to the pooled difference
                    pooled = (means * counts[..., None]).sum(dim=0) / counts.sum(0)[:, None]
                    d = pooled[code] - pooled[value]
                delta[cond_src[:, j] == value] += d
        return delta

    def _sample(
        self,
        x0,
        cond_src,
        cond_tgt,
        changed,
        decoder,
        method,
        plan,
        guidance,
        genes,
        seed,
        step_callback,
        batch_size,
        progress_bar,
    ) -> tuple[torch.Tensor, int]:
        """Run the shared samplers from the source latents; standardised latents out."""
        module = self.model.module
        sde = module.sde
        device = x0.device
        guidance_scale, guidance_interval, guidance_reference = guidance
        gene_idx, gene_target, gene_dir, gene_scale = genes
        lib, batch_index, cat_cond, cont = decoder
        cat_cols = Conditions(self.model.conditions_).covariate_columns
        passes = 2 if method == "ode" else 1
        run = ChunkedRun(
            len(x0),
            batch_size,
            passes * plan.n_steps,
            f"Editing ({method}, {plan.sampler})",
            progress_bar,
            device,
        )
        out = []
        for i, rows in enumerate(run):
            generator = chunk_generator(seed, i, device)  # as generate: one stream per chunk
            c_tgt = cond_tgt[rows]
            if guidance_reference == "source":
                c_ref = cond_src[rows]
            else:
                c_ref = module.null_condition(c_tgt, changed)
            eps_tgt = classifier_free_guidance(
                module.eps, c_tgt, c_ref, guidance_scale, guidance_interval
            )
            if gene_idx is not None and gene_scale != 0:
                eps_tgt = gene_guidance(
                    eps_tgt,
                    sde,
                    _expression_fn(
                        module,
                        gene_idx,
                        lib[rows],
                        batch_index[rows],
                        cat_cond[rows, :1],
                        cat_cond[rows][:, cat_cols] if cat_cols else None,
                        None if cont is None else cont[rows],
                    ),
                    gene_target,
                    gene_dir,
                    gene_scale,
                )
            x = x0[rows]
            if method == "ode":
                c_src = cond_src[rows]
                eps_src = classifier_free_guidance(module.eps, c_src, c_src, 1.0)
                x = plan.invert(eps_src, sde, x, callback=run.callback())
            else:
                noise = torch.randn(x.shape, device=device, dtype=x.dtype, generator=generator)
                x = sde.perturb(x, plan.ts[:1].expand(len(x)), noise)
            callback = run.callback(step_callback)
            x = plan.sample(eps_tgt, sde, x, generator=generator, callback=callback)
            out.append(x)
        nfe = plan.network_evaluations(guided=guidance_scale != 1.0, inverted=method == "ode")
        return torch.cat(out), nfe

    # ------------------------------------------------------------------ data out
    def _decoder_table(self, cond, batch_index, log_library, cont, rep) -> pd.DataFrame:
        """Decoder inputs in the layout of ``SCGM._decode``: target codes, source library."""
        model = self.model
        cond_np = cond.cpu().numpy()
        table = pd.DataFrame({code_column(j): cond_np[:, j] for j in range(cond_np.shape[1])})
        table[LOG_LIBRARY] = log_library[:, 0].cpu().numpy()
        table[BATCH_INDEX] = batch_index.cpu().numpy()
        if cont is not None:
            cont_np = cont.cpu().numpy()[rep]
            for k, key in enumerate(model.conditions_["cont_keys"]):
                table[continuous_column(key)] = cont_np[:, k]
        return table

    def _decode(self, z, table: pd.DataFrame, seed: int | None, batch_size: int):
        """NB counts of edited latents, through the model's public decoder, from the codes of
        ``table`` given back as names."""
        conditions = Conditions(self.model.conditions_)

        def names(categories, codes):
            return np.asarray(categories, dtype=object)[codes.to_numpy()]

        columns = conditions.columns
        covariates = {
            columns[j]["key"]: names(columns[j]["categories"], table[code_column(j)])
            for j in conditions.covariate_columns
        }
        for key in conditions.cont_keys:
            if continuous_column(key) in table:
                covariates[key] = table[continuous_column(key)].to_numpy()
        return self.model.decode_latent(
            z,
            cell_type=names(columns[0]["categories"], table[code_column(0)]),
            library_size=np.exp(table[LOG_LIBRARY].to_numpy()),
            batch=names(conditions.batch_categories, table[BATCH_INDEX]),
            covariates=covariates,
            seed=seed,
            batch_size=batch_size,
        )

    def _output(self, adata, X, rep, n_samples, target, table, z_src, z_edit) -> AnnData:
        columns = self.model.conditions_["columns"]
        obs = adata.obs.iloc[rep].copy()
        obs["source_cell"] = adata.obs_names[rep].to_numpy()
        if n_samples > 1:
            obs["edit_sample"] = np.tile(np.arange(n_samples), adata.n_obs)
            obs.index = [
                f"{c}-{k}" for c, k in zip(obs["source_cell"], obs["edit_sample"], strict=True)
            ]
        for j in target:
            key, cats = columns[j]["key"], columns[j]["categories"]
            obs[f"source_{key}"] = adata.obs[key].to_numpy()[rep]
            codes = table[code_column(j)].to_numpy()
            obs[key] = pd.Categorical.from_codes(codes, categories=cats)
        obs["library_size"] = np.exp(table[LOG_LIBRARY].to_numpy()).round()
        # per-cell count summaries of the source describe the source's counts: recompute them
        totals, detected = np.asarray(X.sum(1)).ravel(), np.asarray((X > 0).sum(1)).ravel()
        for key, values in (("n_counts", totals), ("total_counts", totals)):
            if key in obs:
                obs[key] = values.astype(obs[key].dtype, copy=False)
        for key in ("n_genes", "n_genes_by_counts"):
            if key in obs:
                obs[key] = detected.astype(obs[key].dtype, copy=False)
        out = AnnData(X=X, obs=obs, var=pd.DataFrame(index=self.model.var_names_.copy()))
        out.obsm[SOURCE_KEY] = z_src.cpu().numpy()
        out.obsm[EDITED_KEY] = z_edit.cpu().numpy()
        return out


def _guidance_record(scale, interval, reference) -> dict:
    """The guidance settings as plain values for ``uns``."""
    return {
        "guidance_scale": float(scale),
        "guidance_interval": "none" if interval is None else [float(v) for v in interval],
        "guidance_reference": reference,
    }


def _genes_record(genes, scale) -> dict:
    """The gene-level constraints as plain values for ``uns``."""
    return {
        "genes": {k: (v if isinstance(v, str) else float(v)) for k, v in (genes or {}).items()},
        "gene_guidance_scale": float(scale),
    }


def _expression_fn(module, gene_idx, lib, batch_index, labels, cat_covs, cont_covs):
    """Differentiable decoded mean counts of the guided genes at standardised latents."""

    def fn(x0: torch.Tensor) -> torch.Tensor:
        px = module.decode(module.unstandardize(x0), lib, batch_index, labels, cat_covs, cont_covs)
        return px.scale[:, gene_idx] * torch.exp(lib)

    return fn
