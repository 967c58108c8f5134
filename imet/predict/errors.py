"""Per-class error analysis of the chosen decoding on the out-of-fold images: which classes are
predicted most often where they are absent, which are missed most often, and which culture is
taken for which (the Open Images write-up found its label problems this way).

Vectorized for iMet's 109k x 1,103: the counts are column sums of two boolean masks, and the
culture confusion is one sparse product (an image misses and adds only a few labels)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

CONFUSED_GROUP = "culture"


@dataclass(frozen=True)
class ClassErrors:
    """Per class: false positives, false negatives, support (true), predicted counts."""
    false_pos: np.ndarray
    false_neg: np.ndarray
    support: np.ndarray
    predicted: np.ndarray

    def worst(self, counts: np.ndarray, k: int) -> np.ndarray:
        """Indices of the k classes with the largest nonzero `counts`, largest first."""
        order = np.argsort(-counts, kind="stable")[:k]
        return order[counts[order] > 0]


def class_errors(truth: np.ndarray, pred: np.ndarray) -> ClassErrors:
    truth, pred = truth.astype(bool, copy=False), pred.astype(bool, copy=False)
    return ClassErrors(false_pos=np.count_nonzero(pred & ~truth, axis=0),
                       false_neg=np.count_nonzero(truth & ~pred, axis=0),
                       support=np.count_nonzero(truth, axis=0),
                       predicted=np.count_nonzero(pred, axis=0))


def group_confusion(truth: np.ndarray, pred: np.ndarray, groups: np.ndarray,
                    group: str = CONFUSED_GROUP) -> tuple[np.ndarray, np.ndarray]:
    """(class indices of `group`, int matrix M) where M[a, b] counts the images whose true
    class a of the group was missed while class b of the group was predicted and is not true:
    a taken for b."""
    cols = np.flatnonzero(groups == group)
    missed = sparse.csr_matrix(truth[:, cols] & ~pred[:, cols], dtype=np.int32)
    added = sparse.csr_matrix(pred[:, cols] & ~truth[:, cols], dtype=np.int32)
    return cols, (missed.T @ added).toarray()


def top_confusions(cols: np.ndarray, matrix: np.ndarray, k: int) -> list[tuple[int, int, int]]:
    """The k largest (true class, predicted class, images), largest first."""
    flat = np.argsort(-matrix, axis=None, kind="stable")[:k]
    a, b = np.unravel_index(flat, matrix.shape)
    return [(int(cols[i]), int(cols[j]), int(matrix[i, j])) for i, j in zip(a, b)
            if matrix[i, j] > 0]
