"""`imet validate`: out-of-fold predictions of one or more runs, the decoding, the report.

Runs of the same fold are ensembled; runs of different folds are stacked, so validating the five
runs of a 5-fold ensemble chooses its thresholds on all 109k training images at once.
Sources may also be saved OOF probabilities (.npz), to re-choose thresholds without inference.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from imet.data.folds import read_folds
from imet.data.labels import read_labels, read_train
from imet.data.layout import CompetitionLayout
from imet.errors import UserError
from imet.metrics.crossfit import MODES
from imet.metrics.thresholds import best_global_threshold
from imet.predict.ensemble import ensemble
from imet.predict.infer import Log, check_images_exist, log_stderr, parse_tta
from imet.predict.oof import choose_decoding, concat_probabilities, score_decoding
from imet.predict.pipeline import (InferenceOptions, is_probabilities_file, open_member,
                                   predict_member, source_names)
from imet.probfile import Probabilities, save_probabilities
from imet.predict.report import write_validation_report
from imet.predict.runs import THRESHOLDS_FILE, Run
from imet.predict.thresholdfile import write_thresholds


def _open(source: Path, name: str, layout, labels) -> Run | Probabilities:
    """A run or saved OOF probabilities, opened and checked before any inference."""
    item = open_member(source, name, labels, layout.labels_csv, "validate")
    if isinstance(item, Probabilities) and item.meta.get("fold") is None:
        raise UserError(f"{source}: no fold recorded; pass the run folder instead")
    if isinstance(item, Run) and item.fold is None:
        raise UserError(f"{item.path}: field config.fold missing; cannot tell its held-out "
                        "images")
    return item


def _member(item: Run | Probabilities, ids: list[str], folds: np.ndarray, layout,
            options: InferenceOptions, out_dir: Path, log: Log) -> Probabilities:
    """OOF probabilities of one source over its fold (saved to out_dir/oof/<name>.npz)."""
    if isinstance(item, Probabilities):
        return item
    fold_ids = [ids[r] for r in np.flatnonzero(folds == item.fold)]
    paths = layout.image_paths("train", fold_ids)
    check_images_exist(paths, str(layout.train_csv))
    return predict_member(item, paths, fold_ids, options, log, "oof", out_dir / "oof",
                          progress_label=f"validate {item.name}")


def _trained_folds(opened: Sequence[Run | Probabilities], layout: CompetitionLayout) -> Path:
    """The folds file the first run recorded in its config (or its data folder's), where it
    still exists; else the data folder's folds.csv."""
    for item in opened:
        config = item.config if isinstance(item, Run) else {}
        recorded = config.get("folds") or (Path(config["data"]) / "folds.csv"
                                           if config.get("data") else None)
        if recorded and Path(recorded).is_file():
            return Path(recorded)
    if not layout.folds_csv.is_file():
        raise UserError(f"{layout.folds_csv}: folds file not found, and no run records one that "
                        "exists here; pass --folds CSV (the folds.csv the runs were trained "
                        "with)")
    return layout.folds_csv


def validate_runs(data: Path, folds_csv: Path | None, sources: Sequence[Path],
                  out_dir: Path | None = None,
             *, options: InferenceOptions | None = None, method: str = "mean",
             modes: Sequence[str] = MODES, min_support: int = 20, min_labels: int = 1,
             max_labels: int | None = None, seed: int = 0, log: Log = log_stderr) -> dict[str, Any]:
    """The whole `imet validate`; returns its summary (also the run-registry record's body).
    `folds_csv` None: the folds file the runs were trained with, else DATA/folds.csv."""
    options = options or InferenceOptions()
    start = time.perf_counter()
    if not sources:
        raise UserError("validate: no runs given; pass --run RUN_DIR")
    for source in sources:
        if not Path(source).exists():
            raise UserError(f"{source}: run folder, model file or OOF probabilities not found; "
                            "fix the path")
    if out_dir is None:
        if len(sources) != 1 or is_probabilities_file(sources[0]) or not Path(sources[0]).is_dir():
            raise UserError("validate: pass --out DIR (where thresholds.json goes) when validating "
                            "several runs or saved probabilities")
        out_dir = Path(sources[0])
        if not os.access(out_dir, os.W_OK):
            raise UserError(f"{out_dir}: run folder is read-only (an attached input?); pass "
                            "--out DIR for thresholds.json and the report")
    out_dir = Path(out_dir)
    layout = CompetitionLayout(data)
    labels = read_labels(layout.labels_csv)
    ids, targets = read_train(layout.train_csv, labels)
    names = source_names(sources)
    opened = [_open(Path(s), n, layout, labels) for s, n in zip(sources, names)]
    folds_csv = Path(folds_csv) if folds_csv is not None else _trained_folds(opened, layout)
    folds = read_folds(folds_csv, ids)
    for item, name in zip(opened, names):
        fold = item.fold if isinstance(item, Run) else int(item.meta["fold"])
        if not np.any(folds == fold):
            raise UserError(f"{folds_csv}: fold {fold} (of run {name}) has no images; pass the "
                            "folds.csv the run was trained with")
    members = [_member(item, ids, folds, layout, options, out_dir, log) for item in opened]

    row_of = {image_id: row for row, image_id in enumerate(ids)}
    by_fold: dict[int, list[Probabilities]] = {}
    member_rows = []
    for member in members:
        fold = int(member.meta["fold"])
        by_fold.setdefault(fold, []).append(member)
        y = targets[[row_of[i] for i in member.ids]]
        threshold, f2 = best_global_threshold(y, member.probs)
        member_rows.append(dict(member.meta, images=len(member.ids), f2_global=f2,
                                threshold_global=threshold))
        log(f"validate {member.meta['name']}: fold {fold}, F2 {f2:.4f} at threshold "
            f"{threshold:.3f} ({len(member.ids)} images)")
    parts = []
    for fold in sorted(by_fold):
        group = by_fold[fold]
        part = ensemble(group, method, names=[g.meta["name"] for g in group])
        part.meta["fold"] = fold
        parts.append(part)
    oof = concat_probabilities(parts)
    y_true = targets[[row_of[i] for i in oof.ids]].astype(bool)
    groups = labels.groups
    decoding = choose_decoding(y_true, oof.probs, groups, modes, min_support, min_labels,
                               max_labels, seed)
    scores = score_decoding(y_true, oof.probs, groups, decoding, min_labels, max_labels)
    tta = list(parse_tta(options.tta))
    oof.meta.update(split="oof", tta=tta, runs=[m.meta.get("model") for m in members])
    save_probabilities(out_dir / "oof_probs.npz", oof)
    fits = {mode: {"f2_cross_fitted": round(fit.f2, 6), "f2_in_sample": round(fit.f2_in_sample, 6),
                   "f2_halves": [round(v, 6) for v in fit.f2_halves]}
            for mode, fit in decoding.fits.items()}
    summary = {
        "kind": "validate", "out": str(out_dir), "images": len(oof.ids), "folds": sorted(by_fold),
        "tta": tta, "ensemble": method if any(len(g) > 1 for g in by_fold.values()) else None,
        "mode": decoding.mode, "context": decoding.context,
        "f2": round(decoding.chosen.f2, 6),
        "f2_in_sample": round(decoding.chosen.f2_in_sample, 6), "modes": fits,
        "group_f2": {g: round(v, 6) for g, v in scores.group_f2.items()},
        "threshold_global": round(float(decoding.fits["global"].thresholds[0]), 6)
        if "global" in decoding.fits else None,
        "labels_per_image": round(scores.labels_per_image, 3), "min_labels": min_labels,
        "max_labels": max_labels, "min_support": min_support,
        "runs": [{k: r.get(k) for k in ("name", "model", "arch", "image_size", "fold", "images",
                                        "f2_global", "threshold_global")} for r in member_rows],
        "labels_fingerprint": labels.fingerprint(),
    }
    thresholds_path = write_thresholds(
        out_dir / THRESHOLDS_FILE, decoding.thresholds, labels.attribute_ids,
        labels.fingerprint(), decoding.mode, min_labels, max_labels, decoding.context, tta=tta,
        runs=summary["runs"], scores={"f2_cross_fitted": summary["f2"],
                                      "f2_in_sample": summary["f2_in_sample"], "modes": fits})
    summary["thresholds"] = str(thresholds_path)
    summary["report"] = write_validation_report(out_dir, y_true, oof.probs, groups, scores,
                                                summary, member_rows, labels.names, min_labels,
                                                max_labels)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    log(f"validate: {decoding.mode} thresholds, F2 {decoding.chosen.f2:.4f} cross-fitted "
        f"({decoding.chosen.f2_in_sample:.4f} in-sample) on {len(oof.ids)} OOF images -> "
        f"{thresholds_path}")
    return summary
