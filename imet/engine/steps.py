"""One optimizer step, and the device-level choices behind it (AMP, channels_last, determinism).

Mixed precision is `Precision`'s (imet/engine/precision.py): the same autocast and GradScaler
lines on every device, off on CPU unless `--amp-dtype` names a dtype. channels_last pays off only
on CUDA and is off on CPU whatever the config says. On CPU deterministic algorithms are on
unless `--deterministic false`: that is what makes an interrupted run end bit-identical."""
from __future__ import annotations

import sys

import torch

from imet.data.batch_augment import augment_batch
from imet.data.transforms import Normalization, normalize_batch
from imet.engine.config import TrainConfig
from imet.engine.hard_negatives import per_sample_losses
from imet.engine.losses import DistillLoss, build_loss, mixup
from imet.engine.precision import device_precision


def loss_kwargs(config: TrainConfig) -> dict:
    if config.loss == "focal":
        return {"alpha": config.focal_alpha, "gamma": config.focal_gamma}
    return {}


def use_deterministic_algorithms(mode: bool, warn_only: bool) -> None:
    """torch.use_deterministic_algorithms without its import of torch._inductor (and with it
    dynamo: ~1.1 CPU-s, a sixth of a small CPU run), only to set inductor's own flag, which
    steers compiled code alone. imet compiles nothing; when something in this process already
    loaded inductor, its flag is set too, as torch does."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # a torch without the private setter: the public call, import and all
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
        return
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = mode
    setter(mode, warn_only=warn_only)


class StepRunner:
    def __init__(self, config: TrainConfig, device: torch.device):
        self.config = config
        self.device = device
        cuda = device.type == "cuda"
        self.precision = device_precision(device, config.amp, config.amp_dtype)
        self.channels_last = bool(config.channels_last and cuda)
        deterministic = config.deterministic if config.deterministic is not None else not cuda
        use_deterministic_algorithms(deterministic, warn_only=cuda)
        if cuda:
            torch.backends.cudnn.benchmark = not deterministic
        self.loss_fn = build_loss(config.loss, **loss_kwargs(config)).to(device)
        if config.teacher:  # the training targets carry the teacher's probabilities too
            self.loss_fn = DistillLoss(self.loss_fn, config.distill_weight,
                                       config.distill_temperature)

    def bind(self, state, data, wrap=None) -> None:
        """`wrap`: the model as it trains (DistributedDataParallel under torchrun), rebuilt
        whenever the stage changes which parameters train."""
        self.state = state
        self.wrap = wrap or (lambda model: model)
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
        if self.device.type == "cuda":
            return f"cuda:{torch.cuda.get_device_name(self.device)}"
        return "cpu"

    def prepare(self, images: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        """A loader's uint8 batch -> the model's input on the device: augmented per batch when
        the batch carries `params` (see `imet.data.batch_augment`), then normalized."""
        images = images.to(self.device, non_blocking=True)
        if params is not None:
            images = self.norm.apply_(augment_batch(images, params))
        else:
            images = normalize_batch(images, self.norm)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def train_step(self, batch) -> float:
        state = self.state
        images, targets = batch[0], batch[1]
        images = self.prepare(images, batch[3] if len(batch) > 3 else None)
        targets = targets.to(self.device, non_blocking=True)
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
