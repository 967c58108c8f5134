"""Threshold search at iMet scale: the bucketed sweep against a plain grid loop over
`binarize` + `f2_score`, side by side on the same synthetic probabilities and the same grid.

    python benchmarks/bench_metrics.py                 # full scale: 109,237 x 1,103 float32
    python benchmarks/bench_metrics.py --n 20000       # quicker
    python benchmarks/bench_metrics.py --naive-thresholds 0   # naive loop on all 100 thresholds
    python benchmarks/bench_metrics.py --metrics           # F2 and micro-F1 searches side by side
    python benchmarks/bench_metrics.py --layout 2020 --metrics   # the same at 2020's scale
    python benchmarks/bench_metrics.py --layout 2020 --naive-thresholds 4   # 142,119 x 3,474

--layout 2020 (also 2021's label space) takes 2020's scale and five groups (country 100, culture
681, dimension 5, medium 1,920, tags 768) and adds what the validation and inference kernels do
beside the search: the cross-fitted group search, the OOF probabilities file written and read
back, submission.csv made and written for 2020's ~81k test images, and the validation report's
confusion counts of every group (dense g x g: 1,920^2 for medium).

Also times the group, per-class and context searches, cross-fitting and `binarize` on a 38k
test set,
and reports the peak memory the searches allocate (numpy allocations, via tracemalloc) next to
the size of the probability matrix. The last line is the figure:
`global_threshold_search_speedup_vs_naive_grid: <ratio>x`.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from imet.metrics.f2 import binarize, f2_score, metric_score
from imet.metrics.thresholds import cross_fitted, global_curve, search_context, search_thresholds

IMET_TRAIN, IMET_TEST, IMET_CLASSES, IMET_CULTURE = 109_237, 38_801, 1_103, 398
# 2020 (and 2021): images, test images (public + private), and the groups in attribute id order.
SCALE = {"2019": (IMET_TRAIN, IMET_TEST, (("culture", IMET_CULTURE),
                                          ("tag", IMET_CLASSES - IMET_CULTURE))),
         "2020": (142_119, 81_000, (("country", 100), ("culture", 681), ("dimension", 5),
                                    ("medium", 1_920), ("tags", 768)))}


def group_column(c: int, layout: str) -> np.ndarray:
    """Each class's group: the layout's groups in id order, scaled to c classes."""
    sizes = np.array([size for _, size in SCALE[layout][2]], dtype=np.float64)
    ends = np.round(np.cumsum(sizes) * c / sizes.sum()).astype(int)
    return np.array([name for name, _ in SCALE[layout][2]])[
        np.searchsorted(ends, np.arange(c), side="right")]


def synthetic(n: int, c: int, seed: int = 0, chunk: int = 8192):
    """iMet-like labels (long-tailed class frequencies, ~4.4 labels per image) and probabilities
    from a decent but imperfect model (positives score higher, with class-dependent scale)."""
    rng = np.random.default_rng(seed)
    freq = 1.0 / (np.arange(c) + 8.0)
    freq = (freq * 4.4 / freq.sum()).astype(np.float32)
    bias = rng.normal(-6.5, 1.0, c).astype(np.float32)
    y = np.empty((n, c), dtype=bool)
    probs = np.empty((n, c), dtype=np.float32)
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        truth = rng.random((rows, c), dtype=np.float32) < freq
        logits = bias + 6.0 * truth + rng.standard_normal((rows, c), dtype=np.float32) * 1.6
        y[start:start + rows] = truth
        probs[start:start + rows] = 1.0 / (1.0 + np.exp(-logits))
    return y, probs


def timed(fn, *args, **kw):
    """(result, CPU seconds, wall seconds, peak bytes numpy allocated during the call).
    CPU seconds are the figure: numpy runs these single-threaded, and on a shared machine
    wall time mostly measures the neighbours."""
    tracemalloc.start()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, cpu, wall, peak


def files(probs, thresholds, n_test: int, mb: float) -> None:
    """The OOF probabilities file (float16 .npz) written and read back, and submission.csv of
    the first n_test rows made (binarize in sample order, 1..10 labels) and written."""
    from imet.metrics.submission_io import write_submission
    from imet.predict.pipeline import make_submission
    from imet.probfile import Probabilities, load_probabilities, save_probabilities

    ids = [f"{i:016x}" for i in range(len(probs))]
    oof = Probabilities(ids, probs, tuple(range(probs.shape[1])), {"split": "oof"})
    with tempfile.TemporaryDirectory() as tmp:
        path, saved_s, _, saved_peak = timed(save_probabilities, Path(tmp) / "oof.npz", oof)
        _, load_s, _, load_peak = timed(load_probabilities, path)
        print(f"OOF file {len(ids)} x {probs.shape[1]} ({path.stat().st_size * mb:.0f} MiB "
              f"float16 .npz): save {saved_s:.2f} s CPU (peak extra {saved_peak * mb:.0f} MiB), "
              f"load {load_s:.2f} s CPU (peak extra {load_peak * mb:.0f} MiB)")
        test = Probabilities(ids[:n_test], probs[:n_test], oof.attribute_ids)
        order = ids[:n_test][::-1]  # a sample order that is not the prediction order
        (rows, labels), make_s, _, make_peak = timed(make_submission, order, test, thresholds,
                                                     1, 10)
        out, write_s, _, _ = timed(write_submission, Path(tmp) / "submission.csv", rows, labels)
        print(f"submission {n_test} x {probs.shape[1]}: rows made {make_s:.2f} s CPU (peak "
              f"extra {make_peak * mb:.0f} MiB), written {write_s:.2f} s CPU "
              f"({out.stat().st_size * mb:.1f} MiB)")


def naive_curve(y, probs, grid):
    """What one writes without this module: binarize and score once per threshold."""
    return np.array([f2_score(y, binarize(probs, t)) for t in grid])


def compare_metrics(y, probs, groups, grid, skip_class: bool) -> None:
    """Each search tuned for F2 and for micro-F1 on the same data: CPU time and peak memory."""
    mb = 1 / 2**20
    modes = ("global", "group") + (() if skip_class else ("class",))
    for mode in modes:
        for metric in ("f2", "micro-f1"):
            thr, cpu, wall, peak = timed(search_thresholds, y, probs, groups, mode,
                                         min_support=20, grid=grid, metric=metric)
            pred = binarize(probs, thr)
            print(f"{mode} search for {metric}: {cpu:.2f} s CPU ({wall:.2f} s wall), peak extra "
                  f"{peak * mb:.0f} MiB; F2 {metric_score('f2', y, pred):.4f}, micro-F1 "
                  f"{metric_score('micro-f1', y, pred):.4f}")
    print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=SCALE, default="2019",
                        help="whose scale and groups: 2019 (109,237 x 1,103: culture, tag) or "
                        "2020 (142,119 x 3,474, five groups; 2021 has the same)")
    parser.add_argument("--n", type=int, default=None, help="validation images (default: the "
                        "layout's training images)")
    parser.add_argument("--c", type=int, default=None, help="classes (default: the layout's)")
    parser.add_argument("--grid-size", type=int, default=100, help="thresholds in the grid")
    parser.add_argument("--naive-thresholds", type=int, default=25,
                        help="time the naive loop on this many evenly spread grid points and "
                        "scale to the whole grid (each costs the same full pass; default 25, "
                        "0 = all of them)")
    parser.add_argument("--skip-class", action="store_true", help="skip the per-class search")
    parser.add_argument("--metrics", action="store_true", help="only the global, group and "
                        "class searches, each tuned for F2 and for micro-F1")
    args = parser.parse_args()
    mb = 1 / 2**20
    n_images, n_test, sizes = SCALE[args.layout]
    args.n = args.n or n_images
    args.c = args.c or sum(size for _, size in sizes)

    y, probs = synthetic(args.n, args.c)
    groups = group_column(args.c, args.layout)
    print(f"data: {args.n} x {args.c} float32 probabilities ({probs.nbytes * mb:.0f} MiB), "
          f"{y.sum(axis=1).mean():.2f} true labels per image, "
          f"{len(set(groups.tolist()))} groups")
    grid = np.arange(1, args.grid_size + 1) / (args.grid_size + 1)
    if args.metrics:
        compare_metrics(y, probs, groups, grid, args.skip_class)
        return

    (_, curve), fast_s, fast_wall, fast_peak = timed(global_curve, y, probs, grid)
    print(f"global search, bucketed sweep: {fast_s:.2f} s CPU ({fast_wall:.2f} s wall) for "
          f"{grid.size} thresholds, "
          f"peak extra memory {fast_peak * mb:.0f} MiB; best F2 {curve.max():.4f} at "
          f"{grid[curve.argmax()]:.3f}")

    picks = np.arange(grid.size) if not args.naive_thresholds else \
        np.linspace(0, grid.size - 1, args.naive_thresholds).round().astype(int)
    naive, naive_s, naive_wall, naive_peak = timed(naive_curve, y, probs, grid[picks])
    naive_s, naive_wall = (x * grid.size / picks.size for x in (naive_s, naive_wall))
    scaled = "" if picks.size == grid.size else f" (timed on {picks.size}, scaled)"
    print(f"global search, naive grid loop: {naive_s:.2f} s CPU ({naive_wall:.2f} s wall) for "
          f"{grid.size} thresholds{scaled}, peak extra memory {naive_peak * mb:.0f} MiB; "
          f"max |difference| of the curves: {np.abs(naive - curve[picks]).max():.1e}")

    fine = np.arange(1, 1000) / 1000
    _, fine_s, _, _ = timed(global_curve, y, probs, fine)
    print(f"global search, bucketed sweep on a 999-point grid: {fine_s:.2f} s CPU")

    thr, group_s, _, group_peak = timed(search_thresholds, y, probs, groups, "group", grid=grid)
    chosen = ", ".join(f"{g} {thr[groups == g][0]:.3f}" for g in dict.fromkeys(groups))
    print(f"group search: {group_s:.2f} s CPU, peak extra {group_peak * mb:.0f} MiB, "
          f"F2 {f2_score(y, binarize(probs, thr)):.4f} ({chosen})")
    if args.layout != "2019":
        fit, cross_s, _, cross_peak = timed(cross_fitted, y, probs, groups, "group",
                                            grid=grid)
        print(f"cross-fitted group search (2 halves + full fit): {cross_s:.2f} s CPU, peak "
              f"extra {cross_peak * mb:.0f} MiB; honest F2 {fit.score:.4f} vs in-sample "
              f"{fit.score_in_sample:.4f}")
        files(probs, thr, min(n_test, args.n), mb)
        from imet.predict.validate import group_confusions
        pred = binarize(probs, thr)
        found, conf_s, _, conf_peak = timed(group_confusions, y, pred, groups)
        del pred
        print(f"validation report's confusions (every group of 2+ classes, largest "
              f"{max(len(c) for c, _ in found.values())}^2): {conf_s:.2f} s CPU, peak extra "
              f"{conf_peak * mb:.0f} MiB")
    if not args.skip_class:
        thr, class_s, _, class_peak = timed(search_thresholds, y, probs, groups, "class",
                                            min_support=20, grid=grid)
        print(f"class search (min support 20): {class_s:.2f} s CPU, peak extra "
              f"{class_peak * mb:.0f} MiB, F2 {f2_score(y, binarize(probs, thr)):.4f}")

        fit, cross_s, _, _ = timed(cross_fitted, y, probs, groups, "class", min_support=20,
                                   grid=grid)
        print(f"cross-fitted class search (2 halves + full fit): {cross_s:.2f} s CPU; honest F2 "
              f"{fit.score:.4f} vs in-sample {fit.score_in_sample:.4f}")
    (cthr, ratio), context_s, _, context_peak = timed(search_context, y, probs, groups,
                                                      grid=grid)
    print(f"context search (per-group t, ratio r coarse to fine): {context_s:.2f} s CPU, peak "
          f"extra {context_peak * mb:.0f} MiB, r {ratio:.2f}, "
          f"F2 {f2_score(y, binarize(probs, cthr, context=ratio)):.4f}")
    if not args.skip_class:
        fit, cross_s, _, _ = timed(cross_fitted, y, probs, groups, "context", grid=grid)
        print(f"cross-fitted context search (2 halves + full fit): {cross_s:.2f} s CPU; honest "
              f"F2 {fit.score:.4f} vs in-sample {fit.score_in_sample:.4f}")
    n_test = min(IMET_TEST, args.n)
    _, bin_s, _, _ = timed(binarize, probs[:n_test], thr, 1, 10)
    print(f"binarize {n_test} x {args.c} (per-class thresholds, 1..10 labels): {bin_s:.2f} s CPU")
    print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"global_threshold_search_speedup_vs_naive_grid: {naive_s / fast_s:.1f}x")  # CPU time


if __name__ == "__main__":
    main()
