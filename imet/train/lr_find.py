"""The LR finder (`imet lr-find`, from the Open Images YOLO notes: find the LR before cycling
it): the run's model, data and stage-2 optimizer, the LR raised exponentially from `start_lr` to
`end_lr` over `steps` training steps. A thrown-away training run: nothing is written, and the
model is the one `imet train` would start from (same seeding and pretrained body); the
--train-groups train at `lr * their multiplier` as in stage 2. The sweep stops when the smoothed
loss diverges (above DIVERGED times its minimum, or not finite); the suggestion is the LR of its
steepest descent against log LR, up to its minimum (Smith 2017 / fastai's "steep" rule)."""
from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch.optim.lr_scheduler import LambdaLR

from imet.config import TrainConfig
from imet.device import resolve_device
from imet.errors import UserError
from imet.fileio import atomic_write_bytes
from imet.train.data import EpochBatchSampler, load_run_data, train_loader
from imet.train.distributed import SingleProcess
from imet.train.loop import StepRunner
from imet.train.state import build_optimizer, build_train_state

SMOOTHING = 0.98   # exponential smoothing of the loss, bias-corrected
DIVERGED = 4.0     # the sweep stops when the smoothed loss exceeds its minimum this many times
SKIP = 3           # the first smoothed values say little: neither divergence nor suggestion


class ExponentialSweep:
    """LambdaLR factor: 1 at step 0, `ratio` at step `steps - 1`. A callable object holding two
    numbers, as the schedules in imet.train.state."""

    def __init__(self, ratio: float, steps: int):
        self.ratio, self.steps = float(ratio), int(steps)

    def __call__(self, step: int) -> float:
        return self.ratio ** (step / max(1, self.steps - 1))


@dataclass
class Sweep:
    start_lr: float
    end_lr: float
    lrs: list[float] = field(default_factory=list)     # the head's LR at each step
    losses: list[float] = field(default_factory=list)  # raw training loss of each step
    smoothed: list[float] = field(default_factory=list)
    diverged: bool = False

    def suggestion(self) -> float:
        """The LR where the smoothed loss falls fastest against log LR, before its minimum."""
        if len(self.smoothed) < SKIP + 2:
            raise UserError(f"lr-find: only {len(self.smoothed)} steps ran before the loss "
                            "diverged; lower --start-lr or give more --steps")
        loss = np.asarray(self.smoothed)
        log_lr = np.log10(self.lrs)
        lowest = SKIP + int(np.argmin(loss[SKIP:]))
        window = slice(SKIP, max(lowest, SKIP + 2) + 1)
        slope = np.gradient(loss, log_lr)[window]
        return float(self.lrs[window.start + int(np.argmin(slope))])


def lr_find(config: TrainConfig, steps: int, start_lr: float, end_lr: float) -> Sweep:
    config.validated()
    if not 0 < start_lr < end_lr:
        raise UserError(f"lr-find: need 0 < --start-lr < --end-lr, got {start_lr} and {end_lr}")
    if steps < SKIP + 2:
        raise UserError(f"lr-find: --steps must be at least {SKIP + 2}, got {steps}")
    data = load_run_data(config)
    dist = SingleProcess(resolve_device(config.device))
    runner = StepRunner(config, dist.device)
    state = build_train_state(config, data, dist, runner)
    state.enter_stage(2)
    state.optimizer = build_optimizer(state.groups, dataclasses.replace(config, lr=start_lr), 2)
    state.scheduler = LambdaLR(state.optimizer, ExponentialSweep(end_lr / start_lr, steps))
    runner.bind(state, data)
    sampler = EpochBatchSampler(len(data.train_set), config.batch_size, config.seed,
                                with_epoch=True)
    loader = train_loader(data, sampler, config, dist.device.type == "cuda")
    sweep, average, epoch, batches = Sweep(start_lr, end_lr), 0.0, 0, iter(loader)
    while len(sweep.losses) < steps:
        batch = next(batches, None)
        if batch is None:  # a sweep longer than an epoch goes on into the next one
            epoch += 1
            sampler.set_position(epoch)
            batches = iter(loader)
            continue
        lr = state.optimizer.param_groups[-1]["lr"]
        loss = runner.train_step(batch)
        if not math.isfinite(loss):
            sweep.diverged = True
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        sweep.lrs.append(lr)
        sweep.losses.append(loss)
        sweep.smoothed.append(average / (1 - SMOOTHING ** len(sweep.losses)))
        low = min(sweep.smoothed[SKIP:] or [math.inf])
        if sweep.smoothed[-1] > DIVERGED * low:
            sweep.diverged = True
            break
    return sweep


def write_lr_plot(path: str | Path, lrs: list[float], losses: list[float],
                  smoothed: list[float], suggestion: float, title: str = "") -> Path:
    """Loss against LR (log scale), raw and smoothed, the suggestion marked."""
    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.plot(lrs, losses, color="lightgrey", linewidth=1, label="loss")
    ax.plot(lrs, smoothed, color="tab:blue", linewidth=2, label="smoothed loss")
    ax.axvline(suggestion, color="tab:red", linestyle="--",
               label=f"suggested LR {suggestion:.2e}")
    ax.set(xscale="log", xlabel="LR (head; the body groups get it times their multipliers)",
           ylabel="training loss", title=title or "LR finder")
    ax.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())
