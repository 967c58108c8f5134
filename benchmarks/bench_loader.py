"""Training input pipeline at 320 px: the iMet seed kernels' loader against imet's, side by side.

Images: real photographs bundled with scikit-image (astronaut, chelsea, coffee, rocket, ...),
cropped to iMet's geometry (short side 300 px, aspect 1 to 2.5, portrait and landscape) and
saved as PNGs in the competition layout.

- seed: cv2.imread -> RGB -> albumentations flip / brightness-contrast / affine (shift-scale-
  rotate) / Gaussian noise on the full image -> Resize(320, 320) -> Normalize -> ToTensorV2.
- imet: `ImetDataset` with the default `seed` preset (same augmentations in kind: random square
  crop, flip, brightness-contrast, affine, noise) reading a JPEG q95 cache made by
  `imet cache --size 320`; uint8 out, normalized per batch on the GPU (`normalize_batch`).
  Also shown: the same from the PNGs (no cache), from an npy cache, with albumentations'
  GaussNoise instead of imet's GaussNoiseBank, and with the batch normalization on the CPU
  (a machine without a GPU).

Per core: one process, cv2 and torch on one thread, CPU time (robust on a shared machine),
batches of 32 through a DataLoader with num_workers=0. With N workers: wall clock.

    python benchmarks/bench_loader.py [--images 96] [--rounds 3] [--workers N]

Last line: `loader_speedup_per_core_vs_seed: <imet img/s per core / seed img/s per core>x`.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import DataLoader, Dataset

from imet.data.cache import ImageCache, build_cache
from imet.data.dataset import ImetDataset
from imet.data.noise import GaussNoiseBank
from imet.data.transforms import build_train_transform, normalize_batch

SIZE, SHORT_SIDE, MAX_ASPECT, CLASSES = 320, 300, 2.5, 1103
IMET_TRAIN_IMAGES = 109_237
KAGGLE_WORKING_GB = 20


def photos() -> list[np.ndarray]:
    import skimage.data as data

    names = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
             "immunohistochemistry", "retina", "colorwheel"]
    return [getattr(data, name)()[..., :3] for name in names]


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """PNG crops at iMet's geometry: aspect log-normal around 1.35 (most museum photos are
    close to 4:3, a few long scrolls), clipped to [1, 2.5], half of them portrait."""
    rng = np.random.default_rng(seed)
    sources = photos()
    (folder / "train").mkdir(parents=True)
    paths = []
    for k in range(count):
        src = sources[k % len(sources)]
        height, width = src.shape[:2]
        aspect = float(np.clip(rng.lognormal(np.log(1.35), 0.3), 1.0, MAX_ASPECT))
        if rng.random() < 0.5:  # landscape
            w = width
            h = max(8, min(height, int(w / aspect)))
        else:
            h = height
            w = max(8, min(width, int(h / aspect)))
        y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        crop = src[y:y + h, x:x + w]
        scale = SHORT_SIDE / min(h, w)
        crop = cv2.resize(crop, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        path = folder / "train" / f"{k:016x}.png"
        cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


class SeedDataset(Dataset):
    """The public iMet 2019 kernels' loader: augment the decoded full image, then resize."""

    def __init__(self, paths, targets):
        self.paths, self.targets = paths, targets
        self.transform = A.Compose([
            A.HorizontalFlip(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            A.Affine(scale=(0.9, 1.1), translate_percent=(-0.0625, 0.0625), rotate=(-15, 15),
                     border_mode=cv2.BORDER_REFLECT_101, p=0.5),
            A.GaussNoise(std_range=(0.01, 0.05), p=0.3),
            A.Resize(SIZE, SIZE),
            A.Normalize(),
            ToTensorV2(),
        ])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = cv2.cvtColor(cv2.imread(str(self.paths[i])), cv2.COLOR_BGR2RGB)
        return self.transform(image=image)["image"], torch.from_numpy(
            self.targets[i].astype(np.float32)), i


def one_thread(_worker_id=None) -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def per_core(dataset, normalize: bool = False) -> float:
    """Images per CPU-second, one process, one thread."""
    loader = DataLoader(dataset, batch_size=32, num_workers=0)
    start = time.process_time()
    count = 0
    for images, _, _ in loader:
        if normalize:
            normalize_batch(images)
        count += len(images)
    return count / (time.process_time() - start)


def with_workers(dataset, workers: int) -> float:
    """Images per wall-second with `workers` DataLoader processes (workers started first)."""
    loader = DataLoader(dataset, batch_size=32, num_workers=workers, worker_init_fn=one_thread,
                        persistent_workers=True, prefetch_factor=4)
    for _ in loader:  # the first epoch starts the workers: start-up is not throughput
        pass
    start, count = time.perf_counter(), 0
    for _ in range(2):
        for images, _, _ in loader:
            count += len(images)
    return count / (time.perf_counter() - start)


def cache_bytes(folder: Path) -> float:
    files = [p for p in folder.rglob("*") if p.suffix in (".jpg", ".npy")]
    return sum(p.stat().st_size for p in files) / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    one_thread()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = make_images(root / "data", args.images)
        targets = (np.random.default_rng(1).random((len(paths), CLASSES)) < 0.003).astype(np.uint8)
        pixels = np.mean([np.prod(cv2.imread(str(p)).shape[:2]) for p in paths])
        aspects = [max(s) / min(s) for s in (cv2.imread(str(p)).shape[:2] for p in paths)]
        print(f"{len(paths)} PNGs, short side {SHORT_SIDE}, aspect {min(aspects):.2f}-"
              f"{max(aspects):.2f} (mean {np.mean(aspects):.2f}), {pixels / 1e3:.0f} kpx, "
              f"{np.mean([p.stat().st_size for p in paths]) / 1024:.0f} KiB each")
        caches = {}
        for fmt in ("jpeg", "npy"):
            out = root / f"cache-{fmt}"
            took = build_cache(root / "data", out, SIZE, fmt, workers=1, progress=False).seconds
            caches[fmt] = ImageCache(out)
            per_image = cache_bytes(out)
            print(f"cache {fmt} at short side {SIZE}: {per_image / 1024:.1f} KiB/image, "
                  f"{len(paths) / took:.0f} img/s to build on 1 core; iMet's "
                  f"{IMET_TRAIN_IMAGES:,} training images: "
                  f"{per_image * IMET_TRAIN_IMAGES / 1e9:.1f} GB "
                  f"(Kaggle working disk: {KAGGLE_WORKING_GB} GB)")

        def imet(cache=None, albumentations_noise=False):
            transform = build_train_transform("seed", SIZE)
            if albumentations_noise:  # what the noise bank saves
                transform = A.Compose([A.GaussNoise(t.std_range, p=t.p)
                                       if isinstance(t, GaussNoiseBank) else t
                                       for t in transform.transforms])
            return ImetDataset(paths, targets, transform, seed=0, normalize=None, cache=cache)

        pipelines = {
            "seed": lambda: SeedDataset(paths, targets),
            "imet (png, no cache)": lambda: imet(),
            "imet (jpeg cache, A.GaussNoise)": lambda: imet(caches["jpeg"], True),
            "imet (jpeg cache)": lambda: imet(caches["jpeg"]),
            "imet (npy cache)": lambda: imet(caches["npy"]),
        }
        best = {name: 0.0 for name in pipelines}
        normalized = "imet (jpeg cache) + normalize on the CPU"
        best[normalized] = 0.0
        for _ in range(args.rounds):  # interleaved, so load changes hit every pipeline alike
            for name, make in pipelines.items():
                best[name] = max(best[name], per_core(make()))
            best[normalized] = max(best[normalized], per_core(imet(caches["jpeg"]), True))
        for name, rate in best.items():
            print(f"per core  {name:42s} {rate:7.0f} img/s  ({rate / best['seed']:.2f}x seed)")
        walls = {}
        for name in ("seed", "imet (jpeg cache)"):
            walls[name] = with_workers(pipelines[name](), args.workers)
            print(f"{args.workers} workers {name:42s} {walls[name]:7.0f} img/s (wall clock, "
                  f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        print(f"{args.workers} workers imet (jpeg cache) / seed: "
              f"{walls['imet (jpeg cache)'] / walls['seed']:.2f}x")
        print(f"loader_speedup_per_core_vs_seed: {best['imet (jpeg cache)'] / best['seed']:.2f}x")


if __name__ == "__main__":
    main()
