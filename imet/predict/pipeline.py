"""Test-set prediction: runs (or saved probabilities) -> ensemble -> thresholds -> submission.csv.

The functions kernels call directly: `predict_run` (one model over a list of images) and
`predict_test` (the whole `imet predict`).
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from imet.data.labels import LabelSpace, read_labels, read_sample_submission
from imet.data.layout import CompetitionLayout
from imet.data.transforms import Normalization
from imet.engine.precision import Precision, device_precision
from imet.errors import UserError
from imet.predict.ensemble import ensemble
from imet.predict.infer import (Log, Throughput, auto_batch_size, build_loader, check_images_exist,
                                log_stderr, parse_tta, predict_probs, resolve_device)
from imet.probfile import ENSEMBLE_PROBS, Probabilities, load_probabilities, save_probabilities
from imet.predict.runs import THRESHOLDS_FILE, Run, load_run
from imet.predict.submission import check_sample_ids, make_submission, write_submission
from imet.predict.thresholdfile import read_thresholds


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
    precision = run_precision(run, options, device)
    size = options.image_size or run.image_size
    batch = options.batch_size or auto_batch_size(run.model, size, len(tta), device,
                                                  precision=precision)
    loader = build_loader(image_paths, size, batch, options.num_workers,
                          pin_memory=device.type == "cuda", preset=run.preset)
    label = progress_label or f"predict {run.name}"
    log(f"{label}: {len(ids)} {split} images, {run.arch} at {size}px, TTA {','.join(tta)}, "
        f"batch {batch}, {device}, {precision.name}")
    progress = Throughput(len(ids), log, options.log_every_s, options.time_limit_s, label)
    start = time.perf_counter()
    probs = predict_probs(run.model, loader, tta, device, precision, progress=progress,
                          norm=Normalization.from_info(run.info))
    seconds = time.perf_counter() - start
    meta = dict(run.describe(), tta=list(tta), image_size=size, split=split,
                seconds=round(seconds, 3), img_per_s=round(len(ids) / max(seconds, 1e-9), 2))
    return Probabilities(list(ids), probs, run.labels.attribute_ids, meta)


def run_precision(run: Run, options: InferenceOptions, device: torch.device) -> Precision:
    """The precision `run` trained with, as `--amp`/`--amp-dtype` give it on `device` (so a
    T4 predicts in fp16, an A100 in bf16); `--amp-dtype` given to predict/validate wins."""
    if options.amp_dtype is not None:
        return device_precision(device, True, options.amp_dtype)
    config = run.config
    return device_precision(device, bool(config.get("amp", True)),
                            str(config.get("amp_dtype", "auto")))


def _free(run: Run) -> None:
    """Drop the member's model before the next one loads. Its CPU memory goes with the last
    reference (imet's nets hold no reference cycles); a full gc (~0.1 CPU-s in a process that
    holds torch and matplotlib) runs only where the GPU's cached memory must go back too."""
    on_cuda = any(p.is_cuda for p in run.model.parameters())
    run.model.to("cpu")
    del run.model
    if on_cuda:
        gc.collect()
        torch.cuda.empty_cache()


def unique_names(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def is_probabilities_file(source: Path) -> bool:
    return Path(source).suffix == ".npz"


def source_names(sources: Sequence[Path]) -> list[str]:
    return unique_names([Path(s).stem if is_probabilities_file(s) else
                         (Path(s).parent.name if Path(s).is_file() else Path(s).name)
                         for s in sources])


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


def open_members(sources: Sequence[Path], ids: Sequence[str], labels: LabelSpace,
                 labels_csv: Path) -> list[Run | Probabilities]:
    """Every source opened and checked before any inference: a foreign model given last must
    fail in seconds, not after hours of predicting the others. Runs stay on the CPU."""
    loaded: list[Run | Probabilities] = []
    for source, name in zip(sources, source_names(sources)):
        item = open_member(source, name, labels, labels_csv, "predict")
        if isinstance(item, Probabilities):
            item = item.reorder(list(ids), source=str(source))
        loaded.append(item)
    return loaded


def predict_member(run: Run, image_paths: Sequence[Path], ids: Sequence[str],
                   options: InferenceOptions, log: Log, split: str, save_dir: Path | None,
                   progress_label: str | None = None) -> Probabilities:
    """`run`'s probabilities over `image_paths`, saved to `save_dir/<name>.npz` as soon as they
    are done (a later crash keeps them); the model is freed afterwards."""
    probs = predict_run(run, image_paths, ids, options, log, split, progress_label)
    # Keep the precision of the saved file: an ensemble rebuilt later from the .npz files is
    # then bit-identical to this one.
    probs.probs = probs.probs.astype(np.float16).astype(np.float32)
    probs.meta["name"] = run.name
    if save_dir is not None:
        save_probabilities(Path(save_dir) / f"{run.name}.npz", probs)
    _free(run)
    return probs


def infer_members(loaded: Sequence[Run | Probabilities], ids: Sequence[str],
                  image_paths: Sequence[Path], options: InferenceOptions,
                  probs_dir: Path | None, split: str,
                  log: Log = log_stderr) -> list[Probabilities]:
    """Probabilities of every member over `ids`, each named in its meta["name"]."""
    members = []
    for item in loaded:
        if isinstance(item, Probabilities):
            log(f"{item.meta['name']}: loaded {len(item.ids)} saved "
                f"{item.meta.get('split', '')} predictions")
            members.append(item)
        else:
            members.append(predict_member(item, image_paths, ids, options, log, split,
                                          probs_dir))
    return members


@dataclass
class Decoding:
    thresholds: np.ndarray | float
    min_labels: int
    max_labels: int | None
    source: str
    details: dict[str, Any] = field(default_factory=dict)
    context: float = 0.0


def resolve_decoding(members: Sequence[Run | Probabilities], labels: LabelSpace,
                     thresholds_file: Path | None, threshold: float | None,
                     min_labels: int | None, max_labels: int | None,
                     log: Log = log_stderr) -> Decoding:
    """--threshold, else --thresholds FILE, else each run's thresholds.json (averaged over the
    members), else the thresholds training found on each fold (averaged, with a warning).
    Resolved before inference, so a missing file fails before hours of work, not after."""
    run_dirs = [m.path.parent if isinstance(m, Run) else None for m in members]
    train_thresholds = [m.train_threshold if isinstance(m, Run) else None for m in members]
    chosen: Decoding
    if threshold is not None:
        chosen = Decoding(float(threshold), 1, None, f"--threshold {threshold}")
    elif thresholds_file is not None:
        doc = read_thresholds(thresholds_file, labels.attribute_ids, labels.fingerprint())
        chosen = Decoding(doc["thresholds"], doc.get("min_labels", 1), doc.get("max_labels"),
                          str(thresholds_file), {"mode": doc.get("mode")}, doc["context"])
    else:
        files = [d / THRESHOLDS_FILE for d in run_dirs if d is not None]
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
    layout = CompetitionLayout(data)
    for path in (layout.labels_csv, layout.sample_submission_csv):
        if not path.is_file():
            raise UserError(f"{path}: file not found; --data must point at the competition files")
    labels = read_labels(layout.labels_csv)
    ids = check_sample_ids(read_sample_submission(layout.sample_submission_csv),
                           str(layout.sample_submission_csv))
    paths = layout.image_paths("test", ids)
    if any(not is_probabilities_file(s) for s in sources):
        check_images_exist(paths, str(layout.sample_submission_csv))
    return TestSet(layout, labels, ids, paths, open_members(sources, ids, labels,
                                                            layout.labels_csv))


def predict_test(data: Path, sources: Sequence[Path], out: Path, *, method: str = "mean",
                 weights: Sequence[float] | None = None, options: InferenceOptions | None = None,
                 thresholds_file: Path | None = None, threshold: float | None = None,
                 min_labels: int | None = None, max_labels: int | None = None,
                 probs_dir: Path | None = None, log: Log = log_stderr) -> dict[str, Any]:
    """The whole `imet predict`: returns a summary (also the run-registry record's body)."""
    options = options or InferenceOptions()
    start = time.perf_counter()
    test = open_test(data, sources)
    layout, labels, ids, paths, loaded = test.layout, test.labels, test.ids, test.paths, \
        test.members
    out = Path(out)
    probs_dir = Path(probs_dir) if probs_dir is not None else out.parent / "test_probs"
    decoding = resolve_decoding(loaded, labels, thresholds_file, threshold, min_labels,
                                max_labels, log)
    members = infer_members(loaded, ids, paths, options, probs_dir, "test", log)
    combined = ensemble(members, method, weights, [m.meta["name"] for m in members])
    combined.meta["split"] = "test"
    rows_ids, rows = make_submission(ids, combined, decoding.thresholds, decoding.min_labels,
                                     decoding.max_labels, str(layout.sample_submission_csv),
                                     decoding.context)
    write_submission(out, rows_ids, rows)
    if len(members) > 1:
        save_probabilities(probs_dir / ENSEMBLE_PROBS, combined)
    labels_per_image = float(np.mean([len(r.split()) for r in rows]))
    seconds = time.perf_counter() - start
    log(f"predict: wrote {out} ({len(rows)} images, {labels_per_image:.2f} labels per image, "
        f"{len(members)} member(s), {method if len(members) > 1 else 'single run'}, "
        f"{seconds:.1f}s)")
    return {
        "kind": "predict", "submission": str(out), "probs_dir": str(probs_dir),
        "images": len(rows), "labels_per_image": round(labels_per_image, 3),
        "ensemble": method if len(members) > 1 else None, "weights": combined.meta["weights"],
        "runs": [m.meta for m in members], "tta": list(parse_tta(options.tta)),
        "thresholds": decoding.source, "min_labels": decoding.min_labels,
        "max_labels": decoding.max_labels, "context": decoding.context,
        "labels_fingerprint": labels.fingerprint(),
        "seconds": round(seconds, 2),
    }
