"""Stage 2's training plan: the exponential moving average of the score network's weights."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import FIT, make_adata, make_model
from lightning.pytorch.callbacks import Callback

from scgm_scvi.model._plan import WeightAverage


def test_weight_average_ramps_up_and_swaps():
    net = torch.nn.Linear(3, 2)
    start = [p.detach().clone() for p in net.parameters()]
    avg = WeightAverage(net, decay=0.9)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    avg.update(net)  # decay min(0.9, 2 / 11): the average moves 9/11 of the way
    for s, p0 in zip(avg.shadow, start, strict=True):
        torch.testing.assert_close(s, p0 + 9 / 11)
    for _ in range(200):  # constant weights: the average converges to them
        avg.update(net)
    for s, p0 in zip(avg.shadow, start, strict=True):
        torch.testing.assert_close(s, p0 + 1.0)
    avg.shadow = [s - 0.5 for s in avg.shadow]
    avg.swap(net)
    for p, p0 in zip(net.parameters(), start, strict=True):
        torch.testing.assert_close(p.detach(), p0 + 0.5)
    avg.swap(net)  # twice restores both
    for p, p0 in zip(net.parameters(), start, strict=True):
        torch.testing.assert_close(p.detach(), p0 + 1.0)


class _Record(Callback):
    """The raw weights and the average just before the plan's own ``on_train_end``."""

    def on_train_end(self, trainer, pl_module):
        self.raw = [p.detach().clone() for p in pl_module.module.score_net.parameters()]
        self.average = [s.clone() for s in pl_module.ema.shadow]


def test_training_ends_on_the_weight_average():
    model = make_model(make_adata())
    record = _Record()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train_vae(max_epochs=2, **FIT)
        model.train_diffusion(max_epochs=4, callbacks=[record], **FIT)
    final = [p.detach() for p in model.module.score_net.parameters()]
    for p, s in zip(final, record.average, strict=True):
        torch.testing.assert_close(p, s, rtol=0, atol=0)
    assert any(not torch.equal(p, r) for p, r in zip(final, record.raw, strict=True))


def test_ema_decay_checked():
    model = make_model(make_adata())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train_vae(max_epochs=1, **FIT)
        with pytest.raises(ValueError, match="ema_decay"):
            model.train_diffusion(max_epochs=1, plan_kwargs={"ema_decay": 1.0}, **FIT)
