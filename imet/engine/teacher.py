"""The teacher of a distilled run (`imet train --teacher FILE`): a probability per training
image and class, carried in the training targets after the true labels ([N, 2C]), so that
mixup mixes both alike and `imet.engine.losses.DistillLoss` splits them again.

The files are imet probabilities files (imet/probfile.py): `imet validate`'s out-of-fold
predictions, `imet pseudo-label --soft`'s soft targets, or both (each image in one of them).
Their fingerprint hashes the probabilities of the run's training images, in training order, so
a resume with another teacher is refused as another config."""
from __future__ import annotations

import hashlib
import logging

import numpy as np

from imet.data.labels import LabelSpace
from imet.engine.config import TrainConfig
from imet.errors import UserError
from imet.probfile import load_probabilities

log = logging.getLogger(__name__)


def read_teacher(files: list[str], labels: LabelSpace, train_ids: list[str]) -> np.ndarray:
    """float16 [N, C]: the teachers' probabilities of `train_ids`, refused with one line when a
    file is of another label space, two files name one image, or a training image has none."""
    rows: dict[str, tuple[np.ndarray, int]] = {}
    tables = []
    for path in files:
        probs = load_probabilities(path)
        if probs.attribute_ids != labels.attribute_ids or \
                probs.labels_fingerprint not in (None, labels.fingerprint()):
            raise UserError(f"{path}: teacher probabilities of another label space than "
                            "--data's labels.csv; make them with runs of the same data")
        for row, image_id in enumerate(probs.ids):
            if image_id in rows:
                raise UserError(f"{path}: image {image_id} has teacher probabilities in another "
                                "--teacher file too; give each image one teacher")
            rows[image_id] = (len(tables), row)
        tables.append(probs.probs)
    missing = [i for i in train_ids if i not in rows]
    if missing:
        raise UserError(f"{', '.join(files)}: no teacher probability for training image "
                        f"{missing[0]} ({len(missing)} of {len(train_ids)} missing); the teacher "
                        "must cover every training image (validate's OOF file of this data, "
                        "plus pseudo-label's soft targets for --extra)")
    return np.stack([tables[t][r] for t, r in (rows[i] for i in train_ids)]).astype(np.float16)


def with_teacher(config: TrainConfig, labels: LabelSpace, train_ids: list[str],
                 targets: np.ndarray) -> np.ndarray:
    """`targets` with the teacher's probabilities appended per row; fills in
    `config.teacher_fingerprint`, which must match when it was given (a resumed run's)."""
    if not config.teacher:
        raise UserError(f"--teacher-fingerprint {config.teacher_fingerprint}: no --teacher "
                        "file given; pass the teacher it names")
    teacher = read_teacher(config.teacher, labels, train_ids)
    digest = hashlib.sha256("\n".join(train_ids).encode())
    digest.update(teacher.tobytes())
    found = digest.hexdigest()[:16]
    if config.teacher_fingerprint and config.teacher_fingerprint != found:
        raise UserError(f"{', '.join(config.teacher)}: the teacher's fingerprint is {found}, "
                        f"not --teacher-fingerprint {config.teacher_fingerprint}; pass the "
                        "teacher it names")
    config.teacher_fingerprint = found
    log.info("distilling from %s (fingerprint %s)", ", ".join(config.teacher), found)
    return np.concatenate([targets.astype(np.float16), teacher], axis=1)
