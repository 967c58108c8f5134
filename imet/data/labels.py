"""The competition's data as files: the label space (labels.csv), the `id,attribute_ids` CSVs
(train.csv, test_labels.csv, sample_submission.csv), where they sit in a data folder, and an
extra training set (`imet train --extra`).

Every reader reports each problem as one line naming the file, the line (1-based: the header is
line 1), the field and what to do; `*_problems` return ALL problems (for `imet check-data`),
`read_*` raise a DataError on the first. Parsing is vectorized with pandas (iMet: 109k rows,
1,103 labels)."""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd

from imet.errors import DataError, UserError
from imet.probfile import load_probabilities

LABELS_COLUMNS = ("attribute_id", "attribute_name")
ID_COLUMNS = ("id", "attribute_ids")
FIRST_DATA_LINE = 2  # line 1 is the header
_ASCII_INT = re.compile(r"-?[0-9]{1,18}")
_ASCII_INTS = re.compile(r"(?:-?[0-9]{1,18}(?: -?[0-9]{1,18})*)?")


@dataclass(frozen=True)
class LabelSpace:
    """The classes, in labels.csv order (class index i <-> attribute_ids[i])."""

    attribute_ids: tuple[int, ...]
    names: tuple[str, ...]
    # The file it was read from, for messages (2021's is label_map.csv); not part of its identity.
    source: str = field(default="labels.csv", compare=False)

    def __post_init__(self):
        object.__setattr__(self, "attribute_ids", tuple(int(a) for a in self.attribute_ids))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        if len(self.attribute_ids) != len(self.names):
            raise ValueError("attribute_ids and names differ in length")
        if len(set(self.attribute_ids)) != len(self.attribute_ids):
            raise ValueError("attribute ids are not unique")
        if any(a < 0 for a in self.attribute_ids):
            raise ValueError("attribute ids must be >= 0")

    @property
    def num_classes(self) -> int:
        return len(self.attribute_ids)

    @cached_property
    def groups(self) -> np.ndarray:
        """Group per class: the part of the name before '::' (2019: culture, tag; 2020 and 2021:
        country, culture, dimension, medium, tags)."""
        return np.array([n.split("::", 1)[0] if "::" in n else "" for n in self.names], dtype=str)

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.groups.tolist())))

    def summary(self) -> str:
        """'1103 classes: 398 culture, 705 tag', to tell two label spaces apart in a message."""
        names, counts = np.unique(self.groups, return_counts=True)
        return f"{self.num_classes} classes: " + ", ".join(
            f"{n} {g or 'ungrouped'}" for g, n in zip(names.tolist(), counts.tolist()))

    @cached_property
    def _lookup(self) -> np.ndarray:
        # Dense attribute-id -> class-index table (-1 = unknown): encoding 109k rows is one
        # fancy-indexing operation instead of a dict lookup per id.
        table = np.full(max(self.attribute_ids, default=-1) + 1, -1, dtype=np.int64)
        table[list(self.attribute_ids)] = np.arange(self.num_classes)
        return table

    def index_of(self, attribute_id: int) -> int:
        a = int(attribute_id)
        if a < 0 or a >= len(self._lookup) or self._lookup[a] < 0:
            raise KeyError(f"attribute id {a} is not in the label space")
        return int(self._lookup[a])

    def indices_of(self, attribute_ids: np.ndarray) -> np.ndarray:
        """Class indices for an int array of attribute ids; -1 where an id is unknown."""
        ids = np.asarray(attribute_ids, dtype=np.int64)
        inside = (ids >= 0) & (ids < len(self._lookup))
        out = np.full(ids.shape, -1, dtype=np.int64)
        out[inside] = self._lookup[ids[inside]]
        return out

    def encode(self, rows: list[list[int]]) -> np.ndarray:
        """Multi-hot uint8 [N, C] from per-row lists of attribute ids (KeyError on unknown)."""
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        flat = np.fromiter((a for r in rows for a in r), dtype=np.int64, count=int(lengths.sum()))
        cols = self.indices_of(flat)
        if (cols < 0).any():
            raise KeyError(f"attribute id {int(flat[cols < 0][0])} is not in the label space")
        targets = np.zeros((len(rows), self.num_classes), dtype=np.uint8)
        targets[np.repeat(np.arange(len(rows)), lengths), cols] = 1
        return targets

    def decode_row(self, row) -> str:
        """Space-separated attribute ids of the true entries of one bool/0-1 row."""
        ids = np.asarray(self.attribute_ids)[np.asarray(row).astype(bool)]
        return " ".join(str(int(a)) for a in ids)

    def to_dict(self) -> dict:
        return {"attribute_ids": list(self.attribute_ids), "names": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict) -> "LabelSpace":
        return cls(tuple(int(a) for a in data["attribute_ids"]), tuple(data["names"]))

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for a, n in zip(self.attribute_ids, self.names):
            h.update(f"{a}\t{n}\n".encode("utf-8"))
        return h.hexdigest()


def _load_csv(path: Path, columns: tuple[str, ...], problems: list[str]) -> pd.DataFrame | None:
    """The CSV as strings, one DataFrame row per file line after the header (blank lines kept,
    so row i is line i + 2). None (with a problem recorded) when it cannot be used at all."""
    path = Path(path)
    header = ",".join(columns)
    if not path.is_file():
        problems.append(f"{path}: file not found; expected a CSV with header '{header}'")
        return None
    try:
        with warnings.catch_warnings():
            # index_col=False: an extra field must not silently turn column 1 into an index;
            # pandas then warns (first row too long) or raises (a later row too long).
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False,
                                encoding="utf-8", index_col=False)
    except pd.errors.ParserWarning:
        problems.append(f"{path}: line 2: more fields than the header '{header}'; remove the "
                        "extra commas")
        return None
    except pd.errors.EmptyDataError:  # also a 0-byte file
        problems.append(f"{path}: file is empty; expected a header '{header}' and one row per line")
        return None
    except pd.errors.ParserError as err:
        detail = " ".join(str(err).split()).replace("Error tokenizing data. C error: ", "")
        problems.append(f"{path}: cannot parse as CSV ({detail}); each line must be '{header}'")
        return None
    except UnicodeDecodeError as err:
        problems.append(f"{path}: not UTF-8 text (byte {err.start}); save it as a UTF-8 CSV")
        return None
    frame.columns = [str(c).strip().lstrip("\ufeff") for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        found = ", ".join(frame.columns) or "nothing"
        problems.append(f"{path}: line 1: missing column {', '.join(repr(c) for c in missing)} "
                        f"(found: {found}); the header must be '{header}'")
        return None
    frame = frame[list(columns)].fillna("")
    # A trailing blank line is what most editors write; only blank lines inside count as rows.
    blank = (frame == "").all(axis=1).to_numpy()
    last = len(frame) - (np.flatnonzero(~blank)[-1] + 1 if (~blank).any() else 0)
    frame = frame.iloc[: len(frame) - last]
    if len(frame) == 0:
        problems.append(f"{path}: has a header but no rows; add one row per line as '{header}'")
        return None
    return frame


def _line(i) -> int:
    return int(i) + FIRST_DATA_LINE


def _repeats(values: pd.Series) -> list[tuple[int, int]]:
    """(row, row of the value's first occurrence) of every repeated value that is not NaN."""
    first = values.drop_duplicates(keep="first")
    first_row = pd.Series(first.index, index=first.to_numpy())
    repeated = values.duplicated(keep="first") & values.notna()
    return [(i, first_row[values.iloc[i]]) for i in np.flatnonzero(repeated.to_numpy())]


def labels_problems(path: Path) -> tuple[LabelSpace | None, list[str]]:
    """Parse labels.csv; the LabelSpace is None when any problem was found."""
    problems: list[str] = []
    frame = _load_csv(path, LABELS_COLUMNS, problems)
    if frame is None:
        return None, problems
    ids_text = frame["attribute_id"].str.strip()
    names = frame["attribute_name"].str.strip()
    ids = pd.to_numeric(ids_text, errors="coerce")
    bad = ids.isna() | (ids < 0) | (ids != ids.round())
    for i in np.flatnonzero(bad.to_numpy()):
        problems.append(f"{path}: line {_line(i)}: field 'attribute_id': {ids_text.iloc[i]!r} is "
                        "not a non-negative integer; fix the id or remove the line")
    for i in np.flatnonzero((names == "").to_numpy()):
        problems.append(f"{path}: line {_line(i)}: field 'attribute_name' is empty; give the "
                        "label a name as GROUP::VALUE, such as 'culture::x'")
    # The prefix is the group every per-group threshold, table and confusion is keyed by.
    prefixless = (names != "") & ~names.str.contains(r"^[^:]+::", regex=True)
    for i in np.flatnonzero(prefixless.to_numpy()):
        problems.append(f"{path}: line {_line(i)}: field 'attribute_name': {names.iloc[i]!r} has "
                        "no group prefix; name it GROUP::VALUE as the competitions do (e.g. "
                        f"'culture::{names.iloc[i]}')")
    for col, values in (("attribute_id", ids.where(~bad)),
                        ("attribute_name", names.where(names != ""))):
        for i, first in _repeats(values):
            shown = (ids_text if col == "attribute_id" else values).iloc[i]
            problems.append(f"{path}: line {_line(i)}: field '{col}': duplicate value {shown!r} "
                            f"(first on line {_line(first)}); remove or renumber one of the two"
                            " lines")
    if problems:
        return None, problems
    return LabelSpace(tuple(ids.astype(np.int64).tolist()), tuple(names.tolist()),
                      Path(path).name), []


def read_labels(path: Path) -> LabelSpace:
    labels, problems = labels_problems(path)
    _raise_first(problems)
    return labels


def _id_problems(path: Path, ids: pd.Series) -> list[str]:
    return [f"{path}: line {_line(i)}: field 'id' is empty; give the image id (the file name "
            "without .png) or remove the line" for i in np.flatnonzero((ids == "").to_numpy())] + [
        f"{path}: line {_line(i)}: field 'id': duplicate id {ids.iloc[i]!r} (first on line "
        f"{_line(first)}); keep one of the lines" for i, first in _repeats(ids.where(ids != ""))]


def _split_tokens(texts: list[str]) -> tuple[np.ndarray, list[str]]:
    """(row index per token, tokens) of space-separated fields. One C-level split per row:
    pandas' .str.split().explode() is several times slower at 109k rows."""
    splits = [t.split() for t in texts]
    counts = np.fromiter(map(len, splits), dtype=np.int64, count=len(splits))
    return np.repeat(np.arange(len(texts)), counts), list(chain.from_iterable(splits))


def _parse_ints(tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, mask of tokens that are plain decimal integers)."""
    try:
        values = np.fromiter(map(int, tokens), dtype=np.int64, count=len(tokens))
        # int() also takes '+3', '1_000' and non-ASCII digits: only then look closer.
        if _ASCII_INTS.fullmatch(" ".join(tokens)):
            return values, np.ones(len(tokens), dtype=bool)
    except (ValueError, OverflowError):
        pass
    is_int = np.fromiter((_ASCII_INT.fullmatch(t) is not None for t in tokens), dtype=bool,
                         count=len(tokens))
    values = np.zeros(len(tokens), dtype=np.int64)
    values[is_int] = [int(t) for t, ok in zip(tokens, is_int) if ok]
    return values, is_int


def attribute_csv_problems(path: Path, labels: LabelSpace | None, *, allow_empty: bool
                           ) -> tuple[list[str] | None, np.ndarray | None, list[str]]:
    """Parse an `id,attribute_ids` CSV into (ids, uint8 targets [N, C], problems): ids None only
    when the file is unusable, targets None on any problem. `labels=None` checks ids and integer
    syntax only (labels.csv is broken); `allow_empty`: a row may have no attribute ids (a
    submission may predict nothing; a training image must have a label)."""
    problems: list[str] = []
    frame = _load_csv(path, ID_COLUMNS, problems)
    if frame is None:
        return None, None, problems
    ids = frame["id"].str.strip()
    problems += _id_problems(path, ids)
    rows, tokens = _split_tokens(frame["attribute_ids"].tolist())
    if not allow_empty:
        for i in np.flatnonzero(np.bincount(rows, minlength=len(frame)) == 0):
            problems.append(f"{path}: line {_line(i)}: field 'attribute_ids' is empty; every "
                            "image needs at least one attribute id (space-separated)")
    values, is_int = _parse_ints(tokens)
    for i, tok in zip(rows[~is_int], (t for t, ok in zip(tokens, is_int) if not ok)):
        problems.append(f"{path}: line {_line(i)}: field 'attribute_ids': {tok!r} is not an "
                        f"integer attribute id; use space-separated ids from "
                        f"{labels.source if labels else 'the labels table'}")
    rows, values = rows[is_int], values[is_int]
    if labels is None:
        return ids.tolist(), None, problems
    cols = labels.indices_of(values)
    for i, a in zip(rows[cols < 0], values[cols < 0]):
        problems.append(f"{path}: line {_line(i)}: field 'attribute_ids': attribute id {a} is "
                        f"not in {labels.source} (ids {min(labels.attribute_ids)}..."
                        f"{max(labels.attribute_ids)}); fix the id or the labels file")
    if problems:
        return ids.tolist(), None, problems
    targets = np.zeros((len(frame), labels.num_classes), dtype=np.uint8)
    targets[rows, cols] = 1
    return ids.tolist(), targets, []


def read_attribute_csv(path: Path, labels: LabelSpace, *, allow_empty: bool = False
                       ) -> tuple[list[str], np.ndarray]:
    ids, targets, problems = attribute_csv_problems(path, labels, allow_empty=allow_empty)
    _raise_first(problems)
    return ids, targets


def read_train(path: Path, labels: LabelSpace) -> tuple[list[str], np.ndarray]:
    """train.csv (or test_labels.csv): ids and multi-hot uint8 targets [N, C]."""
    return read_attribute_csv(path, labels, allow_empty=False)


def sample_submission_problems(path: Path) -> tuple[list[str] | None, list[str]]:
    problems: list[str] = []
    frame = _load_csv(path, ID_COLUMNS, problems)
    if frame is None:
        return None, problems
    ids = frame["id"].str.strip()
    problems += _id_problems(path, ids)
    return ids.tolist(), problems


def read_sample_submission(path: Path) -> list[str]:
    """The test ids, in the order a submission must list them."""
    ids, problems = sample_submission_problems(path)
    _raise_first(problems)
    return ids


def _raise_first(problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more problems: run `imet check-data` to list them)" \
            if len(problems) > 1 else ""
        raise DataError(problems[0] + more)


# Only this module names the competition's files; callers pass the root (a Kaggle input folder,
# a mini-iMet folder, or a user's download) to `find_layout`, which finds each file by content.
SPLITS = ("train", "test")
IMAGE_SUFFIX = ".png"
# Ids probed per candidate image folder: enough to tell the train folder from the test folder
# (their ids are disjoint) with a few missing images, without listing 109k file names.
ID_SAMPLE = 16
MAX_DEPTH = 3  # image folders one to three levels below the root (2021: train-1/train-1/)


class CompetitionLayout:
    """Where each role of a competition folder is. `CompetitionLayout(root)` is the layout imet
    writes (2019's names: labels.csv, train.csv, sample_submission.csv, [test_labels.csv],
    train/, test/); `find_layout(root)` is the one a folder actually has."""

    def __init__(self, root, *, labels_csv=None, train_csv=None, sample_submission_csv=None,
                 test_labels_csv=None, train_dir=None, test_dir=None):
        self.root = root = Path(root)
        self.labels_csv = Path(labels_csv or root / "labels.csv")
        self.train_csv = Path(train_csv or root / "train.csv")
        self.sample_submission_csv = Path(sample_submission_csv or root / "sample_submission.csv")
        # The test truth: only mini-iMet has it (the competition kept it hidden).
        self.test_labels_csv = Path(test_labels_csv or root / "test_labels.csv")
        self.folds_csv = root / "folds.csv"  # where `imet folds` writes by default
        self.train_dir = Path(train_dir or root / "train")
        self.test_dir = Path(test_dir or root / "test")

    def __repr__(self) -> str:
        return f"CompetitionLayout({str(self.root)!r})"

    def describe(self) -> str:
        """One line: each role and the path it was found at, relative to the root."""
        def rel(path: Path, folder: bool = False) -> str:
            try:
                text = path.relative_to(self.root).as_posix()
            except ValueError:
                text = str(path)
            return text + "/" if folder else text
        parts = [f"labels {rel(self.labels_csv)}", f"training table {rel(self.train_csv)}",
                 f"train images {rel(self.train_dir, True)}",
                 f"sample submission {rel(self.sample_submission_csv)}",
                 f"test images {rel(self.test_dir, True)}"]
        if self.test_labels_csv.is_file():
            parts.append(f"test truth {rel(self.test_labels_csv)}")
        return ", ".join(parts)

    def split_dir(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        return self.train_dir if split == "train" else self.test_dir

    def image_path(self, split: str, image_id: str) -> Path:
        return self.split_dir(split) / f"{image_id}{IMAGE_SUFFIX}"

    def image_paths(self, split: str, image_ids) -> list[Path]:
        folder = self.split_dir(split)
        return [folder / f"{i}{IMAGE_SUFFIX}" for i in image_ids]


# Each iMet competition's file names, as `imet mini-imet --layout` writes them (imet reads any
# of them by content). 2021's are those public solution code reads; not verified on Kaggle.
COMPETITIONS = {"2019": "imet-2019-fgvc6", "2020": "imet-2020-fgvc7", "2021": "imet-2021-fgvc8"}
YEAR_FILES = {
    "2019": {}, "2020": {},
    "2021": {"labels_csv": "label_map.csv", "train_csv": "train-from-kaggle.csv",
             "train_dir": "train-1/train-1", "test_dir": "test/test"},
}


# What tells the years apart in the files themselves: 2021's file names (2020 kept 2019's), and
# the groups (2019: culture, tag; 2020 and 2021: country, culture, dimension, medium, tags).
YEAR_GROUPS = {"2019": ("culture", "tag"),
               "2020": ("country", "culture", "dimension", "medium", "tags")}
YEAR_CLASSES = {"2019": 1_103, "2020": 3_474, "2021": 3_474}


def competition_of(layout: CompetitionLayout, labels: LabelSpace) -> tuple[str | None, str]:
    """(the competition's slug, or None when the files are none of the three, and why): by
    2021's file names, else by the groups; the class count says whether it is the full set."""
    def named(path: Path, name: str) -> bool:
        return Path(name).parts == path.relative_to(layout.root).parts \
            if path.is_relative_to(layout.root) else False
    names_2021 = [rel for key, rel in YEAR_FILES["2021"].items()
                  if named(getattr(layout, key), rel)]
    groups = labels.group_names
    by_groups = next((y for y, g in YEAR_GROUPS.items() if g == groups), None)
    seen = f"groups {', '.join(groups)}"
    if names_2021:
        if by_groups != "2020":
            return None, f"2021's file names ({', '.join(names_2021)}) but {seen}"
        year, why = "2021", f"2021's file names ({', '.join(names_2021)}), {seen}"
    elif by_groups is None:
        return None, f"{seen}: none of the iMet competitions' ({', '.join(YEAR_GROUPS['2019'])}" \
            f" or {', '.join(YEAR_GROUPS['2020'])})"
    else:
        year, why = by_groups, seen
    full = labels.num_classes == YEAR_CLASSES[year]
    return COMPETITIONS[year], (f"{why}, {labels.num_classes} classes"
                                + ("" if full else f" (a small set in its shape: the competition "
                                   f"has {YEAR_CLASSES[year]:,})"))


# What each competition's leaderboard scores (imet.metrics.f2.METRICS). 2020's pages disagree:
# its Evaluation section says micro-averaged F1, its Data section F2 (the 2019 text carried over);
# the Evaluation section is the one that defines the leaderboard's scoring, so micro-F1.
COMPETITION_METRICS = {COMPETITIONS["2019"]: "f2", COMPETITIONS["2020"]: "micro-f1",
                       COMPETITIONS["2021"]: "f2"}


def competition_metric(layout: CompetitionLayout, labels: LabelSpace) -> str:
    """The metric the competition found in `layout` is scored by (F2 when it is none of them)."""
    return COMPETITION_METRICS.get(competition_of(layout, labels)[0], "f2")


def year_layout(root, year: str) -> CompetitionLayout:
    """The layout of `year`'s competition files under `root` (to write them)."""
    root = Path(root)
    return CompetitionLayout(root, **{k: root / v for k, v in YEAR_FILES[year].items()})


def _header(path: Path) -> set[str]:
    """The column names of a CSV's first line (empty when it cannot be read)."""
    try:
        with open(path, encoding="utf-8-sig", errors="strict") as f:
            line = f.readline(1 << 16)
    except (OSError, UnicodeDecodeError):
        return set()
    return {c.strip().strip('"') for c in line.strip().split(",")}


def _csvs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".csv" and p.is_file())


def labels_tables(folder) -> list[Path]:
    """The CSVs directly in `folder` with the labels table's columns."""
    return [p for p in _csvs(Path(folder)) if set(LABELS_COLUMNS) <= _header(p)]


def is_submission_name(name: str) -> bool:
    """Whether a file name is a sample submission's (sample_submission.csv in every year)."""
    return name.lower().endswith(".csv") and "submission" in name.lower()


def _id_table_role(path: Path) -> str:
    """Which `id,attribute_ids` table a file is: the columns are the same for all three, so its
    name decides (sample_submission.csv, test_labels.csv, train*.csv)."""
    name = path.stem.lower()
    return "sample" if is_submission_name(path.name) else "truth" if name.startswith("test") \
        else "train"


def _pick(root: Path, role: str, looked_for: str, found: list[Path], standard: Path,
          problems: list[str]) -> Path:
    """The one candidate; else the 2019 name, with a problem unless that exists (then its own
    parse names what is wrong with it: a missing column, an empty file)."""
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        names = " and ".join(p.relative_to(root).as_posix() for p in found)
        problems.append(f"{root}: two candidates for the {role} ({names}, both {looked_for}); "
                        "move one of them out of the folder")
    elif not standard.exists():
        problems.append(f"{root}: no {role} found: looked for {looked_for}; pass --data "
                        "pointing at the competition files")
    return standard


def _sample(ids: list[str]) -> list[str]:
    ids = [i for i in ids if i]
    if len(ids) <= ID_SAMPLE:
        return ids
    return [ids[round(k * (len(ids) - 1) / (ID_SAMPLE - 1))] for k in range(ID_SAMPLE)]


def _find_image_dirs(root: Path, samples: dict[str, list[str]]) -> dict[str, list[Path]]:
    """Per role, the folders (one to MAX_DEPTH levels below root) holding at least half of the
    role's sampled ids as {id}.png: a few stats per folder. A folder that holds a role's images
    is not descended into, so the 109k names of an image folder are never listed."""
    found: dict[str, list[Path]] = {role: [] for role in samples}
    level = [root]
    for _ in range(MAX_DEPTH):
        below = []
        for folder in level:
            try:
                entries = sorted(e.path for e in os.scandir(folder)
                                 if e.is_dir() and not e.name.startswith("."))
            except OSError:
                continue
            for sub in map(Path, entries):
                hit = False
                for role, ids in samples.items():
                    if ids and 2 * sum((sub / f"{i}{IMAGE_SUFFIX}").is_file() for i in ids) \
                            >= len(ids):
                        found[role].append(sub)
                        hit = True
                if not hit:
                    below.append(sub)
        level = below
    return found


def layout_problems(root, *, train: bool = True, test: bool = True
                    ) -> tuple[CompetitionLayout, list[str]]:
    """The layout of a competition folder found by content, and one problem per role not found
    or found twice (that role then has its 2019 name). The labels table is the CSV with columns
    attribute_id,attribute_name; the `id,attribute_ids` CSVs are the training table, the sample
    submission and the test truth, told apart by name; the image folders are the folders below
    the root that hold the training table's and the sample submission's ids as {id}.png."""
    root, problems = Path(root), []
    standard = CompetitionLayout(root)
    if not root.is_dir():
        return standard, [f"{root}: data folder not found; pass --data pointing at the "
                          "competition files (or make one with `imet mini-imet --out DIR`)"]
    csvs = _csvs(root)
    headers = {p: _header(p) for p in csvs}
    id_tables = [p for p in csvs if set(ID_COLUMNS) <= headers[p]]
    by_role = {r: [p for p in id_tables if _id_table_role(p) == r]
               for r in ("train", "sample", "truth")}
    labels_csv = _pick(root, "labels table", f"a CSV in {root} with columns "
                       f"{','.join(LABELS_COLUMNS)}",
                       [p for p in csvs if set(LABELS_COLUMNS) <= headers[p]],
                       standard.labels_csv, problems)
    id_csv = f"a CSV in {root} with columns {','.join(ID_COLUMNS)}"
    tables = {}
    if train:
        tables["train"] = _pick(root, "training table", f"{id_csv} not named *submission* or "
                                "test*", by_role["train"], standard.train_csv, problems)
    if test:
        tables["test"] = _pick(root, "sample submission", f"{id_csv} named *submission*",
                               by_role["sample"], standard.sample_submission_csv, problems)
    samples = {role: _sample(_ids_of(table)) for role, table in tables.items()}
    dirs = _find_image_dirs(root, samples)
    chosen = {}
    for role, table in tables.items():
        # Without ids (an unreadable table, reported by its parse) the 2019 name stands.
        chosen[role] = standard.split_dir(role) if not samples[role] else _pick(
            root, f"{role} image folder", f"a folder below {root} (down to {MAX_DEPTH} levels) "
            f"holding the {{id}}{IMAGE_SUFFIX} files of {table.name}'s ids", dirs[role],
            standard.split_dir(role), problems)
    return CompetitionLayout(
        root, labels_csv=labels_csv, train_csv=tables.get("train"),
        sample_submission_csv=tables.get("test"), test_dir=chosen.get("test"),
        test_labels_csv=by_role["truth"][0] if len(by_role["truth"]) == 1 else None,
        train_dir=chosen.get("train")), problems


def _ids_of(path: Path) -> list[str]:
    """The id column only, unchecked (the table's readers check it): enough to probe folders."""
    try:
        return pd.read_csv(path, usecols=["id"], dtype=str, keep_default_na=False,
                           encoding="utf-8")["id"].str.strip().tolist()
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError):
        return []


def find_layout(root, *, train: bool = True, test: bool = True) -> CompetitionLayout:
    """The layout of `root` found by content; DataError naming the first role not found (or
    found twice) and where it was looked for. `train=False` / `test=False`: without the
    training table and its images / the sample submission and its images."""
    layout, problems = layout_problems(root, train=train, test=test)
    _raise_first(problems)
    return layout


SOFT_TARGETS = "soft_targets.npz"


@dataclass
class ExtraSet:
    """An extra training set (`imet train --extra DIR`) that trains beside the fold's images and
    never enters validation (e.g. pseudo-labelled test images): DIR/train/<id>.png and either
    DIR/train.csv (hard labels) or DIR/soft_targets.npz (an imet probabilities file); a
    DIR/labels.csv, when there is one, must be the run's label space."""

    ids: list[str]
    paths: list[Path]
    targets: np.ndarray  # [N, C]: uint8 hard labels or float16 soft targets in [0, 1]

    def fingerprint(self) -> str:
        # The ids and targets, not the pixels (an image is named by its id): a resumed run with
        # another extra set is refused as another config.
        digest = hashlib.sha256("\n".join(self.ids).encode())
        digest.update(np.ascontiguousarray(self.targets, dtype=np.float32).tobytes())
        return digest.hexdigest()[:16]



def read_extra(root: str | Path, labels: LabelSpace, train_ids: list[str]) -> ExtraSet:
    """The extra set of `root`, refused with one line when its files are missing, its label
    space is not the run's, or an id is also a training id (the image would count twice and
    could be a validation image under another name)."""
    layout = CompetitionLayout(root)
    soft = layout.root / SOFT_TARGETS
    if not layout.train_dir.is_dir() or layout.train_csv.exists() == soft.exists():
        raise DataError(f"{layout.root}: --extra must point at a folder with train/ and one of "
                        f"train.csv (hard labels) or {SOFT_TARGETS} (soft targets), as `imet "
                        "pseudo-label` writes")
    if layout.labels_csv.exists() and \
            read_labels(layout.labels_csv).fingerprint() != labels.fingerprint():
        raise UserError(f"{layout.labels_csv}: another label space than --data's "
                        f"{labels.source}; "
                        "make the extra set with the run's competition data")
    ids, targets = (read_soft_targets(soft, labels) if soft.exists()
                    else read_train(layout.train_csv, labels))
    colliding = sorted(set(ids) & set(train_ids))
    if colliding:
        raise UserError(f"{layout.train_csv}: {len(colliding)} ids are also in --data's "
                        f"training table (first: {colliding[0]}); give the extra images other ids")
    paths = layout.image_paths("train", ids)
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise DataError(f"{missing}: image of {layout.train_csv} not found; copy it into "
                        f"{layout.train_dir} or drop its row")
    return ExtraSet(ids, paths, targets)


def read_soft_targets(path: Path, labels: LabelSpace) -> tuple[list[str], np.ndarray]:
    """Ids and float16 [N, C] targets of a soft-target file of `labels`' space."""
    soft = load_probabilities(path)
    if soft.attribute_ids != labels.attribute_ids or \
            soft.labels_fingerprint not in (None, labels.fingerprint()):
        raise UserError(f"{path}: soft targets of another label space than --data's "
                        f"{labels.source}; make them with runs of the same competition data")
    if len(set(soft.ids)) != len(soft.ids):
        raise DataError(f"{path}: image ids are not unique; write the soft targets again")
    if not np.isfinite(soft.probs).all() or (soft.probs < 0).any() or (soft.probs > 1).any():
        raise DataError(f"{path}: soft targets must be probabilities in [0, 1]; write them "
                        "again")
    return soft.ids, soft.probs.astype(np.float16)
