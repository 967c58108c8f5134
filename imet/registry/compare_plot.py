"""The runs comparison PNG: CV F2 against leaderboard score (one point per run), and validation
F2 against step for each trained run. matplotlib's object API on the Agg canvas (no pyplot)."""
from __future__ import annotations

import io
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_CV_SOURCE = {"validate": 0, "train": 1, "predict": 2}  # which kind's F2 stands for a run's CV


def cv_lb_points(rows: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """(run, cv, lb) for every run with both; the CV of a validated run is its validation (TTA,
    tuned thresholds) score, otherwise its training-time score."""
    by_run: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: _CV_SOURCE.get(r["kind"], 9)):
        entry = by_run.setdefault(row["run"], {"cv": None, "lb": None})
        if entry["cv"] is None and row.get("cv_f2") is not None:
            entry["cv"] = float(row["cv_f2"])
        if entry["lb"] is None and row.get("lb") is not None:
            entry["lb"] = float(row["lb"])
    return [(run, e["cv"], e["lb"]) for run, e in by_run.items()
            if e["cv"] is not None and e["lb"] is not None]


def render_comparison_png(rows: list[dict[str, Any]]) -> bytes:
    figure = Figure(figsize=(13, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    cv_ax, f2_ax = figure.subplots(1, 2)

    points = cv_lb_points(rows)
    if points:
        cv_ax.scatter([p[1] for p in points], [p[2] for p in points], color="tab:blue")
        # LB = CV: points far below it are where validation flatters the model.
        low = min(min(p[1], p[2]) for p in points)
        high = max(max(p[1], p[2]) for p in points)
        cv_ax.plot([low, high], [low, high], ls="--", lw=0.8, color="grey", label="LB = CV")
        for run, cv, lb in points:
            cv_ax.annotate(run, (cv, lb), textcoords="offset points", xytext=(4, 4),
                           fontsize="small")
    else:
        cv_ax.text(0.5, 0.5, "no leaderboard scores yet:\npython -m imet runs set-lb RUN SCORE",
                   ha="center", va="center", transform=cv_ax.transAxes, color="grey")
    cv_ax.set_xlabel("CV F2")
    cv_ax.set_ylabel("leaderboard score")
    cv_ax.set_title("CV against LB")
    cv_ax.grid(True, alpha=0.3)

    plotted = 0
    for row in rows:
        history = [p for p in row.get("f2_history") or [] if p[0] is not None and p[1] is not None]
        if row["kind"] != "train" or not history:
            continue
        history.sort()
        f2_ax.plot([p[0] for p in history], [p[1] for p in history], "o-", ms=2, lw=1,
                   label=row["run"])
        plotted += 1
    if plotted:
        f2_ax.legend(loc="lower right", fontsize="small")
    else:
        f2_ax.text(0.5, 0.5, "no evaluations recorded", ha="center", va="center",
                   transform=f2_ax.transAxes, color="grey")
    f2_ax.set_xlabel("step")
    f2_ax.set_ylabel("validation F2")
    f2_ax.set_title("F2 against step")
    f2_ax.grid(True, alpha=0.3)

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
