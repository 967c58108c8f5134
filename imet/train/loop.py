"""The training loop and what it runs: the session's time budget, the losses, one optimizer
step (`StepRunner`) and the `Trainer`, which strings steps, evaluations and checkpoints together
until the epochs end or the session hands over to the next one.

Between units of work (a step, an evaluation) the loop is at a *boundary*, where the TrainState
is complete and can be saved. Every decision there is a function of the state alone (evaluation
pending, stage over, epochs done), so a run that stops at any boundary and resumes takes the
same path as one that never stopped. A Kaggle session is cut hard when its time is up, so before
every unit the loop checks that it plus a save still fits, else saves and hands over; durations
are the max of this session's recent samples times a safety factor, since one slow step (a GC
pause, a cold cache) is what would overrun the budget.

Four notions of stopping, each under one name: `StopRequest` (self.stop), set by a SIGTERM/SIGINT
handler at any moment, read at boundaries and between validation batches; `SessionBudget.fits_step`
/ `fits_eval`: the next unit plus a save still fits; `agreed_stop(fits)`: the boundary's decision,
by all ranks together ("signal", "budget" or None); `evaluation_must_stop`: a signal or a budget
about to run out drops the evaluation, which the next session redoes from the saved boundary."""
from __future__ import annotations

import dataclasses
import inspect
import logging
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import scipy.special
import torch
import torch.nn.functional as F
from torch import nn

from imet.config import TrainConfig
from imet.data.transforms import Normalization, augment_batch, normalize_batch
from imet.device import device_precision, resolve_device
from imet.errors import HANDED_OVER_EXIT_CODE, UserError
from imet.models.modelfile import MODEL_FILE, save_model_file
from imet.train import distributed
from imet.train.checkpoint import (bring_best_model, checkpoint_dir, checkpoint_path,
                                   choose_resume, expected_size, library_versions, next_step_text,
                                   remedy, remove_handover, restore_state, room_for,
                                   save_checkpoint, state_payload, tidy, version_change,
                                   write_handover)
from imet.train.data import (EpochBatchSampler, RunData, load_run_data, per_sample_losses,
                             train_loader, val_loader)
from imet.train.distributed import SingleProcess
from imet.train.events import (Checkpoint, Evaluation, EventBus, Failure, Finish, Handover,
                               InitEvaluation, Progress, RunStart, StopRequest)
from imet.train.state import TrainState, build_train_state, load_init

log = logging.getLogger(__name__)


class DurationEstimate:
    """A pessimistic estimate of how long the next unit of some kind of work takes."""

    def __init__(self, window: int = 20, safety: float = 1.25, prior_s: float = 0.0):
        self._samples: deque[float] = deque(maxlen=window)
        self.safety, self.prior_s = safety, prior_s

    def add(self, seconds: float) -> None:
        self._samples.append(max(0.0, float(seconds)))

    @property
    def count(self) -> int:
        return len(self._samples)

    def mean(self) -> float:
        return sum(self._samples) / len(self._samples) if self._samples else self.prior_s

    def next(self) -> float:
        return max(self._samples) * self.safety if self._samples else self.prior_s


class SessionBudget:
    """`total_s` seconds from `start` (the moment the session began); `margin_s` is kept free.
    `clock` is injectable so a test can run a day-long budget in a second of real time."""

    def __init__(self, total_s: float, margin_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, start: float | None = None):
        self.total_s, self.margin_s, self.clock = float(total_s), float(margin_s), clock
        self.start = clock() if start is None else start
        self.step = DurationEstimate()
        self.eval, self.save = DurationEstimate(window=5), DurationEstimate(window=5)

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        """Seconds of budget left before the margin."""
        return self.total_s - self.margin_s - self.elapsed()

    def fits(self, *work_s: float) -> bool:
        """Whether the given work plus a final checkpoint save still fits in the budget."""
        return sum(work_s) + self.save.next() <= self.left()

    def fits_step(self) -> bool:
        return self.fits(self.step.next())

    def fits_eval(self) -> bool:
        return self.fits(self.eval.next())

    def no_step_text(self, budget_text: str, margin_text: str) -> str:
        """Why a session ends without a step: a handover then would only repeat forever."""
        return (f"no training step fitted in this session: of --time-budget {budget_text} "
                f"({self.total_s:g}s), {self.elapsed():.1f}s were used before the first step "
                f"and --margin {margin_text} keeps {self.margin_s:g}s free; give a longer "
                "--time-budget or a smaller --margin")


# Each loss takes raw logits [N, C] and float targets in [0, 1] [N, C] (mixup's soft targets
# too) and returns a scalar.

class BCELoss(nn.Module):
    """Binary cross-entropy with logits, averaged over samples and classes."""

    def __init__(self, pos_weight: float | None = None):
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos_weight = (None if self.pos_weight is None
                      else torch.full_like(logits[0], float(self.pos_weight)))
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
    """Knowledge distillation (`--teacher`): targets [N, 2C] carry the teacher's probabilities p
    after the true labels; the loss is (1 - weight) * `base` on the labels + weight * T^2 *
    BCE(logits / T, sigmoid(logit(p) / T)), T^2 keeping the soft gradient on the hard one's scale
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


LOSSES: dict[str, Callable[..., nn.Module]] = {"bce": BCELoss, "focal": FocalLoss,
                                               "soft_f2": SoftF2Loss}


def build_loss(name: str, **kwargs) -> nn.Module:
    """LOSSES[name](**kwargs); unknown names and parameters are UserErrors."""
    if name not in LOSSES:
        raise UserError(f"unknown loss {name!r}: choose one of {', '.join(sorted(LOSSES))}")
    accepted = set(inspect.signature(LOSSES[name]).parameters)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise UserError(f"loss {name!r} takes no parameter {', '.join(unknown)}; it takes "
                        f"{', '.join(sorted(accepted)) or 'none'}")
    return LOSSES[name](**kwargs)


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


def use_deterministic_algorithms(mode: bool, warn_only: bool) -> None:
    """torch.use_deterministic_algorithms without its import of torch._inductor and dynamo
    (~1.1 CPU-s, a sixth of a small CPU run) just to set inductor's flag: imet compiles nothing.
    When something already loaded inductor, its flag is set too, as torch does."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # a torch without the private setter: the public call, import and all
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
        return
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = mode
    setter(mode, warn_only=warn_only)


class StepRunner:
    """One optimizer step, and the device-level choices behind it. Mixed precision is
    `Precision`'s (imet/device.py), off on CPU unless `--amp-dtype` names a dtype; channels_last
    only on CUDA. On CPU deterministic algorithms are on unless `--deterministic false`: that is
    what makes an interrupted run end bit-identical."""

    def __init__(self, config: TrainConfig, device: torch.device):
        self.config, self.device = config, device
        cuda = device.type == "cuda"
        self.precision = device_precision(device, config.amp, config.amp_dtype)
        self.channels_last = bool(config.channels_last and cuda)
        deterministic = config.deterministic if config.deterministic is not None else not cuda
        use_deterministic_algorithms(deterministic, warn_only=cuda)
        if cuda:
            torch.backends.cudnn.benchmark = not deterministic
        focal = {"alpha": config.focal_alpha, "gamma": config.focal_gamma}
        self.loss_fn = build_loss(config.loss,
                                  **(focal if config.loss == "focal" else {})).to(device)
        if config.teacher:  # the training targets carry the teacher's probabilities too
            self.loss_fn = DistillLoss(self.loss_fn, config.distill_weight,
                                       config.distill_temperature)

    def bind(self, state, data, wrap=None) -> None:
        """`wrap`: the model as it trains (DistributedDataParallel under torchrun), rebuilt
        whenever the stage changes which parameters train."""
        self.state, self.wrap = state, wrap or (lambda model: model)
        self._wrapped, self._wrapped_for = None, None
        self.norm = Normalization.from_info(getattr(state.model, "info", {}))
        # Only what needs gradients is clipped: the frozen body has none in stage 1.
        self.params = [p for group in state.groups.values() for p in group]

    def training_model(self) -> torch.nn.Module:
        key = (id(self.state.model), self.state.counters.stage)
        if key != self._wrapped_for:
            self._wrapped, self._wrapped_for = self.wrap(self.state.model), key
        return self._wrapped

    def device_name(self) -> str:
        return f"cuda:{torch.cuda.get_device_name(self.device)}" if self.device.type == "cuda" \
            else "cpu"

    def prepare(self, images: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        """A loader's uint8 batch -> the model's input on the device: augmented per batch when
        the batch carries `params` (see `imet.data.transforms`), then normalized."""
        images = images.to(self.device, non_blocking=True)
        images = (self.norm.apply_(augment_batch(images, params)) if params is not None
                  else normalize_batch(images, self.norm))
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def train_step(self, batch) -> float:
        state = self.state
        images = self.prepare(batch[0], batch[3] if len(batch) > 3 else None)
        targets = batch[1].to(self.device, non_blocking=True)
        if self.config.mixup_alpha > 0:
            images, targets, _ = mixup(images, targets, self.config.mixup_alpha,
                                       state.mix_generator)
        with self.precision.autocast(self.device.type):
            logits = self.training_model()(images)
        loss = self.loss_fn(logits.float(), targets)
        if state.hard_negatives is not None:
            state.hard_negatives.record(batch[2], per_sample_losses(self.loss_fn, logits, targets))
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        if self.config.grad_clip > 0:
            state.scaler.unscale_(state.optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in self.params if p.grad is not None],
                                           self.config.grad_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        if state.ema is not None:
            state.ema.update_parameters(state.model)
        return float(loss.detach())


@dataclass
class TrainResult:
    status: str                   # "finished" | "handover"
    exit_code: int
    step: int
    best_f2: float
    best_step: int
    checkpoint: str | None = None
    reason: str | None = None     # a handover's HANDOVER.json reason; "epochs" | "early_stop"
    history: list[dict[str, Any]] = field(default_factory=list)


def train(config: TrainConfig, bus: EventBus, *, clock: Callable[[], float] = time.monotonic,
          next_command: str | None = None, session_start: float | None = None,
          stop: StopRequest | None = None, kernel: str | None = None) -> TrainResult:
    """Train (or resume) one fold, emitting events on `bus`; returns how the session ended.
    `session_start`: when the session began on `clock` (default: now), so the budget counts the
    start-up before this call. `stop`: the StopRequest the caller installed before its start-up
    (Telegram's /stop may trigger it too); default: one installed here. `kernel`: the Kaggle
    kernel's id (owner/slug), for run_start."""
    config.validated()
    # Before the failure event below can leave a run.json: a foreign model writes nothing.
    init = load_init(config) if config.init or config.init_fingerprint else None
    dist = None
    try:
        budget = SessionBudget(config.budget_seconds(), config.margin_seconds(), clock=clock,
                               start=session_start)
        if budget.left() <= 0:
            raise UserError(budget.no_step_text(config.time_budget, config.margin))
        dist = distributed.start(config)  # under torchrun: joins the process group
        data = load_run_data(config)
        Path(config.out).mkdir(parents=True, exist_ok=True)
        result = Trainer(config, bus, data, clock=clock, next_command=next_command,
                         session_start=session_start, dist=dist, stop=stop, init=init,
                         kernel=kernel).run()
        dist.finish()
        return result
    except Exception as err:
        bus.emit(Failure(error=f"{type(err).__name__}: {err}",
                         traceback=traceback.format_exc(), user_error=isinstance(err, UserError),
                         exit_code=getattr(err, "exit_code", 1)))
        raise
    finally:
        if dist is not None:
            dist.close()


class Trainer:
    def __init__(self, config: TrainConfig, bus: EventBus, data: RunData,
                 clock: Callable[[], float] = time.monotonic, next_command: str | None = None,
                 session_start: float | None = None, dist: SingleProcess | None = None,
                 stop: StopRequest | None = None, init: dict | None = None,
                 kernel: str | None = None):
        self.config, self.kernel, self.bus, self.data = config, kernel, bus, data
        self.init = init  # --init's weights (imet.train.state), for a fresh start
        self.fingerprint = config.fingerprint()
        self.dist = dist or SingleProcess(resolve_device(config.device))
        self.device = self.dist.device
        self.steps = StepRunner(config, self.device)
        self.out, self.clock, self.next_command = Path(config.out), clock, next_command
        self.stop = stop if stop is not None else StopRequest()  # falsy until signalled
        self.budget = SessionBudget(config.budget_seconds(), config.margin_seconds(), clock=clock,
                                    start=session_start)
        self.last_save_at, self.last_save_step = clock(), -1
        self.last_checkpoint: Path | None = None
        self.resumed_from: int | None = None  # the step this session resumed at
        self.units_done = 0  # steps and evaluations of this session: a handover needs one
        self.version_change: str | None = None  # torch/CUDA of the checkpoint -> this session's

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self.state = state = self.build_state()
        log.info("precision on %s: %s", self.steps.device_name(), self.steps.precision.describe())
        # This session's figures (steps, samples, training time) are the counters minus these.
        self.at_session_start = dataclasses.replace(state.counters, history=[])
        self.steps.bind(state, self.data, wrap=self.dist.wrap)
        c = state.counters
        if c.finished:
            log.info("run %s already finished at step %d (best F2 %.4f at step %d)",
                     self.config.name(), c.step, c.best_f2, c.best_step)
            return self.result("finished", 0, c.stop_reason)
        if self.dist.is_main:
            remove_handover(self.out)
        self.emit_start()
        self.sampler = EpochBatchSampler(len(self.data.train_set), self.config.batch_size,
                                         c.sampler_seed, c.epoch, c.epoch_step, with_epoch=True,
                                         rank=self.dist.rank, world_size=self.dist.world_size,
                                         repeat_count=state.repeat_count)
        cuda = self.device.type == "cuda"
        loader, batches = train_loader(self.data, self.sampler, self.config, cuda), None
        self.val_batches = val_loader(self.dist.val_data(self.data), self.config, cuda)
        with self.stop:
            if self.config.init and c.init_f2 is None and not self.evaluate_untuned():
                return self.hand_over(self.agreed_stop(fits=lambda: True) or "budget")
            while True:
                if c.eval_pending:
                    if self.budget.eval.count == 0:
                        # Before the first evaluation of a session there is no measurement:
                        # assume a validation batch costs about what a training step did.
                        self.budget.eval.prior_s = len(self.val_batches) * self.budget.step.mean()
                    if reason := self.agreed_stop(self.budget.fits_eval):
                        return self.hand_over(reason)
                    if not self.run_evaluation():  # dropped by evaluation_must_stop
                        return self.hand_over(self.agreed_stop(fits=lambda: True) or "budget")
                    if c.epoch >= self.config.epochs and not c.finished:
                        c.finished, c.stop_reason = True, "epochs"
                    self.save()
                if c.finished or c.epoch >= self.config.epochs:
                    return self.finish(c.stop_reason or "epochs")
                if state.stage_due() != c.stage:
                    state.enter_stage(state.stage_due())
                session_steps = c.step - self.at_session_start.step
                if self.config.session_steps and session_steps >= self.config.session_steps:
                    return self.hand_over("session-steps")
                if reason := self.agreed_stop(self.budget.fits_step):
                    return self.hand_over(reason)
                if self.periodic_save_due():
                    self.save()
                if batches is None:
                    self.sampler.set_position(c.epoch, c.epoch_step, state.epoch_repeats())
                    batches = iter(loader)
                self.train_one_step(next(batches))
                if c.epoch_step == state.steps_per_epoch:  # the epoch is over
                    c.epoch, c.epoch_step, c.eval_pending, batches = c.epoch + 1, 0, True, None
                elif self.config.eval_every and c.step % self.config.eval_every == 0:
                    c.eval_pending = True

    # --- setup ----------------------------------------------------------------------------
    def build_state(self) -> TrainState:
        resume = choose_resume(self.config, self.fingerprint, self.data.labels.fingerprint(),
                               self.dist)
        state = build_train_state(self.config, self.data, self.dist, self.steps,
                                  fresh=resume is None, init=self.init)
        if resume is not None:
            restore_state(state, resume)
        if self.dist.is_main:
            tidy(checkpoint_dir(self.out), self.config.keep,
                 None if resume is None else state.counters.step)
        if resume is not None:
            if self.dist.is_main:
                bring_best_model(self.out, resume, state.counters.best_step)
            state.counters.session += 1
            self.resumed_from = self.last_save_step = state.counters.step
            self.last_checkpoint = resume.path
            log.info("resumed from %s (step %d, session %d)", resume.path, state.counters.step,
                     state.counters.session)
            self.version_change = version_change(resume, library_versions(),
                                                 warn=self.dist.is_main)
        return state

    # --- units of work --------------------------------------------------------------------
    def train_one_step(self, batch) -> None:
        c = self.state.counters
        self.step_lr = self.state.optimizer.param_groups[-1]["lr"]
        started = self.clock()
        loss = self.dist.mean(self.steps.train_step(batch))
        elapsed = self.clock() - started
        self.budget.step.add(elapsed)
        c.step, c.epoch_step, c.loss_count = c.step + 1, c.epoch_step + 1, c.loss_count + 1
        c.loss_sum += loss
        c.samples_seen += len(batch[0]) * self.dist.world_size
        c.train_time_s += elapsed
        self.units_done += 1
        self.emit_progress()

    def run_evaluation(self) -> bool:
        """False when the evaluation was dropped (see `evaluation_must_stop`)."""
        state, c = self.state, self.state.counters
        started = self.clock()
        result = self.dist.evaluate(self.steps, self.val_batches, self.data.val_targets,
                                    self.evaluation_must_stop)
        if result is None:
            return False
        self.budget.eval.add(self.clock() - started)
        self.units_done += 1
        is_best = state.record_evaluation(result)
        if is_best and self.dist.is_main:
            needed = expected_size(state.eval_model.state_dict())
            with room_for(self.out, MODEL_FILE, needed, remedy(self.config.keep)):
                save_model_file(self.out / MODEL_FILE, state.eval_model,
                                self.config.arch, self.config.to_dict(), self.data.labels,
                                extra={"step": c.step, "epoch": c.epoch, "f2": result.f2,
                                       "micro_f1": result.micro_f1, "metric": result.metric,
                                       "threshold": result.threshold})
        self.bus.emit(Evaluation(step=c.step, epoch=c.epoch, f2=result.f2,
                                 threshold=result.threshold, best_f2=c.best_f2,
                                 best_step=c.best_step, val_loss=result.val_loss,
                                 is_best=is_best, history=list(c.history)))
        return True

    def evaluate_untuned(self) -> bool:
        """--init: the model as it came, scored once on the fold's validation images before
        the first step, so the run can say what tuning gained. False when dropped (a stop)."""
        c, started = self.state.counters, self.clock()
        result = self.dist.evaluate(self.steps, self.val_batches, self.data.val_targets,
                                    self.evaluation_must_stop)
        if result is None:
            return False
        self.budget.eval.add(self.clock() - started)  # what the later evaluations will cost
        self.units_done += 1
        c.init_f2 = result.f2
        self.bus.emit(InitEvaluation(step=c.step, f2=result.f2, threshold=result.threshold,
                                     val_loss=result.val_loss, init=self.config.init))
        return True

    # --- stopping (the four notions: see the module docstring) ----------------------------
    def agreed_stop(self, fits: Callable[[], bool]) -> str | None:
        """"signal", "budget" or None, decided by all ranks together: one rank stopping alone
        would leave the others waiting in a collective."""
        signalled, no_room = self.dist.any_of(bool(self.stop), not fits())
        if signalled:
            self.stop.request("signal")
            return self.stop.reason
        return "budget" if no_room else None

    def evaluation_must_stop(self) -> bool:
        """A signal, or a budget about to run out: the evaluation is dropped and redone next
        session, since one killed mid-evaluation would lose everything since the last save."""
        return bool(self.stop) or self.budget.left() < self.budget.save.next()

    # --- saving and ending ----------------------------------------------------------------
    def periodic_save_due(self) -> bool:
        step = self.state.counters.step
        if step == self.last_save_step:
            return False
        by_steps = self.config.save_every and step > 0 and step % self.config.save_every == 0
        by_time = self.clock() - self.last_save_at >= self.config.save_every_min * 60
        return bool(by_steps or by_time)

    def save(self) -> Path:
        started = self.clock()
        step = self.state.counters.step
        # Rank 0 writes; the state is the same on every rank.
        path = (save_checkpoint(state_payload(self.state), self.out, step, self.config.keep)
                if self.dist.is_main else checkpoint_path(self.out, step))
        self.budget.save.add(self.clock() - started)
        self.last_save_at, self.last_save_step, self.last_checkpoint = self.clock(), step, path
        self.bus.emit(Checkpoint(step=step, path=str(path)))
        return path

    def hand_over(self, reason: str) -> TrainResult:
        if reason == "budget" and not self.units_done:  # the next session would do the same
            raise UserError(self.budget.no_step_text(self.config.time_budget,
                                                        self.config.margin))
        c = self.state.counters
        path = self.last_checkpoint if self.last_save_step == c.step else self.save()
        next_text, code = next_step_text(self.next_command), HANDED_OVER_EXIT_CODE
        if self.dist.is_main:
            write_handover(self.out, reason=reason, step=c.step, epoch=c.epoch, stage=c.stage,
                           checkpoint=str(path), next_text=next_text, exit_code=code,
                           signal=self.stop.signal_name, session=c.session,
                           total_steps=self.state.total_steps,
                           steps_taken=c.step - self.at_session_start.step)
        self.bus.emit(Handover(step=c.step, checkpoint=str(path), reason=reason,
                               next=next_text, exit_code=code))
        return self.result("handover", code, reason)

    def finish(self, reason: str) -> TrainResult:
        c = self.state.counters
        if not c.finished or self.last_save_step != c.step:
            c.finished, c.stop_reason = True, reason
            self.save()
        artifacts = [str(p) for p in (self.out / MODEL_FILE,) if p.is_file()]
        self.bus.emit(Finish(best_f2=c.best_f2, best_step=c.best_step, init_f2=c.init_f2,
                             duration_s=c.train_time_s, sessions=c.session,
                             artifacts=artifacts, history=list(c.history)))
        return self.result("finished", 0, reason)

    def result(self, status: str, exit_code: int, reason: str | None) -> TrainResult:
        c, path = self.state.counters, self.last_checkpoint
        return TrainResult(status, exit_code, c.step, c.best_f2, c.best_step,
                           str(path) if path else None, reason, list(c.history))

    # --- events ---------------------------------------------------------------------------
    def emit_start(self) -> None:
        state, c = self.state, self.state.counters
        # A resumed run's best so far, from its checkpoint; none before the first evaluation.
        best_f2, best_step, threshold = ((c.best_f2, c.best_step, c.best_threshold)
                                         if c.best_step >= 0 else (None, None, None))
        self.bus.emit(RunStart(
            run_name=self.config.name(), arch=self.config.arch, fold=self.config.fold,
            image_size=self.config.image_size, session=c.session, resumed_from=self.resumed_from,
            device=self.steps.device_name(), total_steps=state.total_steps,
            stage1_end_step=state.stage1_end_step, config_fingerprint=self.fingerprint,
            config=self.config.to_dict(), init_f2=c.init_f2, versions=library_versions(),
            version_change=self.version_change, kernel=self.kernel, rank=self.dist.rank,
            best_f2=best_f2, best_step=best_step, threshold=threshold, history=list(c.history)))

    def emit_progress(self) -> None:
        state, c, start = self.state, self.state.counters, self.at_session_start
        train_s = c.train_time_s - start.train_time_s  # this session's: see run()
        rate = (c.samples_seen - start.samples_seen) / train_s if train_s else 0.0
        self.bus.emit(Progress(
            stage=c.stage, epoch=c.epoch, step=c.step, total_steps=state.total_steps,
            epoch_step=c.epoch_step, steps_per_epoch=state.steps_per_epoch,
            stage1_end_step=state.stage1_end_step, config_fingerprint=self.fingerprint,
            loss=c.mean_loss(), lr=self.step_lr, img_per_s=rate,
            eta_run_s=(state.total_steps - c.step) * self.budget.step.mean(),
            session_left_s=self.budget.left()))
