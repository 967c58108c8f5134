"""`imet mini-imet` (the embedded data set), `imet check-data` (every problem of a competition
folder), `imet folds` (multilabel-stratified folds.csv) and `imet cache` (pre-resized images).
The parsers' defaults come from the data modules, imported here anyway, so nothing is lazy."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from imet.data.folds import (IMAGE_MODES, check_data, check_n_folds, make_folds, rare_labels,
                             write_folds)
from imet.data.images import MIN_SIDE, SPLIT_DIRS, build_cache
from imet.data.labels import (competition_of, find_layout, labels_problems, read_labels,
                              read_train)
from imet.data.mini_imet import DEFAULTS, LAYOUTS, generate
from imet.errors import UserError


def configure_mini_imet(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write mini-iMet: real handwritten-digit scans (scikit-learn's bundled 1,797) composed "
        "into canvases of varying aspect ratio, in the exact layout of an iMet competition "
        "(--layout; 2019: labels.csv, train.csv, sample_submission.csv, train/*.png, "
        "test/*.png) plus test_labels.csv, the test truth for local scoring. Labels (2019): "
        "culture::<style> (one global style per image) and tag::<digit> (each digit present). "
        "Deterministic per seed; an existing identical data set is reused.")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder to create (written elsewhere first, then renamed into place)")
    parser.add_argument("--n-train", type=int, default=DEFAULTS["n_train"], metavar="N",
                        help="number of training images (default: %(default)s)")
    parser.add_argument("--n-test", type=int, default=DEFAULTS["n_test"], metavar="M",
                        help="number of test images (default: %(default)s)")
    parser.add_argument("--size", type=int, default=DEFAULTS["size"], metavar="PX",
                        help="short side of every image in pixels; the long side is 1 to 2.5 "
                        "times it (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], metavar="S",
                        help="random seed; the same seed writes the same bytes (default: "
                        "%(default)s)")
    parser.add_argument("--layout", choices=LAYOUTS, default=DEFAULTS["layout"],
                        help="which competition's files, folders and groups: 2019 (two groups, "
                        "culture and tag); 2020 (the same files, five groups: country, culture, "
                        "dimension, medium, tags); 2021 (2020's groups in label_map.csv, "
                        "train-from-kaggle.csv, train-1/train-1/, test/test/) (default: "
                        "%(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="replace --out if it already holds other files or another mini-iMet")


def run_mini_imet(args) -> int:
    start = time.monotonic()
    info = generate(args.out, n_train=args.n_train, n_test=args.n_test, size=args.size,
                    seed=args.seed, force=args.force, layout=args.layout)
    verb = "already present, reused" if info["reused"] else \
        f"wrote in {time.monotonic() - start:.1f}s"
    groups = ", ".join(f"{n} {g}" for g, n in sorted(info["groups"].items()))
    print(f"mini-iMet {verb}: {info['out']}\n  {info['n_train']} train + {info['n_test']} test "
          f"images, short side {info['size']} px, seed {info['seed']}\n  {info['num_classes']} "
          f"labels ({groups}), {info['mean_labels_per_image']:.2f} labels per image on average\n"
          f"  {info['layout']} layout: {info['files']}")
    return 0


def configure_check_data(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Scan a competition folder up front, say which file and folder it found for each role, "
        "and list ALL problems, one line each (file, line, field, what to do). Each role is "
        "found by content: the labels table by its columns attribute_id,attribute_name; the "
        "training table, the sample submission (named *submission*) and the test truth (named "
        "test*, mini-iMet's test_labels.csv) by their columns id,attribute_ids; the train and "
        "test image folders as the folders, down to three levels below DIR, holding their ids' "
        "{id}.png (2019: train/ and test/; 2021: train-1/train-1/ and test/test/). Every image "
        "is checked, and folds.csv when present. Exit code 0 when clean, 1 when any problem was "
        "found.")
    parser.add_argument("--data", required=True, metavar="DIR", help="the competition folder")
    parser.add_argument("--images", choices=IMAGE_MODES, default="decode",
                        help="decode: open and fully decode every image (finds truncated files); "
                        "exists: only check that each image file is there; skip: CSVs only "
                        "(default: %(default)s)")
    parser.add_argument("--folds", metavar="CSV", default=None, help="folds file to check against "
                        "train.csv (default: DIR/folds.csv when it exists)")
    parser.add_argument("--min-side", type=int, default=MIN_SIDE, metavar="PX",
                        help="an image whose shorter side is below PX pixels is a problem "
                        "(training refuses it too) (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="threads decoding images (default: min(8, CPU count))")


def run_check_data(args) -> int:
    for flag, value in (("--workers", args.workers), ("--min-side", args.min_side)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1 (got {value})")
    start = time.monotonic()
    folds = args.folds
    if folds is None and (Path(args.data) / "folds.csv").is_file():
        folds = Path(args.data) / "folds.csv"
    report = check_data(args.data, images=args.images, folds=folds, workers=args.workers,
                        min_side=args.min_side)
    if report.layout is not None:
        print(f"layout found in {args.data}: {report.layout.describe()}")
        labels = labels_problems(report.layout.labels_csv)[0]
        if labels is not None:
            slug, why = competition_of(report.layout, labels)
            print(f"competition: {slug or 'not recognised'} ({why})")
    for problem in report.problems:
        print(problem)
    for warning in report.warnings:
        print(f"imet check-data: warning: {warning}", file=sys.stderr)
    if report.problems:
        print(f"imet check-data: error: {len(report.problems)} problem"
              f"{'s' if len(report.problems) != 1 else ''} in {args.data}; fix them and run "
              "check-data again", file=sys.stderr)
        return 1
    c = report.counts
    groups = ", ".join(f"{n} {g or 'ungrouped'}" for g, n in sorted(report.groups.items()))
    images = {"decode": f"{c.get('images_decoded', 0)} images decoded",
              "exists": f"{c.get('images_found', 0)} images present (not decoded)",
              "skip": "images not checked"}[args.images]
    print(f"{args.data} is clean: {c.get('labels', 0)} labels ({groups}), "
          f"{c.get('train_rows', 0)} train rows, {c.get('test_rows', 0)} test rows, {images}"
          f"{f', folds.csv matches {report.layout.train_csv.name}' if folds else ''} "
          f"({time.monotonic() - start:.1f}s)")
    return 0


SHOW_RARE = 20  # rare labels named in `imet folds`' report


def configure_folds(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Split train.csv into K folds with iterative stratification (iterative-stratification's "
        "MultilabelStratifiedKFold), so every label is spread over the folds as evenly as its "
        "count allows. Deterministic per seed. Reports labels too rare to appear in every fold.")
    parser.add_argument("--data", required=True, metavar="DIR", help="the competition folder")
    parser.add_argument("--n-folds", type=int, default=5, metavar="K",
                        help="number of folds (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="shuffle seed (default: %(default)s)")
    parser.add_argument("--out", default=None, metavar="CSV",
                        help="where to write id,fold (default: DIR/folds.csv); written atomically")


def run_folds(args) -> int:
    check_n_folds(args.n_folds)
    layout = find_layout(args.data, test=False)
    labels = read_labels(layout.labels_csv)
    ids, targets = read_train(layout.train_csv, labels)
    # iterstrat reports no progress and takes ~2 CPU minutes at iMet scale: say so up front.
    print(f"stratifying {len(ids)} images x {labels.num_classes} labels into {args.n_folds} "
          "folds...", flush=True)
    start = time.monotonic()
    folds = make_folds(targets, args.n_folds, args.seed)
    took = time.monotonic() - start
    out = Path(args.out) if args.out else layout.folds_csv
    write_folds(out, ids, folds)
    sizes = np.bincount(folds, minlength=args.n_folds)
    print(f"wrote {out}: {args.n_folds} folds over {len(ids)} images (sizes "
          f"{'/'.join(map(str, sizes))}), seed {args.seed}, stratified in {took:.1f}s")
    # Per fold: how many of the labels present in train also appear in its validation part.
    present = targets.any(axis=0)
    covered = [int((targets[folds == k].any(axis=0) & present).sum()) for k in range(args.n_folds)]
    print(f"  labels in each validation fold: {'/'.join(map(str, covered))} of "
          f"{int(present.sum())} present in {layout.train_csv.name} ({labels.num_classes} in "
          f"{layout.labels_csv.name})")
    rare, support = rare_labels(targets, args.n_folds)
    if len(rare):
        shown = ", ".join(f"{labels.names[i]} ({s})" for i, s in
                          zip(rare[:SHOW_RARE], support[:SHOW_RARE]))
        more = f", and {len(rare) - SHOW_RARE} more" if len(rare) > SHOW_RARE else ""
        what = "1 label has" if len(rare) == 1 else f"{len(rare)} labels have"
        print(f"  {what} fewer than {args.n_folds} images and cannot be in every fold: "
              f"{shown}{more}")
    else:
        print(f"  every label present has at least {args.n_folds} images")
    return 0


def configure_cache(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Decode every image of the train and test image folders (found by content, as "
        "check-data reports them: train/ and test/ in 2019) once, resize its short side to "
        "--size (as the training and eval pipelines' first step does) and store it in --out as "
        "JPEG or raw uint8, with a manifest keyed by each source's size and mtime. `imet train` reads a cache "
        "of its --image-size instead of the PNGs when it finds one (in --data, beside the run's "
        "--out folder, under an --input-root, or $IMET_CACHE_DIR). Running again only (re)builds "
        "missing or changed images, so an interrupted build resumes.")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="the competition folder")
    parser.add_argument("--size", required=True, type=int, metavar="S",
                        help="short side in pixels: the --image-size you train at")
    parser.add_argument("--out", required=True, metavar="DIR", help="the cache folder (created; on "
                        "Kaggle under /kaggle/temp, which no session carries forward: the trainer "
                        "kernel builds it there itself when it pays)")
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


def run_cache(args) -> int:
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be at least 1")
    splits = SPLIT_DIRS if args.split == "all" else (args.split,)
    layout = find_layout(args.data, test="test" in splits) if Path(args.data).is_dir() else None
    folders = {s: layout.split_dir(s) for s in splits} if layout else None
    result = build_cache(args.data, args.out, args.size, args.format, args.quality,
                         args.workers, splits, progress=not args.no_progress, folders=folders)
    cached = result.total - len(result.errors)
    per_image = result.bytes / max(cached, 1)
    print(f"{result.cache_dir}: {cached} of {result.total} images cached at short side "
          f"{args.size} ({args.format}): {result.built} built, {result.reused} up to date, "
          f"{result.removed} dropped; {result.bytes / 2**20:.1f} MiB "
          f"({per_image / 1024:.1f} KiB/image) in {result.seconds:.1f}s")
    if result.errors:
        raise UserError(f"{len(result.errors)} images could not be cached (they are read "
                        f"from the source instead): {'; '.join(result.errors[:3])}")
    return 0
