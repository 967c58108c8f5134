"""Pretrain a small timm backbone on Fashion-MNIST's training split and save it as a weights
dataset holds it: the Hugging Face hub cache layout of timm's weights
(ROOT/models--timm--<model>/snapshots/<rev>/model.safetensors, with config.json and refs/main),
so that `imet train --arch timm:<name> --input-root ROOT` finds and loads it through the same
offline path as official weights attached to a Kaggle kernel.

Source: the Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), 60,000
28x28 product photos in 10 classes; its test split (t10k) is the transfer target's
(bench_transfer.py) and never trains here. Each item is padded to 32 px (its scale in the
target's canvases) and painted with one of mini-iMet's print styles (ink, sepia, cyanotype...)
drawn per sample and epoch: colour augmentation, so that the body knows items on any paper,
not only white on black. With --squash S each item is also squeezed along a random axis by a
factor from S..1: the target's canvases (aspect ratio up to 2.5) are resized to squares, which
squeezes their items so. A fixed 5,000 of the 60,000 are held out for the accuracy printed.

The result is kept in --cache under a key of every setting (and timm's version): a second run
with the same settings trains nothing and prints the same input root. One torch thread.

    python benchmarks/pretrain.py --arch timm:test_resnet --epochs 4 --squash 0.4
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imet.data.mini_imet import STYLES  # noqa: E402
from imet.models.registry import TimmSpec  # noqa: E402
from imet.models.weights import get_spec  # noqa: E402

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle-boot")
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imet-pretrain"
PRETRAIN_SIZE = 32
HELD_OUT = 5000
VERSION = 1


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def load_fashion(split: str, folder: Path = FASHION_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's `split` ("train" or "t10k"): uint8 images [N, 28, 28], labels [N]."""
    images = folder / f"{split}-images-idx3-ubyte.gz"
    labels = folder / f"{split}-labels-idx1-ubyte.gz"
    for path in (images, labels):
        if not path.is_file():
            raise SystemExit(f"{path}: not found; install Fashion-MNIST with "
                             "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu)")
    with gzip.open(images) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return x, y


def squashed(rng: np.random.Generator, item: np.ndarray, squash: float) -> np.ndarray:
    """`item` (28 x 28) in 0..1 squeezed along a random axis by a factor drawn log-uniformly from
    `squash`..1 and centred in PRETRAIN_SIZE x PRETRAIN_SIZE: the shapes items take in the target
    once a canvas of aspect ratio up to 1/squash is resized to a square."""
    from PIL import Image

    size = [28, 28]
    size[int(rng.integers(2))] = max(1, int(round(28 * np.exp(rng.uniform(np.log(squash), 0)))))
    small = np.asarray(Image.fromarray(item).resize(tuple(size), Image.BILINEAR)) / 255.0
    out = np.zeros((PRETRAIN_SIZE, PRETRAIN_SIZE))
    top, left = (PRETRAIN_SIZE - small.shape[0]) // 2, (PRETRAIN_SIZE - small.shape[1]) // 2
    out[top:top + small.shape[0], left:left + small.shape[1]] = small
    return out


def paint(rng: np.random.Generator, items: np.ndarray, squash: float = 1.0) -> np.ndarray:
    """Items [N, 28, 28] uint8 -> float [N, 3, 32, 32] in 0..1, each in a random print style (and
    squeezed by `squash`..1 along a random axis when `squash` < 1)."""
    pad = (PRETRAIN_SIZE - 28) // 2
    names = list(STYLES)
    out = np.empty((len(items), PRETRAIN_SIZE, PRETRAIN_SIZE, 3))
    for i, item in enumerate(items):
        alpha = squashed(rng, item, squash) if squash < 1 else np.pad(item / 255.0, pad)
        image = STYLES[names[rng.integers(len(names))]](rng, alpha)
        out[i] = image + rng.normal(0, rng.uniform(1, 6), image.shape)
    return torch.from_numpy(np.clip(out, 0, 255) / 255).permute(0, 3, 1, 2).float()


def weights_root(cache: Path, spec: TimmSpec, settings: dict) -> Path:
    key = hashlib.sha256(json.dumps({**settings, "model": spec.model, "version": VERSION,
                                     "timm": spec.record()["version"]},
                                    sort_keys=True).encode()).hexdigest()[:12]
    return cache / f"{spec.model}-{key}"


def save_hub_layout(root: Path, spec: TimmSpec, state: dict, info: dict) -> Path:
    """`state` written as the hub cache holds a timm model (blob, snapshot link, refs/main), built
    in a hidden sibling and renamed, so the cache holds a complete entry or none."""
    from safetensors.torch import save_file

    partial = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    repo = partial / spec.hub_folder()
    revision = hashlib.sha1(json.dumps(info, sort_keys=True).encode()).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    save_file(state, str(repo / "blobs" / revision))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(Path("..", "..", "blobs", revision))
    arch, _, tag = spec.model.partition(".")
    (snapshot / "config.json").write_text(json.dumps(
        {"architecture": arch, "num_classes": len(FASHION_CLASSES),
         "label_names": list(FASHION_CLASSES), "pretrained_cfg": {"tag": tag}}, indent=1))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    (partial / "pretrain.json").write_text(json.dumps(info, indent=1) + "\n")
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, root)
    return root / spec.hub_folder() / "snapshots" / revision / "model.safetensors"


def pretrain(arch: str, epochs: int, n_train: int, lr: float, batch_size: int, seed: int,
             cache: Path = DEFAULT_CACHE, log=print, squash: float = 1.0) -> Path:
    """The input root holding `arch` pretrained with these settings (trained only when the cache
    lacks it)."""
    import timm

    spec = get_spec(arch)
    if not isinstance(spec, TimmSpec) or not spec.hub_folder():
        raise SystemExit(f"--arch {arch}: give a timm arch with a hub name, e.g. timm:test_resnet")
    settings = {"epochs": epochs, "n_train": n_train, "lr": lr, "batch_size": batch_size,
                "seed": seed, "size": PRETRAIN_SIZE}
    if squash < 1:  # only then: the key (and cache entry) of unsqueezed weights stays as it was
        settings["squash"] = squash
    root = weights_root(Path(cache), spec, settings)
    if (root / "pretrain.json").is_file():
        info = json.loads((root / "pretrain.json").read_text())
        log(f"cached: {root} (held-out accuracy {info['held_out_accuracy']:.4f}, trained in "
            f"{info['cpu_s']:.0f} CPU s)")
        return root
    x, y = load_fashion("train")
    order = np.random.default_rng(seed).permutation(len(y))
    held, train_idx = order[:HELD_OUT], order[HELD_OUT:HELD_OUT + n_train]
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 1])
    model = timm.create_model(spec.model.partition(".")[0], num_classes=len(FASHION_CLASSES))
    settings_in = spec.input_settings()
    mean = torch.tensor(settings_in["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(settings_in["std"]).view(1, 3, 1, 1)
    steps = epochs * (len(train_idx) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    start, wall = cpu_seconds(), time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = rng.permutation(train_idx)
        for i in range(0, len(perm) - batch_size + 1, batch_size):
            idx = perm[i:i + batch_size]
            xb = (paint(rng, x[idx], squash) - mean) / std
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            xb[flip] = xb[flip].flip(3)
            loss = loss_fn(model(xb), torch.from_numpy(y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, "
            f"{cpu_seconds() - start:.0f} CPU s")
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(held), 500):
            idx = held[i:i + 500]
            xb = (paint(rng, x[idx], squash) - mean) / std
            correct += int((model(xb).argmax(1).numpy() == y[idx]).sum())
    info = {"arch": arch, "model": spec.model, **settings, "source": str(FASHION_DIR),
            "classes": list(FASHION_CLASSES), "held_out": HELD_OUT,
            "held_out_accuracy": correct / len(held), "cpu_s": cpu_seconds() - start,
            "wall_s": time.perf_counter() - wall, "timm": spec.record()["version"]}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = save_hub_layout(root, spec, state, info)
    log(f"saved {path} (held-out accuracy {info['held_out_accuracy']:.4f}, "
        f"{info['cpu_s']:.0f} CPU s)")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="timm:test_resnet")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--n-train", type=int, default=60000 - HELD_OUT,
                        help="training images of the 55,000 not held out")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--squash", type=float, default=0.4,
                        help="squeeze each item along a random axis by a factor drawn from "
                             "SQUASH..1 (1: never; 0.4: as a 2.5:1 canvas resized to a square "
                             "squeezes its items)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = pretrain(args.arch, args.epochs, args.n_train, args.lr, args.batch_size, args.seed,
                    args.cache, squash=args.squash)
    print(f"input root: {root}  (imet train --arch {args.arch} --input-root {root})")


if __name__ == "__main__":
    main()
