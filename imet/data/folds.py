"""Cross-validation folds: multilabel-stratified (iterative-stratification), saved as folds.csv
(`id,fold`) so every kernel and every session trains on the same split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from imet.errors import DataError, UserError
from imet.fileio import atomic_open

HEADER = ("id", "fold")


def make_folds(targets: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold index (0..n_folds-1) per row of the multi-hot `targets` [N, C]; deterministic per
    seed. Labels with fewer than n_folds images cannot be in every fold (see `rare_labels`)."""
    targets = np.asarray(targets)
    check_n_folds(n_folds)
    if len(targets) < n_folds:
        raise UserError(f"cannot split {len(targets)} images into {n_folds} folds; use fewer "
                        "folds or more images")
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # imports sklearn: seconds

    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(len(targets), -1, dtype=np.int64)
    # iterstrat only needs the row count of X; a zero-width view avoids copying anything.
    x = np.zeros((len(targets), 0))
    for fold, (_, valid) in enumerate(splitter.split(x, targets)):
        folds[valid] = fold
    return folds


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


def folds_problems(path, ids) -> tuple[np.ndarray | None, list[str]]:
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
    problems = []
    fold_text = frame["fold"].str.strip()
    is_int = fold_text.str.fullmatch(r"\d{1,6}").to_numpy(dtype=bool)
    for i in np.flatnonzero(~is_int):
        problems.append(f"{path}: line {i + 2}: field 'fold': {fold_text.iloc[i]!r} is not a "
                        f"fold number (0, 1, ...); {hint}")
    file_ids = frame["id"].str.strip()
    dup = file_ids.duplicated(keep="first").to_numpy()
    for i in np.flatnonzero(dup):
        problems.append(f"{path}: line {i + 2}: field 'id': duplicate id {file_ids.iloc[i]!r}; "
                        f"{hint}")
    pos = pd.Index(file_ids[~dup]).get_indexer(pd.Index(ids))
    absent = np.flatnonzero(pos < 0)
    if len(absent):
        problems.append(f"{path}: {len(absent)} training ids have no fold (first: "
                        f"{ids[absent[0]]!r}); the file belongs to other data; {hint}")
    extra = np.setdiff1d(file_ids.to_numpy(dtype=str), np.asarray(ids, dtype=str))
    if len(extra):
        problems.append(f"{path}: {len(extra)} ids are not in train.csv (first: "
                        f"{str(extra[0])!r}); the file belongs to other data; {hint}")
    if problems:
        return None, problems
    folds = fold_text[~dup].astype(np.int64).to_numpy()[pos]
    return folds, []


def read_folds(path, ids) -> np.ndarray:
    """Fold per training id, aligned to `ids`; DataError when the file does not match them."""
    folds, problems = folds_problems(path, ids)
    if problems:
        raise DataError(problems[0])
    return folds
