"""F2 (F-beta with beta=2) averaged over samples: the iMet Collection 2019 metric.

Vectorized over the whole [N, C] matrix: one pass of integer counts per row, no Python loop.

Zero division, matching scikit-learn's default (`zero_division="warn"`, which scores 0.0
without the warning): a sample with no true label AND no predicted label has an undefined
F2 and scores 0.0. A sample with true labels but no prediction (or the reverse) is well
defined and scores 0.0 as well. Pass `zero_division=1.0` to count "nothing to find, nothing
predicted" as perfect instead (sklearn's `zero_division=1.0`). iMet rows always have at
least one true label, so the choice never matters on competition data.
"""
from __future__ import annotations

import numpy as np

BETA = 2.0
_B2 = BETA * BETA


def _as_bool_2d(name: str, array) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [samples, classes] array, got shape {arr.shape}")
    return arr if arr.dtype == bool else arr != 0


def f2_from_counts(tp, n_true, n_pred, zero_division: float = 0.0) -> np.ndarray:
    """Per-sample F2 from per-sample counts (true positives, true labels, predicted labels).

    F-beta = (1+b^2) tp / ((1+b^2) tp + b^2 fn + fp) = (1+b^2) tp / (b^2 n_true + n_pred).
    The threshold searches reuse this with counts they update incrementally."""
    tp = np.asarray(tp, dtype=np.float64)
    denom = _B2 * np.asarray(n_true, dtype=np.float64) + np.asarray(n_pred, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = (1.0 + _B2) * tp / denom
    return np.where(denom > 0, score, zero_division)


def sample_counts(y_true, y_pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tp, n_true, n_pred) per sample, as int64 arrays."""
    truth = _as_bool_2d("y_true", y_true)
    pred = _as_bool_2d("y_pred", y_pred)
    if truth.shape != pred.shape:
        raise ValueError(f"y_true has shape {truth.shape} but y_pred has shape {pred.shape}")
    tp = np.count_nonzero(truth & pred, axis=1)
    return tp, np.count_nonzero(truth, axis=1), np.count_nonzero(pred, axis=1)


def f2_per_sample(y_true, y_pred, zero_division: float = 0.0) -> np.ndarray:
    """F2 of every sample (row) of binary [N, C] arrays, float64 [N]."""
    return f2_from_counts(*sample_counts(y_true, y_pred), zero_division=zero_division)


def f2_score(y_true, y_pred, zero_division: float = 0.0) -> float:
    """Mean per-sample F2: equals sklearn's fbeta_score(beta=2, average="samples")."""
    scores = f2_per_sample(y_true, y_pred, zero_division=zero_division)
    if scores.size == 0:
        raise ValueError("F2 of zero samples is undefined")
    return float(scores.mean())


def f2_per_class(y_true, y_pred, zero_division: float = 0.0) -> np.ndarray:
    """F2 of every class (column), float64 [C]: for "per-class F2 against support" reports.
    A class never true and never predicted scores `zero_division`."""
    truth = _as_bool_2d("y_true", y_true)
    pred = _as_bool_2d("y_pred", y_pred)
    if truth.shape != pred.shape:
        raise ValueError(f"y_true has shape {truth.shape} but y_pred has shape {pred.shape}")
    tp = np.count_nonzero(truth & pred, axis=0)
    return f2_from_counts(tp, np.count_nonzero(truth, axis=0), np.count_nonzero(pred, axis=0),
                          zero_division=zero_division)
