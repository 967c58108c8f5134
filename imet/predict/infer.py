"""Running a model over a loader (`run_model`): the one forward path of training's evaluation,
validate, predict and pseudo-label, and the one way their F2 is scored (`score`).

Each image is decoded and resized once; the TTA views are made on the batch tensor on the device
(`apply_tta`) and run as one concatenated batch: a 2x TTA costs one bigger forward pass, not a
second pass over the loader. Autocast in the run's precision (imet/device.py: fp16 on a T4, bf16
from Ampere on, fp32 on CPU by default), channels_last on CUDA (training: with --channels-last);
probabilities are averaged over the views in float32."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from imet.data.transforms import (TTA, ImetDataset, Normalization, apply_tta, build_eval_transform,
                                  normalize_batch, stack_images)
from imet.config import close_match
from imet.device import Precision, device_precision
from imet.errors import DataError, UserError
from imet.metrics.f2 import binarize, describe_scores, f2_score, micro_f1_score
from imet.metrics.thresholds import best_global_threshold

Log = Callable[[str], None]


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_tta(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """"none,hflip" -> ("none", "hflip"); UserError naming an unknown transform."""
    if spec is None or spec == "":
        return ("none",)
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    unknown = [n for n in names if n not in TTA]
    if unknown or not names:
        near = close_match(unknown[0], TTA) if unknown else None
        raise UserError(f"--tta: unknown transform {unknown[0] if unknown else spec!r}"
                        + (f" (did you mean {near}?)" if near else "")
                        + f"; choose a comma-separated list of {', '.join(sorted(TTA))}")
    if len(set(names)) != len(names):
        raise UserError(f"--tta: {','.join(names)} repeats a transform; list each once")
    return tuple(names)


def check_images_exist(paths: Sequence[Path], source: str) -> None:
    """DataError naming the first missing image before any long work starts. One listing per
    folder instead of one stat per image (38k stats on a network disk are slow)."""
    present: dict[Path, set[str]] = {}
    missing = []
    for path in paths:
        folder = path.parent
        if folder not in present:
            present[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
        if path.name not in present[folder]:
            missing.append(path)
    if missing:
        raise DataError(f"{missing[0]}: image not found (listed in {source}; {len(missing)} of "
                        f"{len(paths)} missing); restore the image folder or fix {source}")


class _ErrorsAsValues(Dataset):
    """Returns a DataError's message instead of raising it: a worker's exception reaches the
    main process wrapped in a multi-line traceback text; this keeps the one-line message."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            image, _, position = self.dataset[index]
            return image, position
        except UserError as err:
            return str(err), index


def _collate(items):
    for image, _ in items:
        if isinstance(image, str):
            return image, None
    images = stack_images([image for image, _ in items])
    positions = torch.as_tensor([int(p) for _, p in items], dtype=torch.long)
    return images, positions


def build_loader(image_paths: Sequence[Path], image_size: int, batch_size: int,
                 num_workers: int | None = None, pin_memory: bool = False,
                 preset: str = "resize") -> DataLoader:
    # The geometry of the run's training preset, as the engine evaluates it, so validate's F2
    # without TTA is the F2 training reported. uint8 images: a quarter of the bytes to collate
    # and copy; normalized on the device.
    transform = build_eval_transform(image_size, preset)
    dataset = _ErrorsAsValues(ImetDataset(list(image_paths), None, transform, seed=0,
                                          normalize=None))
    if num_workers is None:
        num_workers = min(4, os.cpu_count() or 1)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=_collate, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None)


class Throughput:
    """img/s and ETA every `every_s` seconds; one warning when the ETA passes the time limit."""

    def __init__(self, total: int, log: Log, every_s: float = 30.0,
                 time_limit_s: float | None = None, label: str = "predict"):
        self.total, self.log, self.every_s = total, log, every_s
        self.time_limit_s, self.label = time_limit_s, label
        self.start = self.last = time.perf_counter()
        self.done, self.warned = 0, False

    def update(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self.last < self.every_s and self.done < self.total:
            return
        self.last = now
        elapsed = now - self.start
        rate = self.done / max(elapsed, 1e-9)
        eta = (self.total - self.done) / max(rate, 1e-9)
        self.log(f"{self.label}: {self.done}/{self.total} images, {rate:.1f} img/s, "
                 f"ETA {eta / 60:.1f} min")
        if (self.time_limit_s is not None and not self.warned and self.done < self.total
                and elapsed + eta > self.time_limit_s):
            self.warned = True
            self.log(f"{self.label}: WARNING: at {rate:.1f} img/s this needs "
                     f"{(elapsed + eta) / 3600:.2f} h, more than the {self.time_limit_s / 3600:.2f}"
                     " h time limit; use fewer TTA views, fewer runs, a smaller image size or a "
                     "faster accelerator")


def run_model(model: torch.nn.Module, batches: Iterable, device: torch.device,
              precision: Precision, norm: Normalization, *, tta: Sequence[str] = ("none",),
              channels_last: bool = False, loss_fn: Callable | None = None,
              should_stop: Callable[[], bool] | None = None,
              progress: Throughput | None = None) -> tuple[np.ndarray, float] | None:
    """(sigmoid probabilities float32 [N, C] in batch order, averaged over the `tta` views;
    mean `loss_fn` over the images, nan without one), or None when `should_stop()` held before
    a batch. `batches` yield (uint8 images, targets, ...), targets read only with a `loss_fn`;
    a string for the images is `build_loader`'s message for an unreadable image. The model
    stays where the caller put it; each layer's train/eval mode comes back afterwards (a
    frozen group's BatchNorm stays in eval during training)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    views = len(tta)
    parts, loss_sum, count = [], 0.0, 0
    try:
        with torch.inference_mode():
            for batch in batches:
                if should_stop is not None and should_stop():
                    return None
                if isinstance(batch[0], str):
                    raise DataError(batch[0])
                x = normalize_batch(batch[0].to(device, non_blocking=True), norm)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                views_batch = torch.cat([apply_tta(name, x) for name in tta]) if views > 1 \
                    else apply_tta(tta[0], x)
                with precision.autocast(device.type):
                    logits = model(views_batch)
                logits = logits.float()
                if loss_fn is not None:
                    targets = batch[1].to(device, non_blocking=True)
                    loss_sum += float(loss_fn(logits, targets)) * len(x)
                count += len(x)
                parts.append(torch.sigmoid(logits).view(views, len(x), -1).mean(0).cpu().numpy())
                if progress is not None:
                    progress.update(len(x))
    finally:
        for module, training in modes:
            module.train(training)
    if not parts:
        raise UserError("predict: no images to predict")
    return np.concatenate(parts), (loss_sum / count if loss_fn is not None else float("nan"))


def predict_probs(model: torch.nn.Module, loader: DataLoader, tta: Sequence[str] = ("none",),
                  device: torch.device | str = "cpu", precision: Precision | None = None,
                  progress: Throughput | None = None,
                  norm: Normalization | None = None) -> np.ndarray:
    """`run_model`'s probabilities of `model` placed on `device` (channels_last on CUDA).
    `norm` None: the model's `info`; `precision` None: `--amp-dtype auto`'s on the device."""
    device = torch.device(device)
    norm = norm or Normalization.from_info(getattr(model, "info", {}) or {})
    cuda = device.type == "cuda"
    precision = precision or device_precision(device, True, "auto")
    model = model.to(device, memory_format=torch.channels_last if cuda else torch.contiguous_format)
    return run_model(model, loader, device, precision, norm, tta=tta, channels_last=cuda,
                     progress=progress)[0]


def auto_batch_size(model: torch.nn.Module, image_size: int, views: int,
                    device: torch.device | str, start: int = 256, cpu_default: int = 32,
                    precision: Precision | None = None) -> int:
    """The largest power-of-two batch (images, before TTA) whose forward pass in `precision`
    (None: auto's) fits in GPU memory, halved once more for headroom; `cpu_default` on CPU,
    where memory is not the limit."""
    device = torch.device(device)
    if device.type != "cuda":
        return cpu_default
    precision = precision or device_precision(device, True, "auto")
    model = model.to(device, memory_format=torch.channels_last).eval()
    batch = start
    while batch >= 2:
        try:
            x = torch.zeros(batch * views, 3, image_size, image_size, device=device)
            with torch.inference_mode(), precision.autocast("cuda"):
                model(x.contiguous(memory_format=torch.channels_last))
            del x
            torch.cuda.empty_cache()
            return max(1, batch // 2) if batch < start else batch
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            batch //= 2
    return 1


@dataclass
class Evaluation:
    f2: float
    threshold: float
    val_loss: float
    micro_f1: float = float("nan")
    metric: str = "f2"  # what `threshold` was tuned for, and what `score` is

    @property
    def score(self) -> float:
        return self.f2 if self.metric == "f2" else self.micro_f1

    def describe(self) -> str:
        """'F2 0.6123, micro-F1 0.5871', the tuned metric first."""
        return describe_scores(self.f2, self.micro_f1, self.metric)


def score(targets: np.ndarray, probs: np.ndarray, val_loss: float = float("nan"),
          metric: str = "f2") -> Evaluation:
    """The one way training reports and validate shows a run's score: at the global threshold
    of the default grid best for `metric`, default label limits; both metrics at that
    threshold."""
    truth = targets.astype(bool)
    threshold, _ = best_global_threshold(truth, probs, metric=metric)
    pred = binarize(probs, threshold)
    return Evaluation(f2_score(truth, pred), float(threshold), float(val_loss),
                      micro_f1_score(truth, pred), metric)
