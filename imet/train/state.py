"""`TrainState`: everything that decides the future of a run (model, optimizer, scheduler,
scaler, EMA, sample-order position, RNG streams, running loss sums), and how a session builds it
(pretrained weights, `--init`'s model or a checkpoint; each stage's optimizer and LR schedule;
the weight EMA; the head's prior bias).

Stage 1 trains the head alone at `head_lr`; stage 2 the `--train-groups` (default all) at head
`lr`, late body `lr * lr_late_mult`, early body `lr * lr_early_mult`. Schedules are stepped once
per batch over one stage's steps; optimizer and scheduler are rebuilt at the stage switch from
(config, stage) alone, so a resumed run rebuilds exactly what the uninterrupted one had. Schedule
lambdas and the EMA's decay are callable objects, not closures: their state is plain numbers
that `weights_only=True` can load."""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch.optim.lr_scheduler import CyclicLR, LambdaLR, LRScheduler, OneCycleLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from imet.config import GROUP_ORDER, TrainConfig, parse_train_groups
from imet.data.labels import LabelSpace, find_layout, read_labels
from imet.device import Precision
from imet.errors import CheckpointError, UserError
from imet.fileio import file_sha256
from imet.models import build_model
from imet.models.modelfile import model_file_of, read_model_file
from imet.train.data import HardNegatives, repeat_count

if TYPE_CHECKING:
    from imet.predict.infer import Evaluation as Scored

log = logging.getLogger(__name__)


def stage_group_lrs(config: TrainConfig, stage: int) -> dict[str, float]:
    if stage == 1:
        return {"head": config.head_lr}
    lrs = {"early": config.lr * config.lr_early_mult, "late": config.lr * config.lr_late_mult,
           "head": config.lr}
    return {name: lrs[name] for name in parse_train_groups(config.train_groups)}


def set_trainable(groups: dict[str, list[torch.nn.Parameter]], stage: int,
                  train_groups: str = "") -> None:
    """Stage 1 freezes the body; stage 2 trains the --train-groups (default: all). A frozen group
    computes no gradients: with the early group frozen, autograd keeps none of its activations."""
    trained = ("head",) if stage == 1 else parse_train_groups(train_groups)
    for name, params in groups.items():
        for param in params:
            param.requires_grad_(name in trained)


def keep_frozen_statistics(model: torch.nn.Module, groups: dict[str, list[torch.nn.Parameter]],
                           stage: int, train_groups: str = "", frozen_bn: str = "stage1") -> None:
    """Which BatchNorm layers run in eval mode, their statistics kept as loaded: those of the
    groups --train-groups leaves out, in both stages, so a frozen group is unchanged to the last
    bit (with `--train-groups head` the whole body is the --init model's); with --frozen-bn
    stage1 the whole body's in stage 1 (stage 1 then leaves the body as it came: a head on
    random features must not shift the pretrained statistics to the target's few batches), with
    all in both stages. Every other BatchNorm layer trains, so stage 2 undoes stage 1's."""
    trained = set(parse_train_groups(train_groups))
    if frozen_bn == "all" or (stage == 1 and frozen_bn == "stage1"):
        trained = {"head"} & trained
    frozen = {id(p) for name, params in groups.items() if name not in trained for p in params}
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.weight is not \
                None:
            module.train(id(module.weight) not in frozen)


def adamw(param_groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups, lr=param_groups[-1]["lr"],
                             weight_decay=config.weight_decay)


def sgd(param_groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the iMet notes' future work 5). OneCycleLR cycles its momentum
    between 0.85 and 0.95 as it cycles AdamW's beta1; the other schedules keep --momentum."""
    return torch.optim.SGD(param_groups, lr=param_groups[-1]["lr"], momentum=config.momentum,
                           nesterov=config.nesterov, weight_decay=config.weight_decay)


# One builder per name in imet.config.OPTIMIZER_NAMES.
OPTIMIZERS: dict[str, Callable[[list[dict], TrainConfig], torch.optim.Optimizer]] = {
    "adamw": adamw, "sgd": sgd}


def build_optimizer(groups: dict[str, list[torch.nn.Parameter]], config: TrainConfig,
                    stage: int) -> torch.optim.Optimizer:
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
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
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
    "onecycle": one_cycle, "cosine": cosine, "cyclic": cyclic, "constant": constant}


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int,
                    steps_per_epoch: int) -> LRScheduler:
    if config.schedule not in SCHEDULES:
        raise UserError(f"--schedule {config.schedule!r} is unknown; choose one of "
                        f"{', '.join(SCHEDULES)}")
    return SCHEDULES[config.schedule](optimizer, max(1, total_steps), max(1, steps_per_epoch),
                                      config.warmup)


# Weight EMA (`--ema DECAY`), updated after every optimizer step, its decay warmed up so the first
# steps' random head is soon forgotten. torch's `AveragedModel`, not timm's `ModelEmaV3`: torch is
# always there, and all the average needs to go on exactly (the weights, the `n_averaged` counter
# of the warm-up) is in its state_dict, as plain tensors; ModelEmaV3's options and private state
# (a stochastic-rounding generator outside its state_dict) change between timm releases, and its
# warm-up counts the caller's step. BatchNorm statistics are copied, not averaged
# (`use_buffers=False`): they are statistics of the current weights.

class WarmedUpDecay:
    """The EMA update with decay min(DECAY, (1 + n) / (10 + n)) after n updates (TensorFlow's
    ExponentialMovingAverage num_updates rule): 0.1 at the first update, DECAY in the long run."""

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


# `--prior-bias`: the head's bias starts at each class's log-odds in the training labels (the
# "prior" init of Lin et al. 2017). A fresh head predicts ~0.5 for classes present in a few
# percent of images (mini-iMet: 5-40%), so under BCE the first hundreds of steps push every logit
# down, dragging the body's features along; with log(p / (1 - p)) the first loss is the labels'
# own entropy. Done once, on a fresh run, before device placement; a resume never recomputes it.

# A class seen in no (or every) training image still gets a finite bias: log-odds of 1e-4.
_CLIP = 1e-4


def class_log_odds(targets) -> np.ndarray:
    """float64 [C]: log(p / (1 - p)) of each class's mean target (hard or soft) over the rows."""
    prior = np.clip(np.asarray(targets, dtype=np.float64).mean(axis=0), _CLIP, 1 - _CLIP)
    return np.log(prior / (1 - prior))


def init_prior_bias(model: torch.nn.Module, targets) -> None:
    """Set the bias of `model`'s head linear layer to the class log-odds of `targets` [N, C]."""
    linear = model.head.linear
    log_odds = class_log_odds(targets)
    if log_odds.shape != linear.bias.shape:
        raise ValueError(f"targets have {log_odds.shape[0]} classes, the head "
                         f"{linear.bias.shape[0]}")
    with torch.no_grad():
        linear.bias.copy_(torch.from_numpy(log_odds).to(linear.bias.dtype))


@dataclass
class Counters:
    """Plain numbers of a run; every field goes into the checkpoint as is."""
    stage: int = 1
    epoch: int = 0                # epochs completed
    epoch_step: int = 0           # batches done inside the current epoch
    step: int = 0                 # optimizer steps done in the whole run
    sampler_seed: int = 0
    best_score: float = -1.0      # of the run's --metric: decides the best model and patience
    best_f2: float = -1.0         # the best evaluation's F2
    best_step: int = -1
    best_threshold: float = 0.0
    bad_evals: int = 0            # evaluations since the best one (early stopping)
    last_eval_step: int = -1
    eval_pending: bool = False    # the step just done calls for an evaluation not yet run
    loss_sum: float = 0.0         # training loss since the last evaluation
    loss_count: int = 0
    samples_seen: int = 0
    session: int = 1
    train_time_s: float = 0.0     # over all sessions: for the run's ETA
    finished: bool = False
    stop_reason: str = ""         # "epochs" | "early_stop" once finished
    history: list[dict[str, Any]] = field(default_factory=list)
    init_f2: float | None = None  # --init: the untuned model's F2, evaluated before step 1

    def mean_loss(self) -> float:
        """The mean training loss since the last evaluation."""
        return self.loss_sum / self.loss_count if self.loss_count else float("nan")


class TrainState:
    def __init__(self, config: TrainConfig, model: torch.nn.Module,
                 groups: dict[str, list[torch.nn.Parameter]], steps_per_epoch: int,
                 labels: dict[str, Any], labels_fingerprint: str, precision: Precision,
                 device_type: str, num_samples: int = 0):
        self.config, self.model, self.groups = config, model, groups
        self.steps_per_epoch = steps_per_epoch
        self.labels, self.labels_fingerprint = labels, labels_fingerprint
        self.counters = Counters(sampler_seed=config.seed)
        self.precision, self.device_type = precision, device_type
        self.scaler = precision.scaler(device_type)
        # Mixup draws from its own stream, saved with the state.
        self.mix_generator = torch.Generator().manual_seed(config.seed)
        self.ema = build_ema(model, config.ema)
        self.hard_negatives = (HardNegatives(num_samples, config.hard_negatives, config.seed)
                               if config.hard_negatives else None)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.enter_stage(1 if config.head_epochs > 0 else 2)

    # --- stages -------------------------------------------------------------------------
    def stage_steps(self, stage: int) -> int:
        head = self.config.head_epochs
        return max(0, head if stage == 1 else self.config.epochs - head) * self.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    @property
    def stage1_end_step(self) -> int:
        """The step where stage 1 (head only) ends; 0 without a stage 1."""
        return min(self.total_steps, self.stage_steps(1))

    def enter_stage(self, stage: int) -> None:
        """Rebuilt from (config, stage) alone: a resumed run rebuilds the same objects."""
        self.counters.stage = stage
        set_trainable(self.groups, stage, self.config.train_groups)
        keep_frozen_statistics(self.model, self.groups, stage, self.config.train_groups,
                               self.config.frozen_bn)
        self.optimizer = build_optimizer(self.groups, self.config, stage)
        self.scheduler = build_scheduler(self.optimizer, self.config, self.stage_steps(stage),
                                         self.steps_per_epoch)

    def stage_due(self) -> int:
        """The stage the next step belongs to."""
        return 1 if self.counters.epoch < self.config.head_epochs else 2

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights evaluated and written to model.pt: the EMA's while EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def repeat_count(self) -> int:
        """Samples an epoch sees a second time (hard-negative mining; 0 without)."""
        return self.hard_negatives.count if self.hard_negatives is not None else 0

    def epoch_repeats(self) -> torch.Tensor | None:
        """The samples the current epoch repeats (None without hard-negative mining)."""
        return (None if self.hard_negatives is None
                else self.hard_negatives.for_epoch(self.counters.epoch))

    # --- evaluations ---------------------------------------------------------------------
    def record_evaluation(self, result: Scored) -> bool:
        """Book an evaluation of the model at the current step (`imet.predict.infer.score` of
        the run's --metric: its threshold tuned for it, both metrics at it): history, best
        score, early stopping. True when it is the best so far by the run's metric."""
        c = self.counters
        is_best = result.score > c.best_score
        c.history.append({"step": c.step, "epoch": c.epoch, "stage": c.stage,
                          "train_loss": c.mean_loss(), "val_loss": result.val_loss,
                          "f2": result.f2, "micro_f1": result.micro_f1,
                          "threshold": result.threshold,
                          "lr": self.optimizer.param_groups[-1]["lr"]})
        c.loss_sum, c.loss_count, c.last_eval_step, c.eval_pending = 0.0, 0, c.step, False
        if is_best:
            c.best_score, c.best_f2, c.best_step = result.score, result.f2, c.step
            c.best_threshold, c.bad_evals = result.threshold, 0
        elif c.stage == 2:  # the head-only warm-up does not count against patience
            c.bad_evals += 1
        if self.config.patience and c.bad_evals >= self.config.patience:
            c.finished, c.stop_reason = True, "early_stop"
        return is_best


def build_train_state(config: TrainConfig, data, dist, steps, fresh: bool = True,
                      init: dict[str, torch.Tensor] | None = None) -> TrainState:
    """The TrainState a session starts from, its model placed as `dist` and the StepRunner
    `steps` want it. A fresh run seeds every RNG first (the head's initial weights come from the
    torch one) and starts from `init` (--init's weights) or ImageNet's; a resumed one
    (`fresh=False`) gets its checkpoint restored into it (checkpoint.restore_state)."""
    if fresh:
        random.seed(config.seed)
        np.random.seed(config.seed % 2 ** 32)
        torch.manual_seed(config.seed)
    fresh_body = fresh and init is None
    model = build_model(config.arch, data.labels.num_classes,
                        pretrained=config.pretrained and fresh_body,
                        weights=config.weights if fresh_body else None,
                        search_roots=tuple(config.input_root), dropout=config.dropout)
    if fresh and init is not None:
        model.load_state_dict(init)
    elif fresh and config.prior_bias:  # --init's head has a bias of its own
        # with --teacher the teacher's probabilities follow the C label columns
        init_prior_bias(model, data.train_set.targets[:, :data.labels.num_classes])
    model = dist.prepare_model(model)
    model.to(steps.device)
    if steps.channels_last:
        model.to(memory_format=torch.channels_last)
    samples = len(data.train_set)
    if config.hard_negatives and dist.world_size > 1:
        raise UserError("--hard-negatives records the losses in one process: run it without "
                        "torchrun, or without --hard-negatives")
    epoch_samples = samples + repeat_count(samples, config.hard_negatives)
    return TrainState(config, model, model.param_groups(), epoch_samples // config.batch_size,
                      data.labels.to_dict(), data.labels.fingerprint(), steps.precision,
                      steps.device.type, num_samples=samples)


# `imet train --init RUN` tunes a run's best model (model.pt) on other data (`--train-groups
# head`: last-layer tuning). Another arch or label space is refused with one line before the run
# folder is made. A hash of the file's bytes goes into the config as `init_fingerprint`: another
# model is another config, while the file may move between sessions (on Kaggle, an input).

def init_model_path(init: str) -> Path:
    """RUN -> RUN/model.pt; a file stays itself; a one-line error naming --init for neither."""
    try:
        return model_file_of(Path(init))
    except CheckpointError as err:
        raise UserError(f"--init {init}: {err}") from None


def init_arch(init: str) -> str:
    """The arch of the --init model: a run tuning it takes it unless --arch is given."""
    return str(read_model_file(init_model_path(init))["arch"])


def load_init(config: TrainConfig) -> dict[str, torch.Tensor]:
    """The --init model's weights, checked against the run's arch and --data's labels.csv; fills
    in `config.init_fingerprint`, which must match when it was given (a resumed run's config)."""
    labels_csv = find_layout(config.data, train=False, test=False).labels_csv
    labels = read_labels(labels_csv)
    if not config.init:
        raise UserError(f"--init-fingerprint {config.init_fingerprint}: no --init model given; "
                        "pass the model it names")
    path = init_model_path(config.init)
    payload = read_model_file(path)
    if payload["arch"] != config.arch:
        raise UserError(f"{path}: a model of {payload['arch']}, not --arch {config.arch}; leave "
                        "--arch out to tune the model's own arch")
    theirs = LabelSpace.from_dict(payload["labels"])
    if theirs.fingerprint() != labels.fingerprint():
        raise UserError(f"{path}: a model of another label space ({theirs.num_classes} classes) "
                        f"than --data's {labels.source} ({labels.num_classes}); tune a model "
                        f"trained on this {labels.source}")
    found = file_sha256(path)[:16]
    if config.init_fingerprint and config.init_fingerprint != found:
        raise UserError(f"{path}: the init model's fingerprint is {found}, not "
                        f"--init-fingerprint {config.init_fingerprint}; pass the model it names")
    config.init_fingerprint = found
    log.info("starting from %s (fingerprint %s, step %s)", path, found,
             payload.get("extra", {}).get("step"))
    return payload["state_dict"]
