"""Stage 2's training plan: scVI's plan with the denoising loss logged under its own name and an
exponential moving average (EMA) of the score network's weights."""

from __future__ import annotations

import torch
from scvi.module.base import LossOutput
from scvi.train import TrainingPlan

EMA_KEY = "scgm_score_ema"


class WeightAverage:
    """Exponential moving average of a module's floating-point parameters.

    The decay ramps up as ``(1 + n) / (10 + n)`` (as TensorFlow's ``ExponentialMovingAverage``
    with ``num_updates``), so a short fine-tuning run is not pinned to its starting weights.
    """

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.n_updates = 0
        self.shadow = [p.detach().clone() for p in module.parameters()]

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.n_updates += 1
        decay = min(self.decay, (1 + self.n_updates) / (10 + self.n_updates))
        for s, p in zip(self.shadow, module.parameters(), strict=True):
            s.lerp_(p.detach(), 1 - decay)

    @torch.no_grad()
    def swap(self, module: torch.nn.Module) -> None:
        """Exchange the module's weights and the averages (twice restores both)."""
        for s, p in zip(self.shadow, module.parameters(), strict=True):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "n_updates": self.n_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.n_updates = int(state["n_updates"])
        for s, saved in zip(self.shadow, state["shadow"], strict=True):
            s.copy_(saved)


def load_weight_average(module: torch.nn.Module, path: str) -> bool:
    """Copy the weight average saved in the Lightning checkpoint ``path`` (if any) into
    ``module``: the weights a finished run ended with. Returns whether there was one."""
    state = torch.load(path, map_location="cpu", weights_only=False).get(EMA_KEY)
    if state is None:
        return False
    with torch.no_grad():
        for p, saved in zip(module.parameters(), state["shadow"], strict=True):
            p.copy_(saved)
    return True


class DiffusionTrainingPlan(TrainingPlan):
    """:class:`~scvi.train.TrainingPlan` for the score network (stage 2).

    scVI's plan logs an ELBO, its reconstruction and KL terms and a KL weight; stage 2 has none
    of these. This plan logs ``train_loss`` / ``validation_loss`` (as scVI's) and the mean
    denoising loss per cell as ``denoising_loss_train`` / ``denoising_loss_validation``, the key
    that early stopping watches.

    Parameters
    ----------
    module
        The :class:`~scgm_scvi.module.SCGMModule`.
    ema_decay
        Decay of the exponential moving average of the score network's weights, the standard
        companion of diffusion training: validation runs on the averaged weights, and they
        replace the raw ones when training ends. ``0`` turns it off.
    **plan_kwargs
        Passed to :class:`~scvi.train.TrainingPlan`.
    """

    def __init__(self, module, ema_decay: float = 0.999, **plan_kwargs):
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}.")
        super().__init__(module, **plan_kwargs)
        self.loss_kwargs.pop("kl_weight", None)  # no KL term, no warm-up to log
        self.ema_decay = ema_decay
        self.ema = WeightAverage(module.score_net, ema_decay) if ema_decay > 0 else None
        self._average_in_module = False

    def compute_and_log_metrics(self, loss_output: LossOutput, metrics, mode: str) -> None:
        self.log(
            f"denoising_loss_{mode}",
            loss_output.loss.detach(),
            on_step=self.on_step,
            on_epoch=self.on_epoch,
            batch_size=loss_output.n_obs_minibatch,
            sync_dist=self.use_sync_dist,
        )

    # --- the weight average: updated after each step, used for validation and at the end ---
    def _swap(self) -> None:
        self.ema.swap(self.module.score_net)
        self._average_in_module = not self._average_in_module

    def on_train_start(self) -> None:
        if self.ema is not None:  # the module may have moved to the training device
            self.ema.shadow = [s.to(p.device) for s, p in zip(
                self.ema.shadow, self.module.score_net.parameters(), strict=True
            )]  # fmt: skip

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is not None:
            self.ema.update(self.module.score_net)

    def on_validation_epoch_start(self) -> None:
        if self.ema is not None and not self._average_in_module:
            self._swap()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.ema is not None and self._average_in_module:
            self._swap()

    def on_train_end(self) -> None:
        if self.ema is not None and not self._average_in_module:  # keep the averaged weights
            self._swap()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The checkpoint's weights are always the raw ones and ``EMA_KEY`` the average, also
        when Lightning saves during validation (average swapped in)."""
        if self.ema is None:
            return
        state = self.ema.state_dict()
        if self._average_in_module:
            weights = checkpoint["state_dict"]
            names = [f"module.score_net.{n}" for n, _ in self.module.score_net.named_parameters()]
            average = [weights[n].clone() for n in names]
            for n, raw in zip(names, self.ema.shadow, strict=True):
                weights[n] = raw.clone()
            state = {**state, "shadow": average}
        checkpoint[EMA_KEY] = state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None and EMA_KEY in checkpoint:
            self.ema.load_state_dict(checkpoint[EMA_KEY])
