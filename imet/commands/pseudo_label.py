"""`python -m imet pseudo-label`: the test images an ensemble is confident about, predicted
with TTA, written as an extra training set (`imet train --extra DIR`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from imet.commands.predict import (add_inference_arguments, add_test_ensemble_arguments,
                                   check_weights, inference_options)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Predict the test images of a competition folder with one or more runs (ensemble and "
        "TTA as in `imet predict`), keep the images the ensemble is confident about and write "
        "them as an extra training set in the iMet layout: OUT/train/<id>.png, OUT/labels.csv "
        "and OUT/train.csv (hard labels: the classes of probability >= --min-prob) or, with "
        "--soft, OUT/soft_targets.npz (the ensemble's probabilities). Runs of another label "
        "space are refused. Train on it with `imet train --extra OUT`.")
    add_test_ensemble_arguments(parser, "(.npz from `imet predict`)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="the extra set's folder (new or empty)")
    parser.add_argument("--min-prob", type=float, default=0.9, metavar="P",
                        help="confidence in (0.5, 1] an image needs to be kept, and a class to "
                        "be one of its hard labels (default: %(default)s)")
    parser.add_argument("--rule", default="top", choices=("top", "all"),
                        help="top: keep an image whose highest probability is >= P; all: and "
                        "no class is uncertain (every probability >= P or <= 1 - P) "
                        "(default: %(default)s)")
    parser.add_argument("--soft", action="store_true",
                        help="write the kept images' probabilities as soft targets instead of "
                        "hard labels")
    add_inference_arguments(parser)


def run(args) -> int:
    from imet.predict.pseudo import pseudo_label

    check_weights(args)
    summary = pseudo_label(args.data, args.runs, args.out, min_prob=args.min_prob,
                           rule=args.rule, soft=args.soft, method=args.ensemble,
                           weights=args.weights, options=inference_options(args))
    print(f"wrote {summary['out']} ({summary['kept']} of {summary['images']} test images)")
    return 0
