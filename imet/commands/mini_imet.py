"""`imet mini-imet`: write the embedded mini-iMet data set (competition layout)."""
from __future__ import annotations

import argparse
import time

from imet.data.mini_imet import DEFAULTS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write mini-iMet: real handwritten-digit scans (scikit-learn's bundled 1,797) composed "
        "into canvases of varying aspect ratio, in the exact iMet Collection 2019 layout "
        "(labels.csv, train.csv, sample_submission.csv, train/*.png, test/*.png) plus "
        "test_labels.csv, the test truth for local scoring. Labels: culture::<style> (one "
        "global style per image) and tag::<digit> (each digit present). Deterministic per "
        "seed; an existing identical data set is reused.")
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
    parser.add_argument("--force", action="store_true",
                        help="replace --out if it already holds other files or another mini-iMet")


def run(args) -> int:
    from imet.data.mini_imet import generate

    start = time.monotonic()
    info = generate(args.out, n_train=args.n_train, n_test=args.n_test, size=args.size,
                    seed=args.seed, force=args.force)
    verb = "already present, reused" if info["reused"] else \
        f"wrote in {time.monotonic() - start:.1f}s"
    groups = ", ".join(f"{n} {g}" for g, n in sorted(info["groups"].items()))
    print(f"mini-iMet {verb}: {info['out']}\n"
          f"  {info['n_train']} train + {info['n_test']} test images, short side {info['size']} "
          f"px, seed {info['seed']}\n"
          f"  {info['num_classes']} labels ({groups}), "
          f"{info['mean_labels_per_image']:.2f} labels per image on average\n"
          f"  files: labels.csv train.csv sample_submission.csv test_labels.csv train/ test/")
    return 0
