"""``scgm-scvi evaluate``: score generated (or edited) cells against real cells."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from ._common import (
    CLIError,
    HelpFormatter,
    add_overwrite_option,
    check_counts,
    check_keys,
    check_out_file,
    log,
    non_negative_int,
    positive_int,
    quiet_warnings,
    read_cells,
    rna_view,
    user_error,
)

FAMILIES = ("g1", "fred", "g2", "stats", "label_agreement", "novelty")
DEFAULT_GROUPBY = "cell_type"
#: the metrics printed to the terminal (the --out file holds all of them)
SUMMARY_METRICS = (
    "w2",
    "mmd_rbf",
    "rf_auc",
    "knn_auc",
    "pcc",
    "label_agreement",
    "novelty_median_ratio",
    "r2_mean_top_degs",
    "pearson_delta_top_degs",
    "e_distance_top_degs",
    "deg_overlap_top100",
    "discriminator_auc",
)


def add_parser(sub) -> None:
    """Register ``evaluate``."""
    p = sub.add_parser(
        "evaluate",
        formatter_class=HelpFormatter,
        help="compare generated (or edited) cells with real cells; write a metrics table",
        description=(
            "Score GENERATED against REAL cells with scgm_scvi.metrics.evaluate (distribution "
            "distances in a PCA of the real cells, gene-mean correlations, discriminators, "
            "count statistics), per group and overall, and write a table: tidy CSV (group, "
            "metric, value, protocol) for an --out ending in .csv, a group x metric table for "
            ".md. With --control, score edited cells instead (scgm_scvi.metrics.evaluate_edit: "
            "REAL = real target-condition cells, GENERATED = edited cells, CONTROL = the cells "
            "that were edited). Both inputs hold raw counts; genes are matched by name."
        ),
    )
    p.add_argument(
        "real", metavar="REAL", type=Path, help="real cells (.h5ad), e.g. held-out test cells"
    )
    p.add_argument(
        "generated", metavar="GENERATED", type=Path, help="generated or edited cells (.h5ad)"
    )
    p.add_argument("--out", required=True, type=Path, help="metrics file: .csv or .md")
    p.add_argument(
        "--groupby",
        default=None,
        help=f"obs column to evaluate per group (default: {DEFAULT_GROUPBY!r} if REAL has it, "
        "else all cells as one group; with --control: no grouping); 'none' for no grouping",
    )
    p.add_argument(
        "--generated-groupby",
        default=None,
        help="group column of GENERATED if it differs from --groupby",
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        choices=FAMILIES,
        default=None,
        metavar="FAMILY",
        help=f"metric families, from {', '.join(FAMILIES)} (default: g1 fred g2 stats, plus "
        "label_agreement and novelty with --train)",
    )
    p.add_argument(
        "--train",
        type=Path,
        default=None,
        help="the real training cells (.h5ad): enables label_agreement and novelty",
    )
    _add_metric_options(p)
    add_overwrite_option(p, "--out file")
    p.set_defaults(func=run)


def _add_metric_options(p) -> None:
    """Which metrics, on which cells, with which settings."""
    p.add_argument(
        "--control",
        type=Path,
        default=None,
        help="evaluate an edit: the real source cells that were edited (.h5ad; default with "
        "--control-select: the REAL file)",
    )
    p.add_argument(
        "--select",
        type=_selection,
        default=None,
        metavar="KEY=VALUE[,VALUE]",
        help="use only the REAL cells whose obs column KEY holds one of the values, e.g. "
        "condition=stim",
    )
    p.add_argument(
        "--control-select",
        type=_selection,
        default=None,
        metavar="KEY=VALUE[,VALUE]",
        help="evaluate an edit: use only these cells of --control (or of REAL when --control "
        "is not given) as the source cells, e.g. condition=ctrl",
    )
    p.add_argument(
        "--n-degs", type=positive_int, default=100, help="with --control: top DEGs (100)"
    )
    p.add_argument("--layer", default=None, help="layer of REAL (and --train) with the counts")
    p.add_argument(
        "--generated-layer", default=None, help="layer of GENERATED with the counts (default X)"
    )
    p.add_argument(
        "--n-comps", type=positive_int, default=30, help="PCs of the reference embedding (30)"
    )
    p.add_argument(
        "--min-cells",
        type=positive_int,
        default=10,
        help="smallest group evaluated, on both sides (10)",
    )
    p.add_argument(
        "--n-estimators",
        type=positive_int,
        default=1000,
        help="trees of the g2 random-forest discriminator (1000)",
    )
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of every random step (0)"
    )


def _selection(text: str) -> tuple[str, list[str]]:
    """Argparse type: ``KEY=VALUE[,VALUE...]``."""
    key, sep, values = text.partition("=")
    picked = [v for v in values.split(",") if v]
    if not sep or not key or not picked:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE[,VALUE], got {text!r}")
    return key, picked


def _select(adata, selection: tuple[str, list[str]] | None, option: str, name: str):
    """The cells of ``adata`` whose obs column holds one of the selected values."""
    if selection is None:
        return adata
    key, values = selection
    check_keys(adata, [key], {key: option}, name)
    column = adata.obs[key].astype(str)
    absent = [v for v in values if v not in set(column)]
    if absent:
        present = sorted(set(column))
        raise CLIError(
            f"{option} {key}=...: {absent} not in {name}.obs[{key!r}] (values: {present[:20]})"
        )
    return adata[column.isin(values).to_numpy()]


def _read(path: Path, option: str, layer: str | None):
    data, modality = read_cells(path, option)
    adata = rna_view(data, modality)
    check_counts(adata, layer, option)
    return adata


def summary(table: pd.DataFrame) -> str:
    """The headline metrics (:data:`SUMMARY_METRICS`) of a tidy frame as a short table."""
    picked = table[table["metric"].isin(SUMMARY_METRICS)]
    if "group" in picked.columns:
        groups = [g for g in ("all", "mean") if g in set(picked["group"])]
        if groups:
            picked = picked[picked["group"].isin(groups)]
        wide = picked.pivot_table(index="group", columns="metric", values="value", sort=False)
        wide = wide[[m for m in SUMMARY_METRICS if m in wide.columns]].reset_index()
        return wide.to_markdown(index=False, floatfmt=".4g")
    return picked[["metric", "value"]].to_markdown(index=False, floatfmt=".4g")


def markdown(table: pd.DataFrame) -> str:
    """A tidy metrics frame as a markdown table: groups as rows, metrics as columns."""
    if "group" in table.columns:
        wide = table.pivot_table(index="group", columns="metric", values="value", sort=False)
    else:
        wide = table.set_index("metric")[["value"]]
    wide = wide.reset_index()
    return wide.to_markdown(index=False, floatfmt=".4g")


def run(args: argparse.Namespace) -> int:
    """Run ``scgm-scvi evaluate``."""
    check_out_file(args.out, args.overwrite, (".csv", ".md"))
    real = _select(_read(args.real, "REAL", args.layer), args.select, "--select", "REAL")
    if args.control_select is not None and args.control is None:
        args.control = args.real
    generated = _read(args.generated, "GENERATED", args.generated_layer)
    groupby = args.groupby
    if groupby is None and args.control is None:
        groupby = DEFAULT_GROUPBY if DEFAULT_GROUPBY in real.obs else None
    if groupby is not None and groupby.lower() == "none":
        groupby = None
    if groupby is not None:
        check_keys(real, [groupby], {groupby: "--groupby"}, "REAL")
        gen_key = args.generated_groupby or groupby
        option = "--generated-groupby" if args.generated_groupby else "--groupby"
        check_keys(generated, [gen_key], {gen_key: option}, "GENERATED")
    t0 = time.perf_counter()
    from scgm_scvi import metrics

    try:
        with quiet_warnings():
            if args.control is not None:
                control = _select(
                    _read(args.control, "--control", args.layer),
                    args.control_select,
                    "--control-select",
                    "--control",
                )
                table = _evaluate_edit(real, generated, control, groupby, args)
            else:
                train = None if args.train is None else _read(args.train, "--train", args.layer)
                table = metrics.evaluate(
                    real,
                    generated,
                    groupby=groupby,
                    train=train,
                    metrics=args.metrics,
                    generated_groupby=args.generated_groupby,
                    layer=args.layer,
                    generated_layer=args.generated_layer,
                    n_comps=args.n_comps,
                    n_estimators=args.n_estimators,
                    min_cells=args.min_cells,
                    seed=args.seed,
                )
    except (ValueError, KeyError) as exc:
        raise user_error(exc) from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(table)
    if args.out.suffix.lower() == ".csv":
        table.to_csv(args.out, index=False)
    else:
        args.out.write_text(text + "\n")
    print(summary(table))
    n_metrics = table["metric"].nunique()
    log(f"wrote all {n_metrics} metrics to {args.out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _evaluate_edit(real, edited, control, groupby, args) -> pd.DataFrame:
    from scgm_scvi import metrics

    kwargs = {
        "n_degs": args.n_degs,
        "layer": args.layer,
        "edited_layer": args.generated_layer,
        "seed": args.seed,
    }
    if groupby is None:
        return metrics.evaluate_edit(edited, real, control, **kwargs)
    check_keys(control, [groupby], {groupby: "--groupby"}, "--control")
    gen_key = args.generated_groupby or groupby
    rows = []
    for group in pd.unique(real.obs[groupby].astype(str)):
        pick = {
            name: a[(a.obs[key].astype(str) == group).to_numpy()]
            for name, a, key in (
                ("real", real, groupby),
                ("edited", edited, gen_key),
                ("control", control, groupby),
            )
        }
        if min(a.n_obs for a in pick.values()) < args.min_cells:
            continue
        frame = metrics.evaluate_edit(pick["edited"], pick["real"], pick["control"], **kwargs)
        frame.insert(0, "group", group)
        rows.append(frame)
    if not rows:
        raise CLIError(
            f"--groupby {groupby}: no group has --min-cells {args.min_cells} cells in REAL, "
            "GENERATED and --control"
        )
    return pd.concat(rows, ignore_index=True)
