"""Learning quality: imet's default flow against a plain PyTorch loop, on mini-iMet, at equal
epochs, on the CPU.

For each seed s: mini-iMet drawn with seed s (`--n-train` / `--n-test` / `--size`), 5 folds
(`imet folds`), fold 0 held out. Then, one after the other in this process, each timed in CPU
seconds (this process and its reaped children, one torch thread):

- imet: `imet train --data D --fold 0 --arch A --no-pretrained --image-size S --epochs E
  --batch-size B --seed s --out RUN` (every other flag at its default; `--num-workers 0` and
  `--notify off` are session settings that do not change the result), `imet validate --data D
  --run RUN`, `imet predict --data D --runs RUN --out sub.csv`, `imet score`; through
  `imet.cli.main`, the CLI's entry point;
- plain: the loop a user writes in an afternoon (`plain_loop`): decode every image once and
  resize it to S x S, random horizontal flips, AdamW with one-cycle (peak `--plain-lr`) and BCE,
  the same architecture from `imet.models.build_model`, E epochs on the same 4 folds; then the
  best global threshold on the held-out fold, applied to the test images. Its peak LR is imet's
  --no-pretrained default (3e-3; `--plain-lr` to change it).

Both are scored with the same F2 (`imet score`) against test_labels.csv. The table gives the
mean and the spread (half the max - min range) over the seeds, and the ratios; the last lines
are imet's CPU seconds per command and the F2 margin (imet - plain) and the CPU ratio
(imet / plain) per model. The libraries both sides use (torch's optimizer pulls in dynamo on
its first construction, ~1.5 CPU-s) are imported on the first seed's imet side, which runs
first: the first seed's imet figure carries them, the plain loop's never does.

    python benchmarks/bench_quality.py --arch tiny_cnn resnet18 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imet.cli import main as imet
from imet.commands.predict import score_files


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def make_data(root: Path, seed: int, args) -> Path:
    data = root / f"mini-{seed}"
    with contextlib.redirect_stdout(io.StringIO()):
        assert imet(["mini-imet", "--out", str(data), "--n-train", str(args.n_train),
                     "--n-test", str(args.n_test), "--size", str(args.size),
                     "--seed", str(seed)]) == 0
        assert imet(["folds", "--data", str(data), "--n-folds", "5",
                     "--out", str(data / "folds.csv")]) == 0
    return data


def imet_flow(data: Path, out: Path, arch: str, seed: int, args, extra: list[str],
              by_command: dict[str, float]) -> Path:
    """The flow's submission; each command's CPU seconds added to `by_command`."""
    validate_extra = shlex.split(args.validate_args)
    run = out / "run"
    train = ["train", "--data", str(data), "--fold", "0", "--arch", arch, "--no-pretrained",
             "--image-size", str(args.image_size), "--epochs", str(args.epochs),
             "--batch-size", str(args.batch_size), "--seed", str(seed), "--out", str(run),
             "--num-workers", "0", "--notify", "off", "--progress-every-s", "1e9", *extra]
    validate = ["validate", "--data", str(data), "--run", str(run), "--num-workers", "0",
                *validate_extra]
    predict = ["predict", "--data", str(data), "--runs", str(run), "--num-workers", "0",
               "--out", str(out / "submission.csv")]
    run_commands([train, validate, predict], by_command)
    return out / "submission.csv"


def run_commands(argvs: list[list[str]], by_command: dict[str, float]) -> None:
    """Each `imet` command in turn, quiet; its CPU seconds under its name in `by_command`."""
    for argv in argvs:
        start = cpu_seconds()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = imet(argv)
        by_command[argv[0]] = cpu_seconds() - start
        if code:
            raise SystemExit(f"imet {shlex.join(argv)} exited {code}")


def plain_loop(data: Path, out: Path, arch: str, seed: int, args) -> Path:
    """Decode once, resize, flip, AdamW + one-cycle + BCE, best global threshold on the fold."""
    import csv
    import cv2
    from imet.models import build_model

    torch.manual_seed(seed)
    labels = [r["attribute_id"] for r in csv.DictReader(open(data / "labels.csv"))]
    column = {a: i for i, a in enumerate(labels)}
    fold = {r["id"]: int(r["fold"]) for r in csv.DictReader(open(data / "folds.csv"))}

    def load(folder, rows):
        images = [cv2.resize(cv2.cvtColor(cv2.imread(str(data / folder / f"{r['id']}.png")),
                                          cv2.COLOR_BGR2RGB),
                             (args.image_size, args.image_size), interpolation=cv2.INTER_AREA)
                  for r in rows]
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)
        mean, std = torch.tensor([.485, .456, .406]), torch.tensor([.229, .224, .225])
        y = torch.zeros(len(rows), len(labels))
        for i, r in enumerate(rows):
            for a in r.get("attribute_ids", "").split():
                y[i, column[a]] = 1
        return (x - mean.view(3, 1, 1)) / std.view(3, 1, 1), y

    model = build_model(arch, len(labels))
    return fit_and_submit(model, data, fold, load, labels, args.plain_lr, args.epochs,
                          args.batch_size, out)[0]


def fit_and_submit(model, data: Path, fold: dict, load, labels: list, lr: float, epochs: int,
                   batch_size: int, out: Path) -> tuple[Path, float]:
    """The plain loop after its decoding (`load`: folder, rows -> images, targets): AdamW +
    one-cycle + BCE with flips, the best global threshold on fold 0, the submission written;
    also the held-out F2 at that threshold. bench_transfer.py runs the same loop."""
    import csv
    from imet.metrics.f2 import f2_per_sample

    rows = list(csv.DictReader(open(data / "train.csv")))
    x_tr, y_tr = load("train", [r for r in rows if fold[r["id"]] != 0])
    x_va, y_va = load("train", [r for r in rows if fold[r["id"]] == 0])
    test_rows = list(csv.DictReader(open(data / "sample_submission.csv")))
    x_te, _ = load("test", test_rows)
    steps = epochs * (len(x_tr) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_tr))
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            xb = x_tr[idx]
            flip = torch.rand(len(idx)) < 0.5
            xb[flip] = xb[flip].flip(3)
            loss = loss_fn(model(xb), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        p_va = torch.cat([torch.sigmoid(model(x_va[i:i + 64])) for i in range(0, len(x_va), 64)])
        p_te = torch.cat([torch.sigmoid(model(x_te[i:i + 64])) for i in range(0, len(x_te), 64)])
    grid = np.arange(0.02, 0.98, 0.01)
    truth = y_va.numpy() > 0
    best = max(grid, key=lambda t: f2_per_sample(truth, p_va.numpy() > t).mean())
    held_out_f2 = float(f2_per_sample(truth, p_va.numpy() > best).mean())
    sub = out / "submission.csv"
    with open(sub, "w", newline="") as f:
        f.write("id,attribute_ids\n")
        for r, p in zip(test_rows, p_te.numpy()):
            f.write(f"{r['id']},{' '.join(labels[j] for j in np.flatnonzero(p > best))}\n")
    return sub, held_out_f2


def spread(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.4g} ± {(values.max() - values.min()) / 2:.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", default=["tiny_cnn", "resnet18"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--size", type=int, default=64, help="mini-iMet short side")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--plain-lr", type=float, default=3e-3,
                        help="the plain loop's peak LR: imet's --no-pretrained default, so the "
                             "comparison is of the pipelines, not of the LR choice")
    parser.add_argument("--only", choices=("imet", "plain"), default=None,
                        help="run one side only (for measuring one imet flag at a time)")
    parser.add_argument("--imet-args", default="",
                        help="extra `imet train` flags, e.g. '--head-epochs 0' (investigation "
                             "only: the figures use none)")
    parser.add_argument("--validate-args", default="",
                        help="extra `imet validate` flags, e.g. '--modes global' (investigation)")
    parser.add_argument("--json", type=Path, default=None, help="also write every result here")
    args = parser.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    torch.set_num_threads(1)
    sides = [args.only] if args.only else ["imet", "plain"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            data = make_data(Path(tmp), seed, args)
            for arch in args.arch:
                for side in sides:
                    out = Path(tmp) / f"{side}-{arch}-{seed}"
                    out.mkdir()
                    by_command: dict[str, float] = {}
                    start, wall = cpu_seconds(), time.perf_counter()
                    if side == "imet":
                        sub = imet_flow(data, out, arch, seed, args, shlex.split(args.imet_args),
                                        by_command)
                    else:
                        sub = plain_loop(data, out, arch, seed, args)
                    cpu = cpu_seconds() - start
                    start = cpu_seconds()
                    score = score_files(data / "test_labels.csv", sub, data / "labels.csv")
                    by_command["score"] = cpu_seconds() - start  # not in cpu_s: both sides score
                    row = {"arch": arch, "seed": seed, "side": side, "f2": score.f2, "cpu_s": cpu,
                           "wall_s": time.perf_counter() - wall,
                           "labels_per_image": score.mean_predicted, "true": score.mean_true,
                           "cpu_s_by_command": by_command}
                    results.append(row)
                    print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"\nreproduce: python benchmarks/bench_quality.py {shlex.join(sys.argv[1:])}")
    print(f"mini-iMet {args.n_train} train / {args.n_test} test, {args.size} px; "
          f"{args.image_size} px, {args.epochs} epochs, batch {args.batch_size}, "
          f"seeds {args.seeds}, 1 torch thread, plain peak LR {args.plain_lr}; imet extra flags: "
          f"{args.imet_args or '-'} / {args.validate_args or '-'}")
    print(f"{'arch':10s} {'side':6s} {'test F2':>16s} {'CPU s':>14s} {'labels/img':>12s}")
    for arch in args.arch:
        for side in sides:
            rows = [r for r in results if r["arch"] == arch and r["side"] == side]
            print(f"{arch:10s} {side:6s} {spread([r['f2'] for r in rows]):>16s} "
                  f"{spread([r['cpu_s'] for r in rows]):>14s} "
                  f"{spread([r['labels_per_image'] for r in rows]):>12s}")
    for arch in args.arch:
        rows = [r for r in results if r["arch"] == arch and r["side"] == "imet"]
        if rows:
            print(f"{arch} imet CPU s by command (mean; the first seed pays the imports): " +
                  ", ".join(f"{c} {np.mean([r['cpu_s_by_command'][c] for r in rows]):.2f}"
                            for c in rows[0]["cpu_s_by_command"]))
    if len(sides) == 2:
        for arch in args.arch:
            by = {s: [r for r in results if r["arch"] == arch and r["side"] == s] for s in sides}
            margin = np.mean([r["f2"] for r in by["imet"]]) - np.mean([r["f2"] for r in by["plain"]])
            ratio = np.mean([r["cpu_s"] for r in by["imet"]]) / np.mean([r["cpu_s"] for r in by["plain"]])
            print(f"{arch}: f2_margin_imet_minus_plain {margin:+.4f}  cpu_ratio_imet_over_plain "
                  f"{ratio:.3f}  (goal: >= +0.05 at <= 1.2)")


if __name__ == "__main__":
    main()
