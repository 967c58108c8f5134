"""Where the competition's files live inside a data folder (iMet Collection 2019 layout).

Only this module names the files; callers pass the root (a Kaggle input folder, a mini-iMet
folder, or a user's download)."""
from __future__ import annotations

from pathlib import Path

from imet.errors import DataError

SPLITS = ("train", "test")
IMAGE_SUFFIX = ".png"


class CompetitionLayout:
    """root/labels.csv, train.csv, sample_submission.csv, [test_labels.csv], train/, test/."""

    def __init__(self, root):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"CompetitionLayout({str(self.root)!r})"

    @property
    def labels_csv(self) -> Path:
        return self.root / "labels.csv"

    @property
    def train_csv(self) -> Path:
        return self.root / "train.csv"

    @property
    def sample_submission_csv(self) -> Path:
        return self.root / "sample_submission.csv"

    @property
    def test_labels_csv(self) -> Path:
        """The test truth: only mini-iMet has it (the competition kept it hidden)."""
        return self.root / "test_labels.csv"

    @property
    def folds_csv(self) -> Path:
        """Where `imet folds` writes by default."""
        return self.root / "folds.csv"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def test_dir(self) -> Path:
        return self.root / "test"

    def split_dir(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        return self.root / split

    def image_path(self, split: str, image_id: str) -> Path:
        return self.split_dir(split) / f"{image_id}{IMAGE_SUFFIX}"

    def image_paths(self, split: str, image_ids) -> list[Path]:
        folder = self.split_dir(split)
        return [folder / f"{i}{IMAGE_SUFFIX}" for i in image_ids]

    def require(self, *, test: bool = True) -> "CompetitionLayout":
        """DataError naming the first missing file or folder (before any long work starts)."""
        if not self.root.is_dir():
            raise DataError(f"{self.root}: data folder not found; pass --data pointing at the "
                            "competition files (or make one with `imet mini-imet --out DIR`)")
        needed = [self.labels_csv, self.train_csv, self.train_dir]
        if test:
            needed += [self.sample_submission_csv, self.test_dir]
        for path in needed:
            if not path.exists():
                kind = "folder" if path.suffix == "" else "file"
                raise DataError(f"{path}: {kind} not found; {self.root} must hold labels.csv, "
                                "train.csv, sample_submission.csv, train/ and test/")
        return self
