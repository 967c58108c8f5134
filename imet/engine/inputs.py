"""The data a training run reads: label space, the fold's train/validation split, loaders.

The training loader's order comes from `EpochBatchSampler` (a function of seed, epoch and
position) and its augmentation from the dataset's (seed, epoch, index) streams, so the batches
are the same whatever `num_workers` is and wherever a session stopped. The sampler hands the
epoch along with each index, so workers can stay alive across epochs. Images travel as uint8
(a quarter of the bytes through pinned memory and PCIe) with each sample's per-batch
augmentation parameters, and are augmented and normalized on the device."""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from imet.data.cache import find_cache
from imet.data.dataset import ImetDataset
from imet.data.extra import read_extra
from imet.engine.teacher import with_teacher
from imet.data.folds import read_folds
from imet.data.images import MIN_SIDE
from imet.data.labels import LabelSpace, read_labels, read_train
from imet.data.memo import PixelMemo
from imet.data.layout import CompetitionLayout
from imet.data.transforms import (build_batch_augment, build_eval_transform,
                                  build_train_transform)
from imet.engine.config import TrainConfig
from imet.engine.distributed import env_local_world_size
from imet.engine.sampler import EpochBatchSampler
from imet.errors import DataError, UserError

log = logging.getLogger(__name__)


@dataclass
class RunData:
    labels: LabelSpace
    train_set: ImetDataset
    val_set: ImetDataset
    val_targets: np.ndarray  # uint8 [N_val, C]


def load_run_data(config: TrainConfig) -> RunData:
    if not config.data:
        raise UserError("--data is required: the folder with labels.csv, train.csv and train/")
    layout = CompetitionLayout(config.data)
    for required in (layout.labels_csv, layout.train_csv, layout.train_dir):
        if not required.exists():
            raise DataError(f"{required}: not found; --data must point at the competition files "
                            "(labels.csv, train.csv, train/)")
    labels = read_labels(layout.labels_csv)
    ids, targets = read_train(layout.train_csv, labels)
    folds_path = Path(config.folds) if config.folds else layout.folds_csv
    if not folds_path.is_file():
        raise DataError(f"{folds_path}: folds file not found; make one with `imet folds` "
                        "or pass --folds")
    folds = read_folds(folds_path, ids)
    if config.fold not in set(folds.tolist()):
        raise UserError(f"{folds_path}: no row has fold {config.fold}; the folds are "
                        f"{sorted(set(folds.tolist()))} (check --fold)")
    train_rows = np.flatnonzero(folds != config.fold)
    val_rows = np.flatnonzero(folds == config.fold)
    if len(train_rows) < config.batch_size:
        raise UserError(f"{folds_path}: fold {config.fold} leaves {len(train_rows)} training "
                        f"images, fewer than one batch (--batch-size {config.batch_size})")
    paths = layout.image_paths("train", ids)
    train_ids = [ids[i] for i in train_rows]
    train_paths, train_targets = [paths[i] for i in train_rows], targets[train_rows]
    if config.extra or config.extra_fingerprint:
        train_ids, train_paths, train_targets = _with_extra(config, labels, ids, train_ids,
                                                            train_paths, train_targets)
    if config.teacher or config.teacher_fingerprint:
        train_targets = with_teacher(config, labels, train_ids, train_targets)
    cache = _image_cache(config, layout)
    memo_bytes = config.image_memory_mb * 2**20 // max(1, loader_workers(config))
    train_set = ImetDataset(train_paths, train_targets,
                            build_train_transform(config.preset, config.image_size), config.seed,
                            normalize=None, cache=cache, min_side=MIN_SIDE,
                            batch_augment=build_batch_augment(config.preset,
                                                              config.image_size,
                                                              config.erasing),
                            memo=PixelMemo(memo_bytes))
    # The eval transform draws nothing: its output is kept, resizing included (a fold's images
    # at the training size: a small part of a budget of its own).
    val_set = ImetDataset([paths[i] for i in val_rows], targets[val_rows],
                          build_eval_transform(config.image_size, config.preset), config.seed,
                          normalize=None, cache=cache, min_side=MIN_SIDE,
                          memo=PixelMemo(memo_bytes), memo_transformed=True)
    return RunData(labels, train_set, val_set, targets[val_rows])


def _with_extra(config: TrainConfig, labels: LabelSpace, ids: list[str], train_ids: list[str],
                paths: list, targets: np.ndarray) -> tuple[list[str], list, np.ndarray]:
    """The training images followed by --extra's (validation never sees them); fills in
    `config.extra_fingerprint`, which must match when it was given (a resumed run's config)."""
    if not config.extra:
        raise UserError(f"--extra-fingerprint {config.extra_fingerprint}: no --extra folder "
                        "given; pass the extra set it names")
    extra = read_extra(config.extra, labels, ids)
    found = extra.fingerprint()
    if config.extra_fingerprint and config.extra_fingerprint != found:
        raise UserError(f"{config.extra}: the extra set's fingerprint is {found}, not "
                        f"--extra-fingerprint {config.extra_fingerprint}; pass the set it names")
    config.extra_fingerprint = found
    log.info("%d extra training images from %s (fingerprint %s)", len(extra.ids), config.extra,
             found)
    return (train_ids + extra.ids, paths + extra.paths,
            np.concatenate([targets, extra.targets]))  # soft: float16


def _image_cache(config: TrainConfig, layout: CompetitionLayout):
    """A decode-once cache (`imet cache`) of the run's image size, when one is found in
    $IMET_CACHE_DIR, the data folder or an --input-root (on Kaggle: a cache kernel's output).
    Only places the user chose: a JPEG cache changes the pixels, so one picked up from an
    unrelated folder would silently change the run."""
    cache = find_cache(config.image_size, [layout.root, *config.input_root])
    if cache is not None:
        print(f"imet: reading images from {cache}", file=sys.stderr)
    return cache


def loader_workers(config: TrainConfig) -> int:
    """Loader workers per process: `--num-workers`, or for auto this machine's usable CPUs
    split between torchrun's processes on it (T4 x2 on 4 CPUs: 2 each, not 4 each)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return config.worker_count(cpus or 1, env_local_world_size())


def train_loader(data: RunData, sampler: EpochBatchSampler, config: TrainConfig,
                 pin_memory: bool) -> DataLoader:
    # An explicit generator keeps DataLoader from drawing its base seed from the global torch
    # RNG at every iter(): the global stream (dropout, mixup) must not depend on how often a
    # loader was restarted.
    workers = loader_workers(config)
    if config.num_workers == "auto":
        log.info("%d loader workers per process (--num-workers auto)", workers)
    return DataLoader(data.train_set, batch_sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, generator=torch.Generator(),
                      persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


def val_loader(data: RunData, config: TrainConfig, pin_memory: bool) -> DataLoader:
    batch = config.eval_batch_size or 2 * config.batch_size
    workers = loader_workers(config)
    return DataLoader(data.val_set, batch_size=batch, shuffle=False,
                      num_workers=workers, pin_memory=pin_memory,
                      generator=torch.Generator(), persistent_workers=workers > 0)
