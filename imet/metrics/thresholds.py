"""Choosing a decoding for a metric (imet.metrics.f2.METRICS: the sample-averaged F2, or the
micro-F1 of all entries pooled) on validation predictions: one global
threshold, one per group (each attribute name's prefix: culture / tag in 2019, five groups in
2020-21), one per class falling back to its group's below a
minimum support, or per-group thresholds with an image-relative context ratio; and
cross-fitting, which scores any of these honestly.

Why not a plain grid loop: iMet validation is 109k x 1103 probabilities, 100 thresholds one by
one are 100 passes over 120M entries. Instead every entry is bucketed ONCE into the grid
(`np.searchsorted`); per-row bucket counts of all / true entries (`np.bincount`) give, by a
suffix sum, every row's predicted and true-positive counts at EVERY grid threshold, and the metric
follows: exactly the curve a brute-force loop over `binarize` gives, for about one pass. Both
metrics are sums over rows of per-row statistics (F2: each row's F2; micro-F1: its true
positives and predicted labels, pooled, then 2 TP / (true + predicted)), so every search below
accumulates the same per-row counts and only the last step (`_Scorer.finish`) differs.

Per group and per class: coordinate ascent, each step exact over the grid for its coordinate.
Groups: the same pass stores each row's counts per group at every threshold (uint16), so a step
only adds the other groups' counts at their current thresholds. Classes: with the others fixed,
a sample's gain from predicting the class (in F2, or in pooled true positives and predicted
labels) is known in closed form, so the metric at every grid threshold of that class is a bucketed suffix sum of gains over the samples reaching the lowest
grid threshold. Per-class thresholds start from the group thresholds (also the fallback below
`min_support` positives); ties pick the middle of the best plateau. The result is a local
optimum: no single threshold can be improved.

min_labels / max_labels (see imet.metrics.f2) are modelled as: fewer than `min_labels` passing ->
the top-`min_labels` labels; more than `max_labels` -> the top-`max_labels`. That is exactly
`binarize` for global thresholds (the passing set is always a top set) and, for any thresholds,
with min_labels <= 1 and no max_labels (the default); otherwise group/class searches optimise
this close model. The returned scores are always recomputed with `binarize`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from imet.metrics.f2 import (METRICS, binarize, check_label_limits, check_metric, check_probs,
                             context_passes, f2_from_counts, metric_score,
                             micro_f1_from_counts, top_k_indices)

SEARCH_MODES = ("global", "group", "class")
DEFAULT_MIN_SUPPORT = 20
# Entries bucketed per chunk: bounds the temporary int64 arrays to ~32 MB each.
_CHUNK_ENTRIES = 1 << 22
_CLASS_BLOCK = 64


def default_grid() -> np.ndarray:
    """0.005 .. 0.995 in steps of 0.005: finer than anyone tunes by hand, and nearly free here."""
    return np.arange(1, 200, dtype=np.float64) / 200.0


def _check_grid(grid) -> np.ndarray:
    grid = default_grid() if grid is None else np.asarray(grid, dtype=np.float64).ravel()
    if grid.size == 0 or np.isnan(grid).any():
        raise ValueError("the threshold grid must hold at least one number and no NaN")
    return np.unique(grid)


class _Scorer:
    """The metric as a function of every row's (predicted count, true positives), min/max labels
    included: `stats` sums per-row statistics over rows (F2: [sum of F2]; micro-F1: [true
    positives, predicted labels]), `finish` turns such sums into the metric."""

    def __init__(self, y: np.ndarray, probs: np.ndarray, min_labels: int, max_labels,
                 metric: str = "f2"):
        self.metric = check_metric(metric)
        self.n_true = np.count_nonzero(y, axis=1)
        self.n_rows, self.all_true = y.shape[0], int(self.n_true.sum())
        self.min_labels, self.max_labels = check_label_limits(min_labels, max_labels, y.shape[1])
        self.tp_min = self._tp_top(y, probs, self.min_labels)
        self.tp_max = self._tp_top(y, probs, self.max_labels)

    @staticmethod
    def _tp_top(y, probs, k):
        if not k:
            return None
        out = np.empty(y.shape[0], dtype=np.int64)
        for sl in _row_chunks(y.shape[0], y.shape[1]):
            out[sl] = np.take_along_axis(y[sl], top_k_indices(probs[sl], k), axis=1).sum(axis=1)
        return out

    def per_row(self, k, tp, rows=slice(None)) -> np.ndarray:
        """Per-row statistics [S, n] or [S, n, T] of samples `rows` given counts k, tp shaped
        [n] or [n, T]."""
        extra = (slice(None),) + (None,) * (np.ndim(k) - 1)
        n_true = self.n_true[rows][extra]
        if self.min_labels:
            few = k < self.min_labels
            tp = np.where(few, self.tp_min[rows][extra], tp)
            k = np.where(few, self.min_labels, k)
        if self.max_labels is not None:
            many = k > self.max_labels
            tp = np.where(many, self.tp_max[rows][extra], tp)
            k = np.where(many, self.max_labels, k)
        if self.metric == "f2":
            return f2_from_counts(tp, n_true, k)[None]
        return np.stack(np.broadcast_arrays(tp, k)).astype(np.float64)

    def stats(self, k, tp, rows=slice(None)) -> np.ndarray:
        """`per_row` summed over the rows: [S] or [S, T]."""
        return self.per_row(k, tp, rows).sum(axis=1)

    def finish(self, stats: np.ndarray) -> np.ndarray:
        """The metric from statistics summed over all rows."""
        if self.metric == "f2":
            return stats[0] / self.n_rows
        return micro_f1_from_counts(stats[0], self.all_true, stats[1])


def _row_chunks(n_rows: int, width: int):
    step = max(1, _CHUNK_ENTRIES // max(1, width))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _bucket_counts(y, probs, grid, sl, col_group=None, n_groups=1):
    """Per row of `sl` and per group: (predicted, true-positive) counts at EVERY grid threshold,
    two int64 arrays [rows, n_groups, T]. One searchsorted + two bincounts over the chunk."""
    p = probs[sl]
    rows, width, n_bins = p.shape[0], p.shape[1], grid.size + 1
    # Entries below the lowest threshold never pass: skipping them is most of the work saved
    # on a trained model, whose probabilities are mostly tiny.
    where = np.flatnonzero(p >= grid[0])
    # bucket b = number of grid points <= p: the entry passes grid[j] exactly when b > j
    key = np.searchsorted(grid, p.ravel()[where], side="right")
    row, col = np.divmod(where, width)
    if n_groups > 1:
        key += col_group[col] * n_bins
    key += row * (n_groups * n_bins)
    size = rows * n_groups * n_bins
    cnt = np.bincount(key, minlength=size).reshape(rows, n_groups, n_bins)
    pos = np.bincount(key[y[sl].ravel()[where]], minlength=size).reshape(rows, n_groups, n_bins)
    # suffix sums over buckets j+1.. give the counts at threshold grid[j]
    k = np.cumsum(cnt[..., :0:-1], axis=-1)[..., ::-1]
    tp = np.cumsum(pos[..., :0:-1], axis=-1)[..., ::-1]
    return k, tp


def _sweep(model, y, probs, grid) -> np.ndarray:
    """The metric at every grid threshold shared by all classes, streaming over row chunks."""
    total = 0.0
    for sl in _row_chunks(probs.shape[0], max(probs.shape[1], grid.size + 1)):
        k, tp = _bucket_counts(y, probs, grid, sl)
        total = total + model.stats(k[:, 0], tp[:, 0], sl)
    return model.finish(total)


def _pick(curve: np.ndarray, current: int | None = None) -> int:
    """Index of the best grid threshold: keep `current` when it is (within rounding) already
    optimal, so coordinate ascent terminates; else the middle of the first optimal plateau,
    the choice farthest from the samples that bound it."""
    best = curve.max()
    tol = 1e-12 * max(1.0, abs(best))
    if current is not None and curve[current] >= best - tol:
        return current
    first = int(np.flatnonzero(curve >= best - tol)[0])
    last = first
    while last + 1 < curve.size and curve[last + 1] >= best - tol:
        last += 1
    return (first + last) // 2


def check_truth(y_true, probs):
    probs = check_probs(probs)
    y = np.asarray(y_true)
    y = y if y.dtype == bool else y != 0
    if y.shape != probs.shape:
        raise ValueError(f"y_true has shape {y.shape} but probs has shape {probs.shape}")
    if y.shape[0] == 0:
        raise ValueError("no samples to choose thresholds on")
    return y, probs


def global_curve(y_true, probs, grid=None, min_labels: int = 1, max_labels=None,
                 metric: str = "f2"):
    """(grid, the metric at every grid threshold) for one threshold shared by all classes:
    equals [metric_score(metric, y, binarize(probs, t, min_labels, max_labels)) for t in grid]."""
    y, probs = check_truth(y_true, probs)
    grid = _check_grid(grid)
    return grid, _sweep(_Scorer(y, probs, min_labels, max_labels, metric), y, probs, grid)


def best_global_threshold(y_true, probs, grid=None, min_labels: int = 1, max_labels=None,
                          metric: str = "f2"):
    """(threshold, score) of the best single threshold on the grid."""
    grid, curve = global_curve(y_true, probs, grid, min_labels, max_labels, metric)
    j = _pick(curve)
    return float(grid[j]), float(curve[j])


def _group_search(model, y, probs, grid, groups, max_rounds=10):
    """Coordinate ascent over one threshold per group, from the best global threshold. One pass
    stores every row's counts per group at every grid threshold (uint16 [N, G, T]: 2 x 87 MB for
    109k images, 2 groups, 199 thresholds); a step adds the others' at their current ones."""
    names = sorted(set(groups.tolist()))
    col_group = np.searchsorted(names, groups)
    n, n_groups, n_thr = y.shape[0], len(names), grid.size
    dtype = np.uint16 if y.shape[1] < 2**16 else np.int32
    counts_k = np.empty((n, n_groups, n_thr), dtype=dtype)
    counts_tp = np.empty((n, n_groups, n_thr), dtype=dtype)
    for sl in _row_chunks(n, y.shape[1] + n_groups * (n_thr + 1)):
        counts_k[sl], counts_tp[sl] = _bucket_counts(y, probs, grid, sl, col_group, n_groups)

    def curve(g, chosen):
        """The metric at every threshold of group g (None: all groups together)."""
        total = 0.0
        for sl in _row_chunks(n, n_groups * n_thr):
            if g is None:
                k = counts_k[sl].sum(axis=1, dtype=np.int64)
                tp = counts_tp[sl].sum(axis=1, dtype=np.int64)
            else:
                k = counts_k[sl, g].astype(np.int64)
                tp = counts_tp[sl, g].astype(np.int64)
                for h in (h for h in range(n_groups) if h != g):
                    k += counts_k[sl, h, chosen[h], None]
                    tp += counts_tp[sl, h, chosen[h], None]
            total = total + model.stats(k, tp, sl)
        return model.finish(total)

    chosen = [_pick(curve(None, None))] * n_groups
    for _ in range(max_rounds if n_groups > 1 else 0):
        changed = False
        for g in range(n_groups):
            j = _pick(curve(g, chosen), chosen[g])
            changed |= j != chosen[g]
            chosen[g] = j
        if not changed:
            break
    return {name: float(grid[j]) for name, j in zip(names, chosen)}


def _class_search(model, y, probs, grid, thresholds, eligible, max_rounds=3):
    """Coordinate ascent over the per-class thresholds of the `eligible` classes (in place).
    Only the samples with p >= grid[0] can ever be predicted for a class, so a class step costs
    O(those samples): with a real model most probabilities are tiny and the steps are cheap."""
    k = np.zeros(probs.shape[0], dtype=np.int64)  # per sample: predicted, true positives
    tp = np.zeros(probs.shape[0], dtype=np.int64)
    for sl in _row_chunks(probs.shape[0], probs.shape[1]):
        passing = probs[sl] >= thresholds
        k[sl] = np.count_nonzero(passing, axis=1)
        tp[sl] = np.count_nonzero(passing & y[sl], axis=1)
    # micro-F1 is not a sum of per-row scores: its curve needs the pooled totals (F2 needs
    # only the gains, as a sum of rows' F2 shifted by a constant has the same best threshold).
    totals = model.stats(k, tp) if model.metric != "f2" else None
    index = np.searchsorted(grid, thresholds)
    lowest = grid[0]
    for _ in range(max_rounds):
        changed = 0
        for b0 in range(0, eligible.size, _CLASS_BLOCK):
            block = eligible[b0:b0 + _CLASS_BLOCK]
            # one contiguous copy per block: columns of a C-order matrix are strided
            p_block = np.ascontiguousarray(probs[:, block].T)
            y_block = np.ascontiguousarray(y[:, block].T)
            for p_all, y_all, c in zip(p_block, y_block, block):
                rows = np.flatnonzero(p_all >= lowest)
                p, yc = p_all[rows], y_all[rows]
                was = p >= thresholds[c]
                k_wo = k[rows] - was
                tp_wo = tp[rows] - (was & yc)
                without = model.per_row(k_wo, tp_wo, rows)
                gain = model.per_row(k_wo + 1, tp_wo + yc, rows) - without
                buckets = np.searchsorted(grid, p, side="right")
                gains = np.stack([np.cumsum(np.bincount(buckets, weights=g,
                                                        minlength=grid.size + 1)[:0:-1])[::-1]
                                  for g in gain])
                if totals is None:
                    curve = gains[0]
                else:
                    base = totals - model.stats(k[rows], tp[rows], rows) + without.sum(axis=1)
                    curve = model.finish(base[:, None] + gains)
                j = _pick(curve, int(index[c]))
                if j != index[c]:
                    changed += 1
                    index[c] = j
                    thresholds[c] = grid[j]
                    now = p >= thresholds[c]
                    if totals is not None:
                        totals = totals - model.stats(k[rows], tp[rows], rows)
                    k[rows] = k_wo + now
                    tp[rows] = tp_wo + (now & yc)
                    if totals is not None:
                        totals = totals + model.stats(k[rows], tp[rows], rows)
        if not changed:
            break
    return thresholds


def search_thresholds(y_true, probs, groups=None, mode: str = "global",
                      min_support: int = DEFAULT_MIN_SUPPORT, grid=None,
                      min_labels: int = 1, max_labels=None, metric: str = "f2") -> np.ndarray:
    """Per-class thresholds float64 [C] maximising `metric` of `binarize(probs, thresholds,
    min_labels, max_labels)` against y_true.

    mode "global": one threshold for all classes; "group": one per group (`groups`: [C] group
    name of every class, e.g. LabelSpace.groups); "class": one per class with at least
    `min_support` positive samples, the others keep their group's threshold."""
    if mode not in SEARCH_MODES:
        raise ValueError(f"unknown threshold mode {mode!r}; choose one of "
                         f"{', '.join(SEARCH_MODES)}")
    y, probs = check_truth(y_true, probs)
    grid = _check_grid(grid)
    model = _Scorer(y, probs, min_labels, max_labels, metric)
    n_classes = y.shape[1]
    if mode == "global":
        return np.full(n_classes, grid[_pick(_sweep(model, y, probs, grid))])
    groups = np.asarray(np.full(n_classes, "all") if groups is None else groups).astype(str)
    if groups.shape != (n_classes,):
        raise ValueError(f"groups must name the group of each of the {n_classes} classes, "
                         f"got shape {groups.shape}")
    by_group = _group_search(model, y, probs, grid, groups)
    thresholds = np.array([by_group[g] for g in groups.tolist()], dtype=np.float64)
    if mode == "class":
        eligible = np.flatnonzero(np.count_nonzero(y, axis=0) >= max(1, int(min_support)))
        thresholds = _class_search(model, y, probs, grid, thresholds, eligible)
    return thresholds


# Context-aware decoding (the 6th-place iMet idea): an image's threshold for a class is
# `max(t, r * that image's top probability)`, with `t` per group (any number of them) and one ratio `r`.
# For a fixed r, an entry can pass only when it reaches r * top, so masking the other entries to
# 0 turns the problem into the ordinary per-group search above, exact over its grid. Each
# candidate r costs one masked copy and one group search (~3.5 s CPU at iMet scale), so r is
# searched coarse to fine: 0 (the plain group search, always a candidate), 0.1 .. 0.9, then the two
# halfway points beside the best. The best pair by in-sample score is kept (validate then
# cross-fits the whole search like every other mode).

def search_context(y_true, probs, groups=None, grid=None, ratios=None, min_labels: int = 1,
                   max_labels=None, min_support: int = DEFAULT_MIN_SUPPORT, metric: str = "f2"
                   ) -> tuple[np.ndarray, float]:
    """(per-class thresholds [C], ratio r) maximising `metric` of `binarize(probs, thresholds,
    min_labels, max_labels, context=r)`; thresholds are one per group."""
    probs = check_probs(probs)
    tried: dict[float, tuple[float, np.ndarray]] = {}

    def fit(ratio: float) -> None:
        masked = probs if ratio == 0 else np.where(context_passes(probs, ratio), probs, 0)
        thresholds = search_thresholds(y_true, masked, groups, mode="group", grid=grid,
                                       min_support=min_support, min_labels=min_labels,
                                       max_labels=max_labels, metric=metric)
        del masked
        tried[ratio] = (metric_score(metric, y_true, binarize(probs, thresholds, min_labels,
                                                              max_labels, ratio)), thresholds)

    def best() -> float:
        # ties go to the smaller ratio: the decoding closer to plain thresholds
        return max(sorted(tried), key=lambda r: (round(tried[r][0], 12), -r))

    coarse = np.arange(0, 10, dtype=np.float64) / 10.0
    for ratio in (coarse if ratios is None else np.asarray(ratios, dtype=np.float64)).tolist():
        fit(round(ratio, 6))
    if ratios is None:
        centre = best()
        for ratio in (centre - 0.05, centre + 0.05):
            if 0 < ratio < 1:
                fit(round(ratio, 6))
    chosen = best()
    return tried[chosen][1], chosen


MODES = SEARCH_MODES + ("context",)


def fit_decoding(y_true, probs, groups=None, mode: str = "global",
                 min_support: int = DEFAULT_MIN_SUPPORT, grid=None, min_labels: int = 1,
                 max_labels=None, metric: str = "f2") -> tuple[np.ndarray, float]:
    """(per-class thresholds [C], context ratio) of `mode`; the ratio is 0 except for context."""
    if mode == "context":
        return search_context(y_true, probs, groups, grid=grid, min_labels=min_labels,
                              max_labels=max_labels, min_support=min_support, metric=metric)
    return search_thresholds(y_true, probs, groups, mode, min_support, grid, min_labels,
                             max_labels, metric), 0.0


@dataclass(frozen=True)
class CrossFit:
    """Honest score of a decoding search for `metric`: chosen on one half of the samples, scored
    on the other, both ways (micro-F1: pooled over both halves' predictions). `score_in_sample`
    (chosen and scored on all samples) minus `score` is how much the search flatters itself;
    `thresholds` and `context` are fitted on all samples (use them for test). `scores`: the same
    cross-fitted predictions scored by every metric (METRICS), the tuned one's being `score`."""
    score: float
    score_halves: tuple[float, float]
    score_in_sample: float
    thresholds: np.ndarray
    mode: str
    context: float = 0.0
    metric: str = "f2"
    scores: dict = field(default_factory=dict)

    @property
    def optimism(self) -> float:
        return self.score_in_sample - self.score


def cross_fitted(y_true, probs, groups=None, mode: str = "global",
                 min_support: int = DEFAULT_MIN_SUPPORT, grid=None, min_labels: int = 1,
                 max_labels=None, seed: int = 0, metric: str = "f2") -> CrossFit:
    """Choose the decoding for `metric` on a random half, score it on the other half and vice
    versa. The per-class minimum support applies within each half (half the data: fewer classes
    qualify, as they would with half the validation set)."""
    if mode not in MODES:
        raise ValueError(f"unknown threshold mode {mode!r}; choose one of {', '.join(MODES)}")
    check_metric(metric)
    y, probs = check_truth(y_true, probs)
    n = y.shape[0]
    if n < 2:
        raise ValueError("cross-fitting needs at least 2 samples")
    order = np.random.default_rng(seed).permutation(n)
    halves = (np.sort(order[: n // 2]), np.sort(order[n // 2:]))
    kw = dict(groups=groups, mode=mode, min_support=min_support, grid=grid,
              min_labels=min_labels, max_labels=max_labels, metric=metric)
    pred = np.empty(y.shape, dtype=bool)
    for fit_on, score_on in (halves, halves[::-1]):
        thr, ratio = fit_decoding(y[fit_on], probs[fit_on], **kw)
        pred[score_on] = binarize(probs[score_on], thr, min_labels, max_labels, ratio)
    full, ratio = fit_decoding(y, probs, **kw)
    in_sample = metric_score(metric, y, binarize(probs, full, min_labels, max_labels, ratio))
    scores = {name: metric_score(name, y, pred) for name in METRICS}
    return CrossFit(score=scores[metric],
                    score_halves=tuple(metric_score(metric, y[h], pred[h]) for h in halves),
                    score_in_sample=float(in_sample), thresholds=full, mode=mode, context=ratio,
                    metric=metric, scores=scores)
