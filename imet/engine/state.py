"""`TrainState`: everything that decides the future of a run, and its checkpoint payload.

The payload holds only tensors and plain Python values (RNG states included, converted), so
`torch.load(weights_only=True)` reads it back. Restoring a payload and continuing gives the
same bits as never having stopped: model, optimizer, scheduler, scaler, the position in the
sample order, the RNG streams and the running loss sums are all in it. The precision it trained
in goes into its meta: a session that would train in another is refused (`check_precision`)."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from imet import __version__
from imet.data.transforms import AUGMENTATION_VERSION
from imet.engine.config import TrainConfig
from imet.engine.checkpoint import FORMAT, VERSION
from imet.engine.ema import build_ema
from imet.engine.hard_negatives import build_hard_negatives, repeat_count
from imet.engine.optim import (build_optimizer, build_scheduler, keep_frozen_statistics,
                               set_trainable)
from imet.engine.precision import Precision
from imet.engine.prior import init_prior_bias
from imet.errors import CheckpointError, UserError
from imet.models import build_model


@dataclass
class Counters:
    """Plain numbers of a run; every field goes into the checkpoint as is."""
    stage: int = 1
    epoch: int = 0                # epochs completed
    epoch_step: int = 0           # batches done inside the current epoch
    step: int = 0                 # optimizer steps done in the whole run
    sampler_seed: int = 0
    best_f2: float = -1.0
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


def capture_rng() -> dict[str, Any]:
    version, state, gauss = random.getstate()
    np_state = np.random.get_state(legacy=True)
    rng = {
        # A tensor, not a list of 625 ints: the weights_only unpickler reads lists item by item.
        "python": [int(version), torch.tensor(state, dtype=torch.int64), gauss],
        "numpy": [str(np_state[0]), torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state.tolist()), gauss))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"] and torch.cuda.is_available():
        # A session may get another GPU count; restore what both have.
        for index, cuda_state in enumerate(rng["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)


def library_versions() -> dict[str, str]:
    # str(): torch's version is a TorchVersion object, which weights_only loading refuses.
    # torchvision's from its metadata: importing it costs seconds (it pulls in torch._dynamo).
    try:
        torchvision = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        torchvision = "absent"
    return {"imet": str(__version__), "torch": str(torch.__version__),
            "cuda": str(torch.version.cuda or "none"),
            "torchvision": torchvision, "numpy": str(np.__version__),
            "python": platform.python_version()}


class TrainState:
    def __init__(self, config: TrainConfig, model: torch.nn.Module,
                 groups: dict[str, list[torch.nn.Parameter]], steps_per_epoch: int,
                 labels: dict[str, Any], labels_fingerprint: str, precision: Precision,
                 device_type: str, num_samples: int = 0):
        self.config = config
        self.model = model
        self.groups = groups
        self.steps_per_epoch = steps_per_epoch
        self.labels = labels
        self.labels_fingerprint = labels_fingerprint
        self.counters = Counters(sampler_seed=config.seed)
        self.precision = precision
        self.scaler = precision.scaler(device_type)
        # Mixup draws from its own stream, saved with the state.
        self.mix_generator = torch.Generator().manual_seed(config.seed)
        self.ema = build_ema(model, config.ema)
        self.hard_negatives = build_hard_negatives(num_samples, config.hard_negatives,
                                                   config.seed)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.enter_stage(1 if config.head_epochs > 0 else 2)

    # --- stages -------------------------------------------------------------------------
    def stage_epochs(self, stage: int) -> range:
        head = self.config.head_epochs
        return range(0, head) if stage == 1 else range(head, self.config.epochs)

    def stage_steps(self, stage: int) -> int:
        return len(self.stage_epochs(stage)) * self.steps_per_epoch

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
        keep_frozen_statistics(self.model, self.groups, self.config.train_groups)
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
        if self.hard_negatives is None:
            return None
        return self.hard_negatives.for_epoch(self.counters.epoch)

    # --- evaluations ---------------------------------------------------------------------
    def record_evaluation(self, f2: float, threshold: float, val_loss: float) -> bool:
        """Book an evaluation of the model at the current step: history, best score, early
        stopping. True when it is the best so far."""
        c = self.counters
        is_best = f2 > c.best_f2
        c.history.append({"step": c.step, "epoch": c.epoch, "stage": c.stage,
                          "train_loss": c.mean_loss(), "val_loss": val_loss, "f2": f2,
                          "threshold": threshold, "lr": self.optimizer.param_groups[-1]["lr"]})
        c.loss_sum, c.loss_count = 0.0, 0
        c.last_eval_step = c.step
        c.eval_pending = False
        if is_best:
            c.best_f2, c.best_step, c.best_threshold, c.bad_evals = f2, c.step, threshold, 0
        elif c.stage == 2:  # the head-only warm-up does not count against patience
            c.bad_evals += 1
        if self.config.patience and c.bad_evals >= self.config.patience:
            c.finished, c.stop_reason = True, "early_stop"
        return is_best

    # --- checkpoint payload -------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        c = self.counters
        return {"config_fingerprint": self.config.fingerprint(),
                "labels_fingerprint": self.labels_fingerprint, "run_name": self.config.name(),
                "arch": self.config.arch, "fold": self.config.fold, "step": c.step,
                "epoch": c.epoch, "stage": c.stage, "finished": c.finished,
                "best_f2": c.best_f2, "session": c.session,
                "augmentation": AUGMENTATION_VERSION, "precision": self.precision.name}

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "meta": self.meta(),
            "config": self.config.to_dict(), "labels": self.labels,
            "counters": dataclasses.asdict(self.counters),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "hard_negatives": (self.hard_negatives.state_dict()
                               if self.hard_negatives is not None else None),
            "rng": {**capture_rng(), "mixup": self.mix_generator.get_state()},
            "versions": library_versions(),
        }

    def restore(self, payload: dict[str, Any]) -> None:
        counters = Counters(**payload["counters"])
        self.model.load_state_dict(payload["model"])
        self.enter_stage(counters.stage)
        self.counters = counters
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if payload["scaler"]:
            self.scaler.load_state_dict(payload["scaler"])
        restore_rng(payload["rng"])
        self.mix_generator.set_state(payload["rng"]["mixup"])
        if self.ema is not None:
            self.ema.load_state_dict(payload["ema"])
        if self.hard_negatives is not None:
            self.hard_negatives.load_state_dict(payload["hard_negatives"])


def saved_precision(payload: dict[str, Any]) -> str:
    """The precision a checkpoint trained in. An imet before --amp-dtype knew two: fp16 with
    a scaler state (AMP on CUDA) and fp32 without."""
    return payload["meta"].get("precision") or ("fp16" if payload["scaler"] else "fp32")


def _asked(config: dict[str, Any]) -> str:
    return f"--amp-dtype {config.get('amp_dtype', 'auto')}" if config.get("amp", True) \
        else "--no-amp"


def check_precision(resume, precision: Precision, config: TrainConfig, device_type: str) -> None:
    """CheckpointError when `resume` trained in another precision than this session would:
    its optimizer and scaler state, and the run's numbers, belong to the one it started in."""
    saved = saved_precision(resume.payload)
    if saved == precision.name:
        return
    hint = "--no-amp" if saved == "fp32" else f"--amp-dtype {saved}"
    raise CheckpointError(
        f"{resume.path}: the run trained in {saved} ({_asked(resume.payload['config'])}) and "
        f"this session would train in {precision.name} ({_asked(config.to_dict())} on "
        f"{device_type}); resume with {hint}, or start over with --resume off")


def build_train_state(config: TrainConfig, data, dist, steps, resume,
                      init: dict[str, torch.Tensor] | None = None) -> TrainState:
    """The TrainState a session starts from: the model built for `data`'s label space and
    placed as `dist` and the StepRunner `steps` want it, then `resume`'s payload restored (a
    fresh run seeds every RNG first: the head's initial weights come from the torch one). A
    fresh run with `init` (--init's weights) starts from them instead of ImageNet's."""
    if resume is None:
        random.seed(config.seed)
        np.random.seed(config.seed % 2 ** 32)
        torch.manual_seed(config.seed)
    fresh_body = resume is None and init is None
    model = build_model(config.arch, data.labels.num_classes,
                        pretrained=config.pretrained and fresh_body,
                        weights=config.weights if fresh_body else None,
                        search_roots=tuple(config.input_root), dropout=config.dropout)
    if resume is None and init is not None:
        model.load_state_dict(init)
    elif resume is None and config.prior_bias:  # --init's head has a bias of its own
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
    state = TrainState(config, model, model.param_groups(), epoch_samples // config.batch_size,
                       data.labels.to_dict(), data.labels.fingerprint(), steps.precision,
                       steps.device.type, num_samples=samples)
    if resume is not None:
        check_precision(resume, steps.precision, config, steps.device.type)
        state.restore(resume.payload)
    return state
