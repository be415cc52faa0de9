"""Progress bars in scvi-tools' style (``scvi.settings.progress_bar_style``), on terminals and
in Jupyter."""

from __future__ import annotations

import sys
import warnings

with warnings.catch_warnings():
    # Without ipywidgets, tqdm.auto warns in Jupyter at import and falls back to text bars,
    # which work: this package's import (and scvi-tools', which imports it too) stays quiet.
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm


def in_jupyter() -> bool:
    """Whether this runs in a Jupyter kernel (where stderr is not a terminal, yet shown)."""
    ipython = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return ipython is not None and "IPKernelApp" in getattr(ipython, "config", {})


def show_progress(progress_bar: bool | None) -> bool:
    """``progress_bar`` if given, else whether someone watches: a terminal or a notebook."""
    if progress_bar is not None:
        return bool(progress_bar)
    return in_jupyter() or bool(getattr(sys.stderr, "isatty", lambda: False)())


class ProgressBar:
    """A bar of ``total`` steps: tqdm, or rich when ``scvi.settings.progress_bar_style`` says so.

    Use as ``bar = ProgressBar(n, "Sampling", progress_bar)``, ``bar.update()`` per step and
    ``bar.close()`` at the end; a hidden bar does nothing.
    """

    def __init__(self, total: int, description: str, progress_bar: bool | None = None):
        import scvi

        self._tqdm = self._rich = None
        if not show_progress(progress_bar):
            return
        if scvi.settings.progress_bar_style == "rich":
            from rich.progress import Progress

            self._rich = Progress(transient=True)
            self._task = self._rich.add_task(description, total=total)
            self._rich.start()
        else:
            self._tqdm = tqdm(total=total, desc=description, file=sys.stderr)

    def update(self, n: int = 1) -> None:
        if self._tqdm is not None:
            self._tqdm.update(n)
        elif self._rich is not None:
            self._rich.update(self._task, advance=n)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self._rich is not None:
            self._rich.stop()
