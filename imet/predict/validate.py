"""`imet validate`: out-of-fold predictions of one or more runs, the decoding chosen on them, and
the report (a markdown table and PNGs). Runs of the same fold are ensembled, of different folds
stacked (a 5-fold ensemble's thresholds are chosen on all 109k training images at once); saved
OOF probabilities (.npz) re-choose thresholds without inference.

Every decoding mode (global, per group, per class, per-image context) is fitted on the OOF
probabilities and cross-fitted (chosen on one half of the images, scored on the other, both
ways), and picked by its cross-fitted score, never its in-sample score: per-class thresholds
always win in-sample (1,103 knobs) and often lose on new images. The score is the metric chosen
(`metric`: the competition's by default, F2 or micro-F1); the report gives both for the chosen
decoding.

The report's error analysis (classes most often predicted where absent, most often missed, which
class of a group is taken for which: the Open Images write-up found its label problems this way) is
vectorized for 109k x 1,103: column sums of two boolean masks and one sparse product (an image
misses and adds only a few labels). Plots use matplotlib's object API on an Agg canvas (no
pyplot global state): drawable from any thread, without a display."""
from __future__ import annotations

import io
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import sparse

from imet.data.folds import read_folds
from imet.data.labels import (CompetitionLayout, competition_metric, find_layout, read_labels,
                              read_train)
from imet.errors import UserError
from imet.fileio import atomic_write_bytes, atomic_write_text
from imet.metrics.f2 import METRIC_NAMES, METRICS, binarize, f2_per_class, f2_score
from imet.metrics.thresholds import MODES, CrossFit, cross_fitted, global_curve
from imet.predict.infer import Evaluation, Log, check_images_exist, log_stderr, parse_tta, score
from imet.predict.pipeline import (THRESHOLDS_FILE, InferenceOptions, Run, ensemble,
                                   is_probabilities_file, open_member, predict_run, source_names,
                                   store_member, write_thresholds)
from imet.probfile import Probabilities, save_probabilities

@dataclass(frozen=True)
class ClassErrors:
    """Per class: false positives, false negatives, support (true), predicted counts."""
    false_pos: np.ndarray
    false_neg: np.ndarray
    support: np.ndarray
    predicted: np.ndarray

    def worst(self, counts: np.ndarray, k: int) -> np.ndarray:
        """Indices of the k classes with the largest nonzero `counts`, largest first."""
        order = np.argsort(-counts, kind="stable")[:k]
        return order[counts[order] > 0]


def class_errors(truth: np.ndarray, pred: np.ndarray) -> ClassErrors:
    truth, pred = truth.astype(bool, copy=False), pred.astype(bool, copy=False)
    return ClassErrors(false_pos=np.count_nonzero(pred & ~truth, axis=0),
                       false_neg=np.count_nonzero(truth & ~pred, axis=0),
                       support=np.count_nonzero(truth, axis=0),
                       predicted=np.count_nonzero(pred, axis=0))


def _errors(truth: np.ndarray, pred: np.ndarray):
    """(rows, columns) of the missed entries and of the added ones: one pass over the matrix,
    then only the errors are touched (slicing each group's columns out of an [N, C] matrix cost
    more than the classes' count: 2.3 s at 20k x 3,474 against 0.3 s at 20k x 1,103)."""
    truth, pred = truth.astype(bool, copy=False), pred.astype(bool, copy=False)
    return np.nonzero(truth & ~pred), np.nonzero(pred & ~truth)


def group_confusion(truth: np.ndarray, pred: np.ndarray, groups: np.ndarray,
                    group: str, errors=None) -> tuple[np.ndarray, np.ndarray]:
    """(class indices of `group`, int matrix M): M[a, b] counts the images whose true class a of
    the group was missed while its class b was predicted and is not true (a taken for b).
    `errors`: `_errors(truth, pred)`, when the caller already has them."""
    cols = np.flatnonzero(groups == group)
    local = np.full(len(groups), -1, dtype=np.int64)
    local[cols] = np.arange(len(cols))

    def in_group(rows: np.ndarray, columns: np.ndarray) -> sparse.csr_matrix:
        keep = local[columns] >= 0
        return sparse.csr_matrix((np.ones(int(keep.sum()), dtype=np.int32),
                                  (rows[keep], local[columns[keep]])),
                                 shape=(len(truth), len(cols)))
    missed, added = errors if errors is not None else _errors(truth, pred)
    return cols, (in_group(*missed).T @ in_group(*added)).toarray()


def group_confusions(truth: np.ndarray, pred: np.ndarray, groups: np.ndarray
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`group_confusion` of every group of two or more classes, by group name (the attribute
    names' prefixes: culture and tag in 2019; country, culture, dimension, medium, tags later)."""
    names, counts = np.unique(groups, return_counts=True)
    errors = _errors(truth, pred)
    return {str(g): group_confusion(truth, pred, groups, g, errors)
            for g, n in zip(names, counts) if n > 1}


def top_confusions(cols: np.ndarray, matrix: np.ndarray, k: int) -> list[tuple[int, int, int]]:
    """The k largest (true class, predicted class, images), largest first."""
    flat = np.argsort(-matrix, axis=None, kind="stable")[:k]
    a, b = np.unravel_index(flat, matrix.shape)
    return [(int(cols[i]), int(cols[j]), int(matrix[i, j])) for i, j in zip(a, b)
            if matrix[i, j] > 0]


@dataclass
class DecodingChoice:
    mode: str
    fits: dict[str, CrossFit]
    metric: str = "f2"

    @property
    def chosen(self) -> CrossFit:
        return self.fits[self.mode]

    @property
    def context(self) -> float:
        return self.chosen.context


def checked_metric(metric: str) -> str:
    """`metric`, or the one-line error of --metric."""
    if metric not in METRICS:
        raise UserError(f"--metric: unknown metric {metric!r}; choose {' or '.join(METRICS)}")
    return metric


def choose_decoding(y_true: np.ndarray, probs: np.ndarray, groups: np.ndarray,
                    modes: Sequence[str] = MODES, min_support: int = 20, min_labels: int = 1,
                    max_labels: int | None = None, seed: int = 0,
                    metric: str = "f2") -> DecodingChoice:
    """Fit and cross-fit each mode for `metric`; pick the best cross-fitted score (ties go to the
    simpler mode, in MODES order, since it has fewer knobs to overfit)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise UserError(f"--modes: unknown threshold mode {unknown[0] if unknown else ''!r}; "
                        f"choose from {', '.join(MODES)}")
    if y_true.shape[0] < 4:
        raise UserError(f"validation: only {y_true.shape[0]} out-of-fold images; thresholds need "
                        "at least 4 (use a larger fold)")
    checked_metric(metric)
    fits = {mode: cross_fitted(y_true, probs, groups=groups, mode=mode, min_support=min_support,
                               min_labels=min_labels, max_labels=max_labels, seed=seed,
                               metric=metric)
            for mode in sorted(modes, key=MODES.index)}
    best = max(fits, key=lambda m: (round(fits[m].score, 9), -MODES.index(m)))
    return DecodingChoice(best, fits, metric)


def group_f2(y_true: np.ndarray, pred: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """F2 over each group's columns alone. An image with no true and no predicted label in the
    group is right about that group, so it scores 1 (not sklearn's 0) here."""
    cols = {name: np.flatnonzero(groups == name) for name in sorted(set(groups.tolist()))}
    return {name: f2_score(y_true[:, c], pred[:, c], zero_division=1.0) for name, c in cols.items()}


def concat_probabilities(parts: Sequence[Probabilities]) -> Probabilities:
    """Stack the OOF predictions of disjoint folds into one set (ids must not repeat)."""
    if len(parts) == 1:
        return parts[0]
    ids = [i for p in parts for i in p.ids]
    if len(set(ids)) != len(ids):
        raise UserError("validation: two folds share images; check that folds.csv is the one the "
                        "runs were trained with")
    return Probabilities(ids, np.concatenate([p.probs for p in parts]), parts[0].attribute_ids,
                         {"labels_fingerprint": parts[0].labels_fingerprint,
                          "folds": [p.meta for p in parts], "split": "oof"})


@dataclass
class ValidationScores:
    """Everything the report shows, computed once."""
    decoding: DecodingChoice
    pred: np.ndarray
    group_f2: dict[str, float]
    class_f2: np.ndarray
    support: np.ndarray
    labels_per_image: float
    true_labels_per_image: float
    errors: ClassErrors
    # per group of 2+ classes: (its class indices, a-taken-for-b counts within the group)
    confusion: dict[str, tuple[np.ndarray, np.ndarray]]


def score_decoding(y_true: np.ndarray, probs: np.ndarray, groups: np.ndarray,
                   decoding: DecodingChoice, min_labels: int = 1,
                   max_labels: int | None = None) -> ValidationScores:
    pred = binarize(probs, decoding.chosen.thresholds, min_labels, max_labels, decoding.context)
    truth = y_true.astype(bool)
    return ValidationScores(
        decoding=decoding, pred=pred, group_f2=group_f2(truth, pred, groups),
        class_f2=f2_per_class(truth, pred), support=np.count_nonzero(truth, axis=0),
        labels_per_image=float(pred.sum(axis=1).mean()),
        true_labels_per_image=float(truth.sum(axis=1).mean()),
        errors=class_errors(truth, pred), confusion=group_confusions(truth, pred, groups))


def _figure(width: float = 7.0, height: float = 4.2):
    """(figure, its one axes) on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def _save_png(figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_score_vs_threshold(y_true: np.ndarray, probs: np.ndarray, scores: ValidationScores,
                            path: Path, min_labels: int = 1,
                            max_labels: int | None = None) -> Path:
    """The tuned metric against one global threshold, with each mode's cross-fitted score."""
    metric = scores.decoding.metric
    name = METRIC_NAMES[metric]
    grid, curve = global_curve(y_true, probs, min_labels=min_labels, max_labels=max_labels,
                               metric=metric)
    best = int(np.argmax(curve))
    figure, axes = _figure()
    axes.plot(grid, curve, color="tab:blue", label="one global threshold (in-sample)")
    axes.axvline(grid[best], color="tab:blue", linestyle=":", linewidth=1)
    axes.annotate(f"{grid[best]:.3f}: {name} {curve[best]:.4f}", (grid[best], curve[best]),
                  textcoords="offset points", xytext=(6, -14), fontsize=8)
    for mode, fit in scores.decoding.fits.items():
        axes.axhline(fit.score, linestyle="--", linewidth=1,
                     color={"global": "tab:blue", "group": "tab:orange"}.get(mode, "tab:green"),
                     label=f"{mode}: cross-fitted {name} {fit.score:.4f}")
    axes.set(xlabel="threshold", ylabel=f"{name} (out of fold)", xlim=(0, 1),
             title=f"{name} against threshold ({y_true.shape[0]} OOF images)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower left")
    return _save_png(figure, path)


def plot_class_f2_vs_support(scores: ValidationScores, groups: np.ndarray, path: Path) -> Path:
    figure, axes = _figure()
    seen = scores.support > 0
    for k, name in enumerate(sorted(set(groups.tolist()))):
        mask = seen & (groups == name)
        axes.scatter(scores.support[mask], scores.class_f2[mask], s=8, alpha=0.6,
                     label=f"{name or 'no group'} ({int(mask.sum())} classes)", color=f"C{k}")
    axes.set(xscale="log", xlabel="support (positive OOF images, log scale)", ylabel="class F2",
             ylim=(-0.02, 1.02), title=f"Per-class F2 against support ({int((~seen).sum())} "
             "classes absent from the OOF images)")
    from matplotlib.ticker import ScalarFormatter
    axes.xaxis.set_major_formatter(ScalarFormatter())  # 10, 100, 1000 rather than 10^1 …
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save_png(figure, path)


def group_label(group: str) -> str:
    return group or "no group"


def confusion_plot_name(group: str) -> str:
    """plots/<group>_confusion.png, the group's name made a safe file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", group or "no-group") + "_confusion.png"


def plot_confusion(scores: ValidationScores, group: str, names: Sequence[str], path: Path,
                   size: int = 15) -> Path:
    """The a-taken-for-b counts among the `size` classes of `group` with the most errors."""
    cols, matrix = scores.confusion[group]
    name = group_label(group)
    figure, axes = _figure(7.5, 6.5)
    keep = np.argsort(-(matrix.sum(axis=0) + matrix.sum(axis=1)), kind="stable")[:size]
    image = axes.imshow(matrix[np.ix_(keep, keep)], cmap="Reds")
    labels = [names[cols[k]].split("::", 1)[-1][:24] for k in keep]
    axes.set_xticks(range(len(keep)), labels, rotation=70, ha="right", fontsize=7)
    axes.set_yticks(range(len(keep)), labels, fontsize=7)
    axes.set(xlabel=f"predicted {name}, not true", ylabel=f"true {name}, missed",
             title=f"{name} taken for {name} (the {len(keep)} with most errors)")
    figure.colorbar(image, ax=axes, shrink=0.8, label="images")
    return _save_png(figure, path)


def error_tables(scores: ValidationScores, names: Sequence[str], k: int = 15) -> list[str]:
    """The classes most often predicted where absent, most often missed, and per group the pairs
    of its classes most often taken one for the other, as markdown."""
    errors = scores.errors
    lines = ["", f"## Most often predicted but absent (top {k})", "",
             "| class | false positives | predicted | support |", "|---|---|---|---|"]
    lines += [f"| {names[c]} | {errors.false_pos[c]} | {errors.predicted[c]} | "
              f"{errors.support[c]} |" for c in errors.worst(errors.false_pos, k)]
    lines += ["", f"## Most often missed (top {k})", "",
              "| class | false negatives | support | predicted |", "|---|---|---|---|"]
    lines += [f"| {names[c]} | {errors.false_neg[c]} | {errors.support[c]} | "
              f"{errors.predicted[c]} |" for c in errors.worst(errors.false_neg, k)]
    for group, confusion in scores.confusion.items():
        name = group_label(group)
        lines += ["", f"## {name} taken for {name} (top {k})", "",
                  f"Images whose true {name} was missed while another was predicted.", "",
                  "| true (missed) | predicted instead | images |", "|---|---|---|"]
        lines += [f"| {names[a]} | {names[b]} | {n} |" for a, b, n in top_confusions(*confusion, k)]
        lines += ["", f"![{name} confusion](plots/{confusion_plot_name(group)})"]
    return lines


def markdown_table(scores: ValidationScores, summary: dict[str, Any],
                   members: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    choice = scores.decoding
    name = METRIC_NAMES[choice.metric]
    other = [m for m in METRICS if m != choice.metric]
    lines = [f"# Validation: {summary['images']} out-of-fold images, folds "
             f"{', '.join(str(f) for f in summary['folds'])}, TTA {','.join(summary['tta'])}", "",
             f"Thresholds tuned for {name}.", "",
             f"| decoding | {name} cross-fitted (honest) | {name} in-sample (optimistic) | "
             "optimism | " + " | ".join(f"{METRIC_NAMES[m]} cross-fitted" for m in other) + " |",
             "|---|---|---|---|" + "---|" * len(other)]
    for mode, fit in choice.fits.items():
        mark = " **(chosen)**" if mode == choice.mode else ""
        lines.append(f"| {mode}{mark} | {fit.score:.4f} | {fit.score_in_sample:.4f} | "
                     f"{fit.optimism:+.4f} | "
                     + " | ".join(f"{fit.scores[m]:.4f}" for m in other) + " |")
    lines += ["", "Cross-fitted: thresholds chosen on a random half of the images, scored on the "
              "other half, both ways. thresholds.json holds the chosen mode fitted on all images.",
              "", "| group | F2 (chosen decoding, group's labels only) |", "|---|---|"]
    lines += [f"| {g or 'no group'} | {v:.4f} |" for g, v in scores.group_f2.items()]
    lines += ["", f"Labels per image: predicted {scores.labels_per_image:.2f}, true "
              f"{scores.true_labels_per_image:.2f}.", "", "| run | fold | arch | size | images "
              "| F2 at its best global threshold |", "|---|---|---|---|---|---|"]
    lines += [f"| {m.get('name')} | {m.get('fold')} | {m.get('arch')} | {m.get('image_size')} | "
              f"{m.get('images')} | {m.get('f2_global', float('nan')):.4f} |" for m in members]
    lines += ["", f"![{name} against threshold](plots/score_vs_threshold.png)",
              "![Per-class F2 against support](plots/class_f2_vs_support.png)"]
    return "\n".join(lines + error_tables(scores, names) + [""])


def write_validation_report(out_dir: Path, y_true: np.ndarray, probs: np.ndarray,
                            groups: np.ndarray, scores: ValidationScores, summary: dict[str, Any],
                            members: Sequence[dict[str, Any]], names: Sequence[str],
                            min_labels: int = 1, max_labels: int | None = None) -> dict[str, str]:
    plots = Path(out_dir) / "plots"
    paths = {"score_vs_threshold": plots / "score_vs_threshold.png",
             "class_f2_vs_support": plots / "class_f2_vs_support.png",
             "table": Path(out_dir) / "validation.md"}
    confusions = {g: plots / confusion_plot_name(g) for g in scores.confusion}
    plot_score_vs_threshold(y_true, probs, scores, paths["score_vs_threshold"], min_labels,
                            max_labels)
    plot_class_f2_vs_support(scores, groups, paths["class_f2_vs_support"])
    for group, path in confusions.items():
        plot_confusion(scores, group, names, path)
    paths |= {f"confusion {group_label(g)}": p for g, p in confusions.items()}
    atomic_write_text(paths["table"], markdown_table(scores, summary, members, names))
    return {k: str(v) for k, v in paths.items()}


def _open(source: Path, name: str, layout, labels) -> Run | Probabilities:
    """A run or saved OOF probabilities, opened and checked before any inference."""
    item = open_member(source, name, labels, layout.labels_csv, "validate")
    if isinstance(item, Probabilities) and item.meta.get("fold") is None:
        raise UserError(f"{source}: no fold recorded; pass the run folder instead")
    if isinstance(item, Run) and item.fold is None:
        raise UserError(f"{item.path}: field config.fold missing; cannot tell its held-out images")
    return item


def _member(item: Run | Probabilities, ids: list[str], targets: np.ndarray, folds: np.ndarray,
            layout, options: InferenceOptions, out_dir: Path, log: Log,
            metric: str) -> tuple[Probabilities, Evaluation]:
    """OOF probabilities of one source over its fold (saved to out_dir/oof/<name>.npz), and
    their score. A run is scored on its model's float32 probabilities, as training scores
    them, so its F2 here is the F2 training reported: rounding to the saved file's float16
    first moves entries across grid thresholds and ties top labels, which changes the F2."""
    if isinstance(item, Probabilities):
        row_of = {image_id: row for row, image_id in enumerate(ids)}
        return item, score(targets[[row_of[i] for i in item.ids]], item.probs, metric=metric)
    rows = np.flatnonzero(folds == item.fold)
    fold_ids = [ids[r] for r in rows]
    paths = layout.image_paths("train", fold_ids)
    check_images_exist(paths, str(layout.train_csv))
    probs = predict_run(item, paths, fold_ids, options, log, "oof",
                        progress_label=f"validate {item.name}")
    scored = score(targets[rows], probs.probs, metric=metric)
    return store_member(item, probs, out_dir / "oof"), scored


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
                        "exists here; pass --folds CSV (the folds.csv the runs were trained with)")
    return layout.folds_csv


def validate_runs(data: Path, folds_csv: Path | None, sources: Sequence[Path],
                  out_dir: Path | None = None, *, options: InferenceOptions | None = None,
                  method: str = "mean", modes: Sequence[str] = MODES, min_support: int = 20,
                  min_labels: int = 1, max_labels: int | None = None, seed: int = 0,
                  metric: str | None = None, log: Log = log_stderr) -> dict[str, Any]:
    """The whole `imet validate`; returns its summary (also the run-registry record's body).
    `folds_csv` None: the folds file the runs were trained with, else DATA/folds.csv. `metric`
    None: the competition's (found from the data's layout)."""
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
    layout = find_layout(data, test=False)
    labels = read_labels(layout.labels_csv)
    metric = checked_metric(metric or competition_metric(layout, labels))  # before inference
    ids, targets = read_train(layout.train_csv, labels)
    names = source_names(sources)
    opened = [_open(Path(s), n, layout, labels) for s, n in zip(sources, names)]
    folds_csv = Path(folds_csv) if folds_csv is not None else _trained_folds(opened, layout)
    folds = read_folds(folds_csv, ids, layout.train_csv.name)
    for item, name in zip(opened, names):
        fold = item.fold if isinstance(item, Run) else int(item.meta["fold"])
        if not np.any(folds == fold):
            raise UserError(f"{folds_csv}: fold {fold} (of run {name}) has no images; pass the "
                            "folds.csv the run was trained with")
    scored_members = [_member(item, ids, targets, folds, layout, options, out_dir, log, metric)
                      for item in opened]
    by_fold: dict[int, list[Probabilities]] = {}
    member_rows = []
    for member, scored in scored_members:
        fold = int(member.meta["fold"])
        by_fold.setdefault(fold, []).append(member)
        member_rows.append(dict(member.meta, images=len(member.ids), f2_global=scored.f2,
                                micro_f1_global=scored.micro_f1,
                                threshold_global=scored.threshold))
        log(f"validate {member.meta['name']}: fold {fold}, {scored.describe()} at threshold "
            f"{scored.threshold:.3f} tuned for {METRIC_NAMES[metric]} ({len(member.ids)} images)")
    row_of = {image_id: row for row, image_id in enumerate(ids)}
    parts = [ensemble(by_fold[fold], method) for fold in sorted(by_fold)]  # members are named
    for fold, part in zip(sorted(by_fold), parts):
        part.meta["fold"] = fold
    oof = concat_probabilities(parts)
    y_true = targets[[row_of[i] for i in oof.ids]].astype(bool)
    groups = labels.groups
    decoding = choose_decoding(y_true, oof.probs, groups, modes, min_support, min_labels,
                               max_labels, seed, metric)
    scores = score_decoding(y_true, oof.probs, groups, decoding, min_labels, max_labels)
    tta = list(parse_tta(options.tta))
    oof.meta.update(split="oof", tta=tta, runs=[m.meta.get("model") for m, _ in scored_members])
    save_probabilities(out_dir / "oof_probs.npz", oof)
    fits = {mode: {"cross_fitted": round(fit.score, 6), "in_sample": round(fit.score_in_sample, 6),
                   "halves": [round(v, 6) for v in fit.score_halves],
                   **{f"{m.replace('-', '_')}_cross_fitted": round(v, 6)
                      for m, v in fit.scores.items()}}
            for mode, fit in decoding.fits.items()}
    chosen = decoding.chosen
    summary = {
        "kind": "validate", "out": str(out_dir), "images": len(oof.ids), "folds": sorted(by_fold),
        "tta": tta, "ensemble": method if any(len(g) > 1 for g in by_fold.values()) else None,
        "mode": decoding.mode, "context": decoding.context, "metric": metric,
        "score": round(chosen.score, 6), "score_in_sample": round(chosen.score_in_sample, 6),
        "f2": round(chosen.scores["f2"], 6), "micro_f1": round(chosen.scores["micro-f1"], 6),
        "modes": fits,
        "group_f2": {g: round(v, 6) for g, v in scores.group_f2.items()},
        "threshold_global": round(float(decoding.fits["global"].thresholds[0]), 6)
        if "global" in decoding.fits else None,
        "labels_per_image": round(scores.labels_per_image, 3), "min_labels": min_labels,
        "max_labels": max_labels, "min_support": min_support,
        "runs": [{k: r.get(k) for k in ("name", "model", "arch", "image_size", "fold", "images",
                                        "f2_global", "micro_f1_global", "threshold_global")}
                 for r in member_rows],
        "labels_fingerprint": labels.fingerprint(),
    }
    thresholds_path = write_thresholds(
        out_dir / THRESHOLDS_FILE, decoding.chosen.thresholds, labels.attribute_ids,
        labels.fingerprint(), decoding.mode, min_labels, max_labels, decoding.context, tta=tta,
        runs=summary["runs"], scores={"metric": metric, "cross_fitted": summary["score"],
                                      "in_sample": summary["score_in_sample"],
                                      "f2_cross_fitted": summary["f2"],
                                      "micro_f1_cross_fitted": summary["micro_f1"],
                                      "modes": fits})
    summary["thresholds"] = str(thresholds_path)
    summary["report"] = write_validation_report(out_dir, y_true, oof.probs, groups, scores,
                                                summary, member_rows, labels.names, min_labels,
                                                max_labels)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    log(f"validate: {decoding.mode} thresholds tuned for {METRIC_NAMES[metric]}, "
        f"{METRIC_NAMES[metric]} {chosen.score:.4f} cross-fitted ({chosen.score_in_sample:.4f} "
        f"in-sample; F2 {chosen.scores['f2']:.4f}, micro-F1 {chosen.scores['micro-f1']:.4f} "
        f"cross-fitted) on {len(oof.ids)} OOF images -> {thresholds_path}")
    return summary
