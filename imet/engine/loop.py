"""The training loop: steps, evaluations, checkpoints, stage switch, budget and signal stops.

Work happens in units (a step, an evaluation); between units the loop is at a *boundary*, where
the TrainState is complete and can be saved. Every decision at a boundary is a function of the
state alone (is an evaluation pending, is the stage over, are the epochs done), so a run that
stops at any boundary and resumes takes the same path as one that never stopped."""
from __future__ import annotations

import logging
import os
import random
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from imet.errors import UserError
from imet.engine import handover as handover_file
from imet.engine.budget import SessionBudget, StopRequest
from imet.engine.checkpoint import (checkpoint_dir, find_resume, load_checkpoint,
                                    save_checkpoint)
from imet.engine import distributed
from imet.engine.config import TrainConfig
from imet.engine.distributed import Distributed
from imet.engine.events import EventBus
from imet.engine.inputs import RunData, load_run_data, train_loader, val_loader
from imet.engine.sampler import EpochBatchSampler
from imet.engine.state import TrainState
from imet.engine.steps import StepRunner
from imet.models import build_model
from imet.models.modelfile import save_model_file

log = logging.getLogger(__name__)

EXIT_HANDOVER = 75  # EX_TEMPFAIL: "temporary failure, try again" -> push the kernel again


@dataclass
class TrainResult:
    status: str                   # "finished" | "handover"
    exit_code: int
    step: int
    best_f2: float
    best_step: int
    checkpoint: str | None = None
    reason: str | None = None     # handover: "budget" | "signal"; finished: "epochs" | "early_stop"
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    def __init__(self, config: TrainConfig, bus: EventBus, data: RunData,
                 clock: Callable[[], float] = time.monotonic, next_command: str | None = None,
                 session_start: float | None = None, dist: Distributed | None = None,
                 stop: StopRequest | None = None):
        self.config = config
        self.dist = dist or Distributed(distributed.resolve_device(config.device))
        self.bus = bus
        self.data = data
        self.out = Path(config.out)
        self.clock = clock
        self.next_command = next_command
        self.device = self.dist.device
        self.stop = StopRequest() if stop is None else stop  # falsy until requested
        self.budget = SessionBudget(config.budget_seconds(), config.margin_seconds(), clock=clock,
                                    start=session_start)
        self.session_start = clock()
        self.last_save_at = self.session_start
        self.last_save_step = -1
        self.last_checkpoint: Path | None = None
        self.session_samples = 0
        self.session_steps = 0
        self.session_train_s = 0.0
        self.resumed_from: int | None = None

    # --- setup ----------------------------------------------------------------------------
    def build_state(self) -> TrainState:
        cfg = self.config
        resume = self.find_resume()
        if resume is None:
            # Seeds first: the head's initial weights come from the torch RNG.
            random.seed(cfg.seed)
            np.random.seed(cfg.seed % 2 ** 32)
            torch.manual_seed(cfg.seed)
        model = build_model(cfg.arch, self.data.labels.num_classes,
                            pretrained=cfg.pretrained and resume is None, weights=
                            cfg.weights if resume is None else None,
                            search_roots=tuple(cfg.input_root), dropout=cfg.dropout)
        model = self.dist.prepare_model(model)
        model.to(self.device)
        if self.steps.channels_last:
            model.to(memory_format=torch.channels_last)
        sampler_len = len(self.data.train_set) // cfg.batch_size
        state = TrainState(cfg, model, model.param_groups(), sampler_len,
                           self.data.labels.to_dict(), self.data.labels.fingerprint(),
                           use_amp=self.steps.use_amp)
        if resume is not None:
            payload, path, found_at = resume
            state.restore(payload)
            if self.dist.is_main:
                self.bring_best_model(found_at, state.counters.best_step)
            state.counters.session += 1
            self.resumed_from = state.counters.step
            self.last_save_step = state.counters.step
            self.last_checkpoint = path
            log.info("resumed from %s (step %d, session %d)", path, state.counters.step,
                     state.counters.session)
        return state

    def find_resume(self):
        cfg = self.config
        config_fp, labels_fp = cfg.fingerprint(), self.data.labels.fingerprint()
        if cfg.resume == "off":
            return None
        if cfg.resume == "auto":
            # Rank 0 chooses (and may copy in) the checkpoint; the others load its choice.
            return self.dist.share_resume(
                lambda: find_resume(cfg.out, cfg.input_root, config_fp, labels_fp),
                lambda path: (load_checkpoint(path, config_fp, labels_fp), Path(path),
                              Path(path)))
        payload = load_checkpoint(cfg.resume, config_fp, labels_fp)
        return payload, Path(cfg.resume), Path(cfg.resume)

    def bring_best_model(self, checkpoint: Path, best_step: int) -> None:
        """A session resumed from another folder (Kaggle: the previous session's output) takes
        that run's model.pt along: the best model may come from an earlier session."""
        target = self.out / "model.pt"
        source = checkpoint.parent.parent / "model.pt"
        if best_step < 0 or source.resolve() == target.resolve():
            return
        if not source.is_file():
            if not target.is_file():
                log.warning("%s not found: the best model (step %d) of the resumed run is "
                            "missing; model.pt is written again at the next improvement",
                            source, best_step)
            return
        tmp = target.with_name(f".model.pt.tmp-{os.getpid()}")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self.steps = StepRunner(self.config, self.device)
        self.state = state = self.build_state()
        self.steps.bind(state, self.data, wrap=self.dist.wrap)
        c = state.counters
        if c.finished:
            log.info("run %s already finished at step %d (best F2 %.4f at step %d)",
                     self.config.name(), c.step, c.best_f2, c.best_step)
            return self.result("finished", 0, c.stop_reason)
        if self.dist.is_main:
            handover_file.remove(self.out)
        self.emit_start()
        self.sampler = EpochBatchSampler(len(self.data.train_set), self.config.batch_size,
                                         c.sampler_seed, c.epoch, c.epoch_step, with_epoch=True,
                                         rank=self.dist.rank, world_size=self.dist.world_size)
        loader = train_loader(self.data, self.sampler, self.config, self.device.type == "cuda")
        self.val_batches = val_loader(self.dist.val_data(self.data), self.config,
                                      self.device.type == "cuda")
        batches = None
        with self.stop:
            while True:
                if c.eval_pending:
                    if self.budget.eval.count == 0:
                        # Before the first evaluation of a session there is no measurement:
                        # assume a validation batch costs about what a training step did.
                        self.budget.eval.prior_s = len(self.val_batches) * self.budget.step.mean()
                    reason = self.agreed_stop(self.budget.fits_eval)
                    if reason:
                        return self.hand_over(reason)
                    if not self.run_evaluation():
                        return self.hand_over(self.agreed_stop(lambda: True) or "budget")
                    if c.epoch >= self.config.epochs and not c.finished:
                        c.finished, c.stop_reason = True, "epochs"
                    self.save()
                if c.finished or c.epoch >= self.config.epochs:
                    return self.finish(c.stop_reason or "epochs")
                if state.stage_due() != c.stage:
                    state.enter_stage(state.stage_due())
                if self.config.session_steps and self.session_steps >= self.config.session_steps:
                    return self.hand_over("session-steps")
                reason = self.agreed_stop(self.budget.fits_step)
                if reason:
                    return self.hand_over(reason)
                if self.periodic_save_due():
                    self.save()
                if batches is None:
                    self.sampler.set_position(c.epoch, c.epoch_step)
                    batches = iter(loader)
                self.train_one_step(next(batches))
                if c.epoch_step == state.steps_per_epoch:
                    c.epoch += 1
                    c.epoch_step = 0
                    c.eval_pending = True
                    batches = None
                elif self.config.eval_every and c.step % self.config.eval_every == 0:
                    c.eval_pending = True

    def train_one_step(self, batch) -> None:
        c = self.state.counters
        self.step_lr = self.state.optimizer.param_groups[-1]["lr"]
        started = self.clock()
        loss = self.dist.mean(self.steps.train_step(batch))
        elapsed = self.clock() - started
        self.budget.step.add(elapsed)
        batch_size = len(batch[0]) * self.dist.world_size
        c.step += 1
        c.epoch_step += 1
        c.loss_sum += loss
        c.loss_count += 1
        c.samples_seen += batch_size
        c.train_time_s += elapsed
        self.session_samples += batch_size
        self.session_steps += 1
        self.session_train_s += elapsed
        self.emit_progress()

    def evaluation_must_stop(self) -> bool:
        """A signal, or a budget about to run out: the evaluation is dropped and redone in the
        next session, since a session killed mid-evaluation would lose everything since the
        last checkpoint."""
        return bool(self.stop) or self.budget.left() < self.budget.save.next()

    def run_evaluation(self) -> bool:
        state, c = self.state, self.state.counters
        started = self.clock()
        result = self.dist.evaluate(state.model, self.val_batches,
                          self.data.val_targets, self.device, self.steps.use_amp,
                          self.steps.prepare, self.steps.loss_fn, self.evaluation_must_stop)
        if result is None:
            return False
        self.budget.eval.add(self.clock() - started)
        is_best = result.f2 > c.best_f2
        row = {"step": c.step, "epoch": c.epoch, "stage": c.stage,
               "train_loss": c.loss_sum / c.loss_count if c.loss_count else float("nan"),
               "val_loss": result.val_loss, "f2": result.f2, "threshold": result.threshold,
               "lr": state.optimizer.param_groups[-1]["lr"]}
        c.history.append(row)
        c.loss_sum, c.loss_count = 0.0, 0
        c.last_eval_step = c.step
        c.eval_pending = False
        if is_best:
            c.best_f2, c.best_step, c.best_threshold, c.bad_evals = \
                result.f2, c.step, result.threshold, 0
        if is_best and self.dist.is_main:
            save_model_file(self.out / "model.pt", state.model, self.config.arch,
                            self.config.to_dict(), self.data.labels,
                            extra={"step": c.step, "epoch": c.epoch, "f2": result.f2,
                                   "threshold": result.threshold})
        elif c.stage == 2:  # the head-only warm-up does not count against patience
            c.bad_evals += 1
        if self.config.patience and c.bad_evals >= self.config.patience:
            c.finished, c.stop_reason = True, "early_stop"
        self.bus.emit("evaluation", step=c.step, epoch=c.epoch, f2=result.f2,
                      threshold=result.threshold, best_f2=c.best_f2, best_step=c.best_step,
                      val_loss=result.val_loss, is_best=is_best, history=list(c.history))
        return True

    # --- saving and stopping --------------------------------------------------------------
    def agreed_stop(self, fits: Callable[[], bool]) -> str | None:
        """"signal", "budget" or None, decided by all ranks together: one rank stopping alone
        would leave the others waiting in a collective."""
        signalled, no_room = self.dist.any_of(bool(self.stop), not fits())
        if signalled:
            self.stop.request("signal")
            return self.stop.reason
        return "budget" if no_room else None

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
        if self.dist.is_main:
            path = save_checkpoint(self.state.to_payload(), self.out, step)
        else:  # rank 0 writes; the state is the same on every rank
            path = checkpoint_dir(self.out) / f"state-{step}.pt"
        self.budget.save.add(self.clock() - started)
        self.last_save_at, self.last_save_step, self.last_checkpoint = self.clock(), step, path
        self.bus.emit("checkpoint", step=step, path=str(path))
        return path

    def hand_over(self, reason: str) -> TrainResult:
        c = self.state.counters
        path = self.last_checkpoint if self.last_save_step == c.step else self.save()
        next_text = handover_file.next_step_text(self.next_command)
        if self.dist.is_main:
            handover_file.write(self.out, reason=reason, step=c.step, epoch=c.epoch,
                                stage=c.stage, checkpoint=str(path), next_text=next_text,
                                exit_code=EXIT_HANDOVER, signal=self.stop.signal_name,
                                session=c.session, total_steps=self.state.total_steps)
        self.bus.emit("handover", step=c.step, checkpoint=str(path), reason=reason,
                      next=next_text, exit_code=EXIT_HANDOVER)
        return self.result("handover", EXIT_HANDOVER, reason)

    def finish(self, reason: str) -> TrainResult:
        c = self.state.counters
        if not c.finished or self.last_save_step != c.step:
            c.finished, c.stop_reason = True, reason
            self.save()
        artifacts = [str(p) for p in (self.out / "model.pt",) if p.is_file()]
        self.bus.emit("finish", best_f2=c.best_f2, best_step=c.best_step,
                      duration_s=c.train_time_s, sessions=c.session, artifacts=artifacts,
                      history=list(c.history))
        return self.result("finished", 0, reason)

    def result(self, status: str, exit_code: int, reason: str | None) -> TrainResult:
        c = self.state.counters
        return TrainResult(status, exit_code, c.step, c.best_f2, c.best_step,
                           str(self.last_checkpoint) if self.last_checkpoint else None,
                           reason, list(c.history))

    # --- events ---------------------------------------------------------------------------
    def emit_start(self) -> None:
        c = self.state.counters
        self.bus.emit("run_start", run_name=self.config.name(), arch=self.config.arch,
                      fold=self.config.fold, image_size=self.config.image_size,
                      session=c.session, resumed_from=self.resumed_from,
                      device=self.steps.device_name(), total_steps=self.state.total_steps,
                      config=self.config.to_dict(), kernel=None, rank=self.dist.rank)

    def emit_progress(self) -> None:
        state, c = self.state, self.state.counters
        rate = self.session_samples / self.session_train_s if self.session_train_s else 0.0
        steps_left = state.total_steps - c.step
        mean_step = self.budget.step.mean()
        self.bus.emit("progress", stage=c.stage, epoch=c.epoch, step=c.step,
                      total_steps=state.total_steps, epoch_step=c.epoch_step,
                      steps_per_epoch=state.steps_per_epoch,
                      loss=c.loss_sum / c.loss_count if c.loss_count else float("nan"),
                      lr=self.step_lr, img_per_s=rate,
                      eta_run_s=steps_left * mean_step, session_left_s=self.budget.left())


def train(config: TrainConfig, bus: EventBus, *, clock: Callable[[], float] = time.monotonic,
          next_command: str | None = None, session_start: float | None = None,
          stop: StopRequest | None = None) -> TrainResult:
    """Train (or resume) one fold; emits events on `bus`; returns how the session ended.

    `session_start`: when the session began on `clock` (default: now); the time budget counts
    from there, so start-up work done before this call is not forgotten. `stop`: the session's
    stop request when a subscriber may ask for a stop too (a chat command); default: a new one."""
    config.validated()
    dist = None
    try:
        dist = distributed.start(config)  # under torchrun: joins the process group
        data = load_run_data(config)
        Path(config.out).mkdir(parents=True, exist_ok=True)
        return Trainer(config, bus, data, clock=clock, next_command=next_command,
                       session_start=session_start, dist=dist, stop=stop).run()
    except Exception as err:
        bus.emit("failure", error=f"{type(err).__name__}: {err}",
                 traceback=traceback.format_exc(), user_error=isinstance(err, UserError))
        raise
    finally:
        if dist is not None:
            dist.close()
