"""mini-iMet: a small real-image data set in the exact layout of an iMet competition (2019 by
default; 2020 and 2021: five attribute groups, and 2021's file names and nested folders).

Built from scikit-learn's bundled handwritten digits (1,797 real 8x8 scans), so it needs no
download and works offline on Kaggle. Each image is a canvas with a varying aspect ratio (like
museum photographs: 0.4 to 2.5) holding 1-4 digits at random places, sizes and slight rotations.
Labels mirror iMet 2019's two groups:
- `culture::<style>`: one global style per image. Palettes (ink, sepia, cyanotype, redprint,
  negative) and textures on the same palette (hatched, speckled, vignette) that only the whole
  image reveals, so a model cannot read the style off one pixel.
- `tag::<digit>`: every digit present (0-9), at 20-65% of the short side, anywhere.
2020 and 2021 have five groups, `tags::` for tag: the same culture and tags, plus
`country::<palette>` (the style's palette family), `dimension::<portrait|landscape>` (the
canvas) and `medium::<n>-figures` (how many digits): every label is visible in the image.
Both groups are long-tailed (like iMet's), so per-class thresholds matter. Train and test draw
their digits from disjoint scans: a model must generalize to new handwriting, not memorize.

Deterministic per seed, byte for byte: image i of a split depends only on (seed, split, i), and
PNGs are written with fixed settings and no metadata. The folder appears complete or not at all
(built in a hidden sibling folder, then renamed)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from imet.data.labels import YEAR_FILES, year_layout
from imet.errors import UserError
from imet.fileio import move_folder_into_place, read_json_object

GENERATOR_VERSION = 1
DEFAULTS = {"n_train": 1200, "n_test": 300, "size": 64, "seed": 0, "layout": "2019"}
LAYOUTS = tuple(YEAR_FILES)
MANIFEST = "mini_imet.json"
SPLIT_CODE = {"train": 1, "test": 2}
TRAIN_SCAN_FRACTION = 0.75
MAX_ASPECT = 2.5
DIGIT_SCALE = (0.20, 0.65)        # digit side as a fraction of the canvas's short side
DIGITS_PER_IMAGE_P = (0.30, 0.30, 0.25, 0.15)
# Long tails like iMet's: tag 0 is ~7x as common as tag 9; the first style ~3x the last.
DIGIT_WEIGHTS = 0.8 ** np.arange(10)
PNG_SETTINGS = {"format": "PNG", "compress_level": 6, "optimize": False}

Style = Callable[[np.random.Generator, np.ndarray], np.ndarray]


def _jitter(rng, color, amount) -> np.ndarray:
    return np.clip(np.asarray(color, float) + rng.uniform(-amount, amount, 3), 0, 255)


def _paint(alpha, paper, ink) -> np.ndarray:
    """Alpha-blend ink over paper; paper may be a colour or an [H, W, 3] texture."""
    a = alpha[..., None]
    return paper * (1 - a) + np.asarray(ink, float) * a


def _paper(rng, shape) -> np.ndarray:
    return np.broadcast_to(_jitter(rng, (238, 234, 225), 14), shape + (3,)).astype(float)


def _dark_ink(rng):
    return _jitter(rng, (35, 35, 40), 25)


def _coords(shape):
    return (c.astype(float) for c in np.mgrid[0:shape[0], 0:shape[1]])


def style_ink(rng, alpha):
    return _paint(alpha, _paper(rng, alpha.shape), _dark_ink(rng))


def style_sepia(rng, alpha):
    return _paint(alpha, _jitter(rng, (222, 200, 160), 14), _jitter(rng, (95, 58, 28), 20))


def style_cyanotype(rng, alpha):
    return _paint(alpha, _jitter(rng, (28, 62, 128), 18), _jitter(rng, (228, 236, 245), 15))


def style_redprint(rng, alpha):
    return _paint(alpha, _paper(rng, alpha.shape), _jitter(rng, (170, 35, 35), 25))


def style_negative(rng, alpha):
    return _paint(alpha, _jitter(rng, (28, 28, 30), 18), _jitter(rng, (225, 225, 220), 20))


def style_hatched(rng, alpha):
    """Engraving-like parallel lines over the paper: a texture, same palette as `ink`."""
    ys, xs = _coords(alpha.shape)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 8)
    phase = (xs * np.cos(angle) + ys * np.sin(angle)) / period + rng.uniform(0, 1)
    lines = (np.sin(2 * np.pi * phase) > 0.45).astype(float) * rng.uniform(35, 60)
    return _paint(alpha, _paper(rng, alpha.shape) - lines[..., None], _dark_ink(rng))


def style_speckled(rng, alpha):
    """Foxing: scattered dark specks, same palette as `ink`."""
    specks = (rng.random(alpha.shape) < rng.uniform(0.03, 0.08)) * rng.uniform(60, 110)
    return _paint(alpha, _paper(rng, alpha.shape) - specks[..., None], _dark_ink(rng))


def style_vignette(rng, alpha):
    """Darkened margins: visible only by comparing the centre with the edges."""
    ys, xs = _coords(alpha.shape)
    h, w = alpha.shape
    r = np.sqrt(((ys - (h - 1) / 2) / (h / 2)) ** 2 + ((xs - (w - 1) / 2) / (w / 2)) ** 2)
    shade = 1 - rng.uniform(0.45, 0.7) * np.clip(r - 0.35, 0, None) ** 1.5
    return _paint(alpha, _paper(rng, alpha.shape) * shade[..., None], _dark_ink(rng))


# Registry, in decreasing frequency (the weights below make the tail).
STYLES: dict[str, Style] = {
    "ink": style_ink, "sepia": style_sepia, "hatched": style_hatched,
    "cyanotype": style_cyanotype, "speckled": style_speckled, "negative": style_negative,
    "vignette": style_vignette, "redprint": style_redprint,
}
STYLE_WEIGHTS = 0.85 ** np.arange(len(STYLES))


# 2020/2021's extra groups, each a function of what the image shows.
PALETTE = {"ink": "paper", "hatched": "paper", "speckled": "paper", "vignette": "paper",
           "sepia": "sepia", "cyanotype": "cyanotype", "redprint": "red", "negative": "negative"}
FIGURES = ("1-figure", "2-figures", "3-figures", "4-figures")


def image_labels(layout: str, style: str, digits: list[int], shape: tuple[int, int]) -> set[str]:
    """The attribute names of one image in `layout`'s label space."""
    if layout == "2019":
        return {f"culture::{style}"} | {f"tag::{d}" for d in digits}
    return ({f"culture::{style}", f"country::{PALETTE[style]}",
             f"dimension::{'portrait' if shape[0] > shape[1] else 'landscape'}",
             f"medium::{FIGURES[len(digits) - 1]}"} | {f"tags::{d}" for d in digits})


def label_names(layout: str = "2019") -> list[str]:
    """labels.csv order: by group, then by name within it (as in iMet)."""
    if layout == "2019":
        return [f"culture::{s}" for s in sorted(STYLES)] + [f"tag::{d}" for d in range(10)]
    return ([f"country::{p}" for p in sorted(set(PALETTE.values()))]
            + [f"culture::{s}" for s in sorted(STYLES)]
            + ["dimension::landscape", "dimension::portrait"]
            + [f"medium::{f}" for f in FIGURES] + [f"tags::{d}" for d in range(10)])


def load_digit_scans() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digit scans: (images float [N, 8, 8] in 0..16, targets int [N]).

    Read straight from the file that `sklearn.datasets.load_digits` reads: importing sklearn
    costs 3-5 s on a busy machine, more than generating the whole default data set."""
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" \
        if spec and spec.submodule_search_locations else None
    if csv is not None and csv.is_file():
        data = np.loadtxt(csv, delimiter=",")
        return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # a future layout: let sklearn find its file

    digits = load_digits()
    return digits.images, digits.target


def _scan_pools(seed: int) -> dict[str, list[np.ndarray]]:
    """Per split, per digit: the 8x8 scans (0..1 float) it may use; train and test disjoint."""
    images, targets = load_digit_scans()
    order = np.random.default_rng([seed, 0]).permutation(len(targets))
    cut = int(len(order) * TRAIN_SCAN_FRACTION)
    return {split: [images[idx[targets[idx] == d]] / 16.0 for d in range(10)]
            for split, idx in (("train", order[:cut]), ("test", order[cut:]))}


def _canvas_shape(rng, size: int) -> tuple[int, int]:
    long_side = int(round(size * np.exp(rng.uniform(0, np.log(MAX_ASPECT)))))
    return (size, long_side) if rng.random() < 0.5 else (long_side, size)


def _place_digits(rng, shape, pools) -> tuple[np.ndarray, list[int]]:
    """Ink coverage [H, W] in 0..1 and the digits drawn (overlap kept small by rejection)."""
    (h, w), alpha = shape, np.zeros(shape, dtype=float)
    boxes, drawn = [], []
    for _ in range(rng.choice(len(DIGITS_PER_IMAGE_P), p=DIGITS_PER_IMAGE_P) + 1):
        digit = int(rng.choice(10, p=DIGIT_WEIGHTS / DIGIT_WEIGHTS.sum()))
        scan = pools[digit][rng.integers(len(pools[digit]))]
        side = max(8, int(round(min(h, w) * rng.uniform(*DIGIT_SCALE))))
        glyph = Image.fromarray((scan * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)
        glyph = np.asarray(glyph.rotate(rng.uniform(-15, 15), Image.BILINEAR), float) / 255
        for _try in range(12):
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            if all(_overlap((y, x, side), b) < 0.15 for b in boxes):
                break
        else:
            if drawn:
                continue  # no room left: fewer digits rather than an unreadable pile
        boxes.append((y, x, side))
        drawn.append(digit)
        region = alpha[y:y + side, x:x + side]
        np.maximum(region, glyph * rng.uniform(0.75, 1.0), out=region)
    return alpha, drawn


def _overlap(a, b) -> float:
    """Intersection over the smaller box, for square boxes (y, x, side)."""
    dy = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dx = min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1])
    return max(dy, 0) * max(dx, 0) / min(a[2], b[2]) ** 2


def render(seed: int, split: str, index: int, size: int, pools
           ) -> tuple[np.ndarray, str, list[int]]:
    """One image: (uint8 [H, W, 3], style, digits)."""
    rng = np.random.default_rng([seed, SPLIT_CODE[split], index])
    alpha, digits = _place_digits(rng, _canvas_shape(rng, size), pools[split])
    style = list(STYLES)[rng.choice(len(STYLES), p=STYLE_WEIGHTS / STYLE_WEIGHTS.sum())]
    image = STYLES[style](rng, alpha)
    image = image + rng.normal(0, rng.uniform(1, 6), image.shape)  # scanner noise
    return np.clip(np.round(image), 0, 255).astype(np.uint8), style, digits


def image_id(seed: int, split: str, index: int) -> str:
    """16 hex digits, like iMet's ids."""
    return hashlib.sha256(f"mini-imet:{seed}:{split}:{index}".encode()).hexdigest()[:16]


def _write_csv(path: Path, header: str, rows) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(header + "\n")
        f.writelines(f"{a},{b}\n" for a, b in rows)


def _build(folder: Path, params: dict) -> dict:
    seed, size, year = params["seed"], params["size"], params["layout"]
    names = label_names(year)
    attr_of, layout = {name: i for i, name in enumerate(names)}, year_layout(folder, year)
    _write_csv(layout.labels_csv, "attribute_id,attribute_name", enumerate(names))
    pools, truth = _scan_pools(seed), {}
    for split in ("train", "test"):
        layout.split_dir(split).mkdir(parents=True)
        rows = []
        for index in range(params[f"n_{split}"]):
            image, style, digits = render(seed, split, index, size, pools)
            iid = image_id(seed, split, index)
            Image.fromarray(image).save(layout.image_path(split, iid), **PNG_SETTINGS)
            attrs = sorted(attr_of[n] for n in image_labels(year, style, digits, image.shape[:2]))
            rows.append((iid, " ".join(map(str, attrs))))
        truth[split] = sorted(rows)  # iMet's CSVs are sorted by id
    _write_csv(layout.train_csv, "id,attribute_ids", truth["train"])
    _write_csv(layout.test_labels_csv, "id,attribute_ids", truth["test"])
    _write_csv(layout.sample_submission_csv, "id,attribute_ids",
               ((iid, "0 1 2") for iid, _ in truth["test"]))
    n_labels = [len(a.split()) for split in truth.values() for _, a in split]
    summary = {"generator": "mini-imet", "version": GENERATOR_VERSION, **params,
               "num_classes": len(names),
               "groups": {g: sum(n.startswith(g + "::") for n in names)
                          for g in dict.fromkeys(n.split("::")[0] for n in names)},
               "files": layout.describe(),
               "mean_labels_per_image": round(float(np.mean(n_labels)), 3)}
    (folder / MANIFEST).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary


def _validate(n_train, n_test, size, seed, layout) -> dict:
    if not 1 <= n_train <= 200_000 or not 1 <= n_test <= 200_000:
        raise UserError(f"--n-train/--n-test must be between 1 and 200000 (got {n_train}, "
                        f"{n_test})")
    if not 16 <= size <= 1024:
        raise UserError(f"--size must be between 16 and 1024 pixels (got {size})")
    if seed < 0:
        raise UserError(f"--seed must be >= 0 (got {seed})")
    if layout not in LAYOUTS:
        raise UserError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    return {"n_train": int(n_train), "n_test": int(n_test), "size": int(size), "seed": int(seed),
            "layout": layout}


def read_manifest(out: Path) -> dict | None:
    return read_json_object(Path(out) / MANIFEST)


def generate(out, n_train: int = DEFAULTS["n_train"], n_test: int = DEFAULTS["n_test"],
             size: int = DEFAULTS["size"], seed: int = DEFAULTS["seed"],
             force: bool = False, layout: str = DEFAULTS["layout"]) -> dict:
    """Write mini-iMet into `out`; returns its manifest plus `reused` (True when `out` already
    held this exact data set, which is then left untouched)."""
    out = Path(out)
    params = _validate(n_train, n_test, size, seed, layout)
    existing = read_manifest(out)
    if existing and existing.get("version") == GENERATOR_VERSION and \
            all({"layout": "2019", **existing}.get(k) == v for k, v in params.items()) and \
            not force:
        return {"layout": "2019", "files": year_layout(out, "2019").describe(), **existing,
                "out": str(out), "reused": True}
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        what = "another mini-iMet" if existing else "files"
        raise UserError(f"{out}: already holds {what}; pass --force to replace it or choose "
                        "another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()

    try:
        summary = _build(partial, params)
        move_folder_into_place(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return {**summary, "out": str(out), "reused": False}
