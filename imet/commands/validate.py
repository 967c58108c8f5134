"""`python -m imet validate`: out-of-fold predictions, thresholds, and an honest score."""
from __future__ import annotations

import argparse
from pathlib import Path

from imet.metrics.crossfit import MODES
from imet.commands.predict import (add_inference_arguments, add_label_limits, append_registry,
                                   inference_options)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Predict each run's held-out fold (with TTA), choose the decoding (one global threshold, "
        "one per group culture/tag, one per class falling back to its group below a minimum "
        "support, or per-image context thresholds), and score it honestly: thresholds chosen on half the out-of-fold images and "
        "scored on the other half, both ways. The mode with the best cross-fitted F2 wins. "
        "Runs of the same fold are ensembled; runs of different folds are stacked, so the "
        "thresholds of a k-fold ensemble are chosen on all its out-of-fold images.")
    parser.epilog = (
        "Writes to --out: thresholds.json (read by `imet predict`), oof_probs.npz (and "
        "oof/<run>.npz per run), validation.md (table) and plots/f2_vs_threshold.png, "
        "plots/class_f2_vs_support.png; appends a record to the run registry there.")
    parser.add_argument("--data", required=True, type=Path, metavar="DIR",
                        help="competition folder: labels.csv, train.csv, train/")
    parser.add_argument("--folds", type=Path, default=None, metavar="CSV",
                        help="folds.csv the runs were trained with (default: the one the first "
                        "run recorded, where it exists; else DIR/folds.csv)")
    parser.add_argument("--run", "--runs", dest="runs", required=True, nargs="+", type=Path,
                        metavar="RUN", help="run folders (holding model.pt), model files, or "
                        "saved OOF probabilities (oof/<run>.npz) to re-threshold")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="output folder (default: the run folder when there is one run; "
                        "required otherwise, and when the run folder is read-only)")
    parser.add_argument("--modes", default=",".join(MODES), metavar="LIST",
                        help="decoding modes to compare by cross-fitted F2: global, group, "
                        "class, context (per-image thresholds max(t, r x the image's top "
                        "probability), t per group) (default: %(default)s)")
    parser.add_argument("--min-support", type=int, default=20, metavar="N",
                        help="a class gets its own threshold only with at least N positive "
                        "out-of-fold images, else its group's (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the random halves used for cross-fitting (default: "
                        "%(default)s)")
    parser.add_argument("--time-limit", default=None, metavar="DURATION",
                        help="warn when the ETA of a run's inference exceeds this (9h, 30m …) "
                        "(default: no warning)")
    add_inference_arguments(parser)
    add_label_limits(parser, "1|no limit; both are saved in thresholds.json for predict")


def run(args) -> int:
    from imet.predict.validate import validate_runs

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    max_labels = args.max_labels if args.max_labels else None
    summary = validate_runs(args.data, args.folds, args.runs, args.out,
                            options=inference_options(args), method=args.ensemble, modes=modes,
                            min_support=args.min_support,
                            min_labels=1 if args.min_labels is None else args.min_labels,
                            max_labels=max_labels, seed=args.seed)
    append_registry(Path(summary["out"]), summary, args.runs)
    print(f"F2 {summary['f2']:.4f} cross-fitted ({summary['mode']} thresholds; "
          f"{summary['f2_in_sample']:.4f} in-sample) on {summary['images']} out-of-fold images; "
          f"wrote {summary['thresholds']}")
    return 0
