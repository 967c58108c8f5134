"""Gaussian pixel noise without drawing a Gaussian number per pixel.

albumentations' GaussNoise draws 307,200 normal numbers for a 320x320 RGB image, and a batch
augmented on the device would need each sample's numbers from its own seeded stream. Instead
every noisy image gets a window of one fixed bank of standard-normal numbers, at an offset
drawn from the sample's stream, scaled by the sample's std: inside an image the noise is still
i.i.d. per pixel and channel, with the distribution of GaussNoise(std_range, per-channel), and
it costs one pass over the pixels. Neither albumentations nor torch offers noise keyed by a
per-sample offset, hence this module."""
from __future__ import annotations

import numpy as np
import torch

BANK_SIZE = 1 << 22  # 16 MiB of float32 per device; windows of up to ~4 Mpx values
BANK_SEED = 20190328
_banks: dict[str, torch.Tensor] = {}


def noise_bank() -> np.ndarray:
    """The bank, always the same numbers (a fixed seed), built on the CPU."""
    return np.random.default_rng(BANK_SEED).standard_normal(BANK_SIZE, dtype=np.float32)


def noise_bank_on(device) -> torch.Tensor:
    """The bank as a float32 tensor on `device`, built once per device and process: the same
    numbers on CPU and GPU, so a batch's noise does not depend on where it is applied."""
    key = str(torch.device(device))
    if key not in _banks:
        _banks[key] = torch.from_numpy(noise_bank()).to(device)
    return _banks[key]
