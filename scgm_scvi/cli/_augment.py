"""``scgm-scvi augment``: real cells plus generated cells of the rare cell types."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ._common import (
    CLIError,
    HelpFormatter,
    add_allow_pickle_option,
    add_overwrite_option,
    add_runtime_options,
    check_out_file,
    key_value,
    load_model,
    log,
    match_category,
    positive_int,
    quiet_warnings,
    read_cells,
    rna_view,
    setup_runtime,
    show_progress,
    user_error,
    write_h5ad,
)


def add_parser(sub) -> None:
    """Register ``augment``."""
    p = sub.add_parser(
        "augment",
        formatter_class=HelpFormatter,
        help="add generated cells of the rare cell types to real cells",
        description=(
            "Write the real cells of INPUT plus generated cells of every cell type with fewer "
            "than --min-cells cells (default: the median cell-type size), e.g. to train a "
            "cell-type classifier that sees enough rare cells. obs['synthetic'] marks the "
            "generated cells; counts in X, the model's genes."
        ),
        epilog=(
            "examples:\n"
            "  scgm-scvi augment model/ train.h5ad --out augmented.h5ad\n"
            "  scgm-scvi augment model/ train.h5ad --out aug.h5ad --per-type DC=100"
        ),
    )
    p.add_argument("model", metavar="MODEL", type=Path, help="model directory ('scgm-scvi train')")
    p.add_argument("input", metavar="INPUT", type=Path, help="real cells (.h5ad, raw counts)")
    p.add_argument("--out", required=True, type=Path, help="output .h5ad file")
    p.add_argument(
        "--min-cells",
        type=positive_int,
        default=None,
        help="cells per type after augmenting (default: the median cell-type size)",
    )
    p.add_argument(
        "--per-type",
        action="append",
        default=[],
        type=key_value,
        metavar="NAME=COUNT",
        help="generate COUNT cells of cell type NAME (repeatable; replaces --min-cells)",
    )
    p.add_argument("--synthetic-key", default="synthetic", help="obs column of the flag")
    add_runtime_options(p)
    add_allow_pickle_option(p)
    add_overwrite_option(p, "--out file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``scgm-scvi augment``."""
    check_out_file(args.out, args.overwrite, (".h5ad",))
    data, modality = read_cells(args.input, "INPUT")
    cells = rna_view(data, modality)
    setup_runtime(args)
    model = load_model(args.model, args.accelerator, args.allow_pickle)
    label = model.conditions_["columns"][0]
    if not label["registered"]:
        raise CLIError("the model was trained without --labels-key: no cell types to augment")
    per_type = None
    if args.per_type:
        per_type = {}
        for name, count in args.per_type:
            try:
                n = int(count)
            except ValueError:
                raise CLIError(f"--per-type {name}={count}: COUNT must be an integer") from None
            key = match_category(name, label["categories"], "--per-type", "cell type")
            per_type[key] = n
    t0 = time.perf_counter()
    try:
        with quiet_warnings():
            out = model.augment(
                cells,
                min_cells=args.min_cells,
                per_type=per_type,
                seed=args.seed,
                synthetic_key=args.synthetic_key,
                progress_bar=show_progress(args),
            )
    except (ValueError, KeyError) as exc:
        raise user_error(exc) from None
    write_h5ad(out, args.out)
    n_new = int(out.obs[args.synthetic_key].sum())
    log(
        f"wrote {out.n_obs - n_new} real and {n_new} generated cells to {args.out} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return 0
