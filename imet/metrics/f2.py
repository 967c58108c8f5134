"""The competitions' metrics and the decoding of probabilities into the label sets they score.
Vectorized: integer counts per row.

- "f2": F2 (F-beta with beta=2) averaged over samples, the metric of iMet 2019 and 2021;
- "micro-f1": F1 of all (image, class) entries pooled, 2 TP / (true + predicted labels), the
  metric iMet 2020's Evaluation section names (its Data section says F2; the Evaluation section
  is the one that describes the leaderboard's scoring, so 2020 defaults to micro-F1).

Zero division as scikit-learn's default (`zero_division="warn"`, without the warning): a sample
with no true AND no predicted label scores 0.0 (`zero_division=1.0`: 1.0, as sklearn's); true
labels but no prediction (or the reverse) scores 0.0 too. iMet rows always have a true label.

Decoding (`binarize`; the searches in imet.metrics.thresholds model the same rules):
- a class passes when `prob >= threshold` (scalar or per class) and, with a context ratio
  r > 0, `prob >= r * the image's top probability` (per-image thresholds `max(t, r * top)`:
  an image whose best class is very sure asks more of the others);
- `min_labels`: an image with fewer passing classes is filled up with its most probable others
  to exactly `min_labels` (never an empty prediction with the default 1: an empty row scores 0
  for sure, its best guess may not);
- `max_labels`: an image with more keeps only its `max_labels` most probable ones.
Ties between equal probabilities are broken arbitrarily (np.argpartition); only the rows that
need a fix are touched."""
from __future__ import annotations

import numpy as np

BETA = 2.0
_B2 = BETA * BETA
METRICS = ("f2", "micro-f1")
METRIC_NAMES = {"f2": "F2", "micro-f1": "micro-F1"}


def describe_scores(f2: float, micro_f1: float, first: str, digits: int = 4) -> str:
    """'F2 0.6123, micro-F1 0.5871', the metric `first` first."""
    values = {"f2": f2, "micro-f1": micro_f1}
    return ", ".join(f"{METRIC_NAMES[m]} {values[m]:.{digits}f}"
                     for m in sorted(METRICS, key=lambda m: m != first))


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return metric


def _truth_and_pred(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, array in (("y_true", y_true), ("y_pred", y_pred)):
        arr = np.asarray(array)
        if arr.ndim != 2:
            raise ValueError(f"{name} must be a 2-D [samples, classes] array, got shape "
                             f"{arr.shape}")
        arrays.append(arr if arr.dtype == bool else arr != 0)
    truth, pred = arrays
    if truth.shape != pred.shape:
        raise ValueError(f"y_true has shape {truth.shape} but y_pred has shape {pred.shape}")
    return truth, pred


def f2_from_counts(tp, n_true, n_pred, zero_division: float = 0.0) -> np.ndarray:
    """F2 from counts (true positives, true labels, predicted labels): (1+b^2) tp / ((1+b^2) tp
    + b^2 fn + fp) = (1+b^2) tp / (b^2 n_true + n_pred); the searches reuse it on their counts."""
    tp = np.asarray(tp, dtype=np.float64)
    denom = _B2 * np.asarray(n_true, dtype=np.float64) + np.asarray(n_pred, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = (1.0 + _B2) * tp / denom
    return np.where(denom > 0, score, zero_division)


def f2_per_sample(y_true, y_pred, zero_division: float = 0.0) -> np.ndarray:
    """F2 of every sample (row) of binary [N, C] arrays, float64 [N]."""
    truth, pred = _truth_and_pred(y_true, y_pred)
    return f2_from_counts(np.count_nonzero(truth & pred, axis=1), np.count_nonzero(truth, axis=1),
                          np.count_nonzero(pred, axis=1), zero_division=zero_division)


def f2_score(y_true, y_pred, zero_division: float = 0.0) -> float:
    """Mean per-sample F2: equals sklearn's fbeta_score(beta=2, average="samples")."""
    scores = f2_per_sample(y_true, y_pred, zero_division=zero_division)
    if scores.size == 0:
        raise ValueError("F2 of zero samples is undefined")
    return float(scores.mean())


def f2_per_class(y_true, y_pred, zero_division: float = 0.0) -> np.ndarray:
    """F2 of every class (column), float64 [C]: for "per-class F2 against support" reports.
    A class never true and never predicted scores `zero_division`."""
    truth, pred = _truth_and_pred(y_true, y_pred)
    return f2_from_counts(np.count_nonzero(truth & pred, axis=0), np.count_nonzero(truth, axis=0),
                          np.count_nonzero(pred, axis=0), zero_division=zero_division)


def micro_f1_from_counts(tp, n_true, n_pred) -> np.ndarray:
    """Micro-F1 from pooled counts: 2 tp / (n_true + n_pred); 0 where both are 0."""
    tp = np.asarray(tp, dtype=np.float64)
    denom = np.asarray(n_true, dtype=np.float64) + np.asarray(n_pred, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = 2.0 * tp / denom
    return np.where(denom > 0, score, 0.0)


def micro_f1_score(y_true, y_pred) -> float:
    """Micro-averaged F1: equals sklearn's f1_score(average="micro") (0 without any label)."""
    truth, pred = _truth_and_pred(y_true, y_pred)
    if truth.shape[0] == 0:
        raise ValueError("micro-F1 of zero samples is undefined")
    return float(micro_f1_from_counts(np.count_nonzero(truth & pred), np.count_nonzero(truth),
                                      np.count_nonzero(pred)))


def metric_score(metric: str, y_true, y_pred) -> float:
    """The score of `metric` (one of METRICS) of binary [N, C] predictions."""
    return f2_score(y_true, y_pred) if check_metric(metric) == "f2" else micro_f1_score(
        y_true, y_pred)


def check_probs(probs) -> np.ndarray:
    """A 2-D float array of probabilities without NaN (a NaN would silently never pass)."""
    arr = np.asarray(probs)
    if arr.ndim != 2:
        raise ValueError(f"probabilities must be a 2-D [samples, classes] array, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    # by row blocks: one bool mask of the whole matrix would be the searches' largest allocation
    # (471 MiB at 142k x 3,474)
    step = max(1, (1 << 22) // max(1, arr.shape[1]))
    if any(np.isnan(arr[start:start + step]).any() for start in range(0, arr.shape[0], step)):
        raise ValueError("probabilities contain NaN")
    return arr


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


def context_passes(probs: np.ndarray, ratio: float) -> np.ndarray:
    """Bool [N, C]: the entries that reach `ratio` times their image's top probability."""
    return probs >= (ratio * probs.max(axis=1, keepdims=True)).astype(probs.dtype)


def binarize(probs, thresholds, min_labels: int = 1, max_labels: int | None = None,
             context: float = 0.0) -> np.ndarray:
    """Bool [N, C] predictions from probabilities [N, C] (see the module doc for the rules)."""
    probs = check_probs(probs)
    n_cols = probs.shape[1]
    thr = np.asarray(thresholds, dtype=np.float64)  # a scalar or one per class
    if thr.ndim > 1 or (thr.ndim == 1 and thr.shape[0] != n_cols):
        raise ValueError(f"thresholds must be a scalar or have {n_cols} entries, "
                         f"got shape {thr.shape}")
    if np.isnan(thr).any():
        raise ValueError("thresholds contain NaN")
    min_labels, max_labels = check_label_limits(min_labels, max_labels, n_cols)
    ratio = float(context)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"the context ratio must lie in [0, 1], got {context!r}")
    pred = probs >= thr
    if ratio > 0 and n_cols:
        pred &= context_passes(probs, ratio)
    n_pass = np.count_nonzero(pred, axis=1)

    few = np.flatnonzero(n_pass < min_labels)
    if few.size:
        rows = pred[few]
        # The most probable classes that did not pass; each row takes as many as it lacks.
        fill = top_k_indices(np.where(rows, -np.inf, probs[few]), min_labels)
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
