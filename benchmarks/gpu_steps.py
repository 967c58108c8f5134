"""The measurements of benchmarks/gpu_check.py, each a function that also runs on the CPU with
tiny sizes (tests/test_gpu_check.py), so that the script's first GPU run is not its first run."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
ARCH, SIZE, CLASSES = "se_resnext50_32x4d", 320, 1103
BUSY_STEPS, BUSY_BATCH, BUSY_WORKERS = 200, 32, 4
# Max abs weight difference after a short non-deterministic AMP run and its resume: cuDNN's
# autotuned kernels and atomics reorder float sums; a real resume bug is off by orders more.
RESUME_TOLERANCE = 5e-3


class StepTimer:
    """Device time of each timed region: CUDA events on a GPU (no sync inside the loop), the
    wall clock around synchronous work on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.regions: list = []

    def start(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, started) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.regions.append((started, end))
        else:
            self.regions.append(time.perf_counter() - started)

    def busy_seconds(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(a.elapsed_time(b) for a, b in self.regions) / 1000.0
        return float(sum(self.regions))


def make_step(arch: str, classes: int, device: torch.device, amp: bool, channels_last: bool):
    """A training step function(images 0..255 or normalized float NCHW, targets) of `arch` with
    AdamW, autocast fp16 and a GradScaler when `amp` (CUDA only, as the engine's --amp)."""
    from imet.models.net import build_model
    model = build_model(arch, classes, pretrained=False).to(device).train()
    memory = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    use_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step(images: torch.Tensor, targets: torch.Tensor) -> None:
        images = images.contiguous(memory_format=memory)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            loss = loss_fn(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def synthetic_batch(batch: int, size: int, classes: int, device: torch.device):
    generator = torch.Generator().manual_seed(batch)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    targets = (torch.rand(batch, classes, generator=generator) < 0.003).float().to(device)
    return images, targets


def throughput(step, batch: int, size: int, classes: int, device: torch.device,
               steps: int = 20, warmup: int = 3) -> tuple[float, float]:
    """(images/s, peak GiB allocated; 0 on the CPU) of `steps` steps on one synthetic batch."""
    images, targets = synthetic_batch(batch, size, classes, device)
    for _ in range(warmup):
        step(images, targets)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(steps):
        step(images, targets)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0
    return steps * batch / seconds, peak


def largest_fitting(fits: Callable[[int], bool], start: int = 16, limit: int = 4096) -> int:
    """The largest batch in [1, limit] for which fits(batch) is True, assuming fitting is
    monotone: doubling from `start`, then bisecting between the last fit and the first miss."""
    low, high = 0, None
    batch = start
    while batch <= limit:
        if not fits(batch):
            high = batch
            break
        low, batch = batch, batch * 2
    if high is None:
        return low
    while high - low > max(1, low // 16):  # to within ~6%: each try is a full step
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def fits_on_gpu(step_for: Callable[[], Callable], size: int, classes: int,
                device: torch.device) -> Callable[[int], bool]:
    """fits(batch): one step of a fresh model at that batch ran without CUDA out-of-memory."""
    def fits(batch: int) -> bool:
        step = None
        try:
            step = step_for()
            step(*synthetic_batch(batch, size, classes, device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            del step
            gc.collect()  # the failed step's tensors, held by its traceback's frames
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return fits


def busy_share(loader, step, prepare, device: torch.device, steps: int) -> tuple[float, float]:
    """(GPU-busy share of the wall time, images/s) over `steps` steps fed by `loader`, timed
    from the first batch on (the workers' start-up is not counted)."""
    timer, seen, started = StepTimer(device), 0, None
    batches = iter(loader)
    for _ in range(steps):
        images, targets, _, params = next(batches)
        if started is None:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        region = timer.start()
        step(prepare(images, params), targets.to(device, non_blocking=True))
        timer.stop(region)
        seen += images.shape[0]
    busy = timer.busy_seconds()
    wall = time.perf_counter() - started
    return min(1.0, busy / wall), seen / wall


def real_loader(folder: Path, count: int, size: int, batch: int, workers: int, steps: int,
                classes: int = CLASSES):
    """The training loader as the engine builds it for preset seed: PNGs at iMet's geometry,
    a JPEG cache at short side `size`, uint8 out with per-batch parameters, pinned memory."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_loader import make_images
    from torch.utils.data import DataLoader

    from imet.data.images import ImageCache
    from imet.data.images import build_cache
    from imet.data.transforms import ImetDataset
    from imet.data.transforms import build_batch_augment, build_train_transform, collate
    paths = make_images(folder / "data", count)
    build_cache(folder / "data", folder / "cache", size, "jpeg", workers=workers, progress=False)
    targets = (np.random.default_rng(1).random((count, classes)) < 0.003).astype(np.uint8)
    dataset = ImetDataset(paths, targets, build_train_transform("seed", size), seed=0,
                          normalize=None, cache=ImageCache(folder / "cache"),
                          batch_augment=build_batch_augment("seed", size))
    order = np.random.default_rng(0).integers(0, count, steps * batch).tolist()
    return DataLoader(dataset, batch_size=batch, sampler=order, num_workers=workers,
                      collate_fn=collate, pin_memory=torch.cuda.is_available(), drop_last=True,
                      persistent_workers=False)


def device_prepare(device: torch.device):
    """The engine's per-batch part: augment on the device, then normalize."""
    from imet.data.transforms import augment_batch
    from imet.data.transforms import Normalization
    norm = Normalization()

    def prepare(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        images = images.to(device, non_blocking=True)
        return norm.apply_(augment_batch(images, params.to(device, non_blocking=True)))
    return prepare


def augment_difference(device: torch.device, batch: int = 16, size: int = SIZE) -> float:
    """Max abs difference (0..255 scale) of `augment_batch` on `device` against the CPU, same
    images and the same drawn parameters."""
    from imet.data.transforms import augment_batch
    from imet.data.transforms import build_batch_augment
    spec = build_batch_augment("seed", size)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (batch, 3, size, size), dtype=np.uint8))
    params = torch.from_numpy(np.stack([spec.draw(rng, (3, size, size)) for _ in range(batch)]))
    on_cpu = augment_batch(images, params)
    on_device = augment_batch(images.to(device), params.to(device)).cpu()
    return float((on_cpu - on_device).abs().max())


def imet_command(*args, launcher=None, env=None) -> subprocess.CompletedProcess:
    command = [*(launcher or [sys.executable, "-m", "imet"]), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})})


def final_weights(run: Path) -> dict:
    """The model tensors of the run's newest training state (the end of the run: model.pt is
    the best evaluation's, which a tie could pick differently)."""
    from imet.train.checkpoint import checkpoint_dir, list_generations
    (_, path), *_ = list_generations(checkpoint_dir(run))
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def model_difference(a: Path, b: Path) -> float:
    first, second = final_weights(a), final_weights(b)
    if first.keys() != second.keys():
        raise RuntimeError(f"{a} and {b} hold different models")
    return max(float((first[k].double() - second[k].double()).abs().max()) for k in first)


def resume_difference(data: Path, out: Path, train_args: list[str], interrupt_at: int,
                      launcher=None, env=None) -> float:
    """Max abs weight difference between an uninterrupted run and the same run handed over
    after `interrupt_at` steps (under `launcher`, e.g. torchrun) and resumed in one process."""
    base = ["train", "--data", data, "--notify", "off", *train_args]
    whole = imet_command(*base, "--out", out / "whole", env=env)
    if whole.returncode:
        raise RuntimeError(f"uninterrupted run failed: {whole.stderr.strip()[-500:]}")
    first = imet_command(*base, "--out", out / "split", "--session-steps", interrupt_at,
                         launcher=launcher, env=env)
    if not (out / "split" / "HANDOVER.json").is_file():
        raise RuntimeError(f"interrupted run did not hand over: {first.stderr.strip()[-500:]}")
    rest = imet_command(*base, "--out", out / "split", "--resume", "auto", env=env)
    if rest.returncode:
        raise RuntimeError(f"resumed run failed: {rest.stderr.strip()[-500:]}")
    return model_difference(out / "whole", out / "split")


def small_data(folder: Path, n_train: int = 256, size: int = 128) -> Path:
    from imet.data.folds import make_folds, write_folds
    from imet.data.labels import read_labels, read_train
    from imet.data.labels import CompetitionLayout
    from imet.data.mini_imet import generate
    generate(folder, n_train=n_train, n_test=16, size=size, seed=0)
    layout = CompetitionLayout(folder)
    ids, targets = read_train(layout.train_csv, read_labels(layout.labels_csv))
    write_folds(layout.folds_csv, ids, make_folds(targets, 2, seed=0))
    return folder
