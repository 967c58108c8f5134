"""The model a run starts from (`imet train --init RUN`): a run's best model (its model.pt), to
tune on other data (last-layer tuning: with `--train-groups head` only the head trains).

The file must be of the run's arch and of `--data`'s label space; anything else is refused with
one line before the run folder is made. Its fingerprint, a hash of the file's bytes, goes into
the run's config as `init_fingerprint`: resuming from another model is another config, while the
file itself may move between sessions (on Kaggle it is an attached input)."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from imet.data.labels import LabelSpace, read_labels
from imet.data.layout import CompetitionLayout
from imet.engine.config import TrainConfig
from imet.engine.handover import model_file_of
from imet.errors import CheckpointError, DataError, UserError
from imet.models.modelfile import read_model_file

log = logging.getLogger(__name__)


def init_model_path(init: str) -> Path:
    """RUN -> RUN/model.pt; a file stays itself. A one-line error naming --init when neither
    holds a model."""
    try:
        return model_file_of(Path(init))
    except CheckpointError as err:
        raise UserError(f"--init {init}: {err}") from None


def init_arch(init: str) -> str:
    """The arch of the --init model: a run tuning it takes it unless --arch is given."""
    return str(read_model_file(init_model_path(init))["arch"])


def file_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def read_init(config: TrainConfig, labels: LabelSpace) -> dict[str, torch.Tensor]:
    """The --init model's weights, checked against the run's arch and label space; fills in
    `config.init_fingerprint`, which must match when it was given (a resumed run's config)."""
    if not config.init:
        raise UserError(f"--init-fingerprint {config.init_fingerprint}: no --init model given; "
                        "pass the model it names")
    path = init_model_path(config.init)
    payload = read_model_file(path)
    if payload["arch"] != config.arch:
        raise UserError(f"{path}: a model of {payload['arch']}, not --arch {config.arch}; leave "
                        "--arch out to tune the model's own arch")
    theirs = LabelSpace.from_dict(payload["labels"])
    if theirs.fingerprint() != labels.fingerprint():
        raise UserError(f"{path}: a model of another label space ({theirs.num_classes} classes) "
                        f"than --data's labels.csv ({labels.num_classes}); tune a model trained "
                        "on this labels.csv")
    found = file_fingerprint(path)
    if config.init_fingerprint and config.init_fingerprint != found:
        raise UserError(f"{path}: the init model's fingerprint is {found}, not "
                        f"--init-fingerprint {config.init_fingerprint}; pass the model it names")
    config.init_fingerprint = found
    log.info("starting from %s (fingerprint %s, step %s)", path, found,
             payload.get("extra", {}).get("step"))
    return payload["state_dict"]


def load_init(config: TrainConfig) -> dict[str, torch.Tensor]:
    """`read_init` against --data's labels.csv."""
    labels_csv = CompetitionLayout(config.data).labels_csv
    if not labels_csv.is_file():
        raise DataError(f"{labels_csv}: not found; --data must point at the competition files "
                        "(labels.csv, train.csv, train/)")
    return read_init(config, read_labels(labels_csv))
