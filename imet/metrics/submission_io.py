"""Submission-format CSVs (`id,attribute_ids`, space-separated attribute ids per image): read
one and line it up against the ids it must cover; write one atomically. In the metrics layer
(below imet.data, so no LabelSpace): a plain list of attribute ids stands for the columns, so
`score` works on any two such files. Attribute ids in a row are a set (order, repeats ignored)."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from imet.errors import DataError
from imet.fileio import atomic_open

HEADER = ("id", "attribute_ids")


def _examples(values) -> str:
    values = list(values)
    return ", ".join(repr(v) for v in values[:3]) + (", ..." if len(values) > 3 else "")


def read_submission(path) -> tuple[list[str], list[list[int]]]:
    """(ids, attribute ids per row) in file order. DataError naming the file and line for a
    missing file or column, an empty id, a non-integer attribute id, or a row with too many or
    too few fields. Duplicate ids are reported by `align_to_ids`, with the other mismatches."""
    path = Path(path)
    if not path.is_file():
        problem = "a folder, not a file" if path.is_dir() else "file not found"
        raise DataError(f"{path}: {problem}; expected a CSV with header 'id,attribute_ids'")
    ids: list[str] = []
    rows: list[list[int]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in HEADER if c not in header]
            if missing:
                raise DataError(f"{path}: line 1: missing column "
                                f"{', '.join(repr(c) for c in missing)} (found: "
                                f"{', '.join(header) or 'nothing'}); the header must be "
                                "'id,attribute_ids'")
            id_col, attr_col = header.index("id"), header.index("attribute_ids")
            for fields in reader:
                line = reader.line_num
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue  # blank line
                if len(fields) != len(header):
                    raise DataError(f"{path}: line {line}: {len(fields)} fields where the header "
                                    f"has {len(header)}; write 'id,attribute ids separated by "
                                    "spaces' (no commas between attribute ids)")
                image_id = fields[id_col].strip()
                if not image_id:
                    raise DataError(f"{path}: line {line}: field 'id' is empty; give the image "
                                    "id or remove the line")
                tokens = fields[attr_col].split()
                bad = [t for t in tokens if not (t.isascii() and t.isdigit())]
                if bad:
                    raise DataError(f"{path}: line {line}: field 'attribute_ids': {bad[0]!r} is "
                                    "not a non-negative integer; use space-separated attribute ids")
                ids.append(image_id)
                rows.append(sorted({int(t) for t in tokens}))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except csv.Error as err:
        raise DataError(f"{path}: line {reader.line_num}: cannot parse as CSV ({err})") from None
    if not ids:
        raise DataError(f"{path}: no rows; expected one 'id,attribute_ids' row per image")
    return ids, rows


def refuse_duplicate_ids(path, ids: Sequence[str], role: str = "the truth") -> None:
    """DataError (count and a few examples) when an id appears more than once in `ids`."""
    duplicated = [i for i, n in Counter(ids).items() if n > 1]
    if duplicated:
        raise DataError(f"{path}: {len(duplicated)} ids listed more than once "
                        f"({_examples(duplicated)}); {role} must list every image once")


def align_to_ids(path, ids: Sequence[str], rows: Sequence[list[int]],
                 expected_ids: Sequence[str], expected_from: str = "the truth") -> list[list[int]]:
    """`rows` reordered to `expected_ids`. DataError when the file read from `path` has ids
    missing, extra or duplicated with respect to `expected_ids` (counts and a few examples)."""
    counts = Counter(ids)
    duplicated = [i for i, n in counts.items() if n > 1]
    expected = set(expected_ids)
    missing = [i for i in expected_ids if i not in counts]
    extra = [i for i in counts if i not in expected]
    if duplicated or missing or extra:
        parts = [f"{len(found)} {what} ({_examples(found)})" for found, what in
                 ((missing, "missing"), (extra, f"not in {expected_from}"),
                  (duplicated, "listed more than once")) if found]
        raise DataError(f"{path}: ids do not match {expected_from} ({len(expected)} ids): "
                        f"{'; '.join(parts)}; write exactly one row per id")
    position = {image_id: n for n, image_id in enumerate(ids)}
    return [rows[position[i]] for i in expected_ids]


def check_known(path, ids: Sequence[str], rows: Sequence[list[int]],
                attribute_ids: Sequence[int], labels_from: str = "labels.csv") -> None:
    """DataError naming the first row (by id) that uses an attribute id not in `attribute_ids`."""
    known = {int(a) for a in attribute_ids}
    for image_id, row in zip(ids, rows):
        unknown = [a for a in row if a not in known]
        if unknown:
            raise DataError(f"{path}: id {image_id!r}: attribute id {unknown[0]} is not in "
                            f"{labels_from}; fix the id or pass the right --labels")


def rows_to_matrix(rows: Sequence[list[int]], attribute_ids: Sequence[int]) -> np.ndarray:
    """Bool [N, C] with C = len(attribute_ids); ids outside `attribute_ids` raise KeyError."""
    attribute_ids = np.asarray(attribute_ids, dtype=np.int64)
    order = np.argsort(attribute_ids)
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter((a for r in rows for a in r), dtype=np.int64, count=int(lengths.sum()))
    pos = np.searchsorted(attribute_ids, flat, sorter=order).clip(0, max(len(order) - 1, 0))
    cols = order[pos] if len(order) else pos
    if flat.size and (len(order) == 0 or (attribute_ids[cols] != flat).any()):
        raise KeyError("attribute id not in the label list")
    matrix = np.zeros((len(rows), len(attribute_ids)), dtype=bool)
    matrix[np.repeat(np.arange(len(rows)), lengths), cols] = True
    return matrix


def format_rows(pred: np.ndarray, attribute_ids: Sequence[int]) -> list[str]:
    """The `attribute_ids` field of every row of a bool [N, C] prediction (column order)."""
    pred = np.asarray(pred, dtype=bool)
    names = np.asarray([str(int(a)) for a in attribute_ids], dtype=object)
    row_idx, col_idx = np.nonzero(pred)
    bounds = np.searchsorted(row_idx, np.arange(pred.shape[0] + 1))
    tokens = names[col_idx]
    # one join per row is the unavoidable string work; everything before it is vectorized
    return [" ".join(tokens[bounds[i]:bounds[i + 1]]) for i in range(pred.shape[0])]


def write_submission(path, ids: Sequence[str], labels) -> Path:
    """Write `id,attribute_ids` atomically (temp file in the same folder, fsync, os.replace):
    an interrupted run never leaves a half-written submission. `labels`: one string of
    space-separated attribute ids per id (see `format_rows`)."""
    path = Path(path)
    labels = list(labels)
    if len(labels) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(labels)} label rows")
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(zip(ids, labels))
    return path
