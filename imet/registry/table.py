"""The `runs` table: one row per (run id, kind), its sessions folded together, best first.

Written by hand rather than with pandas' to_markdown: that needs `tabulate`, one more wheel to
bundle into the offline Kaggle dataset for three small formatters."""
from __future__ import annotations

import csv
import io
from typing import Any, Iterable

from imet.duration import format_duration
from imet.report.provenance import short_code_version

COLUMNS = ("run", "kind", "status", "fold", "arch", "size", "sessions", "wall", "cv_f2",
           "threshold", "tta", "lb", "ensemble", "code", "torch", "config")
_KIND_ORDER = {"train": 0, "validate": 1, "predict": 2}


def _threshold_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        numbers = [float(v) for v in value if isinstance(v, (int, float))]
        return f"per-class (mean {sum(numbers) / len(numbers):.3f})" if numbers else "per-class"
    if isinstance(value, dict):
        return str(value.get("mode") or "custom")
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return str(value)


def _threshold_cell(row: dict[str, Any]) -> str:
    """'0.465', or 'group (global 0.465)' when validation chose per-group/per-class thresholds."""
    text = _threshold_text(row.get("threshold"))
    mode = row.get("threshold_mode")
    if mode and mode != "global":
        return f"{mode} (global {text})" if text else str(mode)
    return text


def _torch_text(versions: Any) -> str | None:
    """'2.14.1' or '2.10.0+cu128/CUDA 12.8' of a session's library versions (None: unknown)."""
    if not isinstance(versions, dict) or not versions.get("torch"):
        return None
    cuda = versions.get("cuda")
    return str(versions["torch"]) + (f"/CUDA {cuda}" if cuda and cuda != "none" else "")


def _torches(group: list[dict[str, Any]]) -> list[str]:
    """The torch/CUDA each session ran on, in session order, a repeat folded: more than one
    means the run moved to another image between sessions (not the same numerics)."""
    seen: list[str] = []
    for record in group:
        text = _torch_text(record.get("versions"))
        if text and (not seen or seen[-1] != text):
            seen.append(text)
    return seen


def summarize(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold the session records of each (run id, kind) into one summary row (typed values)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((str(record["run_id"]), str(record["kind"])), []).append(record)
    rows = []
    for (run_id, kind), group in groups.items():
        group.sort(key=lambda r: int(r.get("session") or 1))
        latest = group[-1]
        scored = [r for r in group if r.get("best_f2") is not None]
        best = max(scored, key=lambda r: float(r["best_f2"])) if scored else latest
        lb_records = [r for r in group if r.get("lb_score") is not None]
        lb = max(lb_records, key=lambda r: str(r.get("lb_set_at") or "")) if lb_records else {}
        history = max((r.get("f2_history") or [] for r in group), key=len)
        rows.append({
            "run": run_id, "kind": kind, "status": latest.get("status"),
            "fold": latest.get("fold"), "arch": latest.get("arch"),
            "size": latest.get("image_size"),
            "sessions": [int(r.get("session") or 1) for r in group],
            "session_wall_s": [r.get("wall_s") for r in group],
            "wall_s": sum(float(r.get("wall_s") or 0.0) for r in group),
            "cv_f2": best.get("best_f2"), "best_step": best.get("best_step"),
            "threshold": best.get("threshold"), "threshold_mode": best.get("threshold_mode"),
            "tta": latest.get("tta"),
            "lb": lb.get("lb_score"), "ensemble": latest.get("ensemble") or [],
            "code": short_code_version(latest.get("code_version")),
            "torch": _torches(group),
            "config": latest.get("config_hash"), "f2_history": history,
        })
    return rows


def sort_rows(rows: list[dict[str, Any]], by: str = "cv") -> list[dict[str, Any]]:
    """Best first by CV F2 (or LB); runs without the score last; then run id and kind."""
    key = "lb" if by == "lb" else "cv_f2"

    def order(row):
        score = row.get(key)
        return (score is None, -(float(score) if score is not None else 0.0), row["run"],
                _KIND_ORDER.get(row["kind"], 9))
    return sorted(rows, key=order)


def _cells(row: dict[str, Any]) -> dict[str, str]:
    def num(value, spec):
        return "" if value is None else format(float(value), spec)
    walls = ", ".join(format_duration(w) for w in row["session_wall_s"])
    return {
        "run": row["run"], "kind": row["kind"], "status": str(row.get("status") or ""),
        "fold": "" if row.get("fold") is None else str(row["fold"]),
        "arch": str(row.get("arch") or ""), "size": "" if row.get("size") is None
        else str(row["size"]),
        "sessions": f"{len(row['sessions'])} ({walls})" if row["sessions"] else "",
        "wall": format_duration(row["wall_s"]), "cv_f2": num(row.get("cv_f2"), ".4f"),
        "threshold": _threshold_cell(row), "tta": str(row.get("tta") or ""),
        "lb": num(row.get("lb"), ".5f"), "ensemble": " ".join(map(str, row["ensemble"])),
        "code": row.get("code") or "", "torch": " -> ".join(row.get("torch") or []),
        "config": str(row.get("config") or "")[:12],
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    cells = [_cells(row) for row in rows]
    widths = {c: max([len(c)] + [len(cell[c]) for cell in cells]) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS).rstrip()]
    lines.append("  ".join("-" * widths[c] for c in COLUMNS))
    lines += ["  ".join(cell[c].ljust(widths[c]) for c in COLUMNS).rstrip() for cell in cells]
    return "\n".join(lines) + "\n"


def format_markdown(rows: list[dict[str, Any]]) -> str:
    def escape(text: str) -> str:
        return text.replace("|", "\\|")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(escape(_cells(row)[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def format_csv(rows: list[dict[str, Any]]) -> str:
    """Machine-readable: raw numbers (seconds, full hashes), lists joined with spaces."""
    buffer = io.StringIO()
    columns = ("run", "kind", "status", "fold", "arch", "size", "sessions", "session_wall_s",
               "wall_s", "cv_f2", "best_step", "threshold", "tta", "lb", "ensemble", "code",
               "torch", "config")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        values = []
        for column in columns:
            value = row.get(column)
            if column == "threshold":
                value = _threshold_cell(row)
            elif isinstance(value, (list, tuple)):
                value = " ".join("" if v is None else str(v) for v in value)
            values.append("" if value is None else value)
        writer.writerow(values)
    return buffer.getvalue()


FORMATS = {"table": format_table, "markdown": format_markdown, "csv": format_csv}
