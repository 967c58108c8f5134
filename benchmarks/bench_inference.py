"""Inference throughput: imet's 2x TTA (none + hflip made on the decoded batch tensor, one
concatenated forward pass) against a bare PyTorch predict loop without TTA, same model, same
images, same DataLoader settings. Also shows the naive TTA (a second pass over the loader,
decoding every image twice) for context.

Inference on Kaggle is bound by image decoding on few CPU cores, not by the GPU; the TTA copy
only costs model time, which batching hides while the loader is the bottleneck. The figure is
measured side by side in one run (passes interleaved, median of --repeats).

    python benchmarks/bench_inference.py [--arch tiny_cnn] [--images 192] [--image-size 128]

Last line: `inference_tta2_vs_bare: <ratio>x` (imet TTA img/s / bare img/s; goal >= 0.9).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from imet.data.transforms import Normalization, normalize_batch
from imet.device import resolve_device
from imet.models import build_model
from imet.predict.infer import build_loader, predict_probs


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """iMet-like PNGs: ~300 x 450 px, smooth content plus grain (decoding cost like the real
    scans; pure noise would be unrealistically expensive to decode)."""
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(count):
        h, w = int(rng.integers(280, 340)), int(rng.integers(380, 520))
        small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        image = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        image = cv2.add(image, rng.integers(0, 24, image.shape, dtype=np.uint8))
        path = folder / f"{k:05d}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def bare_loop(model, loader, device, norm) -> np.ndarray:
    """What a user writes by hand: no TTA, sigmoid, collect."""
    out = []
    with torch.inference_mode():
        for images, _ in loader:
            x = normalize_batch(images.to(device, non_blocking=True), norm)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                out.append(torch.sigmoid(model(x).float()).cpu().numpy())
    return np.concatenate(out)


def naive_tta(model, loader, device, norm) -> np.ndarray:
    """TTA as often hand-written: one full pass over the loader per view."""
    plain = bare_loop(model, loader, device, norm)
    out = []
    with torch.inference_mode():
        for images, _ in loader:
            x = normalize_batch(images.to(device, non_blocking=True), norm).flip(3)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                out.append(torch.sigmoid(model(x).float()).cpu().numpy())
    return (plain + np.concatenate(out)) / 2


def timed(fn, count: int) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tiny_cnn")
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(args.arch, 1103).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    norm = Normalization.from_info(getattr(model, "info", {}))
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp), args.images)
        loader = build_loader(paths, args.image_size, args.batch_size, args.num_workers,
                              pin_memory=device.type == "cuda")
        n = len(paths)
        runs = {
            "bare (no TTA)": lambda: bare_loop(model, loader, device, norm),
            "imet TTA none,hflip": lambda: predict_probs(model, loader, ("none", "hflip"),
                                                         device, norm=norm),
            "naive TTA (2 passes)": lambda: naive_tta(model, loader, device, norm),
        }
        for fn in runs.values():  # warm-up: worker start, allocator, cudnn autotune
            fn()
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                rates[name].append(timed(fn, n))
    print(f"device {device}, arch {args.arch}, {n} PNGs ~300x450 -> {args.image_size}px, "
          f"batch {args.batch_size}, {args.num_workers} workers, median of {args.repeats}")
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, rate in median.items():
        print(f"{name}: {rate:.1f} img/s")
    print(f"naive_tta2_vs_bare: {median['naive TTA (2 passes)'] / median['bare (no TTA)']:.3f}x")
    print(f"inference_tta2_vs_bare: "
          f"{median['imet TTA none,hflip'] / median['bare (no TTA)']:.3f}x")


if __name__ == "__main__":
    main()
