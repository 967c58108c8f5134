"""Can this torch use this session's GPUs? Asked of the devices themselves, before any hour is
spent: `is_available()` alone says yes on a GPU the build has no kernels for (the first real
operation fails), and says no, with a warning, when the driver is older than the build needs.

The probe is a small fp16 conv plus matmul under autocast (bf16 too where the device has it),
checked against fp32: exactly the operations a training step starts with."""
from __future__ import annotations

import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from imet.engine.precision import fast_bf16

# Low-precision results within this fraction of the fp32 result's largest value: fp16 keeps
# ~3 decimal digits, bf16 ~2; a wrong kernel is off by far more.
PROBE_TOLERANCE = {torch.float16: 0.01, torch.bfloat16: 0.05}


def build_info() -> dict[str, str]:
    """Python, torch, the CUDA version it was built for and its compiled GPU architectures."""
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda build": torch.version.cuda or "none (CPU-only build)",
            "arch list": " ".join(torch.cuda.get_arch_list()) or "-"}


def has_kernels(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a build compiled for `arch_list` runs on a device of `capability`: machine code
    for the same major version and a minor version not above the device's, or PTX (compute_XY)
    of a version not above it, which the driver compiles."""
    major, minor = capability
    for arch in arch_list:
        kind, _, version = arch.partition("_")
        if not version.isdigit():
            continue
        built = (int(version[:-1]), int(version[-1]))
        if kind == "sm" and built[0] == major and built[1] <= minor:
            return True
        if kind == "compute" and built <= (major, minor):
            return True
    return False


def probe(device: torch.device, dtype: torch.dtype) -> None:
    """Run a small conv + matmul under autocast in `dtype` on `device`; raises RuntimeError
    naming what went wrong when the device cannot run them or computes nonsense."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 8, 16, 16, generator=generator).to(device)
    kernel = torch.randn(16, 8, 3, 3, generator=generator).to(device)
    matrix = torch.randn(4096, 32, generator=generator).to(device)
    with torch.autocast(device.type, dtype=dtype):
        features = F.conv2d(images, kernel, padding=1)
        out = features.flatten(1) @ matrix
    if features.dtype != dtype or out.dtype != dtype:
        raise RuntimeError(f"autocast computed {out.dtype}, not {dtype}")
    reference = F.conv2d(images, kernel, padding=1).flatten(1) @ matrix
    # .item() waits for the device: a missing kernel or a launch failure surfaces here.
    error = (out.float() - reference).abs().max().item()
    scale = reference.abs().max().item()
    if not error <= PROBE_TOLERANCE[dtype] * scale:
        raise RuntimeError(f"{dtype} result off by {error:.3g} (fp32 values up to {scale:.3g})")


def try_probe(device: torch.device, dtype: torch.dtype) -> str:
    """'ok', or 'failed: <the error's first line>'."""
    try:
        probe(device, dtype)
    except Exception as err:  # any failure of the device is the answer, not a crash of doctor
        return f"failed: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    return "ok"


@dataclass
class Gpu:
    index: int
    name: str
    capability: tuple[int, int]
    memory_gib: float
    kernels: bool
    fp16: str
    bf16: str  # "ok", "failed: …" or "not supported"

    @property
    def sm(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"

    def problem(self) -> str | None:
        """One line when this torch cannot train on the GPU, else None."""
        if not self.kernels:
            return (f"GPU {self.index} {self.name} ({self.sm}): torch {torch.__version__} has no "
                    f"kernels for it (built for {' '.join(torch.cuda.get_arch_list())}): ask "
                    "for a GPU it supports (machine_shape NvidiaTeslaT4) or bundle a torch "
                    f"built for {self.sm}")
        if self.fp16 != "ok":
            return (f"GPU {self.index} {self.name} ({self.sm}): a fp16 conv+matmul under "
                    f"autocast {self.fp16}: this torch cannot train on it")
        return None


def inspect(index: int) -> Gpu:
    device = torch.device("cuda", index)
    props = torch.cuda.get_device_properties(device)
    capability = (props.major, props.minor)
    kernels = has_kernels(capability, torch.cuda.get_arch_list())
    fp16 = try_probe(device, torch.float16)
    bf16 = "not supported"
    if fast_bf16(capability):  # older devices would only emulate it
        bf16 = try_probe(device, torch.bfloat16)
    return Gpu(index, props.name, capability, props.total_memory / 2**30, kernels, fp16, bf16)


def nvidia_device_nodes() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))


def cuda_available() -> tuple[bool, str | None]:
    """(torch sees a GPU, why not when the machine has one torch cannot use). A driver older
    than the build is reported by torch as a warning, then is_available() is False."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available or not (nvidia_device_nodes() and torch.version.cuda):
        return available, None
    said = " ".join(str(w.message).split()) if caught else "torch.cuda.is_available() is False"
    return False, (f"this session has an NVIDIA GPU that torch {torch.__version__} (built for "
                   f"CUDA {torch.version.cuda}) cannot use: {said[:300]}; use the image's "
                   "torch (build the dataset without --include-torch) or a torch built for "
                   "this driver")


def no_gpu_line(asked: str) -> str:
    """The line for a session that asked for a GPU and has none."""
    return (f"asked for a GPU ({asked}) but this session has none (no CUDA device is visible; "
            "is the weekly GPU quota used up?): stopping rather than train on the CPU; render "
            "with --accelerator none to train on the CPU on purpose")


def device_problem(name: str) -> str | None:
    """One line when `imet train --device NAME` cannot train on that device, else None. Under
    torchrun `cuda` means the process's own GPU (LOCAL_RANK), as in the engine."""
    if name == "cpu":
        return None
    available, driver = cuda_available()
    if name == "auto" and not available:
        return driver
    try:
        device = torch.device("cuda" if name == "auto" else name)
    except RuntimeError:
        return None  # not a device name at all: the engine's resolver says so
    if device.type != "cuda":
        return None
    if not available:
        return driver or f"--device {name}: no CUDA GPU is visible; use --device cpu or auto"
    count = torch.cuda.device_count()
    index = device.index if device.index is not None else int(os.environ.get("LOCAL_RANK", 0))
    if index >= count:
        return (f"--device {name}: this machine has {count} GPU{'s' if count != 1 else ''} "
                f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}); pick one of them "
                "or --device auto")
    return inspect(index).problem()
