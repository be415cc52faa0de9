"""Stage 2's training plan: scVI's plan with the denoising loss logged under its own name."""

from __future__ import annotations

from scvi.module.base import LossOutput
from scvi.train import TrainingPlan


class DiffusionTrainingPlan(TrainingPlan):
    """:class:`~scvi.train.TrainingPlan` for the score network (stage 2).

    scVI's plan logs an ELBO, its reconstruction and KL terms and a KL weight; stage 2 has none
    of these. This plan logs ``train_loss`` / ``validation_loss`` (as scVI's) and the mean
    denoising loss per cell as ``denoising_loss_train`` / ``denoising_loss_validation``, the key
    that early stopping watches.
    """

    def __init__(self, module, **plan_kwargs):
        super().__init__(module, **plan_kwargs)
        self.loss_kwargs.pop("kl_weight", None)  # no KL term, no warm-up to log

    def compute_and_log_metrics(self, loss_output: LossOutput, metrics, mode: str) -> None:
        self.log(
            f"denoising_loss_{mode}",
            loss_output.loss.detach(),
            on_step=self.on_step,
            on_epoch=self.on_epoch,
            batch_size=loss_output.n_obs_minibatch,
            sync_dist=self.use_sync_dist,
        )
