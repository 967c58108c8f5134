"""The validation report: a markdown table and two PNGs.

Plots use matplotlib's object API with the Agg canvas (no pyplot global state), so a report can
be drawn from any thread and on a machine without a display.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from imet.fileio import atomic_write_bytes, atomic_write_text
from imet.metrics.thresholds import global_f2_curve
from imet.predict.errors import CONFUSED_GROUP, top_confusions
from imet.predict.oof import ValidationScores


def _figure(width: float = 7.0, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_f2_vs_threshold(y_true: np.ndarray, probs: np.ndarray, scores: ValidationScores,
                         path: Path, min_labels: int = 1, max_labels: int | None = None) -> Path:
    grid, curve = global_f2_curve(y_true, probs, min_labels=min_labels, max_labels=max_labels)
    best = int(np.argmax(curve))
    figure = _figure()
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(grid, curve, color="tab:blue", label="one global threshold (in-sample)")
    axes.axvline(grid[best], color="tab:blue", linestyle=":", linewidth=1)
    axes.annotate(f"{grid[best]:.3f}: F2 {curve[best]:.4f}", (grid[best], curve[best]),
                  textcoords="offset points", xytext=(6, -14), fontsize=8)
    for mode, fit in scores.decoding.fits.items():
        axes.axhline(fit.f2, linestyle="--", linewidth=1,
                     color={"global": "tab:blue", "group": "tab:orange"}.get(mode, "tab:green"),
                     label=f"{mode}: cross-fitted F2 {fit.f2:.4f}")
    axes.set_xlabel("threshold")
    axes.set_ylabel("F2 (out of fold)")
    axes.set_xlim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower left")
    axes.set_title(f"F2 against threshold ({y_true.shape[0]} OOF images)")
    return _save_png(figure, path)


def plot_class_f2_vs_support(scores: ValidationScores, groups: np.ndarray, path: Path) -> Path:
    figure = _figure()
    axes = figure.add_subplot(1, 1, 1)
    seen = scores.support > 0
    for k, name in enumerate(sorted(set(groups.tolist()))):
        mask = seen & (groups == name)
        axes.scatter(scores.support[mask], scores.class_f2[mask], s=8, alpha=0.6,
                     label=f"{name or 'no group'} ({int(mask.sum())} classes)", color=f"C{k}")
    axes.set_xscale("log")
    from matplotlib.ticker import ScalarFormatter
    axes.xaxis.set_major_formatter(ScalarFormatter())  # 10, 100, 1000 rather than 10^1 …
    axes.set_xlabel("support (positive OOF images, log scale)")
    axes.set_ylabel("class F2")
    axes.set_ylim(-0.02, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    unseen = int((~seen).sum())
    axes.set_title(f"Per-class F2 against support ({unseen} classes absent from the OOF images)")
    return _save_png(figure, path)


def plot_confusion(scores: ValidationScores, names: Sequence[str], path: Path,
                   size: int = 15) -> Path:
    """The a-taken-for-b counts among the `size` classes of the group with the most errors."""
    cols, matrix = scores.confusion
    figure = _figure(7.5, 6.5)
    axes = figure.add_subplot(1, 1, 1)
    keep = np.argsort(-(matrix.sum(axis=0) + matrix.sum(axis=1)), kind="stable")[:size]
    shown = matrix[np.ix_(keep, keep)]
    image = axes.imshow(shown, cmap="Reds")
    labels = [names[cols[k]].split("::", 1)[-1][:24] for k in keep]
    axes.set_xticks(range(len(keep)), labels, rotation=70, ha="right", fontsize=7)
    axes.set_yticks(range(len(keep)), labels, fontsize=7)
    axes.set_xlabel(f"predicted {CONFUSED_GROUP}, not true")
    axes.set_ylabel(f"true {CONFUSED_GROUP}, missed")
    figure.colorbar(image, ax=axes, shrink=0.8, label="images")
    axes.set_title(f"{CONFUSED_GROUP} taken for {CONFUSED_GROUP} (the {len(keep)} with most "
                   "errors)")
    return _save_png(figure, path)


def error_tables(scores: ValidationScores, names: Sequence[str], k: int = 15) -> list[str]:
    """The classes most often predicted where absent, most often missed, and the culture pairs
    most often taken one for the other, as markdown."""
    errors = scores.errors
    lines = ["", f"## Most often predicted but absent (top {k})", "",
             "| class | false positives | predicted | support |", "|---|---|---|---|"]
    lines += [f"| {names[c]} | {errors.false_pos[c]} | {errors.predicted[c]} | "
              f"{errors.support[c]} |" for c in errors.worst(errors.false_pos, k)]
    lines += ["", f"## Most often missed (top {k})", "",
              "| class | false negatives | support | predicted |", "|---|---|---|---|"]
    lines += [f"| {names[c]} | {errors.false_neg[c]} | {errors.support[c]} | "
              f"{errors.predicted[c]} |" for c in errors.worst(errors.false_neg, k)]
    lines += ["", f"## {CONFUSED_GROUP} taken for {CONFUSED_GROUP} (top {k})", "",
              f"Images whose true {CONFUSED_GROUP} was missed while another was predicted.", "",
              "| true (missed) | predicted instead | images |", "|---|---|---|"]
    lines += [f"| {names[a]} | {names[b]} | {n} |" for a, b, n in
              top_confusions(*scores.confusion, k)]
    lines += ["", f"![{CONFUSED_GROUP} confusion](plots/{CONFUSED_GROUP}_confusion.png)"]
    return lines


def markdown_table(scores: ValidationScores, summary: dict[str, Any],
                   members: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    choice = scores.decoding
    lines = [f"# Validation: {summary['images']} out-of-fold images, folds "
             f"{', '.join(str(f) for f in summary['folds'])}, TTA {','.join(summary['tta'])}", "",
             "| decoding | F2 cross-fitted (honest) | F2 in-sample (optimistic) | optimism |",
             "|---|---|---|---|"]
    for mode, fit in choice.fits.items():
        mark = " **(chosen)**" if mode == choice.mode else ""
        lines.append(f"| {mode}{mark} | {fit.f2:.4f} | {fit.f2_in_sample:.4f} | "
                     f"{fit.optimism:+.4f} |")
    lines += ["", "Cross-fitted: thresholds chosen on a random half of the images, scored on the "
              "other half, both ways. thresholds.json holds the chosen mode fitted on all images.",
              "", "| group | F2 (chosen decoding, group's labels only) |", "|---|---|"]
    lines += [f"| {g or 'no group'} | {v:.4f} |" for g, v in scores.group_f2.items()]
    lines += ["", f"Labels per image: predicted {scores.labels_per_image:.2f}, true "
              f"{scores.true_labels_per_image:.2f}.", "", "| run | fold | arch | size | images "
              "| F2 at its best global threshold |", "|---|---|---|---|---|---|"]
    lines += [f"| {m.get('name')} | {m.get('fold')} | {m.get('arch')} | {m.get('image_size')} | "
              f"{m.get('images')} | {m.get('f2_global', float('nan')):.4f} |" for m in members]
    lines += ["", "![F2 against threshold](plots/f2_vs_threshold.png)",
              "![Per-class F2 against support](plots/class_f2_vs_support.png)"]
    return "\n".join(lines + error_tables(scores, names) + [""])


def write_validation_report(out_dir: Path, y_true: np.ndarray, probs: np.ndarray,
                            groups: np.ndarray, scores: ValidationScores, summary: dict[str, Any],
                            members: Sequence[dict[str, Any]], names: Sequence[str],
                            min_labels: int = 1, max_labels: int | None = None
                            ) -> dict[str, str]:
    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    paths = {
        "f2_vs_threshold": plot_f2_vs_threshold(y_true, probs, scores,
                                                plots / "f2_vs_threshold.png", min_labels,
                                                max_labels),
        "class_f2_vs_support": plot_class_f2_vs_support(scores, groups,
                                                        plots / "class_f2_vs_support.png"),
        "confusion": plot_confusion(scores, names, plots / f"{CONFUSED_GROUP}_confusion.png"),
    }
    table = out_dir / "validation.md"
    atomic_write_text(table, markdown_table(scores, summary, members, names))
    paths["table"] = table
    return {k: str(v) for k, v in paths.items()}
