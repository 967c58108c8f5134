"""The optimizer (AdamW or SGD with momentum) over the model's parameter groups, and the LR
schedules by name.

Stage 1 trains the head alone (the body frozen) at `head_lr`; stage 2 trains every group (or the
`--train-groups`) with discriminative rates: head `lr`, late body `lr * lr_late_mult`, early
body `lr * lr_early_mult`.
Every schedule is a `torch.optim.lr_scheduler` stepped once per batch, over one stage's steps;
the optimizer and scheduler are rebuilt at the stage switch from (config, stage) alone, so a
resumed run rebuilds exactly what the uninterrupted one had. Schedule lambdas are callable
objects, not closures, so their state is plain numbers that `weights_only=True` can load."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch.optim.lr_scheduler import CyclicLR, LambdaLR, LRScheduler, OneCycleLR

from imet.engine.config import TrainConfig
from imet.errors import UserError

GROUP_ORDER = ("early", "late", "head")


def parse_train_groups(text: str) -> tuple[str, ...]:
    """--train-groups "late,head" -> ("late", "head") in GROUP_ORDER; "" -> every group."""
    names = [name.strip() for name in text.split(",") if name.strip()] if text else []
    unknown = [name for name in names if name not in GROUP_ORDER]
    if unknown:
        raise UserError(f"--train-groups: unknown group {unknown[0]!r}; the groups are "
                        f"{', '.join(GROUP_ORDER)} (comma-separated, e.g. late,head)")
    return tuple(name for name in GROUP_ORDER if name in names) if names else GROUP_ORDER


def stage_group_lrs(config: TrainConfig, stage: int) -> dict[str, float]:
    if stage == 1:
        return {"head": config.head_lr}
    lrs = {"early": config.lr * config.lr_early_mult, "late": config.lr * config.lr_late_mult,
           "head": config.lr}
    return {name: lrs[name] for name in parse_train_groups(config.train_groups)}


def set_trainable(groups: dict[str, list[torch.nn.Parameter]], stage: int,
                  train_groups: str = "") -> None:
    """Stage 1 freezes the body; stage 2 trains the --train-groups (default: every group). A
    frozen group computes no gradients: with the early group frozen, autograd keeps none of
    its activations either."""
    trained = ("head",) if stage == 1 else parse_train_groups(train_groups)
    for name, params in groups.items():
        for param in params:
            param.requires_grad_(name in trained)


def keep_frozen_statistics(model: torch.nn.Module,
                           groups: dict[str, list[torch.nn.Parameter]],
                           train_groups: str = "") -> None:
    """The BatchNorm layers of the groups --train-groups leaves out run in eval mode, in
    both stages: their running statistics stay as they came, so a frozen group is unchanged
    to the last bit (with `--train-groups head` the whole body is the --init model's). Stage
    1's own freeze keeps the old way, its body statistics following the data."""
    trained = parse_train_groups(train_groups)
    frozen = {id(p) for name, params in groups.items() if name not in trained for p in params}
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.weight is not \
                None and id(module.weight) in frozen:
            module.eval()


def adamw(param_groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups, lr=param_groups[-1]["lr"],
                             weight_decay=config.weight_decay)


def sgd(param_groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the iMet notes' future work 5). OneCycleLR cycles its momentum
    between 0.85 and 0.95 as it cycles AdamW's beta1; the other schedules keep --momentum."""
    return torch.optim.SGD(param_groups, lr=param_groups[-1]["lr"], momentum=config.momentum,
                           nesterov=config.nesterov, weight_decay=config.weight_decay)


OPTIMIZERS: dict[str, Callable[[list[dict], TrainConfig], torch.optim.Optimizer]] = {
    "adamw": adamw,
    "sgd": sgd,
}


def check_optimizer(config: TrainConfig) -> None:
    if config.optimizer not in OPTIMIZERS:
        raise UserError(f"--optimizer {config.optimizer!r} is unknown; choose one of "
                        f"{', '.join(OPTIMIZERS)}")
    if config.nesterov and (config.optimizer != "sgd" or config.momentum <= 0):
        raise UserError("--nesterov needs --optimizer sgd and a --momentum above 0")


def build_optimizer(groups: dict[str, list[torch.nn.Parameter]], config: TrainConfig,
                    stage: int) -> torch.optim.Optimizer:
    check_optimizer(config)
    lrs = stage_group_lrs(config, stage)
    param_groups = [{"params": list(groups[name]), "lr": lrs[name], "name": name}
                    for name in GROUP_ORDER if name in lrs and groups.get(name)]
    if not param_groups:
        raise UserError(f"--arch {config.arch}: the model exposes no trainable parameters "
                        f"for stage {stage}")
    return OPTIMIZERS[config.optimizer](param_groups, config)


class WarmupCosine:
    """Linear warm-up from ~0 to 1, then a cosine down to `floor` (a factor of the base LR)."""

    def __init__(self, warmup_steps: int, total_steps: int, floor: float = 0.0):
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.floor = float(floor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Constant:
    def __call__(self, step: int) -> float:
        return 1.0


def _base_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [group["lr"] for group in optimizer.param_groups]


def one_cycle(optimizer, total_steps: int, steps_per_epoch: int, warmup: float) -> LRScheduler:
    if total_steps < 4:  # OneCycleLR's phases need a few steps; so short a stage runs flat
        return LambdaLR(optimizer, Constant())
    # Each phase must span at least one step, or OneCycleLR divides by zero.
    pct_start = min(0.5, max(warmup or 0.3, 2.0 / total_steps))
    return OneCycleLR(optimizer, max_lr=_base_lrs(optimizer), total_steps=total_steps,
                      pct_start=pct_start, anneal_strategy="cos")


def cosine(optimizer, total_steps: int, steps_per_epoch: int, warmup: float) -> LRScheduler:
    return LambdaLR(optimizer, WarmupCosine(round(warmup * total_steps), total_steps))


def cyclic(optimizer, total_steps: int, steps_per_epoch: int, warmup: float) -> LRScheduler:
    """Triangular cycles between a tenth of each group's LR and the LR, one cycle per epoch."""
    max_lrs = _base_lrs(optimizer)
    return CyclicLR(optimizer, base_lr=[lr / 10 for lr in max_lrs], max_lr=max_lrs,
                    step_size_up=max(1, steps_per_epoch // 2), mode="triangular",
                    cycle_momentum=False)


def constant(optimizer, total_steps: int, steps_per_epoch: int, warmup: float) -> LRScheduler:
    return LambdaLR(optimizer, Constant())


SCHEDULES: dict[str, Callable[..., LRScheduler]] = {
    "onecycle": one_cycle,
    "cosine": cosine,
    "cyclic": cyclic,
    "constant": constant,
}


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int,
                    steps_per_epoch: int) -> LRScheduler:
    try:
        builder = SCHEDULES[config.schedule]
    except KeyError:
        raise UserError(f"--schedule {config.schedule!r} is unknown; choose one of "
                        f"{', '.join(SCHEDULES)}") from None
    return builder(optimizer, max(1, total_steps), max(1, steps_per_epoch), config.warmup)
