"""The commands of trained runs: `imet predict` (runs -> submission.csv), `imet validate`
(out-of-fold predictions, thresholds, an honest score), `imet pseudo-label` (the test images an
ensemble is confident about, as a set for `imet train --extra DIR`) and `imet score` (a
submission-format file's F2). predict, validate and pseudo-label share their inference flags."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imet.config import check_amp_dtype, parse_duration
from imet.errors import UserError
from imet.metrics.f2 import METRIC_NAMES, METRICS, describe_scores, f2_score, micro_f1_score
from imet.metrics.thresholds import MODES
from imet.predict import DROP_ORDER

def add_label_limits(parser: argparse.ArgumentParser, defaults: str) -> None:
    parser.add_argument("--min-labels", type=int, default=None, metavar="K",
                        help="at least K labels per image: the K most probable fill in "
                        f"(default: {defaults.split('|')[0]})")
    parser.add_argument("--max-labels", type=int, default=None, metavar="K",
                        help="at most K labels per image, the most probable kept; 0 = no limit "
                        f"(default: {defaults.split('|')[1]})")


def add_test_ensemble_arguments(parser: argparse.ArgumentParser, saved_probs: str) -> None:
    """--data, --runs and --member-weights of `predict` and `pseudo-label`; `saved_probs` ends
    --runs'. (Not --weights: that is `imet train`'s ImageNet weights file.)"""
    parser.add_argument("--data", required=True, type=Path, metavar="DIR",
                        help="competition folder: labels.csv, sample_submission.csv, test/")
    parser.add_argument("--runs", required=True, nargs="+", type=Path, metavar="RUN",
                        help="run folders (holding model.pt), model files, or saved test "
                        f"probabilities {saved_probs}")
    parser.add_argument("--member-weights", type=float, nargs="+", default=None, metavar="W",
                        help="the ensemble's weights: one non-negative number per --runs entry, "
                        "in their order (default: equal)")


def check_weights(args) -> None:
    """One --member-weights value per run, or none."""
    if args.member_weights is not None and len(args.member_weights) != len(args.runs):
        raise UserError(f"--member-weights: {len(args.member_weights)} weights for "
                        f"{len(args.runs)} runs; give one per run")


def _tta(text: str) -> tuple[str, ...]:
    """`--tta`'s transforms, refused by the parser when it names an unknown one (a kernel's or
    a render's check then stops before any work)."""
    from imet.predict.infer import parse_tta
    try:
        return parse_tta(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--tta: ")) from None


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `predict` and `validate`."""
    # A tuple default: argparse runs `type` on a string default, and _tta imports torch.
    parser.add_argument("--tta", default=("none", "hflip"), metavar="LIST", type=_tta,
                        help="test-time augmentations, comma-separated, averaged on the "
                        "probability scale: none, hflip (default: none,hflip). Views are made "
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
                        help="seconds between progress lines (img/s, ETA) (default: %(default)s)")


def inference_options(args):
    from imet.predict.infer import parse_tta
    from imet.predict.pipeline import InferenceOptions
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size: {args.batch_size} is not a positive number of images")
    if args.amp_dtype is not None:
        check_amp_dtype(args.amp_dtype)
    limit, flag = next(((getattr(args, name), "--" + name.replace("_", "-"))
                        for name in ("time_budget", "time_limit") if getattr(args, name, None)),
                       (None, ""))
    return InferenceOptions(tta=parse_tta(args.tta), device=args.device, amp_dtype=args.amp_dtype,
                            batch_size=args.batch_size, num_workers=args.num_workers,
                            image_size=args.image_size, log_every_s=args.log_every,
                            time_limit_s=parse_duration(limit, flag) if limit else None)


def append_registry(folder: Path, record: dict, sources=()) -> None:
    """One line in the run registry of `folder` (the experiment log), after merging
    the registries of the runs used (on Kaggle: attached inputs carrying their history)."""
    from imet.observe.registry import append_record
    roots = [Path(s) if Path(s).is_dir() else Path(s).parent for s in sources]
    append_record(folder, record, input_roots=[r for r in roots if r.is_dir()])


def configure_predict(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--time-budget", default=None, metavar="DURATION",
                        help="fit the work into this (9h, 30m, 5400 …): each run is timed on its "
                        "first batches, then runs x TTA views are planned to fit and the plan "
                        "is said in one line before the long work; what goes first: "
                        + "; ".join(DROP_ORDER) + ". The first run with the first view always "
                        "runs, and the submission is rewritten after each run, so a valid one "
                        "is always there; what was left out is logged (default: no budget, "
                        "every run and view)")
    add_inference_arguments(parser)
    add_label_limits(parser, "from thresholds.json, else 1|from thresholds.json, else no limit")


def run_predict(args) -> int:
    from imet.predict.pipeline import predict_test
    if args.threshold is not None and args.thresholds is not None:
        raise UserError("--threshold and --thresholds: pass one of them, not both")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold: {args.threshold} is outside [0, 1]")
    check_weights(args)
    budget = parse_duration(args.time_budget) if args.time_budget is not None else None
    if budget is not None and budget <= 0:
        raise UserError("--time-budget: give a duration above 0 (e.g. 9h, 30m)")
    summary = predict_test(args.data, args.runs, args.out, method=args.ensemble,
                           weights=args.member_weights, options=inference_options(args),
                           thresholds_file=args.thresholds, threshold=args.threshold,
                           min_labels=args.min_labels, max_labels=args.max_labels,
                           probs_dir=args.probs_dir, time_budget_s=budget)
    # The thresholds' folder (the validation kernel's output) carries its registry too.
    sources = [*args.runs, *([args.thresholds] if args.thresholds else [])]
    append_registry(Path(args.out).resolve().parent, summary, sources)
    print(f"wrote {summary['submission']} ({summary['images']} images, "
          f"{summary['labels_per_image']:.2f} labels per image)")
    return 0


def configure_validate(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Predict each run's held-out fold (with TTA), choose the decoding (one global threshold, "
        "one per group (each attribute name's prefix: culture, tag in 2019; five groups in 2020 "
        "and 2021), one per class falling back to its group below a minimum support, or "
        "per-image context thresholds), and score it honestly: thresholds chosen on "
        "half the out-of-fold images and scored on the other half, both ways. The mode with the "
        "best cross-fitted score of --metric wins; F2 and micro-F1 are both reported. Runs of the same fold are ensembled; runs of different folds "
        "are stacked, so the thresholds of a k-fold ensemble are chosen on all its out-of-fold "
        "images.")
    parser.epilog = (
        "Writes to --out: thresholds.json (read by `imet predict`), oof_probs.npz (and "
        "oof/<run>.npz per run), validation.md (table) and plots/score_vs_threshold.png, "
        "plots/class_f2_vs_support.png; appends a record to the run registry there.")
    parser.add_argument("--data", required=True, type=Path, metavar="DIR",
                        help="competition folder (found by content, as `imet check-data` reports it)")
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
                        help="decoding modes to compare by cross-fitted --metric: global, group, "
                        "class, context (per-image thresholds max(t, r x the image's top "
                        "probability), t per group) (default: %(default)s)")
    add_metric_argument(parser, "what the thresholds are tuned for and the modes compared by")
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


def run_validate(args) -> int:
    from imet.predict.validate import validate_runs
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    summary = validate_runs(args.data, args.folds, args.runs, args.out,
                            options=inference_options(args), method=args.ensemble, modes=modes,
                            min_support=args.min_support,
                            min_labels=1 if args.min_labels is None else args.min_labels,
                            max_labels=args.max_labels or None, seed=args.seed,
                            metric=args.metric)
    append_registry(Path(summary["out"]), summary, args.runs)
    name = METRIC_NAMES[summary["metric"]]
    other = "micro-F1 {micro_f1:.4f}" if summary["metric"] == "f2" else "F2 {f2:.4f}"
    print(f"{name} {summary['score']:.4f} cross-fitted ({summary['mode']} thresholds tuned for "
          f"{name}; {summary['score_in_sample']:.4f} in-sample; " + other.format(**summary)
          + f" cross-fitted) on {summary['images']} out-of-fold images; "
          f"wrote {summary['thresholds']}")
    return 0


def configure_pseudo_label(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--soft", action="store_true", help="write the kept images' probabilities "
                        "as soft targets instead of hard labels")
    add_inference_arguments(parser)


def run_pseudo_label(args) -> int:
    from imet.predict.pseudo import pseudo_label
    check_weights(args)
    summary = pseudo_label(args.data, args.runs, args.out, min_prob=args.min_prob,
                           rule=args.rule, soft=args.soft, method=args.ensemble,
                           weights=args.member_weights, options=inference_options(args))
    print(f"wrote {summary['out']} ({summary['kept']} of {summary['images']} test images)")
    return 0


def add_metric_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--metric", default=None, choices=METRICS,
                        help=f"{what}: f2 (the sample-averaged F2 of iMet 2019 and 2021) or "
                        "micro-f1 (iMet 2020's Evaluation section; its Data section says F2) "
                        "(default: the competition's, told by the labels found: 2020's label "
                        "space with 2019's file names is 2020)")


@dataclass(frozen=True)
class Score:
    f2: float
    micro_f1: float
    images: int
    mean_predicted: float
    mean_true: float
    metric: str = "f2"

    def describe(self) -> str:
        """'F2 0.612345, micro-F1 0.587123', the chosen metric first."""
        return describe_scores(self.f2, self.micro_f1, self.metric, digits=6)


def score_files(truth_csv, pred_csv, labels_csv=None, metric=None) -> Score:
    """F2 and micro-F1 of `pred_csv` against `truth_csv` (both `id,attribute_ids`), rows matched by id; DataError
    when the ids differ (missing, extra, duplicated) or a row is malformed. With `labels_csv`, ids
    outside labels.csv are refused too; without, the classes are every id seen in either file
    (an unknown id counts as a wrong label). `metric` None: the competition's as the labels
    file tells (F2 without one)."""
    from imet.metrics.submission_io import (align_to_ids, check_known, read_submission,
                                            refuse_duplicate_ids, rows_to_matrix)
    truth_ids, truth_rows = read_submission(truth_csv)
    refuse_duplicate_ids(truth_csv, truth_ids)
    pred_ids, pred_rows = read_submission(pred_csv)
    pred_rows = align_to_ids(pred_csv, pred_ids, pred_rows, truth_ids,
                             expected_from=f"the truth {Path(truth_csv).name}")
    if labels_csv is not None:
        from imet.data.labels import CompetitionLayout, competition_metric, read_labels
        space = read_labels(Path(labels_csv))
        attribute_ids = list(space.attribute_ids)
        metric = metric or competition_metric(
            CompetitionLayout(Path(labels_csv).parent, labels_csv=labels_csv), space)
        for csv, rows in ((truth_csv, truth_rows), (pred_csv, pred_rows)):
            check_known(csv, truth_ids, rows, attribute_ids, Path(labels_csv).name)
    else:
        attribute_ids = sorted({a for rows in (truth_rows, pred_rows) for row in rows for a in row})
    truth = rows_to_matrix(truth_rows, attribute_ids)
    pred = rows_to_matrix(pred_rows, attribute_ids)
    return Score(f2=f2_score(truth, pred), micro_f1=micro_f1_score(truth, pred),
                 images=len(truth_ids), mean_predicted=float(np.count_nonzero(pred) / len(truth_ids)),
                 mean_true=float(np.count_nonzero(truth) / len(truth_ids)), metric=metric or "f2")


def configure_score(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Prints one line: 'F2 <score>, micro-F1 <score> on <N> images (...)', "
                     "the --metric first. Exits 2 with a one-line error when the files do not "
                     "cover the same ids exactly once or a row is malformed. An image with no "
                     "true and no predicted label scores 0 F2, as in scikit-learn's "
                     "fbeta_score(average='samples'); micro-F1 is f1_score(average='micro').")
    parser.add_argument("--truth", required=True, type=Path, metavar="CSV",
                        help="the true labels, 'id,attribute_ids' (e.g. train.csv or the "
                        "test_labels.csv of mini-iMet); extra columns are ignored")
    parser.add_argument("--pred", required=True, type=Path, metavar="CSV",
                        help="the submission to score, 'id,attribute_ids' with the same ids in "
                        "any order")
    parser.add_argument("--labels", type=Path, metavar="CSV", default=None,
                        help="labels.csv: also refuse attribute ids that are not in it "
                        "(default: accept any integer id)")
    add_metric_argument(parser, "the score printed first")


def run_score(args) -> int:
    score = score_files(args.truth, args.pred, args.labels, args.metric)
    print(f"{score.describe()} on {score.images} images (labels per image: "
          f"{score.mean_predicted:.2f} predicted, {score.mean_true:.2f} true)")
    return 0
