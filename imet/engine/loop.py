"""The training loop: steps, evaluations, checkpoints, stage switch, budget and signal stops.

Work happens in units (a step, an evaluation); between units the loop is at a *boundary*, where
the TrainState is complete and can be saved. Every decision at a boundary is a function of the
state alone (is an evaluation pending, is the stage over, are the epochs done), so a run that
stops at any boundary and resumes takes the same path as one that never stopped.

Four notions of stopping, each under one name:
- `StopRequest` (self.stop): a SIGTERM/SIGINT asked this process to stop; set by the signal
  handler at any moment, read only at boundaries and between validation batches.
- budget fits (`SessionBudget.fits_step` / `fits_eval`): whether the next unit of work plus a
  checkpoint save still fits in what is left of the session.
- `agreed_stop(fits)`: the decision at a boundary, taken by all ranks together: "signal" when
  any rank's StopRequest is set, "budget" when `fits` fails on any rank, else None.
- `evaluation_must_stop`: asked between validation batches; a signal, or a budget about to run
  out, drops the evaluation, which the next session redoes from the saved boundary."""
from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from imet.device import resolve_device
from imet.engine import distributed, handover as handover_file
from imet.engine.budget import SessionBudget, StopRequest
from imet.engine.checkpoint import checkpoint_dir, save_checkpoint, tidy
from imet.engine.config import TrainConfig
from imet.engine.diskspace import expected_size, remedy, room_for
from imet.engine.distributed import SingleProcess
from imet.engine.events import EventBus
from imet.engine.init_model import load_init
from imet.engine.inputs import RunData, load_run_data, train_loader, val_loader
from imet.engine.resume import bring_best_model, choose_resume, version_change
from imet.engine.sampler import EpochBatchSampler
from imet.engine.state import TrainState, build_train_state, library_versions
from imet.engine.steps import StepRunner
from imet.errors import UserError
from imet.models.modelfile import save_model_file

log = logging.getLogger(__name__)


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


def train(config: TrainConfig, bus: EventBus, *, clock: Callable[[], float] = time.monotonic,
          next_command: str | None = None, session_start: float | None = None,
          stop: StopRequest | None = None) -> TrainResult:
    """Train (or resume) one fold; emits events on `bus`; returns how the session ended.

    `session_start`: when the session began on `clock` (default: now); the time budget counts
    from there, so start-up work done before this call is not forgotten. `stop`: the
    StopRequest the caller installed before its start-up, which a subscriber may trigger too
    (Telegram's /stop); default: one installed here."""
    config.validated()
    # Before the failure event below can leave a run.json: a foreign model writes nothing.
    init = load_init(config) if config.init or config.init_fingerprint else None
    dist = None
    try:
        spent = SessionBudget(config.budget_seconds(), config.margin_seconds(), clock=clock,
                              start=session_start)
        if spent.left() <= 0:
            raise UserError(spent.no_step_text(config.time_budget, config.margin))
        dist = distributed.start(config)  # under torchrun: joins the process group
        data = load_run_data(config)
        Path(config.out).mkdir(parents=True, exist_ok=True)
        result = Trainer(config, bus, data, clock=clock, next_command=next_command,
                         session_start=session_start, dist=dist, stop=stop, init=init).run()
        dist.finish()
        return result
    except Exception as err:
        bus.emit("failure", error=f"{type(err).__name__}: {err}",
                 traceback=traceback.format_exc(), user_error=isinstance(err, UserError),
                 exit_code=getattr(err, "exit_code", 1))
        raise
    finally:
        if dist is not None:
            dist.close()


class Trainer:
    def __init__(self, config: TrainConfig, bus: EventBus, data: RunData,
                 clock: Callable[[], float] = time.monotonic, next_command: str | None = None,
                 session_start: float | None = None, dist: SingleProcess | None = None,
                 stop: StopRequest | None = None, init: dict | None = None):
        self.config = config
        self.init = init  # --init's weights (imet.engine.init_model), for a fresh start
        self.fingerprint = config.fingerprint()
        self.dist = dist or SingleProcess(resolve_device(config.device))
        self.device = self.dist.device
        self.steps = StepRunner(config, self.device)
        self.bus, self.data = bus, data
        self.out = Path(config.out)
        self.clock = clock
        self.next_command = next_command
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
            handover_file.remove(self.out)
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
                    reason = self.agreed_stop(self.budget.fits_eval)
                    if reason:
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
                reason = self.agreed_stop(self.budget.fits_step)
                if reason:
                    return self.hand_over(reason)
                if self.periodic_save_due():
                    self.save()
                if batches is None:
                    self.sampler.set_position(c.epoch, c.epoch_step, state.epoch_repeats())
                    batches = iter(loader)
                self.train_one_step(next(batches))
                if c.epoch_step == state.steps_per_epoch:
                    c.epoch += 1
                    c.epoch_step = 0
                    c.eval_pending = True
                    batches = None
                elif self.config.eval_every and c.step % self.config.eval_every == 0:
                    c.eval_pending = True

    # --- setup ----------------------------------------------------------------------------
    def build_state(self) -> TrainState:
        resume = choose_resume(self.config, self.fingerprint, self.data.labels.fingerprint(),
                               self.dist)
        state = build_train_state(self.config, self.data, self.dist, self.steps, resume,
                                  self.init)
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
        c.step += 1
        c.epoch_step += 1
        c.loss_sum += loss
        c.loss_count += 1
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
        is_best = state.record_evaluation(result.f2, result.threshold, result.val_loss)
        if is_best and self.dist.is_main:
            needed = expected_size(state.eval_model.state_dict())
            with room_for(self.out, handover_file.MODEL_FILE, needed, remedy(self.config.keep)):
                save_model_file(self.out / handover_file.MODEL_FILE, state.eval_model,
                                self.config.arch, self.config.to_dict(), self.data.labels,
                                extra={"step": c.step, "epoch": c.epoch, "f2": result.f2,
                                       "threshold": result.threshold})
        self.bus.emit("evaluation", step=c.step, epoch=c.epoch, f2=result.f2,
                      threshold=result.threshold, best_f2=c.best_f2, best_step=c.best_step,
                      val_loss=result.val_loss, is_best=is_best, history=list(c.history))
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
        self.bus.emit("init_evaluation", step=c.step, f2=result.f2, threshold=result.threshold,
                      val_loss=result.val_loss, init=self.config.init)
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
        """A signal, or a budget about to run out: the evaluation is dropped and redone in the
        next session, since a session killed mid-evaluation would lose everything since the
        last checkpoint."""
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
        if self.dist.is_main:
            path = save_checkpoint(self.state.to_payload(), self.out, step, self.config.keep)
        else:  # rank 0 writes; the state is the same on every rank
            path = checkpoint_dir(self.out) / f"state-{step}.pt"
        self.budget.save.add(self.clock() - started)
        self.last_save_at, self.last_save_step, self.last_checkpoint = self.clock(), step, path
        self.bus.emit("checkpoint", step=step, path=str(path))
        return path

    def hand_over(self, reason: str) -> TrainResult:
        if reason == "budget" and not self.units_done:  # the next session would do the same
            raise UserError(self.budget.no_step_text(self.config.time_budget,
                                                        self.config.margin))
        c = self.state.counters
        path = self.last_checkpoint if self.last_save_step == c.step else self.save()
        next_text = handover_file.next_step_text(self.next_command)
        code = handover_file.EXIT_CODE
        if self.dist.is_main:
            handover_file.write(self.out, reason=reason, step=c.step, epoch=c.epoch,
                                stage=c.stage, checkpoint=str(path), next_text=next_text,
                                exit_code=code, signal=self.stop.signal_name,
                                session=c.session, total_steps=self.state.total_steps,
                                steps_taken=c.step - self.at_session_start.step)
        self.bus.emit("handover", step=c.step, checkpoint=str(path), reason=reason,
                      next=next_text, exit_code=code)
        return self.result("handover", code, reason)

    def finish(self, reason: str) -> TrainResult:
        c = self.state.counters
        if not c.finished or self.last_save_step != c.step:
            c.finished, c.stop_reason = True, reason
            self.save()
        artifacts = [str(p) for p in (self.out / handover_file.MODEL_FILE,) if p.is_file()]
        self.bus.emit("finish", best_f2=c.best_f2, best_step=c.best_step, init_f2=c.init_f2,
                      duration_s=c.train_time_s, sessions=c.session, artifacts=artifacts,
                      history=list(c.history))
        return self.result("finished", 0, reason)

    def result(self, status: str, exit_code: int, reason: str | None) -> TrainResult:
        c, path = self.state.counters, self.last_checkpoint
        return TrainResult(status, exit_code, c.step, c.best_f2, c.best_step,
                           str(path) if path else None, reason, list(c.history))

    # --- events ---------------------------------------------------------------------------
    def emit_start(self) -> None:
        state, c = self.state, self.state.counters
        self.bus.emit("run_start", run_name=self.config.name(), arch=self.config.arch,
                      fold=self.config.fold, image_size=self.config.image_size,
                      session=c.session, resumed_from=self.resumed_from,
                      device=self.steps.device_name(), total_steps=state.total_steps,
                      stage1_end_step=state.stage1_end_step,
                      config_fingerprint=self.fingerprint, config=self.config.to_dict(),
                      init_f2=c.init_f2,
                      versions=library_versions(), version_change=self.version_change,
                      kernel=None, rank=self.dist.rank)

    def emit_progress(self) -> None:
        state, c, start = self.state, self.state.counters, self.at_session_start
        train_s = c.train_time_s - start.train_time_s  # this session's: see run()
        rate = (c.samples_seen - start.samples_seen) / train_s if train_s else 0.0
        self.bus.emit("progress", stage=c.stage, epoch=c.epoch, step=c.step,
                      total_steps=state.total_steps, epoch_step=c.epoch_step,
                      steps_per_epoch=state.steps_per_epoch,
                      stage1_end_step=state.stage1_end_step,
                      config_fingerprint=self.fingerprint, loss=c.mean_loss(), lr=self.step_lr,
                      img_per_s=rate,
                      eta_run_s=(state.total_steps - c.step) * self.budget.step.mean(),
                      session_left_s=self.budget.left())
