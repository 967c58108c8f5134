"""Gaussian pixel noise without drawing a Gaussian number per pixel.

albumentations' GaussNoise draws 307,200 normal numbers for a 320x320 RGB image: ~3 ms on one
core, more than decoding a cached JPEG and the rest of the augmentation together. Here every
image gets a window of one fixed bank of standard-normal numbers, at a random offset, scaled
by a random std: inside an image the noise is still i.i.d. per pixel and channel, with the
same distribution as GaussNoise(std_range, per-channel), and it costs two passes over the
pixels. albumentations has no such option (its noise_scale_factor makes the noise blotchy,
another augmentation), hence this transform."""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

BANK_SIZE = 1 << 22  # 16 MiB of float32 per process; windows of up to ~4 Mpx values
BANK_SEED = 20190328
_bank: np.ndarray | None = None


def noise_bank() -> np.ndarray:
    """The process's bank, built on first use from a fixed seed: identical in every worker."""
    global _bank
    if _bank is None:
        _bank = np.random.default_rng(BANK_SEED).standard_normal(BANK_SIZE, dtype=np.float32)
    return _bank


class GaussNoiseBank(A.ImageOnlyTransform):
    """Like `A.GaussNoise(std_range=..., mean_range=(0, 0), per_channel=True)` on uint8 images:
    std drawn uniformly from `std_range` (a fraction of 255) once per image."""

    def __init__(self, std_range: tuple = (0.01, 0.05), p: float = 0.5):
        super().__init__(p=p)
        low, high = std_range
        if not 0 <= low <= high <= 1:
            raise ValueError(f"std_range must satisfy 0 <= low <= high <= 1, got {std_range}")
        self.std_range = (float(low), float(high))

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        count = int(np.prod(params["shape"][:2])) * (params["shape"][2]
                                                      if len(params["shape"]) > 2 else 1)
        if count > BANK_SIZE:
            raise ValueError(f"image of {count} values is larger than the noise bank "
                             f"({BANK_SIZE}); resize before adding noise")
        return {"offset": int(self.random_generator.integers(0, BANK_SIZE - count + 1)),
                "sigma": 255.0 * self.py_random.uniform(*self.std_range)}

    def apply(self, img: np.ndarray, offset: int = 0, sigma: float = 0.0, **params) -> np.ndarray:
        noise = noise_bank()[offset:offset + img.size].reshape(img.shape) * np.float32(sigma)
        if img.dtype == np.uint8:
            # One saturating, rounding pass: uint8 + float32 -> uint8.
            return cv2.add(img, noise, dtype=cv2.CV_8U).reshape(img.shape)
        return np.clip(img + noise / 255.0, 0.0, 1.0).astype(img.dtype)

    def get_transform_init_args_names(self) -> tuple:
        return ("std_range",)
