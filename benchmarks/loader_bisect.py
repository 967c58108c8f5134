"""The per-core loader figure of several commits, in one sitting: bench_loader.py's seed vs imet
(JPEG cache) pair only, each commit's own imet on the same images, interleaved, best of N.

    python benchmarks/loader_bisect.py --roots /tmp/lb-94a95c9 /tmp/lb-336b5e2 . [--rounds 5]

Each root is a checkout (e.g. `git worktree add --detach /tmp/lb-SHA SHA`); its imet is
imported by a fresh process per measurement (PYTHONPATH=root), which measures the seed
kernels' loader and imet's default pipeline from a JPEG cache built by that commit's own
`build_cache`, `--passes` times each, alternating, exactly as bench_loader.per_core does (one
process, cv2/torch on one thread, CPU time, batches of 32, num_workers=0). Processes run at the
priority this one has (run it under `nice -n -15` on a shared machine). Prints, per root, the
best seed and imet img/s over all rounds and their ratio, and the 1-minute load seen.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Runs inside the measuring process, with the root's imet first on sys.path and the root's own
# bench_loader (seed pipeline, per_core) imported; targets as every version of it draws them.
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1]); sys.path.insert(1, sys.argv[1] + "/benchmarks")
from pathlib import Path
import numpy as np
import bench_loader as B
try:
    from imet.data.images import ImageCache, build_cache
except ImportError:
    from imet.data.cache import ImageCache
    try:
        from imet.data.cache_build import build_cache
    except ImportError:
        from imet.data.cache import build_cache
try:
    from imet.data.transforms import ImetDataset
except ImportError:
    from imet.data.dataset import ImetDataset
from imet.data.transforms import build_batch_augment, build_train_transform
import imet
assert Path(imet.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), imet.__file__
data, cache_dir, passes = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
paths = sorted((data / "train").glob("*.png"))
targets = (np.random.default_rng(1).random((len(paths), 1103)) < 0.003).astype(np.uint8)
if not (cache_dir / "imet-cache.json").is_file():
    build_cache(data, cache_dir, B.SIZE, "jpeg", workers=1, progress=False)
    print(json.dumps({"built": True})); sys.exit(0)
B.one_thread()
cache = ImageCache(cache_dir)
def imet():
    return ImetDataset(paths, targets, build_train_transform("seed", B.SIZE), seed=0,
                       normalize=None, cache=cache,
                       batch_augment=build_batch_augment("seed", B.SIZE))
seed = best = 0.0
for _ in range(passes):
    seed = max(seed, B.per_core(B.SeedDataset(paths, targets)))
    best = max(best, B.per_core(imet()))
print(json.dumps({"seed": seed, "imet": best}))
"""


def child(root: Path, data: Path, cache: Path, passes: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(root.resolve()), str(data),
                          str(cache), str(passes)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ""})
    if out.returncode:
        raise SystemExit(f"{root}: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--roots", nargs="+", required=True, type=Path)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import bench_loader

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        bench_loader.make_images(data, args.images)
        caches = {root: Path(tmp) / f"cache-{k}" for k, root in enumerate(args.roots)}
        for root in args.roots:
            child(root, data, caches[root], 0)
        results = {root: [] for root in args.roots}
        for r in range(args.rounds):
            order = args.roots[r % len(args.roots):] + args.roots[:r % len(args.roots)]
            for root in order:
                figure = child(root, data, caches[root], args.passes)
                figure["load"] = os.getloadavg()[0]
                results[root].append(figure)
                print(f"round {r} {root}: seed {figure['seed']:.0f} imet {figure['imet']:.0f} "
                      f"img/s ({figure['imet'] / figure['seed']:.2f}x) load "
                      f"{figure['load']:.1f}", flush=True)
        print()
        for root, figures in results.items():
            seed = max(f["seed"] for f in figures)
            imet = max(f["imet"] for f in figures)
            loads = [f["load"] for f in figures]
            print(f"{str(root):28s} seed {seed:5.0f}  imet {imet:5.0f} img/s  "
                  f"{imet / seed:.2f}x  (load {min(loads):.1f}-{max(loads):.1f})")


if __name__ == "__main__":
    main()
