"""Ensembling at iMet test scale (38,801 x 1,103, three members): mean, rank (imet's blocked
average ranks) against the same rank ensemble built on scipy.stats.rankdata, plus saving and
loading a probabilities file and writing submission.csv. Synthetic float16-rounded
probabilities (as saved files hold them: many ties).

    python benchmarks/bench_ensemble.py [--rows 38801] [--members 3]

Last line: `rank_ensemble_speedup_vs_scipy: <ratio>x` (same outputs, checked).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from imet.predict import pipeline as ens
from imet.probfile import Probabilities, load_probabilities, save_probabilities
from imet.predict.pipeline import make_submission, write_submission


def scipy_rank_ensemble(arrays, weights):
    mean = ens.mean_ensemble(arrays, weights)
    n = mean.shape[0]
    position = sum(w * (rankdata(a, axis=0) - 1.0) for w, a in zip(weights, arrays))
    ladder = np.sort(mean, axis=0)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    frac = (position - low).astype(np.float32)
    below = np.take_along_axis(ladder, low, axis=0)
    return below + frac * (np.take_along_axis(ladder, high, axis=0) - below)


def clock(fn):
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=38_801)
    parser.add_argument("--classes", type=int, default=1_103)
    parser.add_argument("--members", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    # Skewed like sigmoid outputs of 1,103 rare classes, rounded to float16 like saved files.
    arrays = [(rng.beta(0.3, 8.0, (args.rows, args.classes))).astype(np.float16)
              .astype(np.float32) for _ in range(args.members)]
    weights = np.full(args.members, 1.0 / args.members, dtype=np.float32)
    mean, t_mean = clock(lambda: ens.mean_ensemble(arrays, weights))
    rank, t_rank = clock(lambda: ens.rank_ensemble(arrays, weights))
    reference, t_scipy = clock(lambda: scipy_rank_ensemble(arrays, weights))
    np.testing.assert_allclose(rank, reference, rtol=1e-5, atol=1e-6)
    ids = [f"{k:016x}" for k in range(args.rows)]
    probs = Probabilities(ids, mean, tuple(range(args.classes)), {"labels_fingerprint": "x"})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.npz"
        _, t_save = clock(lambda: save_probabilities(path, probs))
        size_mb = path.stat().st_size / 2**20
        _, t_load = clock(lambda: load_probabilities(path))
        rows, t_decode = clock(lambda: make_submission(ids[::-1], probs, 0.1, 1, 10))
        _, t_write = clock(lambda: write_submission(Path(tmp) / "s.csv", *rows))
    print(f"{args.rows} x {args.classes}, {args.members} members (CPU seconds): mean "
          f"{t_mean:.2f}, rank {t_rank:.2f}, rank via scipy.rankdata {t_scipy:.2f}; probs file "
          f"{size_mb:.0f} MiB save {t_save:.2f} load {t_load:.2f}; submission rows (reordered, "
          f"1..10 labels) {t_decode:.2f}, write {t_write:.2f}")
    print(f"rank_ensemble_speedup_vs_scipy: {t_scipy / t_rank:.2f}x")


if __name__ == "__main__":
    main()
