"""``scgm-scvi generate``: new cells from a trained model directory, written as ``.h5ad``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scgm_scvi._names import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLER_NAMES

from ._common import (
    CLIError,
    HelpFormatter,
    add_allow_pickle_option,
    add_guidance_options,
    add_overwrite_option,
    add_runtime_options,
    check_out_file,
    key_value,
    load_model,
    log,
    match_category,
    non_negative_int,
    positive_float,
    positive_int,
    quiet_warnings,
    resolve_covariates,
    setup_runtime,
    show_progress,
    user_error,
)

SAMPLERS = SAMPLER_NAMES
DEFAULT_N = 1000


def add_parser(sub) -> None:
    """Register ``generate``."""
    p = sub.add_parser(
        "generate",
        help="generate new cells of chosen types from a trained model directory",
        description=(
            "Sample new cells from a model written by 'scgm-scvi train': latents from the "
            "reverse diffusion process, decoded to negative-binomial counts. Writes an .h5ad "
            "with integer counts in X (CSR), the cell type and covariates in obs and the "
            "latents in obsm['X_scgm']."
        ),
        epilog=(
            "examples:\n"
            "  scgm-scvi generate model/ --out b.h5ad --n 500 --cell-type B\n"
            "  scgm-scvi generate model/ --out mix.h5ad --cell-type B=100 --cell-type NK=50\n"
            "  scgm-scvi generate model/ --out all.h5ad --n 2000   (training proportions)"
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "model", metavar="MODEL", type=Path, help="model directory written by 'scgm-scvi train'"
    )
    p.add_argument("--out", required=True, type=Path, help="output .h5ad file")
    _add_generation_options(p)
    add_runtime_options(p)
    add_allow_pickle_option(p)
    add_overwrite_option(p, "--out file")
    p.set_defaults(func=run)


def _add_generation_options(p) -> None:
    """Which cells, and how they are sampled."""
    what = p.add_argument_group("which cells")
    what.add_argument(
        "--n",
        type=positive_int,
        default=None,
        help=(
            f"number of cells (default {DEFAULT_N}; with NAME=COUNT cell types: their sum, and "
            "a different --n is an error)"
        ),
    )
    what.add_argument(
        "--cell-type",
        action="append",
        default=[],
        metavar="NAME[=COUNT]",
        help=(
            "cell type to generate; repeat for several. NAME alone splits --n evenly over the "
            "named types; NAME=COUNT sets each type's count. Default: all types in their "
            "training proportions"
        ),
    )
    what.add_argument(
        "--covariate",
        action="append",
        default=[],
        type=key_value,
        metavar="KEY=VALUE",
        help=(
            "fix the batch or a registered covariate for every cell, e.g. condition=stim "
            "(default: drawn from training cells of the same type); repeatable"
        ),
    )
    what.add_argument(
        "--library-size",
        type=positive_float,
        default=None,
        help="total counts per cell (default: from the library model, given each latent)",
    )
    how = p.add_argument_group("sampling")
    how.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=DEFAULT_SAMPLER,
        help=(
            "dpmpp_2m_sde: reverse SDE, SDE-DPM-Solver++(2M), 10 steps (default); dpmpp_2m: "
            "probability-flow ODE, DPM-Solver++(2M), 10 steps; ode: the same ODE, Heun, 25 "
            "steps; ode_euler: first order (DDIM-like); euler_maruyama: reverse SDE, "
            "Euler-Maruyama; pc: predictor-corrector"
        ),
    )
    how.add_argument(
        "--n-steps",
        type=positive_int,
        default=None,
        help="sampler steps (default: "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items())
        + ")",
    )
    add_guidance_options(how, "the cell type")
    how.add_argument(
        "--batch-size", type=non_negative_int, default=2048, help="cells per chunk (2048)"
    )
    how.add_argument(
        "--precision",
        choices=["32-true", "bf16-mixed"],
        default="32-true",
        help="bf16-mixed: the score network in bfloat16 autocast, faster on hardware with "
        "bfloat16 units (default 32-true)",
    )
    how.add_argument(
        "--posterior-noise",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add each cell type's mean posterior variance to the sampled latents before "
        "decoding (default: on for models whose score network learned posterior means)",
    )


def parse_cell_types(items: list[str], n: int | None) -> tuple[int | None, object]:
    """``(n, cell_type)`` for :meth:`~scgm_scvi.SCGM.generate` from ``--n`` / ``--cell-type``."""
    if not items:
        return (n or DEFAULT_N), None
    counted = ["=" in item for item in items]
    if any(counted) and not all(counted):
        raise CLIError("--cell-type: use either NAME or NAME=COUNT for every type, not both")
    if not all(counted):
        if len(set(items)) != len(items):
            raise CLIError("--cell-type: a cell type is named twice")
        return (n or DEFAULT_N), (items[0] if len(items) == 1 else list(items))
    sizes: dict[str, int] = {}
    for item in items:
        name, _, count = item.rpartition("=")
        try:
            value = int(count)
        except ValueError:
            raise CLIError(f"--cell-type {item!r}: COUNT must be an integer") from None
        if not name or value <= 0:
            raise CLIError(f"--cell-type {item!r}: expected NAME=COUNT with COUNT > 0")
        if name in sizes:
            raise CLIError(f"--cell-type: {name!r} is given twice")
        sizes[name] = value
    total = sum(sizes.values())
    if n is not None and n != total:
        raise CLIError(f"--n {n} does not match the {total} cells of the --cell-type counts")
    return None, sizes


def run(args: argparse.Namespace) -> int:
    """Run ``scgm-scvi generate``."""
    check_out_file(args.out, args.overwrite, (".h5ad",))
    n, cell_type = parse_cell_types(args.cell_type, args.n)
    setup_runtime(args)
    model = load_model(args.model, args.accelerator, args.allow_pickle)
    covariates = resolve_covariates(model, args.covariate, "--covariate")
    label = model.conditions_["columns"][0]
    if cell_type is not None:
        if not label["registered"]:
            raise CLIError("--cell-type: the model was trained without --labels-key")
        cats = label["categories"]
        if isinstance(cell_type, dict):
            cell_type = {
                match_category(k, cats, "--cell-type", "cell type"): v
                for k, v in cell_type.items()
            }
        elif isinstance(cell_type, list):
            cell_type = [match_category(k, cats, "--cell-type", "cell type") for k in cell_type]
        else:
            cell_type = match_category(cell_type, cats, "--cell-type", "cell type")
    total = n if cell_type is None or not isinstance(cell_type, dict) else sum(cell_type.values())
    log(f"generating {total} cells with the {args.sampler} sampler")
    t0 = time.perf_counter()
    try:
        with quiet_warnings():
            # straight to the file, chunk by chunk: memory does not grow with the cells
            model.generate(
                n=n,
                cell_type=cell_type,
                covariates=covariates or None,
                library_size=args.library_size,
                sampler=args.sampler,
                n_steps=args.n_steps,
                guidance_scale=args.guidance_scale,
                guidance_interval=args.guidance_interval,
                seed=args.seed,
                batch_size=args.batch_size or 2048,
                progress_bar=show_progress(args),
                out=args.out,
                overwrite=True,  # check_out_file has applied --overwrite
                precision=args.precision,
                posterior_noise=args.posterior_noise,
            )
    except (ValueError, KeyError) as exc:
        raise user_error(exc) from None
    log(
        f"wrote {total} cells x {len(model.var_names_)} genes to {args.out} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return 0
