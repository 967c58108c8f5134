"""Honest F2 of a decoding: every mode's search is fitted on one half of the images and scored on
the other, both ways. The modes are the threshold searches of thresholds.py plus the
per-image `context` decoding of context.py."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imet.metrics.context import search_context
from imet.metrics.decode import binarize
from imet.metrics.f2 import f2_per_sample
from imet.metrics.thresholds import (DEFAULT_MIN_SUPPORT, SEARCH_MODES, check_truth,
                                     search_thresholds)

MODES = SEARCH_MODES + ("context",)


def fit_decoding(y_true, probs, groups=None, mode: str = "global",
                 min_support: int = DEFAULT_MIN_SUPPORT, grid=None, min_labels: int = 1,
                 max_labels=None) -> tuple[np.ndarray, float]:
    """(per-class thresholds [C], context ratio) of `mode`; the ratio is 0 except for context."""
    if mode == "context":
        return search_context(y_true, probs, groups, grid=grid, min_labels=min_labels,
                              max_labels=max_labels, min_support=min_support)
    return search_thresholds(y_true, probs, groups, mode, min_support, grid, min_labels,
                             max_labels), 0.0


@dataclass(frozen=True)
class CrossFit:
    """Honest F2 of a decoding search: chosen on one half of the samples, scored on the other,
    both ways. `f2_in_sample` (chosen and scored on all samples) minus `f2` is how much the
    search flatters itself; `thresholds` and `context` are fitted on all samples (use them for
    test)."""
    f2: float
    f2_halves: tuple[float, float]
    f2_in_sample: float
    thresholds: np.ndarray
    mode: str
    context: float = 0.0

    @property
    def optimism(self) -> float:
        return self.f2_in_sample - self.f2


def cross_fitted_f2(y_true, probs, groups=None, mode: str = "global",
                    min_support: int = DEFAULT_MIN_SUPPORT, grid=None, min_labels: int = 1,
                    max_labels=None, seed: int = 0) -> CrossFit:
    """Choose the decoding on a random half, score it on the other half and vice versa.
    The per-class minimum support applies within each half (half the data: fewer classes
    qualify, as they would with half the validation set)."""
    if mode not in MODES:
        raise ValueError(f"unknown threshold mode {mode!r}; choose one of {', '.join(MODES)}")
    y, probs = check_truth(y_true, probs)
    n = y.shape[0]
    if n < 2:
        raise ValueError("cross-fitting needs at least 2 samples")
    order = np.random.default_rng(seed).permutation(n)
    halves = (np.sort(order[: n // 2]), np.sort(order[n // 2:]))
    kw = dict(groups=groups, mode=mode, min_support=min_support, grid=grid,
              min_labels=min_labels, max_labels=max_labels)
    per_sample = np.empty(n, dtype=np.float64)
    for fit_on, score_on in (halves, halves[::-1]):
        thr, ratio = fit_decoding(y[fit_on], probs[fit_on], **kw)
        pred = binarize(probs[score_on], thr, min_labels, max_labels, ratio)
        per_sample[score_on] = f2_per_sample(y[score_on], pred)
    full, ratio = fit_decoding(y, probs, **kw)
    in_sample = f2_per_sample(y, binarize(probs, full, min_labels, max_labels, ratio)).mean()
    return CrossFit(f2=float(per_sample.mean()),
                    f2_halves=(float(per_sample[halves[0]].mean()),
                               float(per_sample[halves[1]].mean())),
                    f2_in_sample=float(in_sample), thresholds=full, mode=mode, context=ratio)
