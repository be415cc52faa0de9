"""Start-up time of the command line: ``scgm-scvi --version``, ``--help`` and a subcommand's help.

Each command runs ``--repeats`` times in a fresh interpreter (``python -m scgm_scvi.cli``, so the
source tree given by ``--source`` is the one measured); the report gives the median wall time.
``--source`` lets one run measure an older checkout too (e.g. a ``git worktree`` of a previous
commit) for a before / after table.

    python benchmarks/cli_start.py --source . --source /tmp/old --out benchmarks/results/cli_start
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--version"], ["--help"], ["generate", "--help"], ["evaluate", "--help"])


def wall_time(source: Path, argv: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(source.resolve())}
    start = time.perf_counter()
    cmd = [sys.executable, "-c", "import sys; from scgm_scvi.cli import main; sys.exit(main())"]
    # cwd = source: ``python -c`` puts the working directory first on sys.path
    subprocess.run([*cmd, *argv], env=env, cwd=source, check=True, capture_output=True)
    return time.perf_counter() - start


def _commit(source: Path) -> str:
    out = subprocess.run(
        ["git", "log", "-1", "--format=%h"], cwd=source, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=source,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return (out.stdout.strip() or "not a git checkout") + (
        " + uncommitted changes" if dirty else ""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, action="append", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cli_start"))
    args = parser.parse_args()
    sources = args.source or [Path(".")]
    names = [f"{s} ({_commit(s)})" for s in sources]
    lines = [
        "# CLI start-up time",
        "",
        f"`python benchmarks/cli_start.py {' '.join(sys.argv[1:])}`; median of {args.repeats} "
        "runs, each in a fresh interpreter, seconds.",
        "",
        "| command | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(sources),
    ]
    for argv in COMMANDS:
        times = [
            statistics.median(wall_time(src, argv) for _ in range(args.repeats)) for src in sources
        ]
        lines.append(
            f"| `scgm-scvi {' '.join(argv)}` | " + " | ".join(f"{t:.2f}" for t in times) + " |"
        )
        print(lines[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
