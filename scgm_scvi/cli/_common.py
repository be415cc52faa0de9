"""Shared pieces of the subcommands: argument types, input checks, outputs, runtime settings."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

PROG = "scgm-scvi"


class CLIError(Exception):
    """Bad input: reported as one line on stderr with exit status 2."""


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions to the terminal; keeps texts with line breaks (examples) as written."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


# ---------------------------------------------------------------------------- argument types
def positive_int(text: str) -> int:
    """Argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """Argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """Argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def unit_interval(text: str) -> float:
    """Argparse type: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text}")
    return value


def add_guidance_options(group, target: str) -> None:
    """``--guidance-scale`` and ``--guidance-interval`` of ``generate`` and ``edit``."""
    group.add_argument(
        "--guidance-scale",
        type=float,
        default=1.0,
        help=f"classifier-free guidance weight on {target}: 1 = plain conditional model, > 1 "
        "pushes harder toward it (default 1)",
    )
    group.add_argument(
        "--guidance-interval",
        type=unit_interval,
        nargs=2,
        default=None,
        metavar=("T_LO", "T_HI"),
        help="guide only at these times of the reverse process (0 = data, 1 = noise), e.g. "
        "0.2 0.7 (default: at every time)",
    )


def key_value(text: str) -> tuple[str, str]:
    """Argparse type: ``KEY=VALUE`` (the value may itself contain ``=``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """``--seed``, ``--threads``, ``--accelerator`` and ``--progress`` of the model commands."""
    group = parser.add_argument_group("runtime")
    group.add_argument(
        "--seed", type=non_negative_int, default=0, help="random seed (default %(default)s)"
    )
    group.add_argument(
        "--threads",
        type=non_negative_int,
        default=1,
        help=(
            "torch CPU threads (default 1: on a shared or busy CPU more threads can be many "
            "times slower; 0 keeps torch's default)"
        ),
    )
    group.add_argument(
        "--accelerator",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="device to run on (default auto: a GPU when one is available)",
    )
    group.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars (default: only when stderr is a terminal)",
    )


def add_overwrite_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--overwrite``: without it an existing output is an error."""
    parser.add_argument(
        "--overwrite", action="store_true", help=f"replace an existing {what} (default: refuse)"
    )


# ---------------------------------------------------------------------------- runtime
def log(message: str) -> None:
    """One progress line on stdout, prefixed with the program name."""
    print(f"[{PROG}] {message}", flush=True)


def show_progress(args: argparse.Namespace) -> bool:
    """``--progress`` / ``--no-progress``, default: only on an interactive terminal."""
    if args.progress is not None:
        return bool(args.progress)
    return sys.stderr.isatty()


def setup_runtime(args: argparse.Namespace) -> None:
    """Torch threads, a seed for scvi-tools and quieter Lightning logging."""
    import scvi
    import torch

    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "scvi")
    for name in (*names, "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    scvi.settings.seed = args.seed


def device_kwargs(args: argparse.Namespace) -> dict:
    """Lightning ``accelerator`` / ``devices`` from ``--accelerator``."""
    return {"accelerator": args.accelerator, "devices": 1 if args.accelerator == "gpu" else "auto"}


@contextmanager
def quiet_warnings():
    """Silence the library warnings the command line reports better itself (or not at all)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*logging interval.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*genes the model was not trained on.*")
        yield


def user_error(exc: Exception) -> CLIError:
    """A library ``ValueError`` / ``KeyError`` about the user's input, as a one-line CLIError."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return CLIError(text.splitlines()[0] if text else type(exc).__name__)


def match_category(value: str, categories, option: str, key: str):
    """The category whose text is ``value`` (categories may be numbers), or a CLIError."""
    for cat in categories:
        if str(cat) == value:
            return cat
    known = ", ".join(map(str, categories))
    raise CLIError(f"{option}: unknown {key} {value!r}; the model knows {known}")


def resolve_covariates(model, pairs, option: str, allow_labels: bool = False) -> dict:
    """``KEY=VALUE`` pairs as ``{obs key: category or number}`` checked against the model."""
    columns = model.conditions_["columns"]
    cats = {c["key"]: c["categories"] for c in columns[1:]}
    if allow_labels and columns[0]["registered"]:
        cats[columns[0]["key"]] = columns[0]["categories"]
    cont = model.conditions_["cont_keys"]
    out = {}
    for key, value in pairs:
        if key in out:
            raise CLIError(f"{option}: {key!r} is given twice")
        if key in cats:
            out[key] = match_category(value, cats[key], option, key)
        elif key in cont and not allow_labels:
            try:
                out[key] = float(value)
            except ValueError:
                raise CLIError(f"{option}: {key} is numerical, got {value!r}") from None
        else:
            valid = ", ".join(list(cats) + ([] if allow_labels else cont)) or "none"
            hint = ""
            if key == columns[0]["key"] and not allow_labels:
                hint = " (set the cell type with --cell-type)"
            raise CLIError(f"{option}: unknown key {key!r}{hint}; the model has: {valid}")
    return out


# ---------------------------------------------------------------------------- inputs
def require_file(path: Path, option: str) -> Path:
    """``path`` must be an existing file."""
    if not path.exists():
        raise CLIError(f"{option} {str(path)!r} does not exist")
    if not path.is_file():
        raise CLIError(f"{option} {str(path)!r} is not a file")
    return path


def read_cells(path: Path, option: str, modality: str | None = None):
    """Read an ``.h5ad`` file, or an ``.h5mu`` file and its RNA modality, with one-line errors.

    Returns ``(data, modality)``: an AnnData and ``None``, or a MuData and the name of its RNA
    modality (``--modality``, default ``"rna"`` or the only one).
    """
    import anndata as ad

    require_file(path, option)
    suffix = path.suffix.lower()
    if suffix not in (".h5ad", ".h5mu"):
        raise CLIError(f"{option} {str(path)!r} must be an .h5ad (or .h5mu) file")
    if suffix == ".h5ad" and modality is not None:
        raise CLIError(f"--modality is for .h5mu files; {option} {str(path)!r} is .h5ad")
    try:
        if suffix == ".h5ad":
            return ad.read_h5ad(path), None
        import mudata

        mdata = mudata.read_h5mu(path)
    except Exception as exc:  # noqa: BLE001 - unreadable input is a user error
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CLIError(f"cannot read {option} {str(path)!r}: {first}") from None
    mods = list(mdata.mod)
    if modality is None:
        if "rna" in mods:
            modality = "rna"
        elif len(mods) == 1:
            modality = mods[0]
        else:
            raise CLIError(f"{option} has modalities {mods}: choose the RNA one with --modality")
    if modality not in mods:
        raise CLIError(f"--modality {modality!r} is not in {option}; it has {mods}")
    return mdata, modality


def rna_view(data, modality: str | None):
    """An AnnData of the cells: ``data`` itself, or a MuData's RNA modality with the columns
    of ``mdata.obs`` added to its ``obs`` (for checks and metrics)."""
    if modality is None:
        return data
    rna = data.mod[modality]
    view = rna.copy()
    for key in data.obs.columns:
        if key not in view.obs:
            view.obs[key] = data.obs[key].to_numpy()
    return view


def check_keys(adata, keys: Sequence[str | None], option_of: dict[str, str], where: str) -> None:
    """Every key must be a column of ``adata.obs``."""
    for key in keys:
        if key is not None and key not in adata.obs:
            columns = ", ".join(map(str, adata.obs.columns)) or "none"
            raise CLIError(
                f"{option_of.get(key, 'key')} {key!r} is not a column of {where}.obs "
                f"(columns: {columns})"
            )


def check_counts(adata, layer: str | None, where: str) -> None:
    """Raw counts only: refuse negative, non-finite and non-integer values with one line."""
    from scgm_scvi._counts import scan_counts

    if layer is not None and layer not in adata.layers:
        layers = ", ".join(adata.layers.keys()) or "none"
        raise CLIError(f"--layer {layer!r} is not a layer of {where} (layers: {layers})")
    X = adata.X if layer is None else adata.layers[layer]
    if X is None:
        raise CLIError(f"{where} has no count matrix in X; pass --layer")
    scan = scan_counts(X)
    name = "X" if layer is None else f"layer {layer!r}"
    if scan.non_finite:
        raise CLIError(f"{where} {name} contains NaN or infinite values: SCGM needs raw counts")
    if scan.negative or scan.non_integer:
        raise CLIError(
            f"{where} {name} is not raw counts (negative or non-integer values: normalised or "
            "log-transformed?); pass the raw counts, e.g. --layer counts"
        )


# ---------------------------------------------------------------------------- outputs
def prepare_out_dir(out: Path, overwrite: bool, option: str = "--out") -> None:
    """Create ``out``; a non-empty existing directory needs ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise CLIError(f"{option} {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CLIError(
            f"{option} {str(out)!r} is not empty; pass --overwrite or choose another directory"
        )
    out.mkdir(parents=True, exist_ok=True)


def check_out_file(out: Path, overwrite: bool, suffixes: Sequence[str], option="--out") -> None:
    """``out`` must end in one of ``suffixes``; an existing file needs ``overwrite``."""
    if out.suffix.lower() not in suffixes:
        raise CLIError(f"{option} {str(out)!r} must end in {' or '.join(suffixes)}")
    if out.exists() and out.is_dir():
        raise CLIError(f"{option} {str(out)!r} is a directory")
    if out.exists() and not overwrite:
        raise CLIError(f"{option} {str(out)!r} exists; pass --overwrite or choose another name")


def write_h5ad(adata, out: Path) -> None:
    """Write ``adata`` to ``out`` (parent directories created), through a temporary file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    adata.write_h5ad(tmp)
    tmp.replace(out)


def add_allow_pickle_option(parser: argparse.ArgumentParser) -> None:
    """``--allow-pickle``: read a model saved by scgm_scvi before 0.2 (see ``SCGM.load``)."""
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help=(
            "also read a model saved by scgm_scvi before 0.2, whose file needs Python's "
            "unpickler, which can run code: only for model files you trust"
        ),
    )


def load_model(model_dir: Path, accelerator: str = "auto", allow_pickle: bool = False):
    """Load a model directory written by ``scgm-scvi train`` (or ``SCGM.save``)."""
    from scgm_scvi import SCGM

    if not model_dir.exists():
        raise CLIError(f"model directory {str(model_dir)!r} does not exist")
    if not (model_dir / "model.pt").is_file():
        raise CLIError(
            f"{str(model_dir)!r} is not a model directory (no model.pt); write one with "
            f"{PROG} train"
        )
    try:
        with quiet_warnings():
            model = SCGM.load(
                str(model_dir), adata=None, allow_pickle=allow_pickle, accelerator=accelerator
            )
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign directory is a user error
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CLIError(f"cannot load the model in {str(model_dir)!r}: {first}") from None
    if not model.diffusion_trained_:
        raise CLIError(f"the model in {str(model_dir)!r} is not trained (both stages)")
    return model
