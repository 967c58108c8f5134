"""Saved probabilities: one `.npz` per prediction set, the input of ensembles and thresholds,
and of training as soft targets (`imet train --extra`: imet/data/labels.py). A file holds
`probs` (float16 [N, C]: half the size of float32 and far below the precision that F2
thresholds need), `ids` (image ids, unicode), `attribute_ids` (int [C]: the label space the
columns mean) and `meta` (a JSON string: label fingerprint, runs, TTA, image sizes…). Everything
is a plain array, so loading needs no pickle (`allow_pickle=False`): a file from an attached
dataset is untrusted input."""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imet.errors import DataError, UserError
from imet.fileio import atomic_open

FORMAT = "imet-probs"
VERSION = 1
# `imet predict`'s ensemble of several runs, saved beside each run's <name>.npz in --probs-dir.
ENSEMBLE_PROBS = "ensemble.npz"


@dataclass
class Probabilities:
    """Probabilities of one prediction set (a run, a TTA'd run, or an ensemble)."""

    ids: list[str]
    probs: np.ndarray  # [N, C], float
    attribute_ids: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = [str(i) for i in self.ids]
        self.attribute_ids = tuple(int(a) for a in self.attribute_ids)
        if self.probs.ndim != 2 or self.probs.shape != (len(self.ids), len(self.attribute_ids)):
            raise ValueError(f"probs shape {self.probs.shape} does not match "
                             f"{len(self.ids)} ids x {len(self.attribute_ids)} classes")

    @property
    def labels_fingerprint(self) -> str | None:
        return self.meta.get("labels_fingerprint")

    def reorder(self, ids: list[str], source: str = "probabilities") -> "Probabilities":
        """The same set with rows in the order of `ids` (each must be present exactly once)."""
        if list(ids) == self.ids:
            return self
        position = {image_id: row for row, image_id in enumerate(self.ids)}
        if len(position) != len(self.ids):
            raise DataError(f"{source}: image ids are not unique; predict again")
        if missing := [i for i in ids if i not in position]:
            raise DataError(f"{source}: no prediction for image {missing[0]!r} "
                            f"({len(missing)} missing); predict again on the same image set")
        rows = np.fromiter((position[i] for i in ids), dtype=np.int64, count=len(ids))
        return Probabilities(list(ids), self.probs[rows], self.attribute_ids, dict(self.meta))


def save_probabilities(path: Path, probabilities: Probabilities) -> Path:
    """Write `probabilities` to `path` (.npz) atomically; returns the path."""
    meta = dict(probabilities.meta, format=FORMAT, version=VERSION)
    with atomic_open(path, "wb") as handle:
        np.savez(handle, probs=np.asarray(probabilities.probs, dtype=np.float16),
                 ids=np.asarray(probabilities.ids, dtype=np.str_),
                 attribute_ids=np.asarray(probabilities.attribute_ids, dtype=np.int64),
                 meta=np.asarray(json.dumps(meta, sort_keys=True)))
    return Path(path)


def load_probabilities(path: Path) -> Probabilities:
    """Read a file written by `save_probabilities`; UserError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: probabilities file not found; run `imet predict` or "
                        "`imet validate` first, or fix the path")
    try:
        with np.load(path, allow_pickle=False) as data:
            probs = data["probs"].astype(np.float32)
            ids = data["ids"].tolist()
            attribute_ids = tuple(int(a) for a in data["attribute_ids"])
            meta = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not an imet probabilities file ({type(err).__name__}: {err}); "
                        "write it again with `imet predict` or `imet validate`") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not an imet probabilities file (format "
                        f"{meta.get('format')!r}); write it with `imet predict`/`imet validate`")
    try:
        return Probabilities(ids, probs, attribute_ids, meta)
    except ValueError as err:
        raise UserError(f"{path}: inconsistent probabilities file ({err}); "
                        "write it again") from None
