"""Training curves as PNG: loss, F2 and learning rate against step.

Built on matplotlib's object API with the Agg canvas (no pyplot): no global figure registry, no
GUI backend, nothing shared between calls, so it is safe inside a training process and on a
headless Kaggle kernel."""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from imet.fileio import atomic_write_bytes

PLOTS_DIR = "plots"
# A plot 800 px wide shows no more than this many training points; a 20-epoch iMet run logs
# ~68,000 steps. Evaluation rows are always all kept.
MAX_PROGRESS_POINTS = 2000


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) or math.isinf(number) else number


def _series(rows: Iterable[dict[str, Any]], key: str,
            keep: Callable[[dict[str, Any]], bool] = lambda row: True) -> tuple[list, list]:
    points = {}
    for row in rows:
        step, value = _number(row.get("step")), _number(row.get(key))
        if step is not None and value is not None and keep(row):
            points[step] = value  # a step written twice (resume) plots once, last value wins
    steps = sorted(points)
    return steps, [points[step] for step in steps]


def _is_eval(row: dict[str, Any]) -> bool:
    kind = row.get("kind")
    return kind == "evaluation" if kind else _number(row.get("f2")) is not None


def _starts(rows: list[dict[str, Any]], key: str) -> list[float]:
    """The steps where `key` (stage, session) takes a new value."""
    starts, previous = [], None
    for row in sorted(rows, key=lambda r: _number(r.get("step")) or 0.0):
        value = row.get(key)
        if value in (None, ""):
            continue
        if previous is not None and str(value) != str(previous):
            starts.append(_number(row.get("step")))
        previous = value
    return [step for step in starts if step is not None]


# (column, how its changes are drawn): a stage switch and a session handover
MARKS = {"stage": dict(color="grey", ls="--", lw=0.8, label="stage switch"),
         "session": dict(color="tab:brown", ls=":", lw=1.0, label="session handover")}


def _plot_loss(ax, rows) -> None:
    steps, values = _series(rows, "loss", lambda row: not _is_eval(row))
    if not steps:
        steps, values = _series(rows, "train_loss")
    if steps:
        ax.plot(steps, values, lw=1, color="tab:blue", label="train loss")
    steps, values = _series(rows, "val_loss")
    if steps:
        ax.plot(steps, values, "o-", ms=3, color="tab:orange", label="validation loss")
    ax.set_ylabel("loss")


def _plot_f2(ax, rows) -> None:
    steps, values = _series(rows, "f2", _is_eval)
    if steps:
        ax.plot(steps, values, "o-", ms=3, color="tab:green", label="validation F2")
        best = max(range(len(values)), key=values.__getitem__)
        ax.scatter([steps[best]], [values[best]], s=80, marker="*", color="tab:red", zorder=3,
                   label=f"best {values[best]:.4f} @ step {int(steps[best])}")
    ax.set_ylabel("F2")


def _plot_lr(ax, rows) -> None:
    steps, values = _series(rows, "lr")
    if steps:
        ax.plot(steps, values, lw=1, color="tab:purple", label="learning rate")
        positive = [value for value in values if value > 0]
        # One-cycle and warmup schedules span decades: a log axis shows their shape.
        if positive and len(positive) == len(values) and max(positive) > 10 * min(positive):
            ax.set_yscale("log")
    ax.set_ylabel("learning rate")


PANELS: dict[str, Callable] = {"loss": _plot_loss, "f2": _plot_f2, "lr": _plot_lr}


def thin(rows: list[dict[str, Any]], limit: int = MAX_PROGRESS_POINTS) -> list[dict[str, Any]]:
    """Every evaluation row and at most about `limit` evenly spaced other rows (the last kept)."""
    others = [i for i, row in enumerate(rows) if not _is_eval(row)]
    if len(others) <= limit:
        return rows
    stride = -(-len(others) // limit)
    keep = set(others[::stride]) | {others[-1]}
    return [row for i, row in enumerate(rows) if i in keep or _is_eval(row)]


# Fixed margins (inches) instead of a constrained layout: that one draws the figure once more
# only to measure its labels, doubling the cost of every PNG (~0.15 CPU-s a draw).
_MARGIN = dict(left=0.95, right=0.2, top=0.45, bottom=0.55, between=0.6)


def history_figure(rows: list[dict[str, Any]], panels: list[str],
                   title: str | None = None) -> Figure:
    """One axes per panel, stacked, each with its own step axis, so that every panel can be cut
    out as a picture of its own (`write_plots`)."""
    panel_h = 2.8
    height = (_MARGIN["top"] + _MARGIN["bottom"] + panel_h * len(panels)
              + _MARGIN["between"] * (len(panels) - 1))
    figure = Figure(figsize=(8, height), dpi=100)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=_MARGIN["left"] / 8, right=1 - _MARGIN["right"] / 8,
                           top=1 - _MARGIN["top"] / height, bottom=_MARGIN["bottom"] / height,
                           hspace=_MARGIN["between"] / panel_h)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    marks = {key: _starts(rows, key) for key in MARKS}
    for ax, panel in zip(axes, panels):
        PANELS[panel](ax, rows)
        has_data = bool(ax.get_legend_handles_labels()[0])
        for key, steps in marks.items():
            for i, step in enumerate(steps):
                ax.axvline(step, **(MARKS[key] if i == 0 else {**MARKS[key], "label": None}))
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelbottom=True)
        ax.set_xlabel("step")
        if has_data:
            ax.legend(loc="best", fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes,
                    color="grey")
    if title:
        figure.suptitle(title, y=1 - 0.1 / height, va="top")
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def render_history_png(history: list[dict[str, Any]], title: str | None = None) -> bytes:
    """One PNG with loss, F2 and LR against step. `history`: rows as in metrics.csv (progress and
    evaluation rows; values may be numbers or CSV strings; missing fields are skipped)."""
    return _png(history_figure(thin(list(history or [])), list(PANELS), title))


def _panel_pngs(figure: Figure) -> list[bytes]:
    """Each axes of a drawn figure cut out of its pixels, PNG-encoded, without a second draw:
    its band of the figure runs from a little above its top (the figure's top for the first,
    title included) down to a little above the next axes, so its tick labels and "step" below
    it are in, the next panel's top tick label is not."""
    from PIL import Image  # matplotlib's own PNG writer is PIL too

    pixels = np.asarray(figure.canvas.buffer_rgba())
    height = pixels.shape[0]
    pad = 0.15 / figure.get_figheight()
    tops = [ax.get_position().y1 + pad for ax in figure.axes]
    edges = [1.0] + tops[1:] + [0.0]
    pngs = []
    for top, bottom in zip(edges, edges[1:]):
        rows = slice(int(round((1 - top) * height)), int(round((1 - bottom) * height)))
        buffer = io.BytesIO()
        Image.fromarray(pixels[rows]).save(buffer, format="png")
        pngs.append(buffer.getvalue())
    return pngs


def write_plots(run_dir: str | os.PathLike, history: list[dict[str, Any]],
                title: str | None = None) -> list[str]:
    """<run_dir>/plots/history.png (all panels) and loss.png, f2.png, lr.png; written atomically.
    The figure is drawn once: each panel's PNG is its band of history.png. Returns the paths
    written."""
    folder = Path(run_dir) / PLOTS_DIR
    figure = history_figure(thin(list(history or [])), list(PANELS), title)
    written = [atomic_write_bytes(folder / "history.png", _png(figure))]
    for panel, png in zip(PANELS, _panel_pngs(figure)):
        written.append(atomic_write_bytes(folder / f"{panel}.png", png))
    return [str(path) for path in written]
