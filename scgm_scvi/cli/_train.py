"""``scgm-scvi train``: fit SCGM on the counts of an ``.h5ad`` (or ``.h5mu``) file."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from ._common import (
    CLIError,
    HelpFormatter,
    add_overwrite_option,
    add_runtime_options,
    check_counts,
    check_keys,
    device_kwargs,
    log,
    non_negative_int,
    positive_int,
    prepare_out_dir,
    quiet_warnings,
    read_cells,
    rna_view,
    setup_runtime,
    show_progress,
    user_error,
)

#: written next to the model: what was trained on what, for ``generate`` / ``edit`` and users
SUMMARY_FILE = "scgm_train.json"
#: ``SCGM(latent_scaling=..., score_baseline=...)`` options, spelled out so that ``--help``
#: does not import torch
LATENT_SCALINGS = ("per_dim", "global")
SCORE_BASELINES = ("gaussian", "none")
#: ``--norm``: the VAE's normalisation layers
NORMS = ("batch", "layer")


def add_parser(sub) -> None:
    """Register ``train``."""
    p = sub.add_parser(
        "train",
        formatter_class=HelpFormatter,
        help="train SCGM on an .h5ad file of raw counts and save the model directory",
        description=(
            "Train SCGM (stage 1: scVI's NB-VAE; stage 2: the conditional latent score model) on "
            "the raw counts of INPUT and save the model to --out, a directory that "
            "'scgm-scvi generate' and 'scgm-scvi edit' read (and SCGM.load in Python). "
            "The training data is not saved with the model."
        ),
    )
    p.add_argument(
        "input",
        metavar="INPUT",
        type=Path,
        help="raw counts: an .h5ad file (or .h5mu, see --modality)",
    )
    p.add_argument("--out", required=True, type=Path, help="model directory to write")
    data = p.add_argument_group("data (keys are columns of obs)")
    data.add_argument(
        "--labels-key",
        default=None,
        help="cell-type column; generation and editing are conditioned on it (recommended)",
    )
    data.add_argument("--batch-key", default=None, help="batch column (e.g. sample or donor)")
    data.add_argument(
        "--covariate",
        "--categorical-covariate",
        dest="categorical_covariates",
        action="append",
        default=[],
        metavar="KEY",
        help=(
            "categorical covariate column to condition on, e.g. a perturbation or condition "
            "that 'edit --target KEY=VALUE' can change; repeat for several"
        ),
    )
    data.add_argument(
        "--continuous-covariate",
        dest="continuous_covariates",
        action="append",
        default=[],
        metavar="KEY",
        help="numerical covariate column given to the decoder (e.g. percent_mito); repeatable",
    )
    data.add_argument(
        "--layer",
        default=None,
        help="layer with the raw counts (default: X); normalised or log data is refused",
    )
    data.add_argument(
        "--modality",
        default=None,
        help="for .h5mu input: the RNA modality (default 'rna', or the only one); obs keys are "
        "read from the MuData's obs, else from the modality's",
    )
    _add_training_options(p)
    add_runtime_options(p)
    add_overwrite_option(p, "non-empty --out directory")
    p.set_defaults(func=run)


def _add_training_options(p) -> None:
    """Options of the two training stages and of the networks."""
    fit = p.add_argument_group("training")
    fit.add_argument(
        "--max-epochs",
        type=positive_int,
        default=None,
        help="VAE epochs (default: scVI's heuristic, 400 for up to 20,000 cells, fewer above)",
    )
    fit.add_argument(
        "--diffusion-max-epochs",
        type=positive_int,
        default=None,
        help="score-network epochs (default: about 4,000 steps, between 1 and 2,000 epochs)",
    )
    fit.add_argument(
        "--batch-size", type=positive_int, default=128, help="VAE minibatch (default 128)"
    )
    fit.add_argument(
        "--diffusion-batch-size",
        type=positive_int,
        default=128,  # SCGM.train_diffusion's default (a test checks they agree)
        help="score-network minibatch (default 128)",
    )
    fit.add_argument(
        "--kl-warmup",
        type=positive_int,
        default=None,
        help="epochs over which the VAE's KL weight rises to 1 (default: scVI's 400); an "
        "eighth of --max-epochs helped editing and hurt generation (docs: Benchmarks)",
    )
    fit.add_argument(
        "--early-stopping",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="stop the VAE when its validation ELBO stalls (default: off, as in scVI: train "
        "for all --max-epochs)",
    )
    net = p.add_argument_group("networks")
    net.add_argument("--n-latent", type=positive_int, default=256, help="latent size (256)")
    net.add_argument("--n-hidden", type=positive_int, default=128, help="VAE width (128)")
    net.add_argument("--n-layers", type=positive_int, default=1, help="VAE layers (1)")
    net.add_argument(
        "--norm",
        choices=NORMS,
        default="batch",
        help="normalisation in the VAE: scVI's batch norm (default) or layer norm",
    )
    net.add_argument("--score-width", type=positive_int, default=256, help="score width (256)")
    net.add_argument(
        "--score-blocks", type=non_negative_int, default=4, help="score residual blocks (4)"
    )
    net.add_argument(
        "--latent-scaling",
        choices=LATENT_SCALINGS,
        default="global",
        help="scale of the latent before the SDE: all dimensions by one factor (global, "
        "default; keeps dimensions the VAE barely uses small) or each to unit std (per_dim)",
    )
    net.add_argument(
        "--score-baseline",
        choices=SCORE_BASELINES,
        default="gaussian",
        help="what the score network corrects: the exact score of a Gaussian per cell type "
        "(gaussian) or of N(0, I) (none: plain velocity prediction)",
    )


def _locate_keys(mdata, modality: str, keys: dict[str, list[str]]) -> dict[str, str]:
    """``setup_mudata``'s ``modalities``: each key from ``mdata.obs``, else the modality's."""
    modalities = {"rna_layer": modality}
    for arg, names in keys.items():
        in_mod = [k for k in names if k not in mdata.obs and k in mdata.mod[modality].obs]
        if in_mod and len(in_mod) != len(names):
            raise CLIError(
                f"the {arg} {names} are split between the MuData's obs and {modality!r}'s obs; "
                "put them in one place"
            )
        if in_mod:
            modalities[arg] = modality
    return modalities


def run(args: argparse.Namespace) -> int:
    """Run ``scgm-scvi train``."""
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise CLIError(
            f"--out {str(out)!r} is not empty; pass --overwrite or choose another directory"
        )
    data, modality = read_cells(args.input, "INPUT", args.modality)
    cells = rna_view(data, modality)
    _check_input(cells, args)
    setup_runtime(args)
    setup = {
        "labels_key": args.labels_key,
        "batch_key": args.batch_key,
        "categorical_covariate_keys": args.categorical_covariates or None,
        "continuous_covariate_keys": args.continuous_covariates or None,
    }
    model = _new_model(data, modality, setup, args)
    n_cells, n_genes = cells.n_obs, cells.n_vars
    del cells
    log(f"{n_cells} cells x {n_genes} genes from {args.input}")
    epochs, seconds = _fit(model, args)

    prepare_out_dir(out, args.overwrite)
    model.save(str(out), overwrite=True, save_anndata=False)
    columns = model.conditions_["columns"]
    summary = {
        "input": str(args.input),
        "modality": modality,
        "n_cells": n_cells,
        "n_genes": n_genes,
        "setup": {"layer": args.layer, **setup},
        "conditions": {c["key"]: c["categories"] for c in columns if c.get("registered", True)},
        **epochs,
        "vae": {"n_hidden": args.n_hidden, "n_layers": args.n_layers, "norm": args.norm},
        "diffusion_batch_size": args.diffusion_batch_size,
        "latent_scaling": args.latent_scaling,
        "score_baseline": args.score_baseline,
        "train_seconds": round(seconds, 1),
        "seed": args.seed,
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    log(f"wrote the model to {out}/ ({seconds:.0f} s of training)")
    return 0


def _check_input(cells, args: argparse.Namespace) -> None:
    """The keys named on the command line exist and the matrix holds enough raw counts."""
    option_of = {args.labels_key: "--labels-key", args.batch_key: "--batch-key"}
    option_of.update({k: "--covariate" for k in args.categorical_covariates})
    option_of.update({k: "--continuous-covariate" for k in args.continuous_covariates})
    keys = [args.labels_key, args.batch_key, *args.categorical_covariates]
    check_keys(cells, keys + args.continuous_covariates, option_of, "INPUT")
    check_counts(cells, args.layer, "INPUT")
    if cells.n_obs < 10:
        raise CLIError(f"INPUT has {cells.n_obs} cells; SCGM needs at least 10 to train")
    if args.labels_key is None:
        log("no --labels-key: generation cannot be conditioned on cell type")


def _new_model(data, modality, setup: dict, args: argparse.Namespace):
    """Register the data (AnnData, or a MuData's modality) and build the model."""
    import scgm_scvi
    from scgm_scvi.model._constants import NORM_KWARGS

    try:
        with quiet_warnings():
            if modality is None:
                scgm_scvi.SCGM.setup_anndata(data, layer=args.layer, **setup)
            else:
                names = {k: [v] if isinstance(v, str) else list(v or []) for k, v in setup.items()}
                modalities = _locate_keys(data, modality, names)
                scgm_scvi.SCGM.setup_mudata(
                    data, rna_layer=args.layer, modalities=modalities, **setup
                )
            return scgm_scvi.SCGM(
                data,
                n_latent=args.n_latent,
                n_hidden=args.n_hidden,
                n_layers=args.n_layers,
                **NORM_KWARGS[args.norm],
                score_width=args.score_width,
                score_blocks=args.score_blocks,
                latent_scaling=args.latent_scaling,
                score_baseline=args.score_baseline,
            )
    except (ValueError, KeyError) as exc:
        raise user_error(exc) from None


def _fit(model, args: argparse.Namespace) -> tuple[dict, float]:
    """Train both stages with the command line's settings; the epochs run and the seconds."""
    fit = {**device_kwargs(args), "enable_progress_bar": show_progress(args)}
    t0 = time.perf_counter()
    log("training stage 1 (VAE)")
    # Lightning draws its bars on stdout; tools keep stdout for results, bars on stderr
    with quiet_warnings(), contextlib.redirect_stdout(sys.stderr):
        model.train_vae(
            max_epochs=args.max_epochs,
            batch_size=args.batch_size,
            early_stopping=args.early_stopping,
            plan_kwargs=None if args.kl_warmup is None else {"n_epochs_kl_warmup": args.kl_warmup},
            **fit,
        )
    t_vae = time.perf_counter() - t0
    kl_warmup = model.trainer.lightning_module.n_epochs_kl_warmup  # scVI's default if not given
    vae_epochs = len(model.history["train_loss"]) if model.history else 0
    log(f"VAE done in {t_vae:.0f} s ({vae_epochs} epochs)")
    log("training stage 2 (score network)")
    with quiet_warnings(), contextlib.redirect_stdout(sys.stderr):
        model.train_diffusion(
            max_epochs=args.diffusion_max_epochs, batch_size=args.diffusion_batch_size, **fit
        )
    t_all = time.perf_counter() - t0
    n_diff = len(model.diffusion_history_.get("train_loss", []))
    log(f"score network done in {t_all - t_vae:.0f} s ({n_diff} epochs)")
    epochs = {"vae_epochs": vae_epochs, "kl_warmup_epochs": kl_warmup, "diffusion_epochs": n_diff}
    return epochs, t_all
