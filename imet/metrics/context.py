"""Context-aware decoding (the 6th-place iMet idea): an image's threshold for a class is
`max(t, r * that image's top probability)`, with `t` per group (culture / tag) and one ratio `r`.

Why this search: for a fixed r, an entry can pass only when it reaches r * top, so masking the
other entries to 0 turns the problem into the ordinary per-group search of thresholds.py, exact
over its grid. Each candidate r costs one masked copy and one group search (~3.5 s CPU at iMet
scale), so r is searched coarse to fine: 0, 0.1 .. 0.9, then the two halfway points beside the
best. The best pair by in-sample F2 is kept (validate then cross-fits the whole search like
every other mode)."""
from __future__ import annotations

import numpy as np

from imet.metrics.decode import binarize, check_probs, context_passes
from imet.metrics.f2 import f2_score
from imet.metrics.thresholds import DEFAULT_MIN_SUPPORT, search_thresholds


def coarse_ratios() -> np.ndarray:
    """0 (no context: the plain group search is always a candidate) .. 0.9 in steps of 0.1."""
    return np.arange(0, 10, dtype=np.float64) / 10.0


def search_context(y_true, probs, groups=None, grid=None, ratios=None, min_labels: int = 1,
                   max_labels=None, min_support: int = DEFAULT_MIN_SUPPORT
                   ) -> tuple[np.ndarray, float]:
    """(per-class thresholds [C], ratio r) maximising the mean F2 of `binarize(probs,
    thresholds, min_labels, max_labels, context=r)`; thresholds are one per group."""
    probs = check_probs(probs)
    tried: dict[float, tuple[float, np.ndarray]] = {}

    def fit(ratio: float) -> None:
        masked = probs if ratio == 0 else np.where(context_passes(probs, ratio), probs, 0)
        thresholds = search_thresholds(y_true, masked, groups, mode="group", grid=grid,
                                       min_support=min_support, min_labels=min_labels,
                                       max_labels=max_labels)
        del masked
        tried[ratio] = (f2_score(y_true, binarize(probs, thresholds, min_labels, max_labels,
                                                  ratio)), thresholds)

    def best() -> float:
        # ties go to the smaller ratio: the decoding closer to plain thresholds
        return max(sorted(tried), key=lambda r: (round(tried[r][0], 12), -r))

    candidates = coarse_ratios() if ratios is None else np.asarray(ratios, dtype=np.float64)
    for ratio in candidates.tolist():
        fit(round(ratio, 6))
    if ratios is None:
        centre = best()
        for ratio in (centre - 0.05, centre + 0.05):
            if 0 < ratio < 1:
                fit(round(ratio, 6))
    chosen = best()
    return tried[chosen][1], chosen
