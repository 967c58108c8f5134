"""`--prior-bias`: the head's bias starts at each class's log-odds in the training labels.

A fresh linear head predicts about 0.5 for every class, while an iMet class is present in a few
percent of the images at most (a mini-iMet tag in 5-40%). Under BCE the first hundreds of steps
then go to pushing every logit down to its class's frequency, a shift the body's random features
are dragged along by. Starting the bias at log(p / (1 - p)) (the "prior" initialization of the
focal-loss paper, Lin et al. 2017) makes the first step's loss the labels' own entropy, and the
steps go to features. Done once, on a fresh run, before anything is placed on a device; the
bias is then part of the model's state, so a resumed run never recomputes it."""
from __future__ import annotations

import numpy as np
import torch

# A class seen in no (or every) training image still gets a finite bias: log-odds of 1e-4.
_CLIP = 1e-4


def class_log_odds(targets) -> np.ndarray:
    """float64 [C]: log(p / (1 - p)) of each class's mean target (hard or soft) over the rows."""
    prior = np.asarray(targets, dtype=np.float64).mean(axis=0)
    prior = np.clip(prior, _CLIP, 1 - _CLIP)
    return np.log(prior / (1 - prior))


def init_prior_bias(model: torch.nn.Module, targets) -> None:
    """Set the bias of `model`'s head linear layer to the class log-odds of `targets` [N, C]."""
    linear = model.head.linear
    log_odds = class_log_odds(targets)
    if log_odds.shape != linear.bias.shape:
        raise ValueError(f"targets have {log_odds.shape[0]} classes, the head "
                         f"{linear.bias.shape[0]}")
    with torch.no_grad():
        linear.bias.copy_(torch.from_numpy(log_odds).to(linear.bias.dtype))
