"""`imet folds`: multilabel-stratified cross-validation folds -> folds.csv (id,fold)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

SHOW_RARE = 20


def configure(parser: argparse.ArgumentParser) -> None:
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


def run(args) -> int:
    import numpy as np

    from imet.data.folds import check_n_folds, make_folds, rare_labels, write_folds
    from imet.data.labels import read_labels, read_train
    from imet.data.layout import CompetitionLayout

    check_n_folds(args.n_folds)
    layout = CompetitionLayout(args.data).require(test=False)
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
          f"{int(present.sum())} present in train.csv ({labels.num_classes} in labels.csv)")
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
