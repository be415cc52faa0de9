"""Command-line interface: ``scgm-scvi train | generate | edit | evaluate | augment | demo``.

Every subcommand lives in its own module with an ``add_parser(sub)`` that registers it and a
``run(args) -> int`` that does the work; :func:`main` dispatches and turns bad input into one
line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from . import _augment, _demo, _edit, _evaluate, _generate, _train
from ._common import PROG, CLIError, HelpFormatter
from ._common import prepare_out_dir as _prepare_out_dir  # noqa: F401 (public in 0.1)
from ._demo import gene_mean_pearson, split_counts, stratified_split

__all__ = [
    "CLIError",
    "build_parser",
    "gene_mean_pearson",
    "main",
    "split_counts",
    "stratified_split",
]

_EPILOG = """\
typical workflow:
  scgm-scvi train counts.h5ad --labels-key cell_type --out model/
  scgm-scvi generate model/ --cell-type B=500 --cell-type NK=200 --out generated.h5ad
  scgm-scvi evaluate test.h5ad generated.h5ad --out metrics.md
  scgm-scvi edit model/ cells.h5ad --target condition=stim --out edited.h5ad

'scgm-scvi COMMAND --help' explains every option of a command."""


def _version() -> str:
    from scgm_scvi import __version__

    return __version__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings as one line each, without the source line.

    Other libraries' deprecation notices (torch, Lightning, scanpy, ...) are for developers of
    code that calls them, not for the user of this command: they are not relayed.
    """
    deprecation = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
    if issubclass(category, deprecation) and "scgm_scvi" not in str(filename):
        return
    text = str(message).splitlines()[0] if str(message) else category.__name__
    print(f"{PROG}: warning: {text}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the reason and where to find help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per subcommand."""
    parser = _Parser(
        prog=PROG,
        description=(
            "Score-based generative modelling of single-cell counts (SCGM): train on .h5ad "
            "files of raw counts, generate and edit cells, evaluate them against real cells."
        ),
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in (_train, _generate, _edit, _evaluate, _augment, _demo):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 failure, 2 bad input).

    Parameters
    ----------
    argv
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    The exit status.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and a one-line reason
        return int(exc.code or 0)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for the user, not a traceback
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{PROG} {args.command}: error: {type(exc).__name__}: {reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
