"""ImetDataset: images + multi-hot targets, augmented reproducibly.

The augmentation of sample i in epoch e depends on (seed, e, i) only, never on a worker's RNG
or on how many samples came before: batches are identical for any num_workers and after a
resume in the middle of an epoch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from imet.data.images import load_rgb
from imet.data.transforms import Normalization, as_image_step, to_tensor

_UINT64 = (1 << 64) - 1


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation (per-image step, then per-batch parameters):
    SeedSequence mixes the three numbers so that neighbouring indices or epochs give unrelated
    streams."""
    return np.random.default_rng(np.random.SeedSequence([seed & _UINT64, epoch, index]))


class ImetDataset(Dataset):
    """`dataset[i]` -> (image float32 CHW normalized, target float32[C], i), and with a
    `batch_augment` (`imet.data.batch_augment.BatchAugment`) a fourth item: the sample's
    parameter row (float64), for `augment_batch` to apply on the device.

    `dataset[(epoch, i)]` reads sample i of `epoch` without `set_epoch`: a sampler yielding such
    pairs keeps persistent DataLoader workers (which hold their own copy of the dataset, so
    never see a later `set_epoch`) exact. `normalize=None` returns uint8 CHW images, to be
    normalized per batch on the GPU with `imet.data.transforms.normalize_batch`. `cache` (an
    `imet.data.cache.ImageCache`) reads each image's pre-resized copy instead of decoding the
    source, where it holds a fresh one. A source image whose shorter side is below `min_side`
    is a DataError naming it (training passes `imet.data.images.MIN_SIDE`).

    `memo` (an `imet.data.memo.PixelMemo`) keeps the pixels read, so that later epochs do not
    decode them again: the source pixels, or with `memo_transformed` the pixels after the
    per-image step, which is then the caller's promise that the step is deterministic (an
    eval transform); it draws nothing then, so it cannot go with a `batch_augment`."""

    def __init__(self, image_paths, targets: np.ndarray | None, transform=None, seed: int = 0,
                 *, num_classes: int | None = None,
                 normalize: Normalization | None = Normalization(), cache=None,
                 batch_augment=None, min_side: int = 0, memo=None,
                 memo_transformed: bool = False):
        if batch_augment is not None and normalize is not None:
            raise ValueError("a batch_augment works on 0..255 pixels: use normalize=None and "
                             "normalize after augment_batch")
        if memo_transformed and batch_augment is not None:
            raise ValueError("memo_transformed skips the per-image step's draws, which a "
                             "batch_augment's parameters follow: keep the source pixels")
        self.memo, self.memo_transformed = memo, bool(memo_transformed)
        self.batch_augment = batch_augment
        self.min_side = int(min_side)
        self.image_paths = [Path(p) for p in image_paths]
        self.cached = cache.resolve(self.image_paths) if cache is not None else None
        if targets is not None:
            targets = np.asarray(targets)
            if targets.ndim != 2 or len(targets) != len(self.image_paths):
                raise ValueError(f"targets must be [N={len(self.image_paths)}, C], "
                                 f"got shape {targets.shape}")
            num_classes = targets.shape[1]
        self.targets = targets
        self.num_classes = int(num_classes or 0)
        self.transform = as_image_step(transform)
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = int(seed)
        self.normalize = normalize
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.image_paths)

    def load(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """The uint8 HWC image of sample `index` after the per-image step, which draws from
        `rng` (the sample's generator: `sample_rng`)."""
        if self.memo is None:
            return self._transformed(self._source(index), rng)
        if self.memo_transformed:
            return self.memo.get(index, lambda: self._transformed(self._source(index), rng))
        return self._transformed(self.memo.get(index, lambda: self._source(index)), rng)

    def _source(self, index: int) -> np.ndarray:
        return (self.cached.load(index) if self.cached is not None
                else load_rgb(self.image_paths[index], self.min_side))

    def _transformed(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return image if self.transform is None else self.transform(image, rng)

    def target(self, index: int) -> torch.Tensor:
        if self.targets is None:
            return torch.zeros(self.num_classes, dtype=torch.float32)
        return torch.from_numpy(self.targets[index].astype(np.float32))

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (None, key)
        index = int(index)
        if not 0 <= index < len(self.image_paths):
            raise IndexError(f"sample {index} out of range 0..{len(self.image_paths) - 1}")
        epoch = self.epoch if epoch is None else int(epoch)
        rng = sample_rng(self.seed, epoch, index)
        image = to_tensor(self.load(index, rng=rng), self.normalize)
        if self.batch_augment is None:
            return image, self.target(index), index
        params = torch.from_numpy(self.batch_augment.draw(rng, image.shape))
        return image, self.target(index), index, params
