"""submission.csv: `id,attribute_ids`, rows in sample_submission order, every test image once."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from imet.errors import DataError
from imet.metrics.decode import binarize
from imet.metrics.submission_io import format_rows, write_submission  # noqa: F401 (re-export)
from imet.probfile import Probabilities


def check_sample_ids(sample_ids: Sequence[str], source: str) -> list[str]:
    """The ids as a list; DataError naming `source` when empty or when an id repeats."""
    sample_ids = [str(i) for i in sample_ids]
    if not sample_ids:
        raise DataError(f"{source}: no rows; it must list every test image id "
                        "(download the competition's sample_submission.csv again)")
    seen: set[str] = set()
    for row, image_id in enumerate(sample_ids, start=2):
        if image_id in seen:
            raise DataError(f"{source}: row {row}: id {image_id!r} appears twice; each test image "
                            "must be listed once")
        seen.add(image_id)
    return sample_ids


def make_submission(sample_ids: Sequence[str], probabilities: Probabilities,
                    thresholds: float | np.ndarray, min_labels: int = 1,
                    max_labels: int | None = None, source: str = "sample_submission.csv",
                    context: float = 0.0) -> tuple[list[str], list[str]]:
    """(ids in sample order, decoded label strings). Every sample id must have a prediction."""
    sample_ids = check_sample_ids(sample_ids, source)
    aligned = probabilities.reorder(sample_ids, source="predictions")
    binary = binarize(aligned.probs, thresholds, min_labels, max_labels, context)
    return sample_ids, format_rows(binary, aligned.attribute_ids)
