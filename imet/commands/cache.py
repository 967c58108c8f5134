"""`imet cache`: decode every competition image once into a pre-resized cache folder."""
from __future__ import annotations

import argparse
import os


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Decode every image of DIR/train and DIR/test once, resize its short side to --size "
        "(as the training and eval pipelines' first step does) and store it in --out as JPEG "
        "or raw uint8, with a manifest keyed by each source's size and mtime. `imet train` reads "
        "a cache of its --image-size instead of the PNGs when it finds one (in --data, beside "
        "the run's --out folder, under an --input-root, or $IMET_CACHE_DIR). "
        "Running again only (re)builds missing or changed images, so an interrupted build "
        "resumes.")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="the competition folder (with train/ and test/)")
    parser.add_argument("--size", required=True, type=int, metavar="S",
                        help="short side in pixels: the --image-size you train at")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="the cache folder (created; on Kaggle under /kaggle/temp, "
                             "which no session carries forward: the trainer kernel builds it "
                             "there itself when it pays)")
    parser.add_argument("--format", default="jpeg", choices=("jpeg", "npy"),
                        help="jpeg: small, lossy, ~1 ms/image to read; npy: exact uint8, "
                             "fastest to read, ~10x the disk (default: %(default)s)")
    parser.add_argument("--quality", type=int, default=95, metavar="Q",
                        help="JPEG quality 1-100 (default: %(default)s; ignored for npy)")
    parser.add_argument("--split", choices=("train", "test", "all"), default="all",
                        help="which image folders to cache (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="decoding processes (default: the CPU count, %(default)s)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (one summary line at the end)")


def run(args) -> int:
    from imet.data.cache import SPLIT_DIRS
    from imet.data.cache_build import build_cache
    from imet.errors import UserError

    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be at least 1")
    splits = SPLIT_DIRS if args.split == "all" else (args.split,)
    result = build_cache(args.data, args.out, args.size, args.format, args.quality,
                         args.workers, splits, progress=not args.no_progress)
    cached = result.total - len(result.errors)
    per_image = result.bytes / max(cached, 1)
    print(f"{result.cache_dir}: {cached} of {result.total} images cached at short side "
          f"{args.size} ({args.format}): {result.built} built, {result.reused} up to date, "
          f"{result.removed} dropped; {result.bytes / 2**20:.1f} MiB "
          f"({per_image / 1024:.1f} KiB/image) in {result.seconds:.1f}s")
    if result.errors:
        shown = "; ".join(result.errors[:3])
        raise UserError(f"{len(result.errors)} images could not be cached (they are read "
                        f"from the source instead): {shown}")
    return 0
