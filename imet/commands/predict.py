"""`python -m imet predict`: offline inference of one or more runs -> submission.csv."""
from __future__ import annotations

import argparse
from pathlib import Path

from imet.engine.config import DEFAULT_TIME_BUDGET

DEFAULT_TTA = "none,hflip"


def add_label_limits(parser: argparse.ArgumentParser, defaults: str) -> None:
    parser.add_argument("--min-labels", type=int, default=None, metavar="K",
                        help="at least K labels per image: the K most probable fill in "
                        f"(default: {defaults.split('|')[0]})")
    parser.add_argument("--max-labels", type=int, default=None, metavar="K",
                        help="at most K labels per image, the most probable kept; 0 = no limit "
                        f"(default: {defaults.split('|')[1]})")


def add_test_ensemble_arguments(parser: argparse.ArgumentParser, saved_probs: str) -> None:
    """--data, --runs and --weights: the test images and the ensemble that predicts them
    (`predict`, `pseudo-label`); `saved_probs` ends --runs' help."""
    parser.add_argument("--data", required=True, type=Path, metavar="DIR",
                        help="competition folder: labels.csv, sample_submission.csv, test/")
    parser.add_argument("--runs", required=True, nargs="+", type=Path, metavar="RUN",
                        help="run folders (holding model.pt), model files, or saved test "
                        f"probabilities {saved_probs}")
    parser.add_argument("--weights", type=float, nargs="+", default=None, metavar="W",
                        help="one non-negative weight per run (default: equal)")


def check_weights(args) -> None:
    """One --weights value per run, or none."""
    from imet.errors import UserError
    if args.weights is not None and len(args.weights) != len(args.runs):
        raise UserError(f"--weights: {len(args.weights)} weights for {len(args.runs)} runs; "
                        "give one per run")


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `predict` and `validate`."""
    parser.add_argument("--tta", default=DEFAULT_TTA, metavar="LIST",
                        help="test-time augmentations, comma-separated, averaged on the "
                        "probability scale: none, hflip (default: %(default)s). Views are made "
                        "on the decoded batch, so each image is read once")
    parser.add_argument("--ensemble", default="mean", choices=("mean", "rank"),
                        help="how several runs' probabilities combine: mean, or rank (per-class "
                        "rank average mapped back onto the mean's scale, for members calibrated "
                        "differently); in validate it combines runs of the same fold "
                        "(default: %(default)s)")
    parser.add_argument("--device", default="auto", metavar="DEV",
                        help="auto (CUDA when available), cpu, cuda, cuda:1 … (default: "
                        "%(default)s). On CUDA: channels_last")
    parser.add_argument("--amp-dtype", default=None, metavar="DTYPE",
                        help="autocast dtype: auto (fp16 on a GPU without fast bf16 such as the "
                        "T4, bf16 from Ampere on, off on CPU) | fp16 | bf16 (default: each "
                        "run's own --amp/--amp-dtype of `imet train`, on this device)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="images per batch before TTA (default: the largest power of two "
                        "that fits in GPU memory, with headroom; 32 on CPU)")
    parser.add_argument("--num-workers", type=int, default=None, metavar="N",
                        help="image-decoding worker processes (default: min(4, CPU count))")
    parser.add_argument("--image-size", type=int, default=None, metavar="PX",
                        help="input size (default: each run's training image size)")
    parser.add_argument("--log-every", type=float, default=30.0, metavar="S",
                        help="seconds between progress lines (img/s, ETA) (default: "
                        "%(default)s)")


def inference_options(args):
    from imet.predict.pipeline import InferenceOptions
    from imet.predict.infer import parse_tta
    from imet.engine.config import check_amp_dtype, parse_duration

    if args.batch_size is not None and args.batch_size < 1:
        from imet.errors import UserError
        raise UserError(f"--batch-size: {args.batch_size} is not a positive number of images")
    limit = getattr(args, "time_limit", None)
    if args.amp_dtype is not None:
        check_amp_dtype(args.amp_dtype)
    return InferenceOptions(tta=parse_tta(args.tta), device=args.device,
                            batch_size=args.batch_size, num_workers=args.num_workers,
                            image_size=args.image_size, log_every_s=args.log_every,
                            amp_dtype=args.amp_dtype,
                            time_limit_s=parse_duration(limit, "--time-limit") if limit else None)


def append_registry(folder: Path, record: dict, sources=()) -> None:
    """One line in the run registry of `folder` (the experiment log of issue 10), after merging
    the registries of the runs used (on Kaggle: attached inputs carrying their history)."""
    from imet.registry import append_record
    roots = [Path(s) if Path(s).is_dir() else Path(s).parent for s in sources]
    append_record(folder, record, input_roots=[r for r in roots if r.is_dir()])


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Predict the test images of a competition folder with one or more trained runs and write "
        "submission.csv: rows in sample_submission.csv order, every test image exactly once. "
        "Works offline. Several runs (different folds, archs, image sizes) are ensembled; runs "
        "trained on another label space are refused. Each run's probabilities are saved for "
        "later ensembling.")
    parser.epilog = (
        "Thresholds: --threshold X, else --thresholds FILE, else each run's thresholds.json "
        "(written by `imet validate`, averaged over runs), else the threshold training chose "
        "(with a warning). Exit 2 with a one-line error on bad input.")
    add_test_ensemble_arguments(parser, "(.npz from an earlier predict) to ensemble")
    parser.add_argument("--out", type=Path, default=Path("submission.csv"), metavar="CSV",
                        help="the submission to write, atomically (default: %(default)s)")
    parser.add_argument("--thresholds", type=Path, default=None, metavar="FILE",
                        help="thresholds.json from `imet validate` (e.g. of the whole ensemble)")
    parser.add_argument("--threshold", type=float, default=None, metavar="X",
                        help="one global threshold for every class, instead of a file")
    parser.add_argument("--probs-dir", type=Path, default=None, metavar="DIR",
                        help="where each run's test probabilities (<run>.npz) and the "
                        "ensemble's (ensemble.npz) go (default: test_probs/ next to --out)")
    parser.add_argument("--time-limit", default=DEFAULT_TIME_BUDGET, metavar="DURATION",
                        help="the kernel's time limit (12h, 30m, 5400 …): a warning is logged "
                        "when the ETA exceeds it (default: %(default)s)")
    add_inference_arguments(parser)
    add_label_limits(parser, "from thresholds.json, else 1|from thresholds.json, else no limit")


def run(args) -> int:
    from imet.errors import UserError
    from imet.predict.pipeline import predict_test

    if args.threshold is not None and args.thresholds is not None:
        raise UserError("--threshold and --thresholds: pass one of them, not both")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold: {args.threshold} is outside [0, 1]")
    check_weights(args)
    summary = predict_test(args.data, args.runs, args.out, method=args.ensemble,
                           weights=args.weights, options=inference_options(args),
                           thresholds_file=args.thresholds, threshold=args.threshold,
                           min_labels=args.min_labels, max_labels=args.max_labels,
                           probs_dir=args.probs_dir)
    # The thresholds' folder (the validation kernel's output) carries its registry too.
    sources = [*args.runs, *([args.thresholds] if args.thresholds else [])]
    append_registry(Path(args.out).resolve().parent, summary, sources)
    print(f"wrote {summary['submission']} ({summary['images']} images, "
          f"{summary['labels_per_image']:.2f} labels per image)")
    return 0
