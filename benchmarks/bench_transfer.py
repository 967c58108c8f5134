"""Transfer learning: imet's pretrained defaults against a plain fine-tuning loop from the same
weights, from scratch, and an ablation of the recipe, on an iMet-shaped target disjoint from the
pretraining source. CPU, one torch thread.

Weights: `benchmarks/pretrain.py` (a timm body pretrained on Fashion-MNIST's training split,
each item squeezed along a random axis as the target's resize to a square squeezes it, cached;
saved in the hub-cache layout and found by imet under --input-root, its offline path).

Target, drawn per seed (`fashion_target`): canvases at iMet's aspect ratios (1 to 2.5, either
way, short side --size) holding 1-3 items of Fashion-MNIST's test split (t10k, never seen in
pretraining), each at 42-58% of the short side (the items' scale in pretraining when the canvas
is square), long-tailed classes, painted in one of mini-iMet's print styles. Labels as iMet
2019's: `tag::<class>` for every item present, `culture::<style>` for the canvas. The iMet
2019 layout (labels.csv, train.csv, train/, test/, sample_submission.csv; test_labels.csv for
scoring); 5 folds by `imet folds`, fold 0 held out.

Per seed, each timed in CPU seconds (this process and its children):
- imet: `imet train --data D --fold 0 --arch A --input-root W --image-size S --epochs E
  --batch-size B --seed s` (every other flag at its pretrained default), `imet validate`,
  `imet predict`, scored by `imet score`'s function;
- plain: ~60 lines (`plain_loop`): images decoded once and resized to S x S, random flips,
  AdamW with one-cycle at one peak LR, BCE, E epochs on the same 4 folds from the same weights
  (imet's loader, `build_model(..., pretrained=True, search_roots=[W])`, the arch's mean/std);
  the best global threshold on the held-out fold. Its LR is swept over --plain-lrs; the table
  reports each, the summary the best by mean over the seeds;
- plain at equal CPU time: the best LR with as many epochs as fit in imet's CPU seconds;
- scratch: imet with --no-pretrained (its random-init defaults), and the plain loop from random
  init over the same LR sweep;
- ablation: imet with one part of the recipe changed (--ablate NAME=FLAGS, repeatable; the
  defaults below).

    python benchmarks/bench_transfer.py --arch timm:test_resnet --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quality import cpu_seconds, fit_and_submit, run_commands, spread  # noqa: E402
from pretrain import FASHION_CLASSES, load_fashion, pretrain  # noqa: E402

from imet.cli import main as imet  # noqa: E402
from imet.commands.predict import score_files  # noqa: E402
from imet.data.labels import year_layout  # noqa: E402
from imet.data.mini_imet import (PNG_SETTINGS, STYLE_WEIGHTS, STYLES, _canvas_shape,  # noqa: E402
                                 _overlap, _write_csv, image_id)

ITEM_SCALE = (0.42, 0.58)
ITEMS_PER_IMAGE_P = (0.4, 0.35, 0.25)
ITEM_WEIGHTS = 0.85 ** np.arange(len(FASHION_CLASSES))
# Each row: imet's defaults with one part of the recipe changed; the last, the write-ups' recipe.
ABLATIONS = {
    "no head stage": "--head-epochs 0",
    "discriminative LR 0.1/0.3": "--lr-early-mult 0.1 --lr-late-mult 0.3",
    "train groups late,head": "--train-groups late,head",
    "frozen BN off": "--frozen-bn off",
    "frozen BN all": "--frozen-bn all",
    "preset seed": "--preset seed",
    "no prior bias": "--no-prior-bias",
    "lr 3e-3": "--lr 3e-3",
    "lr 4e-4": "--lr 4e-4",
    "recipe writeup": "--recipe writeup",
}


def fashion_target(folder: Path, seed: int, n_train: int, n_test: int, size: int) -> dict:
    """The target data set of `seed` in the iMet 2019 layout; returns its summary."""
    x, y = load_fashion("t10k")
    order = np.random.default_rng([seed, 7]).permutation(len(y))
    pools = {"train": order[:len(y) // 2], "test": order[len(y) // 2:]}  # items disjoint too
    names = ([f"culture::{s}" for s in sorted(STYLES)]
             + [f"tag::{c}" for c in FASHION_CLASSES])
    attr = {n: i for i, n in enumerate(names)}
    layout = year_layout(folder, "2019")
    folder.mkdir(parents=True)
    _write_csv(layout.labels_csv, "attribute_id,attribute_name", enumerate(names))
    truth = {}
    for split, count in (("train", n_train), ("test", n_test)):
        layout.split_dir(split).mkdir(parents=True)
        by_class = [pools[split][y[pools[split]] == c] for c in range(len(FASHION_CLASSES))]
        rows = []
        for index in range(count):
            rng = np.random.default_rng([seed, 11, 0 if split == "train" else 1, index])
            h, w = _canvas_shape(rng, size)
            alpha, boxes, items = np.zeros((h, w)), [], set()
            for _ in range(rng.choice(len(ITEMS_PER_IMAGE_P), p=ITEMS_PER_IMAGE_P) + 1):
                c = int(rng.choice(len(FASHION_CLASSES), p=ITEM_WEIGHTS / ITEM_WEIGHTS.sum()))
                side = int(round(min(h, w) * rng.uniform(*ITEM_SCALE)))
                for _try in range(12):
                    top = int(rng.integers(0, h - side + 1))
                    left = int(rng.integers(0, w - side + 1))
                    if all(_overlap((top, left, side), b) < 0.1 for b in boxes):
                        break
                else:
                    continue
                item = Image.fromarray(x[by_class[c][rng.integers(len(by_class[c]))]])
                region = alpha[top:top + side, left:left + side]
                np.maximum(region, np.asarray(item.resize((side, side), Image.BILINEAR)) / 255,
                           out=region)
                boxes.append((top, left, side))
                items.add(FASHION_CLASSES[c])
            style = list(STYLES)[rng.choice(len(STYLES), p=STYLE_WEIGHTS / STYLE_WEIGHTS.sum())]
            image = STYLES[style](rng, alpha)
            image = image + rng.normal(0, rng.uniform(1, 6), image.shape)
            iid = image_id(seed, f"fashion-{split}", index)
            Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8)).save(
                layout.image_path(split, iid), **PNG_SETTINGS)
            labels = sorted(attr[n] for n in [f"culture::{style}", *(f"tag::{i}" for i in items)])
            rows.append((iid, " ".join(map(str, labels))))
        truth[split] = sorted(rows)
    _write_csv(layout.train_csv, "id,attribute_ids", truth["train"])
    _write_csv(layout.test_labels_csv, "id,attribute_ids", truth["test"])
    _write_csv(layout.sample_submission_csv, "id,attribute_ids",
               ((iid, "0") for iid, _ in truth["test"]))
    with contextlib.redirect_stdout(io.StringIO()):
        assert imet(["folds", "--data", str(folder), "--n-folds", "5",
                     "--out", str(folder / "folds.csv")]) == 0
    n_labels = [len(a.split()) for rows in truth.values() for _, a in rows]
    return {"labels_per_image": float(np.mean(n_labels)), "classes": len(names)}


def imet_flow(data: Path, weights: Path, out: Path, seed: int, args, extra: list[str],
              by_command: dict[str, float]) -> Path:
    """Train, validate, predict (defaults but the sizes); each command's CPU seconds."""
    run = out / "run"
    train = ["train", "--data", str(data), "--fold", "0", "--arch", args.arch,
             "--input-root", str(weights), "--image-size", str(args.image_size),
             "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
             "--seed", str(seed), "--out", str(run), "--num-workers", "0", "--notify", "off",
             "--progress-every-s", "1e9", *extra]
    validate = ["validate", "--data", str(data), "--run", str(run), "--num-workers", "0"]
    predict = ["predict", "--data", str(data), "--runs", str(run), "--num-workers", "0",
               "--out", str(out / "submission.csv")]
    run_commands([train, validate, predict], by_command)
    return out / "submission.csv"


def plain_loop(data: Path, weights: Path | None, out: Path, seed: int, lr: float, epochs: int,
               args) -> Path:
    """Decode once, resize, flip, AdamW + one-cycle + BCE, best global threshold on the fold."""
    from imet.models import build_model

    torch.manual_seed(seed)
    labels = [r["attribute_id"] for r in csv.DictReader(open(data / "labels.csv"))]
    fold = {r["id"]: int(r["fold"]) for r in csv.DictReader(open(data / "folds.csv"))}
    model = build_model(args.arch, len(labels), pretrained=weights is not None,
                        search_roots=[weights] if weights else (), allow_download=False)
    mean = torch.tensor(model.info["mean"]).view(3, 1, 1)
    std = torch.tensor(model.info["std"]).view(3, 1, 1)

    def load(folder, rows):
        size = (args.image_size, args.image_size)
        images = [np.asarray(Image.open(data / folder / f"{r['id']}.png").convert("RGB")
                             .resize(size, Image.BILINEAR)) for r in rows]
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)
        y = torch.zeros(len(rows), len(labels))
        for i, r in enumerate(rows):
            for a in r.get("attribute_ids", "").split():
                y[i, labels.index(a)] = 1
        return (x - mean) / std, y

    sub, held_out_f2 = fit_and_submit(model, data, fold, load, labels, lr, epochs,
                                      args.batch_size, out)
    return sub, {"held_out_f2": held_out_f2}


def measure(name: str, data: Path, out: Path, run, results: list, seed: int, **extra) -> dict:
    out.mkdir(parents=True)
    by_command: dict[str, float] = {}
    start, wall = cpu_seconds(), time.perf_counter()
    sub = run(by_command)
    cpu = cpu_seconds() - start
    if isinstance(sub, tuple):
        sub, more = sub
        extra = {**extra, **more}
    score = score_files(data / "test_labels.csv", sub, data / "labels.csv")
    row = {"name": name, "seed": seed, "f2": score.f2, "cpu_s": cpu,
           "wall_s": time.perf_counter() - wall, "labels_per_image": score.mean_predicted,
           "true_per_image": score.mean_true, "cpu_s_by_command": by_command, **extra}
    results.append(row)
    print(json.dumps(row), flush=True)
    return row


def mean(rows, key="f2") -> float:
    return float(np.mean([r[key] for r in rows]))


def run_seed(seed: int, weights: Path, tmp: Path, args, ablations: dict, results: list) -> None:
    data = tmp / f"target-{seed}"
    summary = fashion_target(data, seed, args.n_train, args.n_test, args.size)
    print(f"seed {seed}: target {summary}", flush=True)
    if args.plain_only:
        for start in ("plain",) if args.no_plain_scratch else ("plain", "plain scratch"):
            for lr in args.plain_lrs:
                out = tmp / f"{start}-{lr}-{seed}".replace(" ", "_")
                measure(f"{start} lr {lr:g}", data, out, lambda c: plain_loop(
                    data, weights if start == "plain" else None, out, seed, lr, args.epochs,
                    args), results, seed, lr=lr)
        return
    imet_row = measure("imet", data, tmp / f"imet-{seed}", lambda c: imet_flow(
        data, weights, tmp / f"imet-{seed}", seed, args, shlex.split(args.imet_args), c),
        results, seed)
    if args.imet_only:
        measure_ablations(seed, data, weights, tmp, args, ablations, results)
        return
    measure("imet scratch", data, tmp / f"scratch-{seed}", lambda c: imet_flow(
        data, weights, tmp / f"scratch-{seed}", seed, args, ["--no-pretrained"], c),
        results, seed)
    plain = {}
    for start in ("plain", "plain scratch"):
        for lr in args.plain_lrs:
            out = tmp / f"{start}-{lr}-{seed}".replace(" ", "_")
            row = measure(f"{start} lr {lr:g}", data, out, lambda c: plain_loop(
                data, weights if start == "plain" else None, out, seed, lr, args.epochs, args),
                results, seed, lr=lr)
            if start == "plain":
                plain[lr] = row
    # Equal CPU time: the LR of the best held-out-fold F2 (never the test's), with as many
    # epochs as fit in imet's CPU seconds.
    chosen = max(plain.values(), key=lambda r: r["held_out_f2"])
    epochs = max(1, round(args.epochs * imet_row["cpu_s"] / chosen["cpu_s"]))
    out = tmp / f"plain-eq-{seed}"
    measure("plain equal CPU", data, out, lambda c: plain_loop(
        data, weights, out, seed, chosen["lr"], epochs, args), results, seed, lr=chosen["lr"],
        epochs=epochs)
    measure_ablations(seed, data, weights, tmp, args, ablations, results)


def measure_ablations(seed, data, weights, tmp, args, ablations, results) -> None:
    for index, (name, flags) in enumerate(ablations.items()):
        out = tmp / f"ablate-{index}-{seed}"
        measure(f"imet {name}", data, out, lambda c: imet_flow(
            data, weights, out, seed, args, shlex.split(flags), c), results, seed, flags=flags)


def summarize(results: list, header: str) -> None:
    names = list(dict.fromkeys(r["name"] for r in results))
    print(header)
    print(f"{'':30s} {'test F2':>16s} {'CPU s':>14s} {'labels/img':>12s}")
    for name in names:
        rows = [r for r in results if r["name"] == name]
        print(f"{name:30s} {spread([r['f2'] for r in rows]):>16s} "
              f"{spread([r['cpu_s'] for r in rows]):>14s} "
              f"{spread([r['labels_per_image'] for r in rows]):>12s}")
    print(f"true labels per image: {mean(results, 'true_per_image'):.3f}; seeds "
          f"{sorted(set(r['seed'] for r in results))}")
    imet_rows = [r for r in results if r["name"] == "imet"]
    if not imet_rows:  # --plain-only
        for start in ("plain lr", "plain scratch lr"):
            if not any(n.startswith(start) for n in names):
                continue
            print(f"best {start}: " + max(
                (f"{mean([r for r in results if r['name'] == n]):.4f} ({n})"
                 for n in names if n.startswith(start)), key=lambda t: float(t.split()[0])))
        return
    print("imet CPU s by command: " + ", ".join(
        f"{c} {np.mean([r['cpu_s_by_command'][c] for r in imet_rows]):.1f}"
        for c in imet_rows[0]["cpu_s_by_command"]))

    if not any(n.startswith("plain lr") for n in names):
        return  # --imet-only

    def best(prefix):
        name = max((n for n in names if n.startswith(prefix)),
                   key=lambda n: mean([r for r in results if r["name"] == n]))
        return name, [r for r in results if r["name"] == name]
    (plain_name, plain_rows), (_, plain_scratch) = best("plain lr"), best("plain scratch lr")
    scratch_rows = [r for r in results if r["name"] == "imet scratch"]
    equal = [r for r in results if r["name"] == "plain equal CPU"]
    print(f"best plain: {plain_name}; weights matter: best plain pretrained - best plain scratch "
          f"= {mean(plain_rows) - mean(plain_scratch):+.4f} (goal >= +0.05); imet - best plain "
          f"{mean(imet_rows) - mean(plain_rows):+.4f} (goal >= +0.02); imet - plain equal CPU "
          f"{mean(imet_rows) - mean(equal):+.4f} (goal >= 0)")
    print(f"transfer: imet F2 {mean(imet_rows):.4f} plain F2 {mean(plain_rows):.4f} scratch F2 "
          f"{mean(scratch_rows):.4f} (cpu imet {mean(imet_rows, 'cpu_s'):.1f} s, plain "
          f"{mean(plain_rows, 'cpu_s'):.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="timm:test_resnet")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--size", type=int, default=64, help="canvas short side")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20,
                        help="fine-tuning epochs (20: the pretrained weights beat scratch by 0.07; at 10\n                             both are undertrained and the gap is 0.04)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--plain-lrs", nargs="+", type=float, default=[2e-3, 3e-3, 5e-3, 1e-2])
    parser.add_argument("--pretrain-epochs", type=int, default=4,
                        help="pretrain.py --epochs (its other settings at their defaults)")
    parser.add_argument("--pretrain-squash", type=float, default=0.4,
                        help="pretrain.py --squash (0.4: the squeeze of a 2.5:1 canvas resized to "
                             "a square; 1: upright items only)")
    parser.add_argument("--ablate", action="append", default=None, metavar="NAME=FLAGS",
                        help="an ablation row: imet train flags on top of the defaults "
                             "(default: the recipe parts in ABLATIONS)")
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument("--plain-only", action="store_true",
                        help="only the plain loop's rows, pretrained and scratch (item 4's check)")
    parser.add_argument("--no-plain-scratch", action="store_true",
                        help="with --plain-only: the pretrained rows only (the scratch rows do "
                             "not depend on the weights: reuse those of a run of the same target)")
    parser.add_argument("--imet-only", action="store_true",
                        help="only the imet row and the ablation rows (no plain, no scratch)")
    parser.add_argument("--imet-args", default="", help="extra `imet train` flags of the imet row")
    parser.add_argument("--json", type=Path, default=None, help="also write every result here")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                        help="run nothing: summarize the --json files of runs of other seeds "
                             "(seeds run in parallel processes)")
    args = parser.parse_args()
    if args.merge:
        results = [row for path in args.merge for row in json.loads(path.read_text())]
        summarize(results, f"merged: {' '.join(map(str, args.merge))}")
        return
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    torch.set_num_threads(1)
    ablations = {} if args.no_ablation else (
        dict(a.split("=", 1) for a in args.ablate) if args.ablate else ABLATIONS)
    weights = pretrain(args.arch, args.pretrain_epochs, 60000 - 5000, 3e-3, 128, 0,
                       squash=args.pretrain_squash)
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        # Only the input root holds weights: no cache of this machine is found by accident.
        os.environ.update(HF_HUB_OFFLINE="1", HF_HOME=str(Path(tmp) / "hf"),
                          TORCH_HOME=str(Path(tmp) / "torch"))
        os.environ.pop("HF_HUB_CACHE", None)
        for seed in args.seeds:
            run_seed(seed, weights, Path(tmp), args, ablations, results)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
    print(f"\nreproduce: python benchmarks/bench_transfer.py {shlex.join(sys.argv[1:])}")
    summarize(results, f"{args.arch} pretrained on Fashion-MNIST train ({weights.name}); target "
              f"{args.n_train} train / {args.n_test} test per seed, {args.size} px canvases, "
              f"{args.image_size} px, {args.epochs} epochs, batch {args.batch_size}, seeds "
              f"{args.seeds}, 1 torch thread")


if __name__ == "__main__":
    main()
