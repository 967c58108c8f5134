"""The data a training run reads: the label space, the fold's train/validation split (with
--extra's images and --teacher's probabilities), the sample order, hard-negative mining and the
loaders.

The training order is a pure function of (seed, epoch, position) (`EpochBatchSampler`), the
augmentation of the dataset's (seed, epoch, index) streams, so the batches are the same whatever
`num_workers` is and wherever a session stopped. Images travel as uint8 (a quarter of the bytes
through pinned memory and PCIe) with their augmentation parameters, and are augmented and
normalized on the device."""
from __future__ import annotations

import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from imet.config import TrainConfig
from imet.data.folds import read_folds
from imet.data.images import MIN_SIDE, PixelMemo, find_cache
from imet.data.labels import (LabelSpace, competition_metric, find_layout, read_extra,
                              read_labels, read_train)
from imet.data.transforms import (ImetDataset, build_batch_augment, build_eval_transform,
                                  build_train_transform, collate)
from imet.errors import DataError, UserError
from imet.probfile import load_probabilities
from imet.train.distributed import env_local_world_size

log = logging.getLogger(__name__)

# Mixed into the seed so the epoch permutations do not coincide with the augmentation streams,
# which are also derived from (seed, epoch).
_ORDER_SALT = 0x5EED_0D3E


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator()
    generator.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + _ORDER_SALT) % (2 ** 63))
    return torch.randperm(num_samples, generator=generator)


class EpochBatchSampler(Sampler[list]):
    """Each epoch is a permutation from a generator seeded with (seed, epoch), nothing global,
    cut into global batches of `batch_size`, from `start_batch` on. A rank takes its contiguous
    slice of every global batch, so the order is the same at any world size and a checkpoint
    resumes on another one at the same position. The last incomplete batch is dropped (a batch
    of one breaks BatchNorm and distorts the LR schedule's step count). Hard-negative mining's
    `repeat_count` repeats (`set_position`) are permuted with the N samples; without repeats the
    permutation is the plain one."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, epoch: int = 0,
                 start_batch: int = 0, rank: int = 0, world_size: int = 1,
                 with_epoch: bool = False, repeat_count: int = 0):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by world size {world_size}")
        if num_samples < batch_size:
            raise ValueError(f"{num_samples} training samples are fewer than one batch "
                             f"of {batch_size}")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.epoch, self.start_batch = epoch, start_batch
        self.rank, self.world_size = rank, world_size
        # (epoch, index) keys let persistent DataLoader workers, which never see a later
        # `set_epoch` on their copy of the dataset, augment for the right epoch.
        self.with_epoch, self.repeat_count = with_epoch, repeat_count
        self.repeats = torch.zeros(0, dtype=torch.long)

    @property
    def batches_per_epoch(self) -> int:
        return (self.num_samples + self.repeat_count) // self.batch_size

    def set_position(self, epoch: int, start_batch: int = 0, repeats=None) -> None:
        self.epoch, self.start_batch = epoch, start_batch
        if repeats is not None:
            if len(repeats) != self.repeat_count:
                raise ValueError(f"{len(repeats)} repeats for an epoch of {self.repeat_count}")
            self.repeats = torch.as_tensor(repeats, dtype=torch.long)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)

    def __iter__(self) -> Iterator[list]:
        order = epoch_permutation(self.num_samples + self.repeat_count, self.seed, self.epoch)
        if self.repeat_count:
            order = torch.cat([torch.arange(self.num_samples), self.repeats])[order]
        per_rank = self.batch_size // self.world_size
        for batch in range(self.start_batch, self.batches_per_epoch):
            first = batch * self.batch_size + self.rank * per_rank
            indices = order[first:first + per_rank].tolist()
            yield [(self.epoch, i) for i in indices] if self.with_epoch else indices


# Hard-negative mining (`--hard-negatives FRACTION`, from the top iMet solutions): every epoch sees
# each sample once plus the FRACTION whose loss was largest in the epoch before (a mixed sample's
# loss is booked to itself; ties to the lower index), mixed into the sampler's (seed, epoch)
# permutation. Epoch 0 repeats `count` samples drawn from (seed, 0). The recorded losses and the
# repeats in use are in the TrainState, so a resumed session picks the same samples; every epoch
# has the same length, so the LR schedules see a fixed number of steps per epoch.

# Mixed into the seed of epoch 0's repeats, so they are not the first samples of its order.
_REPEAT_SALT = 0x4A2D


def repeat_count(num_samples: int, fraction: float) -> int:
    """How many samples an epoch repeats."""
    return int(round(num_samples * fraction))


def per_sample_losses(loss_fn, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`loss_fn` (a mean over samples and classes, or over samples) of each row alone: one
    batched computation through torch.func.vmap rather than one call per row."""
    with torch.no_grad():
        return torch.func.vmap(lambda row, target: loss_fn(row[None], target[None]))(
            logits.detach().float(), targets.float())


class HardNegatives:
    def __init__(self, num_samples: int, fraction: float, seed: int):
        self.count = repeat_count(num_samples, fraction)
        self.seed = int(seed)
        self.epoch = 0                   # the epoch whose losses are being recorded
        self.losses = torch.full((num_samples,), float("nan"))
        generator_seed = self.seed ^ _REPEAT_SALT
        self.repeats = epoch_permutation(num_samples, generator_seed, 0)[:self.count].clone()

    def for_epoch(self, epoch: int) -> torch.Tensor:
        """The sample indices `epoch` sees twice; entering a new epoch turns the losses
        recorded so far into its repeats."""
        if epoch != self.epoch:
            # A sample not seen (the dropped last partial batch) ranks below every seen one.
            ranked = torch.nan_to_num(self.losses, nan=float("-inf"))
            self.repeats = torch.argsort(ranked, descending=True, stable=True)[:self.count]
            self.losses.fill_(float("nan"))
            self.epoch = int(epoch)
        return self.repeats

    def record(self, indices, losses: torch.Tensor) -> None:
        """Book a batch's per-sample losses (a sample seen twice keeps its later loss)."""
        self.losses[torch.as_tensor(indices, dtype=torch.long)] = losses.to("cpu", torch.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "losses": self.losses.clone(), "repeats": self.repeats.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.losses = state["losses"].clone()
        self.repeats = state["repeats"].clone()


# The teacher of a distilled run (`imet train --teacher FILE`): a probability per training image
# and class after the true labels in the targets ([N, 2C]), so mixup mixes both alike and
# `loop.DistillLoss` splits them again. Its files are imet probabilities files (`imet validate`'s
# OOF predictions, `imet pseudo-label --soft`'s soft targets, or both). Their fingerprint hashes
# the training images' probabilities in training order: another teacher is another config.


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
                            f"--data's {labels.source}; make them with runs of the same data")
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
    found = hashlib.sha256("\n".join(train_ids).encode() + teacher.tobytes()).hexdigest()[:16]
    if config.teacher_fingerprint and config.teacher_fingerprint != found:
        raise UserError(f"{', '.join(config.teacher)}: the teacher's fingerprint is {found}, "
                        f"not --teacher-fingerprint {config.teacher_fingerprint}; pass the "
                        "teacher it names")
    config.teacher_fingerprint = found
    log.info("distilling from %s (fingerprint %s)", ", ".join(config.teacher), found)
    return np.concatenate([targets.astype(np.float16), teacher], axis=1)


@dataclass
class RunData:
    labels: LabelSpace
    train_set: ImetDataset
    val_set: ImetDataset
    val_targets: np.ndarray  # uint8 [N_val, C]


def load_run_data(config: TrainConfig) -> RunData:
    if not config.data:
        raise UserError("--data is required: the competition folder (its labels table, training "
                        "table and train images: `imet check-data --data DIR` finds them)")
    layout = find_layout(config.data, test=False)
    labels = read_labels(layout.labels_csv)
    if config.metric == "auto":
        config.metric = competition_metric(layout, labels)
    ids, targets = read_train(layout.train_csv, labels)
    folds_path = Path(config.folds) if config.folds else layout.folds_csv
    if not folds_path.is_file():
        raise DataError(f"{folds_path}: folds file not found; make one with `imet folds` "
                        "or pass --folds")
    folds = read_folds(folds_path, ids, layout.train_csv.name)
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
    # A decode-once cache (`imet cache`) of the image size, only from places the user chose
    # ($IMET_CACHE_DIR, --data, an --input-root): a JPEG cache changes the pixels.
    cache = find_cache(config.image_size, [layout.root, *config.input_root])
    if cache is not None:
        print(f"imet: reading images from {cache}", file=sys.stderr)
    memo_bytes = config.image_memory_mb * 2**20 // max(1, loader_workers(config))
    train_set = ImetDataset(train_paths, train_targets,
                            build_train_transform(config.preset, config.image_size), config.seed,
                            normalize=None, cache=cache, min_side=MIN_SIDE,
                            batch_augment=build_batch_augment(config.preset, config.image_size,
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
                      collate_fn=collate, pin_memory=pin_memory, generator=torch.Generator(),
                      persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


def val_loader(data: RunData, config: TrainConfig, pin_memory: bool) -> DataLoader:
    workers = loader_workers(config)
    return DataLoader(data.val_set, batch_size=config.eval_batch_size or 2 * config.batch_size,
                      shuffle=False, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, generator=torch.Generator(),
                      persistent_workers=workers > 0)
