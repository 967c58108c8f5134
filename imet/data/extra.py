"""An extra training set (`imet train --extra DIR`): images that train beside the fold's
training images and never enter validation, such as pseudo-labelled test images.

DIR has the iMet layout: DIR/train/<id>.png and either DIR/train.csv (id,attribute_ids, the
competition's label ids: hard labels) or DIR/soft_targets.npz (an imet probabilities file,
imet/probfile.py: a target probability per image and class); a DIR/labels.csv, when
there is one, must be the run's label space. Its fingerprint hashes the ids and targets (not the
pixels: an image is named by its id), so a resumed run with another extra set is refused as
another config."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imet.data.labels import LabelSpace, read_labels, read_train
from imet.data.layout import CompetitionLayout
from imet.probfile import load_probabilities
from imet.errors import DataError, UserError

SOFT_TARGETS = "soft_targets.npz"


@dataclass
class ExtraSet:
    ids: list[str]
    paths: list[Path]
    targets: np.ndarray  # [N, C]: uint8 hard labels or float16 soft targets in [0, 1]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        digest.update("\n".join(self.ids).encode())
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
        raise UserError(f"{layout.labels_csv}: another label space than --data's labels.csv; "
                        "make the extra set with the run's competition data")
    ids, targets = (read_soft_targets(soft, labels) if soft.exists()
                    else read_train(layout.train_csv, labels))
    colliding = sorted(set(ids) & set(train_ids))
    if colliding:
        raise UserError(f"{layout.train_csv}: {len(colliding)} ids are also in --data's "
                        f"train.csv (first: {colliding[0]}); give the extra images other ids")
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
                        "labels.csv; make them with runs of the same competition data")
    if len(set(soft.ids)) != len(soft.ids):
        raise DataError(f"{path}: image ids are not unique; write the soft targets again")
    if not np.isfinite(soft.probs).all() or (soft.probs < 0).any() or (soft.probs > 1).any():
        raise DataError(f"{path}: soft targets must be probabilities in [0, 1]; write them "
                        "again")
    return soft.ids, soft.probs.astype(np.float16)
