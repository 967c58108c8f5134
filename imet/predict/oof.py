"""Out-of-fold predictions -> the decoding to use on test, scored honestly.

Every decoding mode (one global threshold, one per group, one per class, per-image context
thresholds) is fitted on the OOF
probabilities and also cross-fitted (chosen on one half of the images, scored on the other, both
ways). The mode is picked by its cross-fitted F2, never by its in-sample F2: per-class thresholds
always win in-sample (they have 1,103 knobs) and often lose on new images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from imet.errors import UserError
from imet.metrics.decode import binarize
from imet.metrics.f2 import f2_per_class, f2_score
from imet.metrics.crossfit import MODES, CrossFit, cross_fitted_f2
from imet.predict.errors import ClassErrors, class_errors, group_confusion
from imet.probfile import Probabilities


@dataclass
class DecodingChoice:
    mode: str
    fits: dict[str, CrossFit]

    @property
    def chosen(self) -> CrossFit:
        return self.fits[self.mode]

    @property
    def thresholds(self) -> np.ndarray:
        return self.chosen.thresholds

    @property
    def context(self) -> float:
        return self.chosen.context


def choose_decoding(y_true: np.ndarray, probs: np.ndarray, groups: np.ndarray,
                    modes: Sequence[str] = MODES, min_support: int = 20, min_labels: int = 1,
                    max_labels: int | None = None, seed: int = 0) -> DecodingChoice:
    """Fit and cross-fit each mode; pick the best cross-fitted F2 (ties go to the simpler mode,
    in MODES order, since it has fewer knobs to overfit)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise UserError(f"--modes: unknown threshold mode {unknown[0] if unknown else ''!r}; "
                        f"choose from {', '.join(MODES)}")
    if y_true.shape[0] < 4:
        raise UserError(f"validation: only {y_true.shape[0]} out-of-fold images; thresholds need "
                        "at least 4 (use a larger fold)")
    fits = {mode: cross_fitted_f2(y_true, probs, groups=groups, mode=mode,
                                  min_support=min_support, min_labels=min_labels,
                                  max_labels=max_labels, seed=seed)
            for mode in sorted(modes, key=MODES.index)}
    best = max(fits, key=lambda m: (round(fits[m].f2, 9), -MODES.index(m)))
    return DecodingChoice(best, fits)


def group_f2(y_true: np.ndarray, pred: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """F2 over each group's columns alone. An image with no true and no predicted label in the
    group is right about that group, so it scores 1 (not sklearn's 0) here."""
    out = {}
    for name in sorted(set(groups.tolist())):
        cols = np.flatnonzero(groups == name)
        out[name] = f2_score(y_true[:, cols], pred[:, cols], zero_division=1.0)
    return out


def concat_probabilities(parts: Sequence[Probabilities]) -> Probabilities:
    """Stack the OOF predictions of disjoint folds into one set (ids must not repeat)."""
    if len(parts) == 1:
        return parts[0]
    ids = [i for p in parts for i in p.ids]
    if len(set(ids)) != len(ids):
        raise UserError("validation: two folds share images; check that folds.csv is the one the "
                        "runs were trained with")
    meta = {"labels_fingerprint": parts[0].labels_fingerprint,
            "folds": [p.meta for p in parts], "split": "oof"}
    return Probabilities(ids, np.concatenate([p.probs for p in parts]), parts[0].attribute_ids,
                         meta)


@dataclass
class ValidationScores:
    """Everything the report shows, computed once."""
    decoding: DecodingChoice
    pred: np.ndarray
    group_f2: dict[str, float]
    class_f2: np.ndarray
    support: np.ndarray
    labels_per_image: float
    true_labels_per_image: float
    errors: ClassErrors
    confusion: tuple[np.ndarray, np.ndarray]  # (culture class indices, a-taken-for-b counts)


def score_decoding(y_true: np.ndarray, probs: np.ndarray, groups: np.ndarray,
                   decoding: DecodingChoice, min_labels: int = 1,
                   max_labels: int | None = None) -> ValidationScores:
    pred = binarize(probs, decoding.thresholds, min_labels, max_labels, decoding.context)
    truth = y_true.astype(bool)
    return ValidationScores(
        decoding=decoding, pred=pred, group_f2=group_f2(truth, pred, groups),
        class_f2=f2_per_class(truth, pred), support=np.count_nonzero(truth, axis=0),
        labels_per_image=float(pred.sum(axis=1).mean()),
        true_labels_per_image=float(truth.sum(axis=1).mean()),
        errors=class_errors(truth, pred), confusion=group_confusion(truth, pred, groups))
