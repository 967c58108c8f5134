"""What the decode-once cache costs per Kaggle session against what it saves per epoch.

A cache built under /kaggle/temp is gone at the end of the session, so every session that
uses it builds it again (imet/kaggle/session.py). Measured side by side in one run, on the
same PNGs at iMet's geometry (bench_loader.make_images), per 1,000 images, one core, CPU time:

- build: `build_cache(..., size=320, fmt="jpeg", workers=1)` (decode every PNG, resize to short
  side 320, JPEG q95, manifest);
- loader per epoch: imet's training pipeline at 320 px with the write-ups' preset `seed`
  (`--recipe writeup`; uint8 out) from the PNGs, and from that cache.

Both scale with the number of images and divide by the same number of loader workers, so their
ratio, the epochs a session must run for the build to pay for itself, holds for iMet's 109k
images on Kaggle's cores as it does here, as long as the loader sets the pace (on Kaggle's T4s
it does: benchmarks/README.md).

    python benchmarks/bench_cache_payback.py [--images 64] [--rounds 3]

Last line: `cache_payback_epochs: <build seconds / loader seconds saved per epoch>`.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


from bench_loader import SIZE, make_images, one_thread, per_core, sparse_targets
from imet.data.images import ImageCache
from imet.data.images import build_cache
from imet.data.transforms import ImetDataset
from imet.data.transforms import build_batch_augment, build_train_transform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    one_thread()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = make_images(root / "data", args.images)
        targets = sparse_targets(len(paths))

        def loader(cache=None):
            return ImetDataset(paths, targets, build_train_transform("seed", SIZE), seed=0,
                               normalize=None, cache=cache,
                               batch_augment=build_batch_augment("seed", SIZE))

        builds, png, cached = [], [], []
        for round_ in range(args.rounds):  # interleaved: a shared machine's load hits all three
            out = root / "cache"
            shutil.rmtree(out, ignore_errors=True)
            start = time.process_time()
            build_cache(root / "data", out, SIZE, "jpeg", workers=1, progress=False)
            builds.append((time.process_time() - start) / len(paths) * 1000)
            png.append(1000 / per_core(loader()))
            cached.append(1000 / per_core(loader(ImageCache(out))))
            print(f"round {round_ + 1}: build {builds[-1]:.1f} s, epoch from PNGs {png[-1]:.1f} s,"
                  f" from the cache {cached[-1]:.1f} s (per 1,000 images, CPU)", flush=True)
    build, saved = min(builds), min(png) - min(cached)
    print(f"per 1,000 images on one core (best of {args.rounds}): cache build {build:.1f} s; "
          f"loader per epoch {min(png):.1f} s from PNGs, {min(cached):.1f} s from the cache: "
          f"{saved:.1f} s saved per epoch")
    print(f"cache_payback_epochs: {build / saved:.2f}")


if __name__ == "__main__":
    main()
