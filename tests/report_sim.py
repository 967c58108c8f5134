"""Drive report/registry subscribers with the engine's real EventBus, emitting the events a
training session emits (fields as in CONTRACT.md). Shared by test_report_* and test_registry."""
from __future__ import annotations

import math

from imet.train.events import (
    Checkpoint,
    Evaluation,
    EventBus,
    Failure,
    Finish,
    Handover,
    Progress,
    RunStart,
)

STEPS_PER_EPOCH = 10
TOTAL_STEPS = 60
STAGE1_END_STEP = STEPS_PER_EPOCH  # one head-only epoch
CONFIG = {"arch": "resnet18", "epochs": 6, "head_epochs": 1, "lr": 3e-4, "image_size": 64,
          "notify": "telegram", "batch_size": 8}



class StepClock:
    """One second per reading: a deterministic stand-in for time.monotonic (throttles and
    session budgets then trip at the same step every run)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


def f2_at(step: int) -> float:
    return round(0.3 + 0.4 * (1 - math.exp(-step / 20)), 6)


def emit_session(bus: EventBus, run_name: str = "r18-f0", session: int = 1,
                 resumed_from: int | None = None, stop: int = TOTAL_STEPS,
                 end: str = "finish", eval_every: int = 10, config: dict | None = None,
                 kernel: str | None = "me/imet-train", fold: int = 0,
                 evaluate_at_resume: bool = False, config_fingerprint: str = "f1nger") -> None:
    """Steps resumed_from+1 .. stop, a progress event each step, an evaluation every
    `eval_every` steps (and a checkpoint after it); then a handover or finish (or a failure)."""
    best_f2, best_step, history = -1.0, None, []
    # The engine restores the best score and history of earlier sessions from its TrainState.
    for step in range(1, TOTAL_STEPS + 1):
        if step % eval_every == 0 and (resumed_from is None or step <= resumed_from):
            if f2_at(step) > best_f2:
                best_f2, best_step = f2_at(step), step
            history.append({"step": step, "f2": f2_at(step), "kind": "evaluation"})
    if resumed_from is None:
        best_f2, best_step, history = -1.0, None, []
    bus.emit(RunStart(run_name=run_name, arch="resnet18", fold=fold, image_size=64,
                      session=session, resumed_from=resumed_from, device="cpu",
                      total_steps=TOTAL_STEPS, stage1_end_step=STAGE1_END_STEP,
                      config_fingerprint=config_fingerprint, config=dict(config or CONFIG),
                      kernel=kernel, rank=0,
                      best_f2=best_f2 if best_step else None, best_step=best_step,
                      threshold=0.2 + best_step / 1000 if best_step else None,
                      history=list(history)))
    start = (resumed_from or 0) + 1
    if evaluate_at_resume and resumed_from:
        bus.emit(Evaluation(step=resumed_from, epoch=resumed_from // STEPS_PER_EPOCH,
                            f2=f2_at(resumed_from), threshold=0.25, best_f2=best_f2,
                            best_step=best_step, val_loss=0.5, is_best=False,
                            history=list(history)))
    for step in range(start, stop + 1):
        epoch, epoch_step = divmod(step - 1, STEPS_PER_EPOCH)
        bus.emit(Progress(stage=1 if step <= STEPS_PER_EPOCH else 2, epoch=epoch, step=step,
                          total_steps=TOTAL_STEPS, epoch_step=epoch_step + 1,
                          steps_per_epoch=STEPS_PER_EPOCH, stage1_end_step=STAGE1_END_STEP,
                          config_fingerprint=config_fingerprint, loss=1.0 / step,
                          lr=1e-4 * (1 + step % 7), img_per_s=123.4,
                          eta_run_s=(TOTAL_STEPS - step) * 0.5, session_left_s=1000.0))
        if step % eval_every == 0:
            f2 = f2_at(step)
            is_best = f2 > best_f2
            if is_best:
                best_f2, best_step = f2, step
            history.append({"step": step, "f2": f2, "kind": "evaluation"})
            bus.emit(Evaluation(step=step, epoch=epoch, f2=f2, threshold=0.2 + step / 1000,
                                best_f2=best_f2, best_step=best_step, val_loss=1.0 / step,
                                is_best=is_best, history=list(history)))
            bus.emit(Checkpoint(step=step, path=f"checkpoints/state-{step}.pt"))
    if end == "handover":
        bus.emit(Handover(step=stop, checkpoint=f"checkpoints/state-{stop}.pt",
                          reason="budget", next="push the trainer kernel again", exit_code=75))
    elif end == "finish":
        bus.emit(Finish(best_f2=best_f2, best_step=best_step, duration_s=12.5,
                        sessions=session, artifacts=["model.pt"], history=list(history)))
    elif end == "failure":
        bus.emit(Failure(error="RuntimeError: boom", traceback="Traceback ..."))
    bus.close()
