"""`imet check-data`: list every problem in a competition folder before training starts."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from imet.data.check import IMAGE_MODES
from imet.data.images import MIN_SIDE


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Scan a competition folder up front and list ALL problems, one line each (file, line, "
        "field, what to do): labels.csv, train.csv, sample_submission.csv, test_labels.csv when "
        "present, every image, and folds.csv when present. Exit code 0 when clean, 1 when any "
        "problem was found.")
    parser.add_argument("--data", required=True, metavar="DIR", help="the competition folder")
    parser.add_argument("--images", choices=IMAGE_MODES, default="decode",
                        help="decode: open and fully decode every image (finds truncated files); "
                        "exists: only check that each image file is there; skip: CSVs only "
                        "(default: %(default)s)")
    parser.add_argument("--folds", metavar="CSV", default=None,
                        help="folds file to check against train.csv (default: DIR/folds.csv "
                        "when it exists)")
    parser.add_argument("--min-side", type=int, default=MIN_SIDE, metavar="PX",
                        help="an image whose shorter side is below PX pixels is a problem "
                        "(training refuses it too) (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="threads decoding images (default: min(8, CPU count))")


def run(args) -> int:
    from imet.data.check import check_data
    from imet.errors import UserError

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1 (got {args.workers})")
    if args.min_side < 1:
        raise UserError(f"--min-side must be at least 1 (got {args.min_side})")
    start = time.monotonic()
    folds = args.folds
    if folds is None and (Path(args.data) / "folds.csv").is_file():
        folds = Path(args.data) / "folds.csv"
    report = check_data(args.data, images=args.images, folds=folds, workers=args.workers,
                        min_side=args.min_side)
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
          f"{', folds.csv matches train.csv' if folds else ''} "
          f"({time.monotonic() - start:.1f}s)")
    return 0
