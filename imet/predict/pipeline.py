"""Test-set prediction: runs (or saved probabilities) -> ensemble -> thresholds -> submission.csv,
and the pieces validate and pseudo-label share with it: a trained run as inference sees it (a
model file, its label space, image size and fold), opening and checking every member before
any inference, ensembles, and thresholds.json. Kernels call `predict_run` (one model over a list
of images) and `predict_test` (the whole `imet predict`) directly."""
from __future__ import annotations

import dataclasses
import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from imet.data.labels import CompetitionLayout, LabelSpace, find_layout, read_labels, read_sample_submission
from imet.config import format_duration
from imet.data.transforms import Normalization
from imet.device import device_precision, resolve_device
from imet.errors import CheckpointError, DataError, UserError
from imet.fileio import atomic_write_text
from imet.metrics.f2 import binarize
from imet.metrics.submission_io import format_rows, write_submission
from imet.models.modelfile import load_model_file, model_file_of
from imet.predict.infer import (Log, Throughput, auto_batch_size, build_loader, check_images_exist,
                                log_stderr, parse_tta, predict_probs)
from imet.probfile import ENSEMBLE_PROBS, Probabilities, load_probabilities, save_probabilities

THRESHOLDS_FILE = "thresholds.json"


@dataclass
class Run:
    name: str
    path: Path  # the model file
    model: torch.nn.Module
    info: dict[str, Any]
    labels: LabelSpace

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.info.get("config") or {})

    @property
    def arch(self) -> str:
        return str(self.info.get("arch") or self.config.get("arch") or "?")

    @property
    def image_size(self) -> int:
        size = self.config.get("image_size")
        if not size:
            raise CheckpointError(f"{self.path}: field config.image_size missing; pass "
                                  "--image-size or re-export the model with `imet train`")
        return int(size)

    @property
    def fold(self) -> int | None:
        fold = self.config.get("fold")
        return None if fold is None else int(fold)


def load_run(run: Path, device: torch.device | str = "cpu", expected: LabelSpace | None = None,
             expected_source: Path | None = None, name: str = "") -> Run:
    """Load a run's model for inference, checking its label space against labels.csv. `name`:
    what logs and saved probabilities call it (the caller knows its other sources)."""
    path = model_file_of(Path(run))
    try:
        model, info = load_model_file(path, device=device)
    except UserError:
        raise
    except Exception as err:  # torch raises many types for a foreign or truncated file
        raise CheckpointError(f"{path}: unreadable model file ({type(err).__name__}); "
                              "copy it again or retrain") from None
    try:
        labels = info["labels"]
        labels = labels if isinstance(labels, LabelSpace) else LabelSpace.from_dict(labels)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: field labels missing or malformed ({err}); "
                              "not an imet model file") from None
    if expected is not None and labels.fingerprint() != expected.fingerprint():
        only_model = len(set(labels.attribute_ids) - set(expected.attribute_ids))
        only_csv = len(set(expected.attribute_ids) - set(labels.attribute_ids))
        raise CheckpointError(
            f"{path}: the model's label space ({labels.summary()}) is not the one of "
            f"{expected_source or Path('labels.csv')} ({expected.summary()}; {only_model} "
            f"attribute ids only in the model, {only_csv} only in the CSV, or names/order "
            "differ: another competition?); use a model trained on this labels table")
    return Run(name, path, model, info, labels)


# Ensembles of runs of different folds, archs and image sizes: `mean` averages probabilities.
# `rank` averages per-class ranks, which ignores how differently calibrated the members are (a
# focal-loss model and a BCE model disagree on scale, not on order). Raw averaged ranks would make
# probability thresholds meaningless, so the rank ensemble is mapped back, class by class, onto
# the value distribution of the mean ensemble: the same ordering as the rank average, on a scale
# where thresholds chosen on probabilities still apply.

def mean_ensemble(arrays: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Weighted mean of [N, C] arrays, accumulated one member at a time (no [M, N, C] stack:
    five 38k x 1103 members would need gigabytes)."""
    total = np.zeros(arrays[0].shape, dtype=np.float32)
    for weight, array in zip(weights, arrays):
        total += weight * array
    return total


_CLASS_BLOCK = 128  # classes ranked at a time: bounds the temporary arrays to ~40 MB at 38k
_F16_ONE = 0x3C00  # float16 bit pattern of 1.0: codes 0..0x3C00 are [0, 1] in value order


def average_ranks(rows: np.ndarray) -> np.ndarray:
    """0-based ranks along axis 1 of [K, N] probabilities in [0, 1], at float16 resolution (the
    precision of saved probability files), ties sharing their average rank as in scipy's
    rankdata(method="average"). Counting instead of sorting: a non-negative float16's bit
    pattern orders like its value, so one bincount per row gives every rank, O(N) not
    O(N log N) -- ~20x faster than argsort at 38k rows."""
    if rows.size and (np.nanmin(rows) < 0 or np.nanmax(rows) > 1 or np.isnan(rows).any()):
        raise ValueError("rank ensemble needs probabilities in [0, 1]")
    k, n = rows.shape
    bins = _F16_ONE + 1
    codes = rows.astype(np.float16).view(np.uint16).astype(np.int64)
    offsets = (np.arange(k, dtype=np.int64) * bins)[:, None]
    counts = np.bincount((codes + offsets).ravel(), minlength=k * bins).reshape(k, bins)
    table = (np.cumsum(counts, axis=1) - counts) + (counts - 1) / 2.0
    return np.take_along_axis(table, codes, axis=1)


def rank_ensemble(arrays: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Weighted mean rank per class, mapped onto the mean ensemble's values: the mean's
    sorted values of that class are the ladder, a fractional rank interpolates on it."""
    n = arrays[0].shape[0]
    mean = mean_ensemble(arrays, weights)
    if n < 2:
        return mean
    out = np.empty_like(mean)
    for c0 in range(0, mean.shape[1], _CLASS_BLOCK):
        block = slice(c0, c0 + _CLASS_BLOCK)
        # classes as contiguous rows: sorting along a strided column axis is ~2x slower
        position = np.zeros((mean[:, block].shape[1], n), dtype=np.float64)
        for weight, array in zip(weights, arrays):
            position += weight * average_ranks(np.ascontiguousarray(array[:, block].T))
        np.clip(position, 0.0, n - 1, out=position)
        ladder = np.sort(np.ascontiguousarray(mean[:, block].T), axis=1)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, n - 1)
        frac = (position - low).astype(np.float32)
        below = np.take_along_axis(ladder, low, axis=1)
        above = np.take_along_axis(ladder, high, axis=1)
        out[:, block] = (below + frac * (above - below)).T
    return out


ENSEMBLES = {"mean": mean_ensemble, "rank": rank_ensemble}


def ensemble(members: Sequence[Probabilities], method: str = "mean",
             weights: Sequence[float] | None = None,
             names: Sequence[str] | None = None) -> Probabilities:
    """Combine prediction sets over the same images (rows aligned by id) and label space."""
    if not members:
        raise UserError("ensemble: no prediction sets given; pass at least one run")
    if method not in ENSEMBLES:
        raise UserError(f"ensemble: unknown method {method!r}; choose one of {sorted(ENSEMBLES)}")
    names = list(names or [m.meta.get("name", f"member {k}") for k, m in enumerate(members)])
    ref = members[0]
    for member, name in zip(members[1:], names[1:]):
        if member.attribute_ids != ref.attribute_ids or (
                member.labels_fingerprint and ref.labels_fingerprint
                and member.labels_fingerprint != ref.labels_fingerprint):
            only_ref = sorted(set(ref.attribute_ids) - set(member.attribute_ids))
            only_new = sorted(set(member.attribute_ids) - set(ref.attribute_ids))
            detail = (f"{len(only_ref)} attribute ids only in {names[0]}, {len(only_new)} only "
                      f"here" if only_ref or only_new else "same ids in another order/names")
            raise UserError(f"{name}: label space differs from {names[0]} "
                            f"({len(member.attribute_ids)} vs {len(ref.attribute_ids)} classes, "
                            f"{detail}); ensemble only runs trained on the same labels table")
    weights = np.asarray([1.0] * len(members) if weights is None else weights, dtype=np.float64)
    if weights.shape != (len(members),) or np.any(weights < 0) or weights.sum() <= 0:
        raise UserError(f"--member-weights: need {len(members)} non-negative weights with a "
                        f"positive sum, got {weights.tolist()}")
    weights = (weights / weights.sum()).astype(np.float32)
    ids = members[0].ids
    for member, name in zip(members[1:], names[1:]):
        if len(member.ids) != len(ids) or set(member.ids) != set(ids):
            raise UserError(f"{name}: predicted {len(member.ids)} images, {names[0]} "
                            f"{len(ids)}, not the same set; predict every member on the same data")
    aligned = [m.reorder(ids, source=n) for m, n in zip(members, names)]
    combined = (aligned[0].probs.astype(np.float32) if len(aligned) == 1
                else ENSEMBLES[method]([m.probs for m in aligned], weights))
    meta = {"labels_fingerprint": members[0].labels_fingerprint,
            "ensemble": method if len(members) > 1 else None,
            "members": [dict(m.meta, name=n) for m, n in zip(members, names)],
            "weights": weights.tolist()}
    return Probabilities(list(ids), combined, members[0].attribute_ids, meta)


def check_sample_ids(sample_ids: Sequence[str], source: str) -> list[str]:
    """The ids as a list; DataError naming `source` when empty or when an id repeats."""
    sample_ids = [str(i) for i in sample_ids]
    if not sample_ids:
        raise DataError(f"{source}: no rows; it must list every test image id "
                        "(download the competition's sample_submission.csv again)")
    seen: set[str] = set()
    for row, image_id in enumerate(sample_ids, start=2):
        if image_id in seen:
            raise DataError(f"{source}: row {row}: id {image_id!r} appears twice; each test image "
                            "must be listed once")
        seen.add(image_id)
    return sample_ids


def make_submission(sample_ids: Sequence[str], probabilities: Probabilities,
                    thresholds: float | np.ndarray, min_labels: int = 1,
                    max_labels: int | None = None, source: str = "sample_submission.csv",
                    context: float = 0.0) -> tuple[list[str], list[str]]:
    """(ids in sample order, decoded label strings) for submission.csv: every test image once,
    in sample_submission order. Every sample id must have a prediction."""
    sample_ids = check_sample_ids(sample_ids, source)
    aligned = probabilities.reorder(sample_ids, source="predictions")
    binary = binarize(aligned.probs, thresholds, min_labels, max_labels, context)
    return sample_ids, format_rows(binary, aligned.attribute_ids)


# thresholds.json: the decoding `validate` chose, read by `predict`.
# {"format": "imet-thresholds", "version": 1, "mode": "global"|"group"|"class"|"context",
#  "thresholds": [C floats, one per attribute id in labels.csv order],
#  "context": r (per-image thresholds max(t, r * the image's top probability); 0: none),
#  "attribute_ids": [C ints], "labels_fingerprint": str, "min_labels": int, "max_labels": int|null,
#  "tta": [...], "runs": [...], "scores": {...}}
# The full per-class vector is always written (even for a global threshold) so `predict` never has
# to know how it was chosen; the attribute ids make a file from another label space detectable.

THRESHOLDS_FORMAT = "imet-thresholds"
THRESHOLDS_VERSION = 1


def write_thresholds(path: Path, thresholds: np.ndarray, attribute_ids: Sequence[int],
                     labels_fingerprint: str | None, mode: str, min_labels: int = 1,
                     max_labels: int | None = None, context: float = 0.0,
                     **extra: Any) -> Path:
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thresholds.size == 1:
        thresholds = np.full(len(attribute_ids), float(thresholds[0]))
    document = {"format": THRESHOLDS_FORMAT, "version": THRESHOLDS_VERSION, "mode": mode,
                "min_labels": int(min_labels),
                "max_labels": None if max_labels is None else int(max_labels),
                "context": round(float(context), 6), "labels_fingerprint": labels_fingerprint,
                **extra, "attribute_ids": [int(a) for a in attribute_ids],
                "thresholds": [round(float(t), 6) for t in thresholds]}
    atomic_write_text(Path(path), json.dumps(document, indent=1) + "\n")
    return Path(path)


def read_thresholds(path: Path, attribute_ids: Sequence[int] | None = None,
                    labels_fingerprint: str | None = None) -> dict[str, Any]:
    """The document with `thresholds` as a float32 array; UserError naming the file when it is
    unreadable, not a thresholds file, or made for another label space."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: thresholds file not found; run `imet validate` to write one "
                        "or pass --threshold") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: unreadable thresholds file ({type(err).__name__}: {err}); "
                        "run `imet validate` again") from None
    if not isinstance(document, dict) or document.get("format") != THRESHOLDS_FORMAT:
        raise UserError(f"{path}: not an imet thresholds file (no \"format\": "
                        f"\"{THRESHOLDS_FORMAT}\"); run `imet validate` to write one")
    try:
        values = np.asarray(document["thresholds"], dtype=np.float32)
        file_ids = [int(a) for a in document["attribute_ids"]]
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: field {err} missing or malformed; run `imet validate` again") \
            from None
    if values.shape != (len(file_ids),) or not np.all(np.isfinite(values)):
        raise UserError(f"{path}: field \"thresholds\" must hold {len(file_ids)} finite numbers; "
                        "run `imet validate` again")
    context = document.get("context", 0.0)
    if not isinstance(context, (int, float)) or not 0.0 <= context <= 1.0:
        raise UserError(f"{path}: field \"context\" must be a number from 0 to 1; run "
                        "`imet validate` again")
    document["context"] = float(context)
    if attribute_ids is not None and file_ids != [int(a) for a in attribute_ids]:
        raise UserError(f"{path}: thresholds are for {len(file_ids)} other attribute ids, the "
                        f"models predict {len(attribute_ids)}; validate the same runs again")
    if (labels_fingerprint and document.get("labels_fingerprint")
            and document["labels_fingerprint"] != labels_fingerprint):
        raise UserError(f"{path}: field \"labels_fingerprint\" differs from the models' label "
                        "space; validate the same runs again")
    document["thresholds"] = values
    return document


@dataclass
class InferenceOptions:
    tta: tuple[str, ...] = ("none",)
    device: str = "auto"
    batch_size: int | None = None  # None: the largest that fits (CUDA) / 32 (CPU)
    num_workers: int | None = None
    image_size: int | None = None  # None: each run's training image size
    time_limit_s: float | None = None
    log_every_s: float = 30.0
    amp_dtype: str | None = None  # None: each run's own --amp/--amp-dtype


def predict_run(run: Run, image_paths: Sequence[Path], ids: Sequence[str],
                options: InferenceOptions, log: Log = log_stderr,
                split: str = "test", progress_label: str | None = None) -> Probabilities:
    """One run's TTA-averaged probabilities over `image_paths` (rows in `ids` order)."""
    tta = parse_tta(options.tta)
    device = resolve_device(options.device)
    # the precision `run` trained with, as its --amp/--amp-dtype give it on `device` (a T4
    # predicts in fp16, an A100 in bf16); --amp-dtype given to predict/validate wins
    amp = (True, options.amp_dtype) if options.amp_dtype is not None else (
        bool(run.config.get("amp", True)), str(run.config.get("amp_dtype", "auto")))
    precision = device_precision(device, *amp)
    size = options.image_size or run.image_size
    batch = options.batch_size or auto_batch_size(run.model, size, len(tta), device,
                                                  precision=precision)
    loader = build_loader(image_paths, size, batch, options.num_workers,
                          pin_memory=device.type == "cuda",
                          preset=str(run.config.get("preset") or "resize"))
    label = progress_label or f"predict {run.name}"
    log(f"{label}: {len(ids)} {split} images, {run.arch} at {size}px, TTA {','.join(tta)}, "
        f"batch {batch}, {device}, {precision.name}")
    progress = Throughput(len(ids), log, options.log_every_s, options.time_limit_s, label)
    start = time.perf_counter()
    probs = predict_probs(run.model, loader, tta, device, precision, progress=progress,
                          norm=Normalization.from_info(run.info))
    seconds = time.perf_counter() - start
    meta = {"name": run.name, "model": str(run.path), "arch": run.arch, "image_size": size,
            "fold": run.fold, "labels_fingerprint": run.labels.fingerprint(), "tta": list(tta),
            "split": split, "seconds": round(seconds, 3),
            "img_per_s": round(len(ids) / max(seconds, 1e-9), 2)}
    return Probabilities(list(ids), probs, run.labels.attribute_ids, meta)


def is_probabilities_file(source: Path) -> bool:
    return Path(source).suffix == ".npz"


def source_names(sources: Sequence[Path]) -> list[str]:
    """Each source's name (file stem, run folder), a repeat suffixed -2, -3, ..."""
    seen: dict[str, int] = {}
    out = []
    for s in sources:
        name = Path(s).stem if is_probabilities_file(s) else (
            Path(s).parent.name if Path(s).is_file() else Path(s).name)
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def open_member(source: Path, name: str, labels: LabelSpace, labels_csv: Path,
                command: str) -> Run | Probabilities:
    """A run loaded on the CPU, or saved probabilities, checked against the label space of
    `labels_csv` and named `name`. `command` (predict, validate) is what the user runs again."""
    source = Path(source)
    if is_probabilities_file(source):
        probs = load_probabilities(source)
        if probs.attribute_ids != labels.attribute_ids or (
                probs.labels_fingerprint and probs.labels_fingerprint != labels.fingerprint()):
            raise UserError(f"{source}: probabilities are for another label space than "
                            f"{labels_csv}; {command} again with models trained on it")
        probs.meta["name"] = name
        return probs
    return load_run(source, device="cpu", expected=labels, expected_source=labels_csv,
                    name=name)


def store_member(run: Run, probs: Probabilities, save_dir: Path | None) -> Probabilities:
    """`probs` at the saved file's precision (an ensemble rebuilt later from the .npz files is
    bit-identical to this one), saved to `save_dir/<name>.npz` at once (a later crash keeps
    them); `run`'s model is freed before the next one loads."""
    probs.probs = probs.probs.astype(np.float16).astype(np.float32)
    probs.meta["name"] = run.name
    if save_dir is not None:
        save_probabilities(Path(save_dir) / f"{run.name}.npz", probs)
    # The model's CPU memory goes with the last reference (imet's nets hold no reference
    # cycles); a full gc (~0.1 CPU-s with torch and matplotlib loaded) only where CUDA's cache
    # must go back too.
    on_cuda = any(p.is_cuda for p in run.model.parameters())
    run.model.to("cpu")
    del run.model
    if on_cuda:
        gc.collect()
        torch.cuda.empty_cache()
    return probs


def infer_members(loaded: Sequence[Run | Probabilities], ids: Sequence[str],
                  image_paths: Sequence[Path], options: InferenceOptions,
                  probs_dir: Path | None, log: Log = log_stderr) -> list[Probabilities]:
    """Probabilities of every member over the test images `ids`, each named in meta["name"]."""
    members = []
    for item in loaded:
        if isinstance(item, Probabilities):
            log(f"{item.meta['name']}: loaded {len(item.ids)} saved "
                f"{item.meta.get('split', '')} predictions")
            members.append(item)
        else:
            members.append(store_member(item, predict_run(item, image_paths, ids, options,
                                                          log, "test"), probs_dir))
    return members


@dataclass
class Decoding:
    thresholds: np.ndarray | float
    min_labels: int
    max_labels: int | None
    source: str
    context: float = 0.0


def resolve_decoding(members: Sequence[Run | Probabilities], labels: LabelSpace,
                     thresholds_file: Path | None, threshold: float | None, min_labels: int | None,
                     max_labels: int | None, log: Log = log_stderr) -> Decoding:
    """--threshold, else --thresholds FILE, else each run's thresholds.json (averaged over the
    members), else the thresholds training found on each fold (averaged, with a warning).
    Resolved before inference, so a missing file fails before hours of work, not after."""
    train_thresholds = []  # the best global threshold training found on its fold, if recorded
    for m in members:
        extra = (m.info.get("extra") or {}) if isinstance(m, Run) else {}
        value = extra.get("threshold", extra.get("best_threshold"))
        train_thresholds.append(None if value is None else float(value))
    if threshold is not None:
        chosen = Decoding(float(threshold), 1, None, f"--threshold {threshold}")
    elif thresholds_file is not None:
        doc = read_thresholds(thresholds_file, labels.attribute_ids, labels.fingerprint())
        chosen = Decoding(doc["thresholds"], doc.get("min_labels", 1), doc.get("max_labels"),
                          str(thresholds_file), doc["context"])
    else:
        files = [m.path.parent / THRESHOLDS_FILE for m in members if isinstance(m, Run)]
        found = [f for f in files if f.is_file()]
        if found and len(found) == len(members):
            docs = [read_thresholds(f, labels.attribute_ids, labels.fingerprint()) for f in found]
            mean = np.mean([d["thresholds"] for d in docs], axis=0)
            chosen = Decoding(mean, docs[0].get("min_labels", 1), docs[0].get("max_labels"),
                              ", ".join(map(str, found)),
                              context=float(np.mean([d["context"] for d in docs])))
        elif all(t is not None for t in train_thresholds):
            value = float(np.mean(train_thresholds))
            log(f"predict: WARNING: no thresholds.json for every run; using the threshold "
                f"training chose on its fold ({value:.3f}); run `imet validate` for a better one")
            chosen = Decoding(value, 1, None, "training's best threshold")
        else:
            missing = next((f for f in files if not f.is_file()), None)
            raise UserError(f"{missing or 'predict'}: no thresholds for "
                            f"{'this run' if missing else 'saved probabilities'}; run `imet "
                            "validate` first, or pass --thresholds FILE or --threshold X")
    if min_labels is not None:
        chosen.min_labels = int(min_labels)
    if max_labels is not None:
        chosen.max_labels = int(max_labels) if max_labels > 0 else None
    return chosen


@dataclass
class TestSet:
    layout: CompetitionLayout
    labels: LabelSpace
    ids: list[str]
    paths: list[Path]
    members: list[Run | Probabilities]  # opened, checked, not yet inferred


def open_test(data: Path, sources: Sequence[Path], command: str = "predict") -> TestSet:
    """The test images of `data` (sample_submission.csv order) and the `sources` opened and
    checked against its label space: every refusal before any inference."""
    if not sources:
        raise UserError(f"{command}: no runs given; pass --runs RUN_DIR [RUN_DIR ...]")
    layout = find_layout(data, train=False)
    labels = read_labels(layout.labels_csv)
    ids = check_sample_ids(read_sample_submission(layout.sample_submission_csv),
                           str(layout.sample_submission_csv))
    paths = layout.image_paths("test", ids)
    if any(not is_probabilities_file(s) for s in sources):
        check_images_exist(paths, str(layout.sample_submission_csv))
    # a foreign model given last fails in seconds, not after hours of predicting the others
    members = []
    for source, name in zip(sources, source_names(sources)):
        item = open_member(source, name, labels, layout.labels_csv, "predict")  # on the CPU
        members.append(item.reorder(list(ids), source=str(source))
                       if isinstance(item, Probabilities) else item)
    return TestSet(layout, labels, ids, paths, members)


# `imet predict --time-budget`: when the whole ensemble (every run x every TTA view) would not
# fit, what goes first is imet.predict.DROP_ORDER. The first run with the first view always runs, so a submission always comes out; saved
# probabilities cost nothing and always stay. Each run's cost is measured on its first batches
# with one view, the image decoding included, and every view is charged that much: an over-
# estimate where decoding dominates, on the side of finishing in time.
PROBE_BATCHES = 2
# Kept free at the end of the budget: the ensemble, the submission and the probability files.
RESERVE_FRACTION = 0.05


@dataclass
class InferencePlan:
    """Which runs predict with which TTA views, and what was left out to fit the budget."""
    views: dict[int, tuple[str, ...]]  # member index -> its views (runs kept only)
    dropped_views: tuple[str, ...]
    dropped_runs: list[int]
    estimate_s: float
    budget_s: float

    def describe(self, names: Sequence[str]) -> str:
        """The one line said before the long work starts."""
        kept = [names[i] for i in self.views]
        views = next(iter(self.views.values()), ())
        left = [f"TTA {','.join(self.dropped_views)}"] if self.dropped_views else []
        left += [f"run {names[i]}" for i in self.dropped_runs]
        work = (f"{len(kept)} run(s) x TTA {','.join(views)}, about "
                f"{format_duration(self.estimate_s)}" if kept else "saved probabilities only")
        return (f"predict: plan for a {format_duration(self.budget_s)} budget: {work}; "
                + (f"left out: {'; '.join(left)}" if left else "nothing left out"))


def plan_inference(costs: Sequence[float | None], n_images: int, tta: Sequence[str],
                   budget_s: float) -> InferencePlan:
    """The plan that fits `budget_s`: `costs` are each member's measured seconds per image and
    view (None: saved probabilities, free), dropping in imet.predict.DROP_ORDER until the
    estimate fits."""
    runs = [i for i, cost in enumerate(costs) if cost is not None]
    views, dropped_runs = list(tta), []

    def estimate() -> float:
        return sum(costs[i] * n_images * len(views) for i in runs)

    while estimate() > budget_s and len(views) > 1:
        views.pop()
    while estimate() > budget_s and len(runs) > 1:
        dropped_runs.insert(0, runs.pop())
    return InferencePlan({i: tuple(views) for i in runs}, tuple(tta[len(views):]),
                         dropped_runs, estimate(), budget_s)


def measure_cost(run: Run, paths: Sequence[Path], ids: Sequence[str], options: InferenceOptions,
                 log: Log) -> float:
    """Seconds per image and view of `run` on its first batches (one view, decoding and the
    model's move to the device included)."""
    size = options.image_size or run.image_size
    batch = options.batch_size or auto_batch_size(run.model, size, 1, resolve_device(
        options.device))
    count = min(len(ids), PROBE_BATCHES * batch)
    probe = dataclasses.replace(options, tta=tuple(parse_tta(options.tta))[:1], log_every_s=1e9)
    start = time.perf_counter()
    predict_run(run, paths[:count], ids[:count], probe, lambda _: None, "test")
    seconds = time.perf_counter() - start
    log(f"predict {run.name}: {count / seconds:.1f} img/s with one view on its first "
        f"{count} images")
    return seconds / count


def predict_test(data: Path, sources: Sequence[Path], out: Path, *, method: str = "mean",
                 weights: Sequence[float] | None = None, options: InferenceOptions | None = None,
                 thresholds_file: Path | None = None, threshold: float | None = None,
                 min_labels: int | None = None, max_labels: int | None = None,
                 probs_dir: Path | None = None, time_budget_s: float | None = None,
                 log: Log = log_stderr) -> dict[str, Any]:
    """The whole `imet predict`: returns a summary (also the run-registry record's body).
    `time_budget_s`: plan runs x TTA views to fit it (see DROP_ORDER); the submission is then
    written after each run, so one is there whenever the session ends."""
    options = options or InferenceOptions()
    start = time.perf_counter()
    test = open_test(data, sources)
    out = Path(out)
    probs_dir = Path(probs_dir) if probs_dir is not None else out.parent / "test_probs"
    decoding = resolve_decoding(test.members, test.labels, thresholds_file, threshold,
                                min_labels, max_labels, log)
    names = [m.name if isinstance(m, Run) else m.meta["name"] for m in test.members]
    tta = tuple(parse_tta(options.tta))
    weights = list(weights) if weights is not None else [1.0] * len(test.members)
    plan = None

    def seconds_left() -> float:
        return time_budget_s * (1 - RESERVE_FRACTION) - (time.perf_counter() - start)

    def submit() -> tuple[Probabilities, list[str]]:
        """The ensemble of the members done so far, written as the submission."""
        combined = ensemble(done, method, [weights[i] for i in used])
        rows_ids, rows = make_submission(test.ids, combined, decoding.thresholds,
                                         decoding.min_labels, decoding.max_labels,
                                         str(test.layout.sample_submission_csv), decoding.context)
        write_submission(out, rows_ids, rows)
        return combined, rows

    if time_budget_s is not None:
        costs = [measure_cost(m, test.paths, test.ids, options, log) if isinstance(m, Run)
                 else None for m in test.members]
        plan = plan_inference(costs, len(test.ids), tta, seconds_left())
        plan.budget_s = time_budget_s
        log(plan.describe(names))
    done: list[Probabilities] = []
    used: list[int] = []
    skipped: list[int] = []
    # how much slower the runs so far went than their probes said (a busy machine, a probe on
    # easy images): the runs still to come are charged as much more
    spent = estimated = 0.0
    for index, item in enumerate(test.members):
        if isinstance(item, Run):
            if plan is not None and index not in plan.views:
                continue
            views = plan.views[index] if plan is not None else tta
            if plan is not None and done:
                # The estimate was measured on a few batches: a run that no longer fits what is
                # left is dropped too, rather than the session ending with no submission.
                left = seconds_left()
                slowdown = max(1.0, spent / estimated) if estimated else 1.0
                if costs[index] * len(test.ids) * len(views) * slowdown > left:
                    log(f"predict: {item.name} no longer fits the {format_duration(left)} left; "
                        "left out")
                    skipped.append(index)
                    continue
            began = time.perf_counter()
            probs = predict_run(item, test.paths, test.ids,
                                dataclasses.replace(options, tta=views), log, "test")
            if plan is not None:
                spent += time.perf_counter() - began
                estimated += costs[index] * len(test.ids) * len(views)
            done.append(store_member(item, probs, probs_dir))
        else:
            log(f"{item.meta['name']}: loaded {len(item.ids)} saved "
                f"{item.meta.get('split', '')} predictions")
            done.append(item)
        used.append(index)
        if plan is not None:  # a submission after each member: one is there if the session ends
            combined, rows = submit()
    if plan is None:
        combined, rows = submit()
    combined.meta["split"] = "test"
    if len(done) > 1:
        save_probabilities(probs_dir / ENSEMBLE_PROBS, combined)
    labels_per_image = float(np.mean([len(r.split()) for r in rows]))
    seconds = time.perf_counter() - start
    left_out = []
    if plan is not None:
        left_out = ([f"TTA {view} of every run" for view in plan.dropped_views]
                    + [f"run {names[i]}" for i in sorted(plan.dropped_runs + skipped)])
    log(f"predict: wrote {out} ({len(rows)} images, {labels_per_image:.2f} labels per image, "
        f"{len(done)} member(s), {method if len(done) > 1 else 'single run'}, "
        f"{seconds:.1f}s" + (f"; left out to fit the budget: {'; '.join(left_out)}"
                             if left_out else "") + ")")
    return {"kind": "predict", "submission": str(out), "probs_dir": str(probs_dir),
            "images": len(rows), "labels_per_image": round(labels_per_image, 3),
            "ensemble": method if len(done) > 1 else None, "weights": combined.meta["weights"],
            "runs": [m.meta for m in done], "tta": list(tta),
            "thresholds": decoding.source, "min_labels": decoding.min_labels,
            "max_labels": decoding.max_labels, "context": decoding.context,
            "time_budget_s": time_budget_s, "left_out": left_out,
            "labels_fingerprint": test.labels.fingerprint(), "seconds": round(seconds, 2)}
