"""The reverse-process driver shared by generation and editing.

It decides what a run of the reverse process is (sampler, time grid, cost) and runs cells
through it in chunks with one progress bar; what the noise prediction is (conditioning,
guidance, gene constraints) stays with the caller, and the sampler functions stay ignorant of
both.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from scgm_scvi._names import (  # noqa: F401 - re-exported
    DEFAULT_STEPS,
    LOGSNR_SAMPLERS,
    ODE_SAMPLERS,
    Sampler,
)
from scgm_scvi._progress import ProgressBar
from scgm_scvi.sde import VPSDE

from ._samplers import EVALS_PER_STEP, SAMPLERS, StepCallback


def check_sampler(sampler: str, allowed: tuple[str, ...] | None = None, why: str = "") -> str:
    """``sampler`` if it is one of ``allowed`` (default: every sampler), else a clear error."""
    allowed = tuple(SAMPLERS) if allowed is None else allowed
    if sampler not in allowed:
        raise ValueError(f"sampler must be one of {list(allowed)}{why}, got {sampler!r}.")
    return sampler


@dataclass(frozen=True)
class ReversePlan:
    """One run of the reverse process: the sampler and its decreasing time grid.

    Made by :func:`plan_reverse`.
    """

    sampler: str
    ts: torch.Tensor

    @property
    def n_steps(self) -> int:
        """Steps of the grid."""
        return len(self.ts) - 1

    def sample(self, eps_fn, sde: VPSDE, x, *, generator=None, callback=None) -> torch.Tensor:
        """Integrate from ``ts[0]`` down to ``eps`` with the plan's sampler."""
        fn = SAMPLERS[self.sampler]
        return fn(eps_fn, sde, x, self.ts, generator=generator, callback=callback)

    def invert(self, eps_fn, sde: VPSDE, x, *, callback=None) -> torch.Tensor:
        """Integrate the (deterministic) ODE upward, from ``eps`` to ``ts[0]`` (encoding)."""
        check_sampler(self.sampler, ODE_SAMPLERS, " to invert")
        return SAMPLERS[self.sampler](eps_fn, sde, x, self.ts.flip(0), callback=callback)

    def network_evaluations(self, guided: bool, inverted: bool = False) -> int:
        """Network evaluations per cell: guidance doubles them, an ODE inversion adds a pass."""
        per_pass = EVALS_PER_STEP[self.sampler] * self.n_steps
        return per_pass * (2 if guided else 1) + (per_pass if inverted else 0)


def plan_reverse(
    sde: VPSDE,
    sampler: str,
    n_steps: int | None = None,
    t_start: float | None = None,
    device: torch.device | str | None = None,
) -> ReversePlan:
    """The sampler's time grid from ``t_start`` (default ``T``: generation) down to ``eps``.

    ``n_steps=None`` keeps the sampler's default density of steps over the full range, so an
    edit from ``t_start = T / 2`` takes half the default steps. DPM-Solver++ (ODE and SDE)
    spaces ``log(alpha / sigma)`` evenly (the grid its steps are derived on); the other ODE
    samplers use a Karras grid (steps where the ODE bends), the other stochastic samplers a
    uniform grid.
    """
    check_sampler(sampler)
    t_start = sde.T if t_start is None else float(t_start)
    if n_steps is None:
        n_steps = max(1, math.ceil(DEFAULT_STEPS[sampler] * t_start / sde.T))
    spacing = "uniform"
    if sampler in LOGSNR_SAMPLERS:
        spacing = "logsnr"
    elif sampler in ODE_SAMPLERS:
        spacing = "karras"
    ts = sde.time_grid(int(n_steps), t_start=t_start, spacing=spacing, device=device)
    return ReversePlan(sampler, ts)


def chunk_seed(seed: int | None, chunk: int, stream: int) -> int | None:
    """An independent seed per ``(seed, chunk, stream)`` (e.g. stream 0 the latents, 1 the
    counts), so that a chunk's cells do not depend on the chunks before it."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, chunk, stream]).generate_state(1)[0])


def chunk_generator(seed: int | None, chunk: int, device) -> torch.Generator | None:
    """A generator seeded with :func:`chunk_seed` (stream 0); ``None`` without a seed (the
    global generator, which ``scvi.settings.seed`` seeds)."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(chunk_seed(seed, chunk, 0))
    return generator


class ChunkedRun:
    """Cells run through the reverse process ``batch_size`` at a time, with one progress bar.

    Iterate to get each chunk's row indices (on ``device``); pass :meth:`callback` to the
    sampler so that the bar advances with every step. The bar closes when the iteration ends.

    Parameters
    ----------
    n_cells, batch_size
        Cells in all, cells per chunk.
    steps_per_chunk
        Sampler steps each chunk takes (all passes).
    description, progress_bar
        The bar's text; show it (``None``: on a terminal or in Jupyter).
    bar
        An outer run's bar to advance instead of a new one (a caller that chunks itself).
    """

    def __init__(
        self,
        n_cells: int,
        batch_size: int,
        steps_per_chunk: int,
        description: str,
        progress_bar: bool | None = None,
        device: torch.device | str | None = None,
        bar: ProgressBar | None = None,
    ):
        self.rows = list(torch.split(torch.arange(n_cells, device=device), batch_size))
        self._own_bar = bar is None
        self.bar = bar or ProgressBar(steps_per_chunk * len(self.rows), description, progress_bar)

    def __iter__(self) -> Iterator[torch.Tensor]:
        try:
            yield from self.rows
        finally:
            if self._own_bar:
                self.bar.close()

    def callback(self, step_callback: StepCallback | None = None) -> StepCallback:
        """A sampler callback that advances the bar, then runs ``step_callback``."""

        def callback(i, t, x):
            self.bar.update()
            return None if step_callback is None else step_callback(i, t, x)

        return callback
