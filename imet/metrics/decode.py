"""Turn probabilities into label sets: thresholds plus a minimum and maximum count per image.

Semantics (the threshold searches in `thresholds.py` and `context.py` use the same ones):
- a class passes when `prob >= threshold` (scalar, or one threshold per class) and, with a
  context ratio r > 0, also `prob >= r * the image's top probability` (per-image thresholds
  `max(t, r * top)`: an image whose best class is very sure asks more of the others);
- `min_labels`: an image where fewer than `min_labels` classes pass is filled up with its most
  probable classes that did not pass, to exactly `min_labels` labels (never an empty prediction
  with the default 1: an empty row scores 0 for sure, its best guess may not);
- `max_labels`: an image where more than `max_labels` classes pass keeps only its
  `max_labels` most probable ones.
Ties between equal probabilities are broken arbitrarily (by np.argpartition).
Everything is vectorized over rows: only the rows that need a fix are touched, with argpartition.
"""
from __future__ import annotations

import numpy as np


def check_probs(probs) -> np.ndarray:
    """A 2-D float array of probabilities without NaN (a NaN would silently never pass)."""
    arr = np.asarray(probs)
    if arr.ndim != 2:
        raise ValueError(f"probabilities must be a 2-D [samples, classes] array, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    if np.isnan(arr).any():
        raise ValueError("probabilities contain NaN")
    return arr


def check_thresholds(thresholds, num_classes: int) -> np.ndarray:
    """A scalar or a [C] array of thresholds, as float64 (0-d for a scalar)."""
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim > 1 or (thr.ndim == 1 and thr.shape[0] != num_classes):
        raise ValueError(f"thresholds must be a scalar or have {num_classes} entries, "
                         f"got shape {thr.shape}")
    if np.isnan(thr).any():
        raise ValueError("thresholds contain NaN")
    return thr


def check_label_limits(min_labels: int, max_labels: int | None, num_classes: int):
    """Validated (min_labels, max_labels) clipped to the number of classes; max None = no cap."""
    min_labels = int(min_labels)
    if min_labels < 0:
        raise ValueError(f"min_labels must be >= 0, got {min_labels}")
    if max_labels is not None:
        max_labels = int(max_labels)
        if max_labels < max(min_labels, 1):
            raise ValueError(f"max_labels ({max_labels}) must be >= 1 and >= min_labels "
                             f"({min_labels})")
        if max_labels >= num_classes:
            max_labels = None
    return min(min_labels, num_classes), max_labels


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k highest scores of every row, highest first: int [R, k]."""
    n_cols = scores.shape[1]
    k = min(k, n_cols)
    if k == 0:
        return np.empty((scores.shape[0], 0), dtype=np.intp)
    if k == 1:
        return np.argmax(scores, axis=1)[:, None]
    if k < n_cols:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n_cols), scores.shape).copy()
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def check_context(context) -> float:
    ratio = float(context)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"the context ratio must lie in [0, 1], got {context!r}")
    return ratio


def context_passes(probs: np.ndarray, ratio: float) -> np.ndarray:
    """Bool [N, C]: the entries that reach `ratio` times their image's top probability."""
    return probs >= (ratio * probs.max(axis=1, keepdims=True)).astype(probs.dtype)


def binarize(probs, thresholds, min_labels: int = 1, max_labels: int | None = None,
             context: float = 0.0) -> np.ndarray:
    """Bool [N, C] predictions from probabilities [N, C] (see the module doc for the rules)."""
    probs = check_probs(probs)
    n_cols = probs.shape[1]
    thr = check_thresholds(thresholds, n_cols)
    min_labels, max_labels = check_label_limits(min_labels, max_labels, n_cols)
    ratio = check_context(context)
    pred = probs >= thr
    if ratio > 0 and n_cols:
        pred &= context_passes(probs, ratio)
    n_pass = np.count_nonzero(pred, axis=1)

    few = np.flatnonzero(n_pass < min_labels)
    if few.size:
        rows = pred[few]
        # The most probable classes that did not pass; each row takes as many as it lacks.
        candidates = np.where(rows, -np.inf, probs[few])
        fill = top_k_indices(candidates, min_labels)
        need = (min_labels - n_pass[few])[:, None]
        take = np.arange(fill.shape[1])[None, :] < need
        row_idx = np.broadcast_to(np.arange(few.size)[:, None], fill.shape)
        rows[row_idx[take], fill[take]] = True
        pred[few] = rows

    if max_labels is not None:
        many = np.flatnonzero(n_pass > max_labels)
        if many.size:
            keep = top_k_indices(np.where(pred[many], probs[many], -np.inf), max_labels)
            rows = np.zeros((many.size, n_cols), dtype=bool)
            np.put_along_axis(rows, keep, True, axis=1)
            pred[many] = rows
    return pred
