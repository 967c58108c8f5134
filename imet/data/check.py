"""`imet check-data`: scan a competition folder up front and list every problem.

CSVs are parsed vectorized (labels.py); image presence is one directory listing per split; then
every image is decoded (that is the only way to find a truncated PNG) in a thread pool, since
PIL releases the GIL while it inflates."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from imet.data.folds import folds_problems
from imet.data.images import MIN_SIDE, image_findings
from imet.data.labels import attribute_csv_problems, labels_problems, sample_submission_problems
from imet.data.layout import IMAGE_SUFFIX, CompetitionLayout

IMAGE_MODES = ("decode", "exists", "skip")
DECODE_SLICE = 2048


@dataclass
class CheckReport:
    root: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _missing_images(layout: CompetitionLayout, split: str, ids: list[str], csv: Path
                    ) -> tuple[list[str], list[str]]:
    """(problems, ids whose file exists): one listing of the folder, not one stat per id."""
    folder = layout.split_dir(split)
    if not folder.is_dir():
        return [f"{folder}: image folder not found; it must hold one {IMAGE_SUFFIX} per id in "
                f"{csv.name}"], []
    with os.scandir(folder) as entries:
        present = {e.name for e in entries}
    names = [f"{i}{IMAGE_SUFFIX}" for i in ids]
    exists = [n in present for n in names]  # set lookups, not a stat() per id
    problems = [f"{folder / n}: image not found (id {i!r} in {csv.name}); add the image or "
                f"remove the row from {csv.name}" for n, i, e in zip(names, ids, exists) if not e]
    return problems, [i for i, e in zip(ids, exists) if e]


def _decode_all(paths: list[Path], workers: int, progress: bool, min_side: int
                ) -> tuple[list[str], list[str]]:
    """(problems, warnings) of every image."""
    from tqdm.auto import tqdm

    problems, warnings = [], []
    inspect = partial(image_findings, min_side=min_side)
    bar = tqdm(total=len(paths), desc="decoding images", unit="img",
               disable=None if progress else True, leave=False)
    with ThreadPoolExecutor(max_workers=workers) as pool, bar:
        # In slices: Executor.map submits everything at once (109k futures for iMet).
        for start in range(0, len(paths), DECODE_SLICE):
            for problem, warning in pool.map(inspect, paths[start:start + DECODE_SLICE]):
                bar.update()
                if problem:
                    problems.append(problem)
                if warning:
                    warnings.append(warning)
    return problems, warnings


def check_data(root, *, images: str = "decode", folds=None, workers: int | None = None,
               progress: bool = True, min_side: int = MIN_SIDE) -> CheckReport:
    """Every problem in the folder (CSVs, ids, attribute ids, images, optional folds.csv), and
    the warnings (an image whose format is not the one its name says)."""
    layout = CompetitionLayout(root)
    report = CheckReport(Path(root))
    if not layout.root.is_dir():
        report.problems.append(f"{layout.root}: data folder not found; pass --data pointing at "
                               "the competition files")
        return report
    labels, problems = labels_problems(layout.labels_csv)
    report.problems += problems
    if labels is not None:
        report.counts["labels"] = labels.num_classes
        groups, counts = np.unique(labels.groups, return_counts=True)
        report.groups = dict(zip(groups.tolist(), counts.tolist()))

    # With a broken labels.csv the attribute ids cannot be checked, only the ids and syntax:
    # attribute_csv_problems(labels=None) does that and returns no ids.
    train_ids, _, problems = attribute_csv_problems(layout.train_csv, labels, allow_empty=False)
    report.problems += problems
    train_clean = not problems
    test_ids, problems = sample_submission_problems(layout.sample_submission_csv)
    report.problems += problems
    if layout.test_labels_csv.exists():
        truth_ids, _, problems = attribute_csv_problems(layout.test_labels_csv, labels,
                                                        allow_empty=False)
        report.problems += problems
        if truth_ids is not None and test_ids is not None and set(truth_ids) != set(test_ids):
            report.problems.append(
                f"{layout.test_labels_csv}: its ids differ from {layout.sample_submission_csv.name}"
                f" ({len(set(truth_ids) - set(test_ids))} extra, "
                f"{len(set(test_ids) - set(truth_ids))} missing); regenerate the data set")

    to_decode: list[Path] = []
    for split, ids, csv in (("train", train_ids, layout.train_csv),
                            ("test", test_ids, layout.sample_submission_csv)):
        if ids is None:
            continue
        report.counts[f"{split}_rows"] = len(ids)
        if images == "skip":
            continue
        ids = list(dict.fromkeys(i for i in ids if i))  # duplicates/blanks already reported
        problems, present = _missing_images(layout, split, ids, csv)
        report.problems += problems
        to_decode += layout.image_paths(split, present)
    if images == "decode" and to_decode:
        problems, warnings = _decode_all(to_decode, workers or min(8, os.cpu_count() or 1),
                                         progress, min_side)
        report.problems += problems
        report.warnings += warnings
        report.counts["images_decoded"] = len(to_decode)
    elif images == "exists":
        report.counts["images_found"] = len(to_decode)

    if folds is not None and train_clean:  # folds are matched against the train ids
        _, problems = folds_problems(folds, train_ids)
        report.problems += problems
    return report
