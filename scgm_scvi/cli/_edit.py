"""``scgm-scvi edit``: move real cells toward another condition with a trained model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from scgm_scvi._names import DEFAULT_SAMPLER, ODE_SAMPLERS, SAMPLER_NAMES

from ._common import (
    CLIError,
    HelpFormatter,
    add_allow_pickle_option,
    add_guidance_options,
    add_overwrite_option,
    add_runtime_options,
    check_counts,
    check_keys,
    check_out_file,
    key_value,
    load_model,
    log,
    non_negative_int,
    positive_int,
    quiet_warnings,
    read_cells,
    resolve_covariates,
    rna_view,
    setup_runtime,
    show_progress,
    unit_interval,
    user_error,
    write_h5ad,
)

SAMPLERS = SAMPLER_NAMES


def add_parser(sub) -> None:
    """Register ``edit``."""
    p = sub.add_parser(
        "edit",
        help="edit real cells toward a target condition (SDEdit) and write them as .h5ad",
        description=(
            "Edit the cells of INPUT toward --target with a model written by 'scgm-scvi train' "
            "(SDEdit: encode, noise to --strength, denoise under the target condition) and "
            "write the edited cells (negative-binomial counts at each source cell's library "
            "size) to --out. obs keeps the source columns, sets the target columns and records "
            "source_<key> and source_cell."
        ),
        epilog=(
            "example:\n"
            "  scgm-scvi edit model/ kang.h5ad --select condition=ctrl "
            "--target condition=stim --strength 0.5 --out stim_pred.h5ad"
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "model", metavar="MODEL", type=Path, help="model directory written by 'scgm-scvi train'"
    )
    p.add_argument(
        "input",
        metavar="INPUT",
        type=Path,
        help="cells to edit: raw counts with the model's genes and its registered obs columns "
        "(.h5ad, or .h5mu with --modality)",
    )
    p.add_argument("--out", required=True, type=Path, help="output .h5ad file")
    p.add_argument(
        "--target",
        action="append",
        required=True,
        type=key_value,
        metavar="KEY=VALUE",
        help="registered obs column and the value to move the cells to, e.g. condition=stim or "
        "cell_type=B; repeat to change several columns",
    )
    p.add_argument(
        "--select",
        action="append",
        default=[],
        type=key_value,
        metavar="KEY=VALUE",
        help="edit only the cells with obs[KEY] == VALUE (repeat a key for any of several "
        "values; different keys must all match). Default: every cell of INPUT",
    )
    p.add_argument(
        "--modality",
        default=None,
        help="for .h5mu input: the RNA modality (default 'rna', or the only one)",
    )
    _add_editing_options(p)
    add_runtime_options(p)
    add_allow_pickle_option(p)
    add_overwrite_option(p, "--out file")
    p.set_defaults(func=run)


def _add_editing_options(p) -> None:
    """How the cells are edited."""
    how = p.add_argument_group("editing")
    how.add_argument(
        "--strength",
        type=unit_interval,
        default=0.5,
        help="how far into the diffusion the cells are pushed, in (0, 1]: small keeps them "
        "close to the source, large lets the model replace more of each cell (default 0.5)",
    )
    how.add_argument(
        "--method",
        choices=("sdedit", "ode", "latent_shift"),
        default="sdedit",
        help="sdedit: noise and denoise (default); ode: deterministic probability-flow ODE "
        "inversion (DDIB); latent_shift: scGen-style mean latent difference (baseline)",
    )
    how.add_argument(
        "--init",
        choices=("source", "latent_shift"),
        default="source",
        help="start sdedit / ode from the source latent (default) or from the latent-shifted one",
    )
    how.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="cells whose mean latents give the shift of latent_shift (default: all of INPUT, "
        "before --select)",
    )
    how.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=None,
        help=f"reverse-process sampler (default: {DEFAULT_SAMPLER} for sdedit, ode for ode)",
    )
    how.add_argument(
        "--n-steps",
        type=positive_int,
        default=None,
        help="steps from --strength down to 0 (default: the sampler's density x --strength)",
    )
    add_guidance_options(how, "the target")
    how.add_argument(
        "--n-samples", type=positive_int, default=1, help="edited cells per source cell (1)"
    )
    how.add_argument(
        "--batch-size", type=non_negative_int, default=1024, help="cells per chunk (1024)"
    )


def select_cells(adata, pairs, option: str = "--select"):
    """Rows of ``adata`` matching ``KEY=VALUE`` pairs (OR within a key, AND across keys)."""
    if not pairs:
        return adata
    wanted: dict[str, set[str]] = {}
    for key, value in pairs:
        wanted.setdefault(key, set()).add(value)
    check_keys(adata, list(wanted), {k: option for k in wanted}, "INPUT")
    mask = np.ones(adata.n_obs, dtype=bool)
    for key, values in wanted.items():
        column = adata.obs[key].astype(str).to_numpy()
        mask &= np.isin(column, list(values))
    if not mask.any():
        text = " and ".join(f"{k} in {sorted(v)}" for k, v in wanted.items())
        raise CLIError(f"{option}: no cell of INPUT has {text}")
    return adata[mask].copy()


def run(args: argparse.Namespace) -> int:
    """Run ``scgm-scvi edit``."""
    check_out_file(args.out, args.overwrite, (".h5ad",))
    if args.method == "ode" and args.sampler not in (None, *ODE_SAMPLERS):
        raise CLIError(f"--method ode needs --sampler {' or '.join(ODE_SAMPLERS)}")
    data, modality = read_cells(args.input, "INPUT", args.modality)
    cells = rna_view(data, modality)
    del data
    setup_runtime(args)
    model = load_model(args.model, args.accelerator, args.allow_pickle)
    target = resolve_covariates(model, args.target, "--target", allow_labels=True)

    setup = model.registry_["setup_args"]
    keys = [setup.get("labels_key"), setup.get("batch_key")]
    keys += list(setup.get("categorical_covariate_keys") or [])
    keys += list(setup.get("continuous_covariate_keys") or [])
    keys = [k for k in keys if k is not None]
    check_keys(cells, keys, {k: "the model's key" for k in keys}, "INPUT")
    layer = setup.get("layer", setup.get("rna_layer"))
    check_counts(cells, layer, "INPUT")
    reference = None
    if args.method == "latent_shift" or args.init == "latent_shift":
        if args.reference is not None:
            ref_data, ref_mod = read_cells(args.reference, "--reference", args.modality)
            reference = rna_view(ref_data, ref_mod)
            check_counts(reference, layer, "--reference")
        else:
            reference = cells
    source = select_cells(cells, args.select)
    if reference is not cells:
        del cells

    log(
        f"editing {source.n_obs} cells toward "
        + ", ".join(f"{k}={v}" for k, v in target.items())
        + f" ({args.method}, strength {args.strength})"
    )
    t0 = time.perf_counter()
    from scgm_scvi import SCGEditor

    try:
        with quiet_warnings():
            edited = SCGEditor(model).edit(
                source,
                target,
                strength=args.strength,
                method=args.method,
                sampler=args.sampler,
                n_steps=args.n_steps,
                guidance_scale=args.guidance_scale,
                guidance_interval=args.guidance_interval,
                n_samples=args.n_samples,
                seed=args.seed,
                reference=reference,
                init=args.init,
                batch_size=args.batch_size or 1024,
                progress_bar=show_progress(args),
            )
    except (ValueError, KeyError) as exc:
        raise user_error(exc) from None
    write_h5ad(edited, args.out)
    log(f"wrote {edited.n_obs} edited cells to {args.out} ({time.perf_counter() - t0:.1f} s)")
    return 0
