"""`python -m imet score`: the F2 of a submission-format file against the truth."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Score:
    f2: float
    images: int
    mean_predicted: float
    mean_true: float


def score_files(truth_csv, pred_csv, labels_csv=None) -> Score:
    """F2 of `pred_csv` against `truth_csv` (both `id,attribute_ids`). Rows are matched by id;
    DataError when the ids differ (missing, extra, duplicated) or a row is malformed. With
    `labels_csv`, attribute ids outside labels.csv are refused too; without it the classes are
    every attribute id seen in either file (an unknown id then simply counts as a wrong label)."""
    from imet.metrics.f2 import f2_per_sample
    from imet.metrics.submission_io import (align_to_ids, check_known, read_submission,
                                            refuse_duplicate_ids, rows_to_matrix)
    truth_ids, truth_rows = read_submission(truth_csv)
    refuse_duplicate_ids(truth_csv, truth_ids)
    pred_ids, pred_rows = read_submission(pred_csv)
    pred_rows = align_to_ids(pred_csv, pred_ids, pred_rows, truth_ids,
                             expected_from=f"the truth {Path(truth_csv).name}")
    if labels_csv is not None:
        from imet.data.labels import read_labels
        attribute_ids = list(read_labels(Path(labels_csv)).attribute_ids)
        name = Path(labels_csv).name
        check_known(truth_csv, truth_ids, truth_rows, attribute_ids, name)
        check_known(pred_csv, truth_ids, pred_rows, attribute_ids, name)
    else:
        seen = {a for rows in (truth_rows, pred_rows) for row in rows for a in row}
        attribute_ids = sorted(seen)
    truth = rows_to_matrix(truth_rows, attribute_ids)
    pred = rows_to_matrix(pred_rows, attribute_ids)
    per_sample = f2_per_sample(truth, pred)
    return Score(f2=float(per_sample.mean()), images=len(truth_ids),
                 mean_predicted=float(np.count_nonzero(pred) / len(truth_ids)),
                 mean_true=float(np.count_nonzero(truth) / len(truth_ids)))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Prints one line: 'F2 <score> on <N> images (...)'. Exits 2 with a one-line "
                     "error when the files do not cover the same ids exactly once or a row is "
                     "malformed. An image with no true and no predicted label scores 0, as in "
                     "scikit-learn's fbeta_score(average='samples').")
    parser.add_argument("--truth", required=True, type=Path, metavar="CSV",
                        help="the true labels, 'id,attribute_ids' (e.g. train.csv or the "
                        "test_labels.csv of mini-iMet); extra columns are ignored")
    parser.add_argument("--pred", required=True, type=Path, metavar="CSV",
                        help="the submission to score, 'id,attribute_ids' with the same ids in "
                        "any order")
    parser.add_argument("--labels", type=Path, metavar="CSV", default=None,
                        help="labels.csv: also refuse attribute ids that are not in it "
                        "(default: accept any integer id)")


def run(args) -> int:
    score = score_files(args.truth, args.pred, args.labels)
    print(f"F2 {score.f2:.6f} on {score.images} images (labels per image: "
          f"{score.mean_predicted:.2f} predicted, {score.mean_true:.2f} true)")
    return 0
