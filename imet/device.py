"""`--device` (auto | cpu | cuda | cuda:N) to a torch.device, for every command that runs a
model (train, validate, predict). Sits beside imet/errors.py, below every layer that uses it."""
from __future__ import annotations

import torch

from imet.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible; use --device cpu or auto")
    return device
