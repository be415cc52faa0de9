"""Names and defaults shared by the model's parts."""

from __future__ import annotations

from typing import Literal

Sampler = Literal["ode", "ode_euler", "euler_maruyama", "pc"]
Precision = Literal["32-true", "bf16-mixed"]  # Lightning's names
# default steps per sampler: the ODE reaches its quality in tens of evaluations, SDEs need more
DEFAULT_STEPS = {"ode": 25, "ode_euler": 50, "euler_maruyama": 500, "pc": 250}
# fewer cells fail inside scvi-tools' data splitter (no training minibatch)
MIN_TRAIN_CELLS = 3
# default length of stage 2, in optimisation steps
DIFFUSION_STEPS = 20_000
# at most this many training cells are kept to draw covariates and library sizes from
CONDITION_TABLE_MAX = 50_000
