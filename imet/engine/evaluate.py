"""One evaluation of the model on the fold's validation images: probabilities, loss, F2.

`evaluate(runner, loader, targets, should_stop)` is the whole interface: the StepRunner brings
the model (its TrainState's), the device, AMP, the input preparation and the loss. Under
torchrun each rank predicts its chunk of rows (`ProcessGroup.evaluate`) and scores the gathered
whole with the same `score`."""
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


def predict_loader(runner, loader, should_stop: Callable[[], bool]):
    """(probs float32 [N, C], mean loss) or None when a stop was requested mid-way."""
    model, device = runner.state.eval_model, runner.device
    # Each layer's own mode comes back afterwards: a frozen group's BatchNorm stays in eval.
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    probs, loss_sum, count = [], 0.0, 0
    try:
        with torch.inference_mode():
            for images, targets, _ in loader:
                if should_stop():
                    return None
                images = runner.prepare(images)
                targets = targets.to(device, non_blocking=True)
                with runner.precision.autocast(device.type):
                    logits = model(images)
                logits = logits.float()
                loss_sum += float(runner.loss_fn(logits, targets)) * len(images)
                count += len(images)
                probs.append(torch.sigmoid(logits).cpu().numpy())
    finally:
        for module, training in modes:
            module.train(training)
    return np.concatenate(probs), loss_sum / max(1, count)


def score(targets: np.ndarray, probs: np.ndarray, val_loss: float) -> Evaluation:
    """F2 at the best global threshold for the validation rows' probabilities."""
    threshold, f2 = best_global_threshold(targets.astype(bool), probs)
    return Evaluation(float(f2), float(threshold), float(val_loss), probs)


def evaluate(runner, loader, targets: np.ndarray,
             should_stop: Callable[[], bool]) -> Evaluation | None:
    out = predict_loader(runner, loader, should_stop)
    if out is None:
        return None
    probs, val_loss = out
    return score(targets, probs, val_loss)
