"""One evaluation of the model on the fold's validation images: probabilities, loss, F2."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from imet.metrics.thresholds import best_global_threshold


@dataclass
class Evaluation:
    f2: float
    threshold: float
    val_loss: float
    probs: np.ndarray


def predict_loader(model: torch.nn.Module, loader, device: torch.device, use_amp: bool,
                   prepare: Callable[[torch.Tensor], torch.Tensor], loss_fn,
                   should_stop: Callable[[], bool]):
    """(probs float32 [N, C], mean loss) or None when a stop was requested mid-way."""
    was_training = model.training
    model.eval()
    probs, loss_sum, count = [], 0.0, 0
    try:
        with torch.inference_mode():
            for images, targets, _ in loader:
                if should_stop():
                    return None
                images = prepare(images)
                targets = targets.to(device, non_blocking=True)
                with torch.autocast(device.type, enabled=use_amp):
                    logits = model(images)
                logits = logits.float()
                loss_sum += float(loss_fn(logits, targets)) * len(images)
                count += len(images)
                probs.append(torch.sigmoid(logits).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(probs), loss_sum / max(1, count)


def evaluate(model, loader, targets: np.ndarray, device, use_amp: bool,
             prepare: Callable[[torch.Tensor], torch.Tensor], loss_fn,
             should_stop: Callable[[], bool]) -> Evaluation | None:
    out = predict_loader(model, loader, device, use_amp, prepare, loss_fn, should_stop)
    if out is None:
        return None
    probs, val_loss = out
    threshold, f2 = best_global_threshold(targets.astype(bool), probs)
    return Evaluation(float(f2), float(threshold), float(val_loss), probs)
