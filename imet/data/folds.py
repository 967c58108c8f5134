"""Cross-validation folds and `imet check-data`.

Folds are multilabel-stratified (iterative-stratification) and saved as folds.csv (`id,fold`)
so every kernel and every session trains on the same split. check-data scans a competition
folder up front and lists every problem (CSVs, images, folds.csv), not only the first."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from imet.data.images import MIN_SIDE, image_findings
from imet.data.labels import (IMAGE_SUFFIX, CompetitionLayout, attribute_csv_problems,
                              labels_problems, layout_problems, sample_submission_problems)
from imet.errors import DataError, UserError
from imet.fileio import atomic_open

HEADER = ("id", "fold")


def make_folds(targets: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold index (0..n_folds-1) per row of the multi-hot `targets` [N, C]; deterministic per
    seed. Labels with fewer than n_folds images cannot be in every fold (see `rare_labels`).

    The folds are exactly iterative-stratification's MultilabelStratifiedKFold(n_folds,
    shuffle=True, random_state=seed) (Sechidis et al. 2011), the same random draws in the same
    order, so folds made before are made again. Its loop sums the remaining rows' label matrix
    once per label, O(N C^2): 2 CPU minutes at 2019's 1,103 classes, 20 at 2020's 3,474. Here
    the remaining counts are kept up to date per assigned row, O(N C) in all."""
    targets = np.asarray(targets)
    check_n_folds(n_folds)
    if len(targets) < n_folds:
        raise UserError(f"cannot split {len(targets)} images into {n_folds} folds; use fewer "
                        "folds or more images")
    n = len(targets)
    rng = np.random.RandomState(seed)
    order = np.arange(n)
    rng.shuffle(order)  # row k of the stratification is image order[k]
    rows, cols = np.nonzero(targets[order])
    row_start = np.searchsorted(rows, np.arange(n + 1))  # row k's labels: cols[row_start[k]:…]
    by_label = np.argsort(cols, kind="stable")  # per label, its rows in increasing order
    label_start = np.searchsorted(cols[by_label], np.arange(targets.shape[1] + 1))
    r = np.asarray([1 / n_folds] * n_folds)
    wanted = r * n  # float, as iterstrat computes it: the ties below must come out the same
    wanted_per_label = np.outer(r, targets.sum(axis=0, dtype=np.int64))
    remaining = targets.sum(axis=0, dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    folds = np.zeros(n, dtype=np.int64)
    for _ in range(targets.shape[1]):
        present = remaining[remaining > 0]
        if not len(present):
            break
        label = np.flatnonzero(remaining == present.min())
        label = label[rng.choice(len(label))] if len(label) > 1 else label[0]
        members = rows[by_label[label_start[label]:label_start[label + 1]]]
        for k in members[~done[members]]:
            column = wanted_per_label[:, label]
            fold = np.flatnonzero(column == column.max())
            if len(fold) > 1:
                best = np.flatnonzero(wanted[fold] == wanted[fold].max())
                fold = fold[best[rng.choice(len(best))]] if len(best) > 1 else fold[best[0]]
            else:
                fold = fold[0]
            own = cols[row_start[k]:row_start[k + 1]]
            folds[k], done[k] = fold, True
            wanted_per_label[fold, own] -= 1
            wanted[fold] -= 1
            remaining[own] -= 1
    for k in np.flatnonzero(~done):  # rows without a label: wherever most images are wanted
        fold = np.flatnonzero(wanted == wanted.max())
        fold = fold[rng.choice(len(fold))] if len(fold) > 1 else fold[0]
        folds[k] = fold
        wanted[fold] -= 1
    return folds[np.argsort(order)]


def check_n_folds(n_folds: int) -> None:
    if n_folds < 2:
        raise UserError(f"--n-folds must be at least 2 (got {n_folds})")


def rare_labels(targets: np.ndarray, n_folds: int) -> tuple[np.ndarray, np.ndarray]:
    """(class indices, supports) of labels present but with support < n_folds, rarest first:
    some folds will have none of them in validation."""
    support = np.asarray(targets).sum(axis=0, dtype=np.int64)
    idx = np.flatnonzero((support > 0) & (support < n_folds))
    idx = idx[np.argsort(support[idx], kind="stable")]
    return idx, support[idx]


def write_folds(path, ids, folds) -> None:
    """Atomic (imet.fileio): a reader never sees half a folds file."""
    folds = np.asarray(folds, dtype=np.int64)
    if len(ids) != len(folds):
        raise ValueError("ids and folds differ in length")
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(",".join(HEADER) + "\n")
        f.writelines(f"{i},{k}\n" for i, k in zip(ids, folds.tolist()))


def folds_problems(path, ids, train_from: str = "train.csv"
                   ) -> tuple[np.ndarray | None, list[str]]:
    """folds.csv checked against the training ids: (fold per id in `ids` order, problems)."""
    path = Path(path)
    hint = "make it again with `imet folds --data DIR --out FILE`"
    if not path.is_file():
        return None, [f"{path}: folds file not found; {hint}"]
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        return None, [f"{path}: not a readable folds CSV ({' '.join(str(err).split())}); {hint}"]
    missing = [c for c in HEADER if c not in frame.columns]
    if missing:
        return None, [f"{path}: line 1: missing column {', '.join(map(repr, missing))} (found: "
                      f"{', '.join(frame.columns) or 'nothing'}); the header must be 'id,fold'"]
    fold_text, file_ids = frame["fold"].str.strip(), frame["id"].str.strip()
    is_int = fold_text.str.fullmatch(r"\d{1,6}").to_numpy(dtype=bool)
    dup = file_ids.duplicated(keep="first").to_numpy()
    problems = [f"{path}: line {i + 2}: field 'fold': {fold_text.iloc[i]!r} is not a fold number "
                f"(0, 1, ...); {hint}" for i in np.flatnonzero(~is_int)]
    problems += [f"{path}: line {i + 2}: field 'id': duplicate id {file_ids.iloc[i]!r}; {hint}"
                 for i in np.flatnonzero(dup)]
    pos = pd.Index(file_ids[~dup]).get_indexer(pd.Index(ids))
    absent = np.flatnonzero(pos < 0)
    if len(absent):
        problems.append(f"{path}: {len(absent)} training ids have no fold (first: "
                        f"{ids[absent[0]]!r}); the file belongs to other data; {hint}")
    extra = np.setdiff1d(file_ids.to_numpy(dtype=str), np.asarray(ids, dtype=str))
    if len(extra):
        problems.append(f"{path}: {len(extra)} ids are not in {train_from} (first: "
                        f"{str(extra[0])!r}); the file belongs to other data; {hint}")
    if problems:
        return None, problems
    return fold_text[~dup].astype(np.int64).to_numpy()[pos], []


def read_folds(path, ids, train_from: str = "train.csv") -> np.ndarray:
    """Fold per training id, aligned to `ids` (of the training table named `train_from`);
    DataError when the file does not match them."""
    folds, problems = folds_problems(path, ids, train_from)
    if problems:
        raise DataError(problems[0])
    return folds


IMAGE_MODES = ("decode", "exists", "skip")
DECODE_SLICE = 2048


@dataclass
class CheckReport:
    root: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    layout: CompetitionLayout | None = None  # what was found (roles not found: 2019's names)

    @property
    def ok(self) -> bool:
        return not self.problems


def _missing_images(layout: CompetitionLayout, split: str, ids: list[str], csv: Path
                    ) -> tuple[list[str], list[str]]:
    """(problems, ids whose file exists): one listing of the folder, not one stat per id."""
    folder = layout.split_dir(split)
    if not folder.is_dir():  # layout_problems named what it looked for
        return [], []
    present = set(os.listdir(folder))
    names = [f"{i}{IMAGE_SUFFIX}" for i in ids]
    exists = [n in present for n in names]
    problems = [f"{folder / n}: image not found (id {i!r} in {csv.name}); add the image or "
                f"remove the row from {csv.name}" for n, i, e in zip(names, ids, exists) if not e]
    return problems, [i for i, e in zip(ids, exists) if e]


def _decode_all(paths: list[Path], workers: int, progress: bool, min_side: int
                ) -> tuple[list[str], list[str]]:
    """(problems, warnings) of every image. Decoding is the only way to find a truncated PNG;
    threads suffice, since PIL releases the GIL while it inflates."""
    from tqdm.auto import tqdm

    found = []
    inspect = partial(image_findings, min_side=min_side)
    bar = tqdm(total=len(paths), desc="decoding images", unit="img",
               disable=None if progress else True, leave=False)
    with ThreadPoolExecutor(max_workers=workers) as pool, bar:
        # In slices: Executor.map submits everything at once (109k futures for iMet).
        for start in range(0, len(paths), DECODE_SLICE):
            for findings in pool.map(inspect, paths[start:start + DECODE_SLICE]):
                bar.update()
                found.append(findings)
    return [p for p, _ in found if p], [w for _, w in found if w]


def check_data(root, *, images: str = "decode", folds=None, workers: int | None = None,
               progress: bool = True, min_side: int = MIN_SIDE) -> CheckReport:
    """Every problem in the folder (CSVs, ids, attribute ids, images, optional folds.csv), and
    the warnings (an image whose format is not the one its name says)."""
    report = CheckReport(Path(root))
    layout, report.problems = layout_problems(root)
    if not layout.root.is_dir():
        return report
    report.layout = layout
    # A role not found was reported; its 2019 name is parsed only when that file exists.
    labels, problems = labels_problems(layout.labels_csv) if layout.labels_csv.exists() else \
        (None, [])
    report.problems += problems
    if labels is not None:
        report.counts["labels"] = labels.num_classes
        groups, counts = np.unique(labels.groups, return_counts=True)
        report.groups = dict(zip(groups.tolist(), counts.tolist()))
    # With a broken labels.csv (labels None) only the ids and the syntax are checked.

    train_ids, _, problems = attribute_csv_problems(layout.train_csv, labels, allow_empty=False) \
        if layout.train_csv.exists() else (None, None, [])
    report.problems += problems
    train_clean = not problems and train_ids is not None
    test_ids, problems = sample_submission_problems(layout.sample_submission_csv) \
        if layout.sample_submission_csv.exists() else (None, [])
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
        _, problems = folds_problems(folds, train_ids, layout.train_csv.name)
        report.problems += problems
    return report
