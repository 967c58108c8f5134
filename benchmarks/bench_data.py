"""Reading train.csv at iMet scale: the vectorized reader (`read_train`: validates every id and
attribute id, builds the multi-hot matrix) against a plain row-by-row `csv` loop doing the same
checks, side by side on the same synthetic 109,237-row file with 1,103 labels.

    python benchmarks/bench_data.py               # full scale
    python benchmarks/bench_data.py --folds       # also time make_folds (5 folds)
    python benchmarks/bench_data.py --layout 2020 --folds   # at 2020's 142,119 x 3,474

The last line is the figure: `read_train_speedup_vs_csv_loop: <ratio>x`.
"""
from __future__ import annotations

import argparse
import csv
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from imet.data.labels import LabelSpace, read_train

IMET_TRAIN, IMET_CLASSES, IMET_CULTURE = 109_237, 1_103, 398
SCALE = {"2019": (IMET_TRAIN, IMET_CLASSES), "2020": (142_119, 3_474)}  # 2021: as 2020


def synthetic_csv(folder: Path, n: int, c: int, seed: int = 0) -> tuple[Path, LabelSpace]:
    """iMet-like train.csv: 16-hex ids, 1-8 labels per row, long-tailed label frequencies."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, c + 1) ** 1.1
    counts = rng.integers(1, 9, n)
    cols = rng.choice(c, size=int(counts.sum()), p=p / p.sum())
    bounds = np.concatenate([[0], np.cumsum(counts)])
    path = folder / "train.csv"
    with open(path, "w") as f:
        f.write("id,attribute_ids\n")
        for i in range(n):
            ids = " ".join(map(str, sorted(set(cols[bounds[i]:bounds[i + 1]].tolist()))))
            f.write(f"{i:016x},{ids}\n")
    names = [f"culture::c{i}" for i in range(IMET_CULTURE)] + \
        [f"tag::t{i}" for i in range(c - IMET_CULTURE)]
    return path, LabelSpace(tuple(range(c)), tuple(names))


def csv_loop(path: Path, labels: LabelSpace):
    """The obvious hand-written reader, with the same checks (ids, duplicates, integers)."""
    ids, seen, rows = [], {}, []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        for line, row in enumerate(reader, start=2):
            if not row["id"] or row["id"] in seen:
                raise ValueError(f"line {line}: bad id")
            seen[row["id"]] = line
            ids.append(row["id"])
            rows.append([labels.index_of(int(a)) for a in row["attribute_ids"].split()])
    targets = np.zeros((len(rows), labels.num_classes), np.uint8)
    for i, cols in enumerate(rows):
        targets[i, cols] = 1
    return ids, targets


def best_of(fn, repeats: int) -> float:
    """Best CPU time: the machine is shared, wall time would measure the neighbours."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=SCALE, default="2019",
                        help="whose scale: 2019 (109,237 x 1,103) or 2020 (142,119 x 3,474)")
    parser.add_argument("--n", type=int, default=None, help="rows (default: the layout's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folds", action="store_true", help="also time make_folds (5 folds)")
    parser.add_argument("--iterstrat", type=int, default=0, metavar="ROWS",
                        help="with --folds: also time iterstrat's MultilabelStratifiedKFold and "
                        "make_folds on the first ROWS rows (iterstrat takes O(N C^2): keep it "
                        "small), and check they make the same folds")
    args = parser.parse_args()
    args.n, classes = args.n or SCALE[args.layout][0], SCALE[args.layout][1]
    with tempfile.TemporaryDirectory() as tmp:
        path, labels = synthetic_csv(Path(tmp), args.n, classes)
        ids, targets = read_train(path, labels)
        ref_ids, ref_targets = csv_loop(path, labels)
        assert ids == ref_ids and np.array_equal(targets, ref_targets)
        fast = best_of(lambda: read_train(path, labels), args.repeats)
        slow = best_of(lambda: csv_loop(path, labels), args.repeats)
        print(f"{args.n} rows x {classes} labels ({targets.sum(1).mean():.2f} per row): "
              f"read_train {fast:.2f}s CPU, csv loop {slow:.2f}s CPU")
        if args.folds:
            from imet.data.folds import make_folds

            start, wall = time.process_time(), time.perf_counter()
            folds = make_folds(targets, 5, seed=0)
            print(f"make_folds (5 folds, sizes {'/'.join(map(str, np.bincount(folds)))}): "
                  f"{time.process_time() - start:.1f}s CPU, {time.perf_counter() - wall:.1f}s "
                  f"wall; process peak RSS "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
            if args.iterstrat:
                from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

                part = targets[:args.iterstrat]
                start = time.process_time()
                ours = make_folds(part, 5, seed=0)
                ours_s, start = time.process_time() - start, time.process_time()
                theirs = np.full(len(part), -1)
                splitter = MultilabelStratifiedKFold(5, shuffle=True, random_state=0)
                for fold, (_, valid) in enumerate(splitter.split(np.zeros((len(part), 0)), part)):
                    theirs[valid] = fold
                print(f"first {len(part)} rows: make_folds {ours_s:.2f}s CPU, iterstrat "
                      f"{time.process_time() - start:.2f}s CPU, same folds: "
                      f"{np.array_equal(ours, theirs)}")
    print(f"read_train_speedup_vs_csv_loop: {slow / fast:.1f}x")


if __name__ == "__main__":
    main()
