"""Trained runs as inference sees them: a model file, its label space, its image size and fold."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imet.data.labels import LabelSpace
from imet.engine.handover import model_file_of
from imet.errors import CheckpointError, UserError
from imet.models.modelfile import load_model_file

THRESHOLDS_FILE = "thresholds.json"


@dataclass
class Run:
    name: str
    path: Path  # the model file
    model: torch.nn.Module
    info: dict[str, Any]
    labels: LabelSpace

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.info.get("config") or {})

    @property
    def arch(self) -> str:
        return str(self.info.get("arch") or self.config.get("arch") or "?")

    @property
    def image_size(self) -> int:
        size = self.config.get("image_size")
        if not size:
            raise CheckpointError(f"{self.path}: field config.image_size missing; pass "
                                  "--image-size or re-export the model with `imet train`")
        return int(size)

    @property
    def preset(self) -> str:
        """The training augmentation preset: evaluation uses its geometry."""
        return str(self.config.get("preset") or "resize")

    @property
    def fold(self) -> int | None:
        fold = self.config.get("fold")
        return None if fold is None else int(fold)

    @property
    def train_threshold(self) -> float | None:
        """The best global threshold training found on its validation fold (if recorded)."""
        extra = self.info.get("extra") or {}
        value = extra.get("threshold", extra.get("best_threshold"))
        return None if value is None else float(value)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": str(self.path), "arch": self.arch,
                "image_size": self.config.get("image_size"), "fold": self.fold,
                "labels_fingerprint": self.labels.fingerprint()}


def check_label_space(labels: LabelSpace, expected: LabelSpace, source: Path,
                      expected_source: Path) -> None:
    """CheckpointError naming the model file when it predicts another label space."""
    if labels.fingerprint() == expected.fingerprint():
        return
    only_model = len(set(labels.attribute_ids) - set(expected.attribute_ids))
    only_csv = len(set(expected.attribute_ids) - set(labels.attribute_ids))
    raise CheckpointError(
        f"{source}: model predicts {labels.num_classes} classes but {expected_source} has "
        f"{expected.num_classes} ({only_model} attribute ids only in the model, {only_csv} only in "
        "the CSV, or names/order differ); use a model trained on this labels.csv")


def load_run(run: Path, device: torch.device | str = "cpu", expected: LabelSpace | None = None,
             expected_source: Path | None = None, name: str = "") -> Run:
    """Load a run's model for inference, checking its label space against labels.csv. `name`:
    what logs and saved probabilities call it (the caller knows its other sources)."""
    path = model_file_of(Path(run))
    try:
        model, info = load_model_file(path, device=device)
    except UserError:
        raise
    except Exception as err:  # torch raises many types for a foreign or truncated file
        raise CheckpointError(f"{path}: unreadable model file ({type(err).__name__}); "
                              "copy it again or retrain") from None
    try:
        labels = info["labels"]
        labels = labels if isinstance(labels, LabelSpace) else LabelSpace.from_dict(labels)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: field labels missing or malformed ({err}); "
                              "not an imet model file") from None
    if expected is not None:
        check_label_space(labels, expected, path, expected_source or Path("labels.csv"))
    return Run(name, path, model, info, labels)
