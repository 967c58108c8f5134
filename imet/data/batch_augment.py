"""The `seed` preset's pixel augmentations, applied per batch on the training device.

On Kaggle 2-4 CPU cores feed the GPU, and per image the flip, brightness/contrast change,
affine warp and Gaussian noise cost the workers more than decoding a cached image. Here they
are split in two:

- `BatchAugment.draw`, in the loader worker: the sample's parameters (a few numbers) from the
  sample's own random stream, so a batch is a function of (seed, epoch, indices) whatever the
  number of workers and wherever a session stopped;
- `augment_batch`, on the device: the whole batch at once, as tensors (one flip of the flipped
  samples, one multiply-add, one `grid_sample` of the warped samples, one add per noisy one).

The semantics are those of albumentations' `HorizontalFlip`, `RandomBrightnessContrast(0.2,
0.2)`, `Affine(scale=(0.9, 1.1), translate_percent=(-0.0625, 0.0625), rotate=(-15, 15))` and
`GaussNoise(std_range=(0.01, 0.05))` on uint8 images, then, with `--erasing P`, those of
torchvision's `RandomErasing(p=P, scale=(0.02, 0.33), ratio=(0.3, 3.3))` with a random gray
(one value per sample) as the fill, except that the pixels stay float (no
rounding between steps) and the warp's border reflects about the edge (cv2's BORDER_REFLECT;
albumentations used BORDER_REFLECT_101, which repeats no edge pixel). albumentations and
torchvision's v2 transforms work per image; batched, per-sample-parameter versions with an
external random stream are what neither library has, hence this module."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from imet.data.noise import BANK_SIZE, noise_bank_on

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

    def largest_side(self, channels: int = 3) -> int | None:
        """The largest square image side whose noise fits in the bank (None: no noise, no
        limit)."""
        return math.isqrt(BANK_SIZE // channels) if self.p_noise > 0 else None

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
            self.draw_erasing(rng, row, *shape[-2:])
        return row

    def draw_erasing(self, rng: np.random.Generator, row: np.ndarray, height: int,
                     width: int) -> None:
        """torchvision's RandomErasing.get_params: up to 10 tries at a rectangle of a random
        area fraction and log-uniform aspect ratio that fits; none fits, nothing is erased.
        `shape[-2:]` is (H, W): the dataset hands CHW images."""
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
                return


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
    # faults than the arithmetic.
    x = images.to(torch.float32, copy=True)
    flipped = torch.nonzero(params[:, FLIP] > 0).flatten()
    if len(flipped):
        rows = flipped.to(device)
        x[rows] = x[rows].flip(3)
    alpha = params[:, ALPHA].to(device, torch.float32).view(-1, 1, 1, 1)
    beta = params[:, BETA].to(device, torch.float32).view(-1, 1, 1, 1)
    x.mul_(alpha).add_(beta).clamp_(0.0, 255.0)
    warped = torch.nonzero(params[:, AFFINE] > 0).flatten()
    if len(warped):
        theta = affine_theta(params[warped], height, width).to(device, torch.float32)
        grid = sampling_grid(theta, height, width)
        rows = warped.to(device)
        x[rows] = F.grid_sample(x[rows], grid, mode="bilinear", padding_mode="reflection",
                                align_corners=False)
    noisy = torch.nonzero(params[:, SIGMA] > 0).flatten().tolist()
    if noisy:
        bank = noise_bank_on(device)
        size = channels * height * width
        for i in noisy:
            offset = int(params[i, OFFSET])
            x[i].add_(bank[offset:offset + size].view(channels, height, width),
                      alpha=float(params[i, SIGMA]))
        x.clamp_(0.0, 255.0)
    for i in torch.nonzero(params[:, ERASE_H] > 0).flatten().tolist():
        top, left, h, w = (int(v) for v in params[i, [ERASE_TOP, ERASE_LEFT, ERASE_H, ERASE_W]])
        x[i, :, top:top + h, left:left + w] = float(params[i, ERASE_FILL])
    return x
