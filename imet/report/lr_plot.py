"""The LR finder's plot: loss against LR (log scale), raw and smoothed, the suggestion marked."""
from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from imet.fileio import atomic_write_bytes


def write_lr_plot(path: str | Path, lrs: list[float], losses: list[float],
                  smoothed: list[float], suggestion: float, title: str = "") -> Path:
    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.plot(lrs, losses, color="lightgrey", linewidth=1, label="loss")
    ax.plot(lrs, smoothed, color="tab:blue", linewidth=2, label="smoothed loss")
    ax.axvline(suggestion, color="tab:red", linestyle="--",
               label=f"suggested LR {suggestion:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("LR (head; the body groups get it times their multipliers)")
    ax.set_ylabel("training loss")
    ax.set_title(title or "LR finder")
    ax.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
