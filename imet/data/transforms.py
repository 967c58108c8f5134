"""From decoded pixels to model input: augmentation presets (albumentations 2.x), eval
transforms, TTA, normalization, and `ImetDataset`.

A preset has a per-image part (loader workers: (uint8 HWC image, the sample's Generator) ->
uint8 HWC image of the final size, resizing first so later steps touch few pixels) and
optionally a per-batch part on the device (`BatchAugment`, `augment_batch`); normalization comes
last, per image (`to_tensor`) or per batch (`normalize_batch`). The augmentation of sample i in
epoch e depends on (seed, e, i) only: batches are identical for any num_workers and after a
resume in the middle of an epoch."""
from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate, get_worker_info

from imet.data.images import load_rgb, scale_short_side
from imet.errors import UserError

# Gaussian pixel noise without drawing a Gaussian number per pixel. albumentations' GaussNoise
# draws 307,200 normal numbers for a 320x320 RGB image, and a batch augmented on the device would
# need each sample's numbers from its own seeded stream. Instead every noisy image gets a window
# of one fixed bank of standard-normal numbers, at an offset drawn from the sample's stream,
# scaled by the sample's std: inside an image the noise is still i.i.d. per pixel and channel,
# with the distribution of GaussNoise(std_range, per-channel), and it costs one pass over the
# pixels. Neither albumentations nor torch offers noise keyed by a per-sample offset.
BANK_SIZE = 1 << 22  # 16 MiB of float32 per device; windows of up to ~4 Mpx values
BANK_SEED = 20190328
_banks: dict[str, torch.Tensor] = {}


def noise_bank() -> np.ndarray:
    """The bank, always the same numbers (a fixed seed), built on the CPU."""
    return np.random.default_rng(BANK_SEED).standard_normal(BANK_SIZE, dtype=np.float32)


def noise_bank_on(device) -> torch.Tensor:
    """The bank on `device`, built once per device and process: the same numbers on CPU and
    GPU, so a batch's noise does not depend on where it is applied."""
    key = str(torch.device(device))
    if key not in _banks:
        _banks[key] = torch.from_numpy(noise_bank()).to(device)
    return _banks[key]


# The `seed` preset's pixel augmentations, per batch on the device: on Kaggle 2-4 CPU cores feed
# the GPU, and per image flip, brightness/contrast, affine warp and noise cost the workers more
# than decoding a cached image. `BatchAugment.draw` (loader worker) draws the sample's few
# parameters from its own stream, so a batch depends on (seed, epoch, indices) only;
# `augment_batch` (device) applies them to the whole batch as tensors. Semantics: albumentations'
# `HorizontalFlip`, `RandomBrightnessContrast(0.2, 0.2)`, `Affine(scale=(0.9, 1.1),
# translate_percent=(-0.0625, 0.0625), rotate=(-15, 15))`, `GaussNoise(std_range=(0.01, 0.05))`
# on uint8 images, then with `--erasing P` torchvision's `RandomErasing(p=P, scale=(0.02, 0.33),
# ratio=(0.3, 3.3))` filled with a random gray per sample; except that pixels stay float between
# steps and the warp's border is cv2's BORDER_REFLECT (the seed kernels' per-image Affine used
# BORDER_REFLECT_101). Neither library has batched versions with per-sample external streams.

# Columns of a sample's parameter row (float64, so the noise offset stays an exact integer).
# ERASE_*: the erased rectangle in pixels (height 0: none) and its fill.
(FLIP, ALPHA, BETA, AFFINE, SCALE_X, SCALE_Y, ANGLE, SHIFT_X, SHIFT_Y, SIGMA, OFFSET,
 ERASE_TOP, ERASE_LEFT, ERASE_H, ERASE_W, ERASE_FILL) = range(16)
PARAMS = 16
IDENTITY = np.zeros(PARAMS)
IDENTITY[[ALPHA, SCALE_X, SCALE_Y]] = 1.0


@dataclass(frozen=True)
class BatchAugment:
    """What to draw for each sample; the defaults are the seed kernels' pipeline after the
    crop. Limits are fractions as in albumentations: brightness of 255, shift of the image
    side, noise std of 255; the affine scale is drawn per axis (albumentations'
    keep_ratio=False)."""

    p_flip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    p_brightness_contrast: float = 0.5
    scale: tuple = (0.9, 1.1)
    shift: float = 0.0625
    rotate: float = 15.0
    p_affine: float = 0.5
    noise_std: tuple = (0.01, 0.05)
    p_noise: float = 0.3
    # Off in every preset; `--erasing P` sets it. Drawn last, so that it changes no other draw.
    p_erase: float = 0.0
    erase_scale: tuple = (0.02, 0.33)
    erase_ratio: tuple = (0.3, 3.3)

    @classmethod
    def nothing(cls) -> "BatchAugment":
        """A per-batch part that changes no pixel: the base for presets without one."""
        return cls(p_flip=0.0, p_brightness_contrast=0.0, p_affine=0.0, p_noise=0.0)

    def __post_init__(self):
        for name in ("p_flip", "p_brightness_contrast", "p_affine", "p_noise", "p_erase"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be 0 < low <= high, got {self.scale}")
        if not 0 <= self.noise_std[0] <= self.noise_std[1] <= 1:
            raise ValueError(f"noise_std must be 0 <= low <= high <= 1, got {self.noise_std}")

    def draw(self, rng: np.random.Generator, shape) -> np.ndarray:
        """The parameter row of one sample whose image has `shape` (any order of C, H, W)."""
        row = IDENTITY.copy()
        if rng.random() < self.p_flip:
            row[FLIP] = 1.0
        if rng.random() < self.p_brightness_contrast:
            row[ALPHA] = 1.0 + rng.uniform(-self.contrast, self.contrast)
            row[BETA] = 255.0 * rng.uniform(-self.brightness, self.brightness)
        if rng.random() < self.p_affine:
            row[AFFINE] = 1.0
            row[[SCALE_X, SCALE_Y]] = rng.uniform(*self.scale, size=2)
            row[ANGLE] = rng.uniform(-self.rotate, self.rotate)
            row[[SHIFT_X, SHIFT_Y]] = rng.uniform(-self.shift, self.shift, size=2)
        if rng.random() < self.p_noise:
            count = math.prod(shape)
            if count > BANK_SIZE:
                raise ValueError(f"an image of {count} values is larger than the noise bank "
                                 f"({BANK_SIZE}); lower --image-size")
            row[SIGMA] = 255.0 * rng.uniform(*self.noise_std)
            row[OFFSET] = rng.integers(0, BANK_SIZE - count + 1)
        if self.p_erase and rng.random() < self.p_erase:
            # torchvision's RandomErasing.get_params: up to 10 tries at a rectangle of random
            # area and log-uniform aspect ratio that fits, else nothing; shape is CHW.
            height, width = shape[-2:]
            for _ in range(10):
                area = height * width * rng.uniform(*self.erase_scale)
                ratio = math.exp(rng.uniform(math.log(self.erase_ratio[0]),
                                             math.log(self.erase_ratio[1])))
                h, w = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
                if 0 < h < height and 0 < w < width:
                    row[[ERASE_TOP, ERASE_LEFT]] = (rng.integers(0, height - h + 1),
                                                    rng.integers(0, width - w + 1))
                    row[[ERASE_H, ERASE_W]] = h, w
                    row[ERASE_FILL] = rng.uniform(0.0, 255.0)
                    break
        return row


def affine_theta(params: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`F.affine_grid`'s [N, 2, 3] matrices for parameter rows [N, PARAMS].

    The warp, in pixels about the image centre c, as albumentations' Affine builds it:
    destination = R S (source - c) + c + shift, with R = [[cos, sin], [-sin, cos]] (a positive
    angle turns the picture counterclockwise, as cv2.getRotationMatrix2D) and the shift not
    rounded to whole pixels. grid_sample asks the inverse, in coordinates normalized to [-1, 1]
    per axis (align_corners False: pixel offset from c = normalized * side / 2). With
    D = diag(W/2, H/2): source_n = D^-1 S^-1 R^-1 D (destination_n - 2 * shift_fraction)."""
    p = params.to(torch.float64)
    angle = torch.deg2rad(p[:, ANGLE])
    cos, sin = torch.cos(angle), torch.sin(angle)
    half = torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64)
    # R^-1 = R(-angle) = [[cos, -sin], [sin, cos]]; S^-1 = diag(1/sx, 1/sy); conjugated by D.
    inverse_r = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    inverse_s = torch.stack([1.0 / p[:, SCALE_X], 1.0 / p[:, SCALE_Y]], -1)
    linear = (inverse_s[:, :, None] * inverse_r) * half[None, None, :] / half[None, :, None]
    shift = 2.0 * p[:, [SHIFT_X, SHIFT_Y]]
    translation = -(linear @ shift[:, :, None])
    return torch.cat([linear, translation], dim=2)


def sampling_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`F.affine_grid(theta, [N, C, H, W], align_corners=False)`, as two broadcast
    multiply-adds: affine_grid multiplies an [N, H*W, 3] base grid batch by batch, which on a
    CPU costs more than the grid_sample it feeds (2.4 ms against 1.0 ms per 320 px image)."""
    kw = {"dtype": theta.dtype, "device": theta.device}
    xs = (torch.arange(width, **kw) * 2 + 1) / width - 1
    ys = ((torch.arange(height, **kw) * 2 + 1) / height - 1)[:, None]
    t = theta[:, :, :, None, None]
    return torch.stack([t[:, 0, 0] * xs + t[:, 0, 1] * ys + t[:, 0, 2],
                        t[:, 1, 0] * xs + t[:, 1, 1] * ys + t[:, 1, 2]], dim=-1)


def augment_batch(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) NCHW `images` on any device, `params` [N, PARAMS] rows from
    `BatchAugment.draw` -> float32 NCHW in 0..255 on the same device, ready to normalize."""
    if images.dim() != 4 or params.shape != (images.shape[0], PARAMS):
        raise ValueError(f"augment_batch wants NCHW images and [N, {PARAMS}] parameters, got "
                         f"{tuple(images.shape)} and {tuple(params.shape)}")
    device = images.device
    params = params.detach().to("cpu", torch.float64)
    _, channels, height, width = images.shape
    # One new tensor, then in place: on a CPU, fresh tensors of this size cost more in page
    # faults than the arithmetic. Contiguous NCHW whatever the loader's layout (`collate`).
    x = images.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    flipped = torch.nonzero(params[:, FLIP] > 0).flatten().to(device)
    if len(flipped):
        x[flipped] = x[flipped].flip(3)
    alpha = params[:, ALPHA].to(device, torch.float32).view(-1, 1, 1, 1)
    beta = params[:, BETA].to(device, torch.float32).view(-1, 1, 1, 1)
    x.mul_(alpha).add_(beta).clamp_(0.0, 255.0)
    warped = torch.nonzero(params[:, AFFINE] > 0).flatten()
    if len(warped):
        grid = sampling_grid(affine_theta(params[warped], height, width).to(device, torch.float32),
                             height, width)
        rows = warped.to(device)
        x[rows] = F.grid_sample(x[rows], grid, mode="bilinear", padding_mode="reflection",
                                align_corners=False)
    noisy = torch.nonzero(params[:, SIGMA] > 0).flatten().tolist()
    if noisy:
        bank, size = noise_bank_on(device), channels * height * width
        for i in noisy:
            offset = int(params[i, OFFSET])
            x[i].add_(bank[offset:offset + size].view(channels, height, width),
                      alpha=float(params[i, SIGMA]))
        x.clamp_(0.0, 255.0)

    for i in torch.nonzero(params[:, ERASE_H] > 0).flatten().tolist():
        top, left, h, w = (int(v) for v in params[i, [ERASE_TOP, ERASE_LEFT, ERASE_H, ERASE_W]])
        x[i, :, top:top + h, left:left + w] = float(params[i, ERASE_FILL])
    return x


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Bumped whenever a preset draws or applies its augmentation differently: a run resumed across
# such a change would go on with other batches than it started with, so checkpoints carry it.
AUGMENTATION_VERSION = 2
# The 1st place of iMet 2019 resized to a square and cropped only images more elongated than this.
DEFAULT_MAX_ASPECT = 2.0
# Area averaging when shrinking (no aliasing), bilinear when enlarging: iMet's short side is
# often 300 px, below a 320 px training size, and INTER_AREA alone enlarges like nearest.
_SCALING = {"interpolation": cv2.INTER_LINEAR, "area_for_downscale": "image"}


class CropToAspect(A.ImageOnlyTransform):
    """Crop the long side to long/short <= max_aspect (random position, or centred), a
    "crop only extreme aspect ratios" transform that albumentations lacks."""

    def __init__(self, max_aspect: float = DEFAULT_MAX_ASPECT, random_position: bool = True,
                 p: float = 1.0):
        super().__init__(p=p)
        if max_aspect < 1.0:
            raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")
        self.max_aspect, self.random_position = float(max_aspect), bool(random_position)

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
    """The `seed` preset's per-image step: albumentations' SmallestMaxSize + RandomCrop (a view)
    by hand, since with a cache (~0.8 ms decode) their per-call machinery costs another ~0.3 ms
    for two random integers."""

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
    """A training pipeline (`train(size)` -> per-image step, then `batch` on the device) and
    the eval pipeline (`eval(size)`) with the same geometry."""

    train: Callable[[int], Callable[[np.ndarray, np.random.Generator], np.ndarray]]
    eval: Callable[[int], A.Compose]
    help: str
    batch: BatchAugment | None = None


def _resize(size: int, train: bool) -> list:
    return [CropToAspect(DEFAULT_MAX_ASPECT, random_position=train),
            A.Resize(size, size, **_SCALING)]


def _padded(size: int) -> list:
    """Pad to a square, then resize (the iMet notes' future work 2: the whole object, unstretched,
    instead of a crop or a squeeze), done as shrink-the-long-side then pad (the same picture up
    to interpolation; the resize works on the unpadded pixels). Black bars, centred."""
    return [A.LongestMaxSize(max_size=size, **_SCALING),
            A.PadIfNeeded(size, size, position="center", border_mode=cv2.BORDER_CONSTANT, fill=0)]


def _seed_eval(size: int) -> A.Compose:
    return A.Compose([A.SmallestMaxSize(max_size=size, **_SCALING), A.CenterCrop(size, size)])


TRAIN_PRESETS: dict[str, Preset] = {
    "resize": Preset(
        lambda size: AlbumentationsStep(A.Compose([*_resize(size, True), A.HorizontalFlip(p=0.5)])),
        lambda size: A.Compose(_resize(size, False)),
        "resize to a square (crop only beyond aspect 2:1), horizontal flip"),
    "pad": Preset(lambda size: AlbumentationsStep(A.Compose([*_padded(size),
                                                              A.HorizontalFlip(p=0.5)])),
                  lambda size: A.Compose(_padded(size)),
                  "pad to a square (black bars, centred), resize, horizontal flip"),
    # The iMet notes' aggressive pipeline: short side scaled, square cropped (later steps see
    # size x size pixels); the rest per batch on the device, at no cost to the loader workers.
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
    """What `preset` augments per batch on the device (None: nothing) for size x size images,
    plus random erasing of probability `erasing`; refused when the noise outgrows the bank."""
    batch, size = _preset(preset).batch, _check_size(size)
    if erasing:
        batch = dataclasses.replace(batch or BatchAugment.nothing(), p_erase=erasing)
    largest = math.isqrt(BANK_SIZE // 3)  # the largest square RGB image the bank's noise covers
    if batch is not None and batch.p_noise > 0 and size > largest:
        raise UserError(f"--image-size {size}: the {preset} preset adds noise to images of at "
                        f"most {largest} px; lower --image-size or use --preset resize")
    return batch


def build_eval_transform(size: int, preset: str = "resize") -> A.Compose:
    """Deterministic transform with the geometry of `preset`'s training pipeline."""
    return _preset(preset).eval(_check_size(size))




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
        """An NCHW batch of 0..255 values (uint8 or float, any device) -> normalized float32."""
        scale, shift = self._scale_shift(batch.device, torch.float32)
        return torch.addcmul(shift, batch.to(torch.float32, memory_format=torch.contiguous_format),
                             scale)

    def apply_(self, batch: torch.Tensor) -> torch.Tensor:
        """`apply` in place, on a float32 batch of 0..255 values (`augment_batch`'s output)."""
        scale, shift = self._scale_shift(batch.device, torch.float32)
        return batch.mul_(scale).add_(shift)


def to_tensor(image: np.ndarray, norm: Normalization | None = Normalization()) -> torch.Tensor:
    """uint8 HWC -> normalized float32 CHW, or uint8 CHW when `norm` is None (normalize later,
    per batch, with `normalize_batch`): then a CHW view of the HWC pixels, no copy (a
    transposing copy per image cost the workers ~0.16 ms of ~1.1 ms at 320 px); `collate`
    stacks such views as they lie, and the device makes the batch NCHW when it converts it to
    float (`augment_batch`, `Normalization.apply`)."""
    if not image.flags.writeable or min(image.strides) < 0:
        # A memo's kept pixels (torch warns about sharing them) or a flipped view (torch
        # refuses negative strides).
        image = image.copy()
    if norm is None:
        return torch.from_numpy(image).permute(2, 0, 1)
    chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    scale, shift = norm._scale_shift("cpu", torch.float32)
    return chw.to(torch.float32).mul_(scale).add_(shift)


def normalize_batch(batch: torch.Tensor, norm: Normalization = Normalization()) -> torch.Tensor:
    """A uint8 NCHW batch (on any device) -> normalized float32; float batches pass unchanged."""
    return batch if batch.is_floating_point() else norm.apply(batch)


def stack_images(images: list) -> torch.Tensor:
    """uint8 CHW views of HWC pixels (`to_tensor(image, None)`) -> one NCHW batch laid out NHWC
    (channels_last), each image copied row by row; in a DataLoader worker into shared memory,
    as `default_collate` does, so the batch is not copied again on its way to the main process.
    Other tensors: `torch.stack`."""
    first = images[0]
    if first.dim() != 3 or any(image.stride(0) != 1 for image in images):
        return torch.stack(images)
    channels, height, width = first.shape
    shape = (len(images), height, width, channels)
    if get_worker_info() is not None:
        storage = first._typed_storage()._new_shared(math.prod(shape), device=first.device)
        out = first.new(storage).resize_(shape)
    else:
        out = first.new_empty(shape)
    torch.stack([image.permute(1, 2, 0) for image in images], out=out)
    return out.permute(0, 3, 1, 2)


def collate(items: list) -> list:
    """`default_collate` for `ImetDataset` items, the images stacked by `stack_images`."""
    return [stack_images([item[0] for item in items]),
            *default_collate([item[1:] for item in items])]


TTA: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda batch: batch,
    "hflip": lambda batch: torch.flip(batch, dims=(3,)),
}


def apply_tta(name: str, batch: torch.Tensor) -> torch.Tensor:
    """The view `name` of an NCHW batch: TTA reuses decoded images instead of decoding again."""
    if name not in TTA:
        raise UserError(f"unknown TTA {name!r}: choose from {', '.join(sorted(TTA))}")
    if batch.dim() != 4:
        raise ValueError(f"TTA works on NCHW batches, got shape {tuple(batch.shape)}")
    return TTA[name](batch)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation (per-image step, then per-batch parameters):
    SeedSequence makes neighbouring indices or epochs unrelated streams."""
    return np.random.default_rng(np.random.SeedSequence([seed & ((1 << 64) - 1), epoch, index]))


class ImetDataset(Dataset):
    """`dataset[i]` -> (image float32 CHW normalized, target float32[C], i), plus with a
    `batch_augment` the sample's parameter row (float64) for `augment_batch` on the device.

    `dataset[(epoch, i)]` reads sample i of `epoch` without `set_epoch`, which persistent
    DataLoader workers (each with its own copy of the dataset) would never see. `normalize=None`
    returns uint8 CHW, normalized per batch with `normalize_batch`. `cache` (an `ImageCache`)
    reads fresh pre-resized copies instead of the sources; a source whose shorter side is below
    `min_side` is a DataError. `memo` (a `PixelMemo`) keeps the source pixels read, or with
    `memo_transformed` those after the per-image step: the caller's promise that the step is
    deterministic (it draws nothing then, so no `batch_augment` goes with it)."""

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
        self.batch_augment, self.min_side = batch_augment, int(min_side)
        self.image_paths = [Path(p) for p in image_paths]
        self.cached = cache.resolve(self.image_paths) if cache is not None else None
        if targets is not None:
            targets = np.asarray(targets)
            if targets.ndim != 2 or len(targets) != len(self.image_paths):
                raise ValueError(f"targets must be [N={len(self.image_paths)}, C], "
                                 f"got shape {targets.shape}")
            num_classes = targets.shape[1]
        self.targets, self.num_classes = targets, int(num_classes or 0)
        self.transform = (AlbumentationsStep(transform) if isinstance(transform, A.BaseCompose)
                          else transform)
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed, self.normalize, self.epoch = int(seed), normalize, 0


    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.image_paths)

    def load(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """Sample `index`'s uint8 HWC image after the per-image step, drawing from `rng`."""

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
