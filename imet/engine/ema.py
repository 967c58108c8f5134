"""Weight EMA (`--ema DECAY`): an exponential moving average of the weights, updated after every
optimizer step, with the decay warmed up so that the first steps' random head is soon forgotten.

torch's `AveragedModel` with `get_ema_multi_avg_fn` rather than timm's `ModelEmaV3`: torch is
always there (timm is one optional source of architectures), and everything the average needs
to go on exactly lives in the AveragedModel's own state_dict — the averaged weights and the
`n_averaged` counter that drives the warm-up — so the TrainState saves it as plain tensors.
ModelEmaV3's options and private state (a stochastic-rounding generator not in its state_dict)
change between timm releases, and its warm-up counts the caller's step instead of its own.
BatchNorm running statistics are copied from the trained model at each update
(`use_buffers=False`), not averaged: they are statistics of the current weights."""
from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WarmedUpDecay:
    """The EMA update with decay min(DECAY, (1 + n) / (10 + n)) after n updates (TensorFlow's
    ExponentialMovingAverage num_updates rule): 0.1 at the first update, DECAY in the long run.
    A callable object, not a closure: it holds only a number."""

    def __init__(self, decay: float):
        self.decay = float(decay)

    def at(self, updates: int) -> float:
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    def __call__(self, ema_params, model_params, n_averaged: torch.Tensor) -> None:
        get_ema_multi_avg_fn(self.at(int(n_averaged)))(ema_params, model_params, n_averaged)


def build_ema(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """The EMA of `model` (a copy on its device), or None when `decay` is 0 (EMA off)."""
    if not decay:
        return None
    ema = AveragedModel(model, multi_avg_fn=WarmedUpDecay(decay), use_buffers=False)
    ema.requires_grad_(False)
    ema.eval()
    return ema
