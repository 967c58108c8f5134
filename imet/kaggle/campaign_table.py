"""The campaign's status table: member, sessions, state, best F2, GPU-hours, last message, and
the GPU-hours used against the plan's budget; kept in DIR as status.csv and status.md."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from imet.fileio import atomic_write_text
from imet.kaggle.campaign_state import FINALS, gpu_seconds, gpu_used_s

COLUMNS = ("member", "sessions", "state", "best F2", "GPU-hours", "last message")


def _f2(value) -> str:
    return "" if value is None else f"{float(value):.4f}"


def rows(state: dict) -> list[dict]:
    out = []
    for name in [*state["members"], *FINALS]:
        job = state["jobs"][name]
        if name in FINALS and not job["sessions"]:
            continue
        out.append({"member": name, "sessions": len(job["sessions"]), "state": job["state"],
                    "best F2": _f2(job.get("best_f2")),
                    "GPU-hours": f"{gpu_seconds(job) / 3600:.2f}",
                    "last message": job.get("message") or ""})
    return out


def budget_line(state: dict, gpu_hours: float) -> str:
    return f"GPU-hours used: {gpu_used_s(state) / 3600:.2f} of {gpu_hours:g}"


def markdown(state: dict, gpu_hours: float) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for row in rows(state):
        cells = [str(row[c]).replace("|", "/") for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", budget_line(state, gpu_hours)]) + "\n"


def write_tables(out: Path, state: dict, gpu_hours: float) -> str:
    """Write DIR/status.csv and DIR/status.md; the Markdown text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows(state))
    atomic_write_text(Path(out) / "status.csv", buffer.getvalue())
    text = markdown(state, gpu_hours)
    atomic_write_text(Path(out) / "status.md", text)
    return text
