"""Multi-label losses by name, and mixup.

Each loss takes raw logits [N, C] and float targets in [0, 1] [N, C] (soft targets from mixup
allowed) and returns a scalar."""
from __future__ import annotations

import inspect
from typing import Callable

import scipy.special
import torch
import torch.nn.functional as F
from torch import nn

from imet.errors import UserError


class BCELoss(nn.Module):
    """Binary cross-entropy with logits, averaged over samples and classes."""

    def __init__(self, pos_weight: float | None = None):
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos_weight = None
        if self.pos_weight is not None:
            pos_weight = torch.full_like(logits[0], float(self.pos_weight))
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)


class FocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al. 2017, torchvision's implementation), averaged over samples
    and classes. alpha weighs positives (negatives get 1 - alpha); alpha < 0 disables it."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        if gamma < 0:
            raise UserError(f"focal loss gamma must be >= 0, got {gamma}")
        self.alpha, self.gamma = float(alpha), float(gamma)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Imported here: torchvision.ops pulls in torch._dynamo, seconds of start-up that
        # every `imet train` would pay for a loss it seldom uses.
        from torchvision.ops import sigmoid_focal_loss
        return sigmoid_focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma,
                                  reduction="mean")


class SoftF2Loss(nn.Module):
    """1 - soft F-beta averaged over samples, with sigmoid probabilities standing in for hard
    decisions: F = (1+b^2) tp / ((1+b^2) tp + b^2 fn + fp) = (1+b^2) tp / (b^2 sum(y) + sum(p)).
    Optimizes the competition metric directly (no library ships it)."""

    def __init__(self, beta: float = 2.0, eps: float = 1e-7):
        super().__init__()
        self.beta2, self.eps = float(beta) ** 2, float(eps)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # At least float32: under AMP the sums over 1,103 classes would lose precision in fp16.
        dtype = torch.promote_types(logits.dtype, torch.float32)
        probs = torch.sigmoid(logits.to(dtype))
        targets = targets.to(dtype)
        tp = (probs * targets).sum(dim=1)
        denom = self.beta2 * targets.sum(dim=1) + probs.sum(dim=1)
        score = (1 + self.beta2) * tp / (denom + self.eps)
        return 1 - score.mean()


class DistillLoss(nn.Module):
    """Knowledge distillation (`imet train --teacher`): targets [N, 2C] carry the teacher's
    probabilities after the true labels, and the loss is (1 - weight) * `base` on the true
    labels + weight * T^2 * BCE(student logits / T, the teacher's probabilities tempered by T:
    sigmoid(logit(p) / T)). T^2 keeps the soft term's gradient on the scale of the hard one's
    (Hinton et al. 2015). Targets [N, C] (evaluation) get `base` alone."""

    def __init__(self, base: nn.Module, weight: float, temperature: float):
        super().__init__()
        self.base, self.weight, self.temperature = base, float(weight), float(temperature)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        classes = logits.shape[-1]
        if targets.shape[-1] == classes:
            return self.base(logits, targets)
        truth, teacher = targets[..., :classes], targets[..., classes:].float()
        t = self.temperature
        teacher = torch.sigmoid(torch.logit(teacher.clamp(1e-6, 1 - 1e-6)) / t)
        soft = F.binary_cross_entropy_with_logits(logits.float() / t, teacher) * t * t
        return (1 - self.weight) * self.base(logits, truth) + self.weight * soft


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "bce": BCELoss,
    "focal": FocalLoss,
    "soft_f2": SoftF2Loss,
}


def build_loss(name: str, **kwargs) -> nn.Module:
    """LOSSES[name](**kwargs); unknown names and parameters are UserErrors."""
    try:
        factory = LOSSES[name]
    except KeyError:
        raise UserError(f"unknown loss {name!r}: choose one of {', '.join(sorted(LOSSES))}")
    accepted = set(inspect.signature(factory).parameters)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise UserError(f"loss {name!r} takes no parameter {', '.join(unknown)}; it takes "
                        f"{', '.join(sorted(accepted)) or 'none'}")
    return factory(**kwargs)


def sample_beta(alpha: float, generator: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw from `generator` alone (torch's Beta takes no generator):
    the inverse CDF of one uniform draw, so a saved generator state replays it exactly."""
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    return float(scipy.special.betaincinv(alpha, alpha, u))


def mixup(inputs: torch.Tensor, targets: torch.Tensor, alpha: float,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(lam * x + (1 - lam) * x[perm], same for targets, lam) with lam ~ Beta(alpha, alpha) and
    perm a random permutation, both drawn from the CPU `generator` only. alpha <= 0: no mixing."""
    if alpha <= 0:
        return inputs, targets, 1.0
    lam = sample_beta(alpha, generator)
    perm = torch.randperm(inputs.shape[0], generator=generator).to(inputs.device)
    mixed_inputs = inputs.lerp(inputs[perm], 1 - lam) if inputs.is_floating_point() else \
        (lam * inputs + (1 - lam) * inputs[perm])
    mixed_targets = targets.float().lerp(targets[perm].float(), 1 - lam)
    return mixed_inputs, mixed_targets, lam
