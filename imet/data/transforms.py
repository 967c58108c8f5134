"""Augmentation presets (albumentations 2.x), eval transforms, TTA and normalization.

A preset has a per-image part, run in the loader workers: a callable (uint8 HWC image, the
sample's np.random.Generator) -> uint8 HWC image of the final size, an albumentations pipeline
or a hand-written crop (resizing comes first, so every later step works on few pixels); and
optionally a per-batch part run on the training device (`imet.data.batch_augment`). Float
conversion + normalization happen once, last: per image (`to_tensor`) or on the whole batch on
the device (`normalize_batch`, `Normalization.apply`).
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Callable

import albumentations as A
import cv2
import numpy as np
import torch

from imet.data.batch_augment import BatchAugment
from imet.data.images import scale_short_side
from imet.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Bumped whenever a preset draws or applies its augmentation differently: a run resumed across
# such a change would go on with other batches than it started with, so checkpoints carry it.
# 2: the seed preset's flip, brightness/contrast, affine and noise per batch on the device, one
# generator per sample.
AUGMENTATION_VERSION = 2
# The 1st place of iMet 2019 resized to a square and cropped only images more elongated than this.
DEFAULT_MAX_ASPECT = 2.0
# Area averaging when shrinking (no aliasing), bilinear when enlarging: iMet's short side is
# often 300 px, below a 320 px training size, and INTER_AREA alone enlarges like nearest.
_SCALING = {"interpolation": cv2.INTER_LINEAR, "area_for_downscale": "image"}


class CropToAspect(A.ImageOnlyTransform):
    """Crop the long side so that long/short <= max_aspect; images within the limit pass
    untouched. Random position in training, centred at evaluation. albumentations has no
    "crop only when the aspect ratio is extreme" transform, hence this one."""

    def __init__(self, max_aspect: float = DEFAULT_MAX_ASPECT, random_position: bool = True,
                 p: float = 1.0):
        super().__init__(p=p)
        if max_aspect < 1.0:
            raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")
        self.max_aspect = float(max_aspect)
        self.random_position = bool(random_position)

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        height, width = params["shape"][:2]
        if max(height, width) <= self.max_aspect * min(height, width):
            return {"window": None}
        keep = int(self.max_aspect * min(height, width))
        excess = max(height, width) - keep
        start = self.py_random.randint(0, excess) if self.random_position else excess // 2
        return {"window": (start, keep, height > width)}

    def apply(self, img: np.ndarray, window=None, **params) -> np.ndarray:
        if window is None:
            return img
        start, keep, tall = window
        return img[start:start + keep] if tall else img[:, start:start + keep]

    def get_transform_init_args_names(self) -> tuple:
        return ("max_aspect", "random_position")


class AlbumentationsStep:
    """An albumentations pipeline as a per-image training step: `step(image, rng)` draws
    every random number from the sample's generator `rng`. One generator pair is shared by all
    the pipeline's steps: Compose.set_random_seed would give every step an identically seeded
    generator, so e.g. the flip and the brightness change would always fire together."""

    def __init__(self, compose: A.Compose):
        self.compose = compose

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        self.compose.set_random_state(rng, random.Random(int(rng.integers(1 << 63))))
        return self.compose(image=image)["image"]


class RandomSquareCrop:
    """The `seed` preset's per-image step: short side scaled to `size` (a no-op on a cached
    image), then a random size x size window, returned as a view. What albumentations'
    SmallestMaxSize + RandomCrop do; by hand because with a cache the decode costs ~0.8 ms and
    albumentations' per-call machinery (parameter dicts, shape checks, seeding two generators)
    another ~0.3 ms, for two random integers."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = scale_short_side(image, self.size)
        height, width = image.shape[:2]
        top = int(rng.integers(0, height - self.size + 1))
        left = int(rng.integers(0, width - self.size + 1))
        return image[top:top + self.size, left:left + self.size]


@dataclass(frozen=True)
class Preset:
    """A training augmentation pipeline (`train(size)`: per image in the workers, a callable
    (image, rng) -> image; then `batch` per batch on the device) and the eval pipeline with
    the same geometry."""

    train: Callable[[int], Callable[[np.ndarray, np.random.Generator], np.ndarray]]
    eval: Callable[[int], A.Compose]
    help: str
    batch: BatchAugment | None = None


def _resize_train(size: int) -> AlbumentationsStep:
    return AlbumentationsStep(A.Compose([
        CropToAspect(DEFAULT_MAX_ASPECT, random_position=True),
        A.Resize(size, size, **_SCALING),
        A.HorizontalFlip(p=0.5),
    ]))


def _resize_eval(size: int) -> A.Compose:
    return A.Compose([
        CropToAspect(DEFAULT_MAX_ASPECT, random_position=False),
        A.Resize(size, size, **_SCALING),
    ])


def _padded(size: int) -> list:
    """Pad to a square, then resize (the iMet notes' future work 2: the whole object, unstretched,
    instead of a crop or a squeeze). Done as shrink-the-long-side, then pad: the same picture
    up to interpolation, and the resize works on the unpadded pixels. Black bars, centred."""
    return [A.LongestMaxSize(max_size=size, **_SCALING),
            A.PadIfNeeded(size, size, position="center", border_mode=cv2.BORDER_CONSTANT, fill=0)]


def _pad_train(size: int) -> AlbumentationsStep:
    return AlbumentationsStep(A.Compose([*_padded(size), A.HorizontalFlip(p=0.5)]))


def _pad_eval(size: int) -> A.Compose:
    return A.Compose(_padded(size))


def _seed_eval(size: int) -> A.Compose:
    return A.Compose([
        A.SmallestMaxSize(max_size=size, **_SCALING),
        A.CenterCrop(size, size),
    ])


TRAIN_PRESETS: dict[str, Preset] = {
    "resize": Preset(_resize_train, _resize_eval,
                     "resize to a square (crop only beyond aspect 2:1), horizontal flip"),
    "pad": Preset(_pad_train, _pad_eval,
                  "pad to a square (black bars, centred), resize, horizontal flip"),
    # The iMet notes' aggressive pipeline. Scaling the short side first and cropping the
    # square afterwards keeps every later step on size x size pixels; flip, brightness/
    # contrast, shift-scale-rotate and noise follow per batch on the device, where they cost
    # the loader workers nothing.
    "seed": Preset(RandomSquareCrop, _seed_eval,
                   "random square crop, flip, brightness/contrast, shift-scale-rotate, noise",
                   BatchAugment()),
}


def _preset(name: str) -> Preset:
    try:
        return TRAIN_PRESETS[name]
    except KeyError:
        raise UserError(f"unknown augmentation preset {name!r}: choose one of "
                        f"{', '.join(sorted(TRAIN_PRESETS))}")


def _check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise UserError(f"--image-size {size!r}: must be an integer of at least 8 pixels")
    return int(size)


def build_train_transform(preset: str, size: int):
    """The per-image part of `preset`, a callable (uint8 HWC image, np.random.Generator) ->
    uint8 HWC image of size x size; `build_batch_augment` gives the per-batch part."""
    return _preset(preset).train(_check_size(size))


def build_batch_augment(preset: str, size: int, erasing: float = 0.0) -> BatchAugment | None:
    """What `preset` augments per batch on the device (None: nothing), for size x size
    images, with random erasing of probability `erasing` added (a preset without a per-batch
    part gets one that only erases): refused when they are larger than the noise bank's
    windows."""
    batch, size = _preset(preset).batch, _check_size(size)
    if erasing:
        batch = dataclasses.replace(batch or BatchAugment.nothing(), p_erase=erasing)
    largest = batch.largest_side() if batch is not None else None
    if largest is not None and size > largest:
        raise UserError(f"--image-size {size}: the {preset} preset adds noise to images of at "
                        f"most {largest} px; lower --image-size or use --preset resize")
    return batch


def build_eval_transform(size: int, preset: str = "resize") -> A.Compose:
    """Deterministic transform with the geometry of `preset`'s training pipeline."""
    return _preset(preset).eval(_check_size(size))


def as_image_step(transform):
    """A per-image step (image, rng) -> image from an albumentations pipeline or a step."""
    if transform is None or not isinstance(transform, A.BaseCompose):
        return transform
    return AlbumentationsStep(transform)


# ---- tensors ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Normalization:
    """Per-channel mean/std in the [0, 1] scale of the pixel values; `max_value` is what 255
    maps to (1 for most nets, 255 for the few pretrainedmodels nets trained on 0..255)."""

    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    max_value: float = 1.0

    @classmethod
    def from_info(cls, info: dict) -> "Normalization":
        """From a model's info (`ImetNet.info` or `load_model_file`'s info)."""
        return cls(tuple(info.get("mean", IMAGENET_MEAN)), tuple(info.get("std", IMAGENET_STD)),
                   float(info.get("input_range", (0, 1))[1]))

    def _scale_shift(self, device, dtype) -> tuple:
        mean = torch.tensor(self.mean, dtype=dtype, device=device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=dtype, device=device).view(-1, 1, 1)
        # x = (pixel / 255 * max_value - mean) / std as one multiply-add per pixel.
        return self.max_value / 255.0 / std, -mean / std

    def apply(self, batch: torch.Tensor) -> torch.Tensor:
        """An NCHW batch of 0..255 pixel values (uint8 or float, any device) -> normalized
        float32."""
        scale, shift = self._scale_shift(batch.device, torch.float32)
        return torch.addcmul(shift, batch.to(torch.float32), scale)

    def apply_(self, batch: torch.Tensor) -> torch.Tensor:
        """`apply` in place, on a float32 batch of 0..255 values (`augment_batch`'s output)."""
        scale, shift = self._scale_shift(batch.device, torch.float32)
        return batch.mul_(scale).add_(shift)


def to_tensor(image: np.ndarray, norm: Normalization | None = Normalization()) -> torch.Tensor:
    """uint8 HWC -> normalized float32 CHW, or uint8 CHW when `norm` is None (normalize later,
    per batch, with `normalize_batch`)."""
    if norm is None:
        # numpy's transposing copy is ~4x faster than torch's permute().contiguous() on uint8.
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    if not image.flags.writeable:  # a memo's kept pixels: torch warns about sharing them
        image = image.copy()
    chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    scale, shift = norm._scale_shift("cpu", torch.float32)
    return chw.to(torch.float32).mul_(scale).add_(shift)


def normalize_batch(batch: torch.Tensor, norm: Normalization = Normalization()) -> torch.Tensor:
    """A uint8 NCHW batch (on any device) -> normalized float32; float batches pass unchanged."""
    if batch.is_floating_point():
        return batch
    return norm.apply(batch)


# ---- test-time augmentation -------------------------------------------------------------------

TTA: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda batch: batch,
    "hflip": lambda batch: torch.flip(batch, dims=(3,)),
}


def apply_tta(name: str, batch: torch.Tensor) -> torch.Tensor:
    """The view `name` of an NCHW batch: TTA reuses decoded images instead of decoding again."""
    try:
        view = TTA[name]
    except KeyError:
        raise UserError(f"unknown TTA {name!r}: choose from {', '.join(sorted(TTA))}")
    if batch.dim() != 4:
        raise ValueError(f"TTA works on NCHW batches, got shape {tuple(batch.shape)}")
    return view(batch)
