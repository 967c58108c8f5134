"""Where and in what precision a model runs (train, validate, predict): `--device` to a
torch.device, `--amp` / `--amp-dtype` to one autocast dtype and whether a GradScaler runs.

One precision path, the same autocast and scaler calls on CPU and CUDA. `auto` is fp16 +
GradScaler on a GPU without fast bf16 (the T4, compute capability 7.5), bf16 without a scaler
from Ampere (8.0) on, and fp32 on CPU, where autocast only slows small models down and changes
the numbers. An explicit dtype runs on CPU too: so the CPU tests exercise a GPU's lines."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from imet.config import check_amp_dtype
from imet.errors import UserError

# bf16 tensor cores from this capability on (Ampere); the T4 (7.5) emulates bf16, several x slower.
FAST_BF16 = (8, 0)


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


@dataclass(frozen=True)
class Precision:
    name: str  # "fp32" | "fp16" | "bf16"

    @property
    def dtype(self) -> torch.dtype | None:
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.name)

    @property
    def scaled(self) -> bool:
        """Loss scaling for fp16, whose 5-bit exponent flushes small gradients; bf16 has fp32's."""
        return self.name == "fp16"

    def autocast(self, device_type: str):
        return torch.autocast(device_type, dtype=self.dtype, enabled=self.name != "fp32")

    def scaler(self, device_type: str) -> torch.amp.GradScaler:
        """Disabled, it passes the loss through and steps the optimizer unchanged."""
        return torch.amp.GradScaler(device_type, enabled=self.scaled)

    def describe(self) -> str:
        return {"fp16": "fp16 autocast + GradScaler", "bf16": "bf16 autocast"}.get(self.name,
                                                                                 "fp32")


def fast_bf16(capability: tuple[int, int]) -> bool:
    return tuple(capability) >= FAST_BF16


def choose_precision(amp: bool, amp_dtype: str, device_type: str,
                     capability: tuple[int, int] | None = None, gpu: str = "this GPU") -> Precision:
    """The precision `--amp`/`--amp-dtype` give on a device; `capability` is a CUDA device's
    (major, minor). UserError for an unknown dtype and for bf16 on a GPU without fast bf16."""
    check_amp_dtype(amp_dtype)
    if not amp:
        return Precision("fp32")
    if device_type == "cuda":
        has_bf16 = fast_bf16(capability)
        if amp_dtype == "bf16" and not has_bf16:
            major, minor = capability
            raise UserError(f"--amp-dtype bf16: {gpu} (compute capability {major}.{minor}) has "
                            f"no fast bf16 (needs {FAST_BF16[0]}.{FAST_BF16[1]}, Ampere or "
                            "newer); use --amp-dtype fp16 or auto")
        if amp_dtype == "auto":
            return Precision("bf16" if has_bf16 else "fp16")
    elif amp_dtype == "auto":
        return Precision("fp32")
    return Precision(amp_dtype)


def device_precision(device: torch.device, amp: bool, amp_dtype: str) -> Precision:
    """`choose_precision` for a real device, asking CUDA for its capability."""
    if device.type != "cuda":
        return choose_precision(amp, amp_dtype, device.type)
    return choose_precision(amp, amp_dtype, "cuda", torch.cuda.get_device_capability(device),
                            torch.cuda.get_device_name(device))
