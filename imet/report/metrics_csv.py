"""metrics.csv: one row per progress and evaluation event, appended as training goes.

Why not rewrite the file each time: a long run emits tens of thousands of rows. Rows are
appended and flushed whole (a killed process loses nothing that was flushed), synced at
checkpoints, and a torn last line (power loss mid-write) is dropped on the next read.
Rows are keyed by (kind, step): a resumed run first drops every row beyond the checkpoint step,
so the steps it replays are not written twice; a row repeated at the same key replaces the old."""
from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable

from imet.fileio import atomic_write_text
from imet.report.find import InputFiles, input_files
from imet.report.subscriber import RankZeroSubscriber

log = logging.getLogger(__name__)

FILENAME = "metrics.csv"
COLUMNS = ("run", "kind", "session", "time", "stage", "epoch", "step", "epoch_step", "loss",
           "lr", "img_per_s", "f2", "threshold", "best_f2", "val_loss", "is_best")
_INT_COLUMNS = {"session", "stage", "epoch", "step", "epoch_step"}
_TEXT_COLUMNS = {"run", "kind"}


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def _parse(column: str, text: str) -> Any:
    if text == "":
        return None
    if column in _TEXT_COLUMNS:
        return text
    if column == "is_best":
        return text in ("1", "True", "true")
    try:
        return int(text) if column in _INT_COLUMNS else float(text)
    except ValueError:
        return None


def _rows_to_csv(rows: Iterable[dict[str, Any]], header: bool = True) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({column: _format(row.get(column)) for column in COLUMNS})
    return buffer.getvalue()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a metrics.csv with typed values; a torn (unterminated) last line is dropped and
    columns this version does not know are ignored. A missing file reads as no rows."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for raw in reader:
        if raw.get("step") in (None, ""):
            continue
        row = {column: _parse(column, raw.get(column) or "") for column in COLUMNS}
        if row["step"] is not None:
            rows.append(row)
    return rows


def find_run_metrics(run_name: str,
                     inputs: InputFiles | Iterable[str | os.PathLike]) -> Path | None:
    """The metrics.csv of `run_name` with the most rows among the input roots (recursive): on
    Kaggle the previous session's output is an attached input."""
    best, best_count = None, 0
    for candidate in input_files(inputs, FILENAME).named(FILENAME):
        count = sum(1 for row in read_metrics(candidate) if row["run"] == run_name)
        if count > best_count:
            best, best_count = candidate, count
    return best


class MetricsWriter(RankZeroSubscriber):
    """Event subscriber writing <run_dir>/metrics.csv. `input_roots` (or the run's shared
    InputFiles): where a resumed session looks for the previous session's file when the run dir
    has none (Kaggle's attached inputs)."""

    def __init__(self, run_dir: str | os.PathLike,
                 input_roots: InputFiles | Iterable[str | os.PathLike] = ()):
        self.path = Path(run_dir) / FILENAME
        self.inputs = input_files(input_roots, FILENAME)
        self._handle: io.TextIOBase | None = None
        self._writer = None
        self._keys: set[tuple[str, int]] = set()
        self._run = None
        self._session = None
        self._stage = None  # evaluation events carry no stage: the last progress event's

    # --- events -------------------------------------------------------------------------------
    def _on_run_start(self, event) -> None:
        data = event.data
        self._run = str(data.get("run_name") or "")
        self._session = data.get("session")
        resumed_from = data.get("resumed_from")
        rows: list[dict[str, Any]] = []
        if resumed_from is not None:
            source = self.path
            rows = self._rows_until(source, int(resumed_from))
            if not rows:  # a fresh Kaggle output folder: the previous session's is an input
                source = find_run_metrics(self._run, self.inputs)
                rows = self._rows_until(source, int(resumed_from)) if source else []
            if rows:
                log.info("metrics.csv: continuing %d rows from %s (up to step %s)",
                         len(rows), source, resumed_from)
        self._rewrite(rows)

    def _rows_until(self, path: Path, step: int) -> list[dict[str, Any]]:
        return [row for row in read_metrics(path)
                if row["run"] == self._run and row["step"] <= step]

    def _on_progress(self, event) -> None:
        data = event.data
        self._stage = data.get("stage")
        self._write({"kind": "progress", "stage": data.get("stage"), "epoch": data.get("epoch"),
                     "step": data.get("step"), "epoch_step": data.get("epoch_step"),
                     "loss": data.get("loss"), "lr": data.get("lr"),
                     "img_per_s": data.get("img_per_s")}, event.time)

    def _on_evaluation(self, event) -> None:
        data = event.data
        self._write({"kind": "evaluation", "stage": self._stage, "epoch": data.get("epoch"),
                     "step": data.get("step"), "f2": data.get("f2"),
                     "threshold": data.get("threshold"), "best_f2": data.get("best_f2"),
                     "val_loss": data.get("val_loss"),
                     "is_best": data.get("is_best")}, event.time)
        self._sync()

    def _on_checkpoint(self, event) -> None:
        self._sync()

    def _on_handover(self, event) -> None:
        self._sync()

    def _on_finish(self, event) -> None:
        self._sync()

    def _on_failure(self, event) -> None:
        self._sync()

    # --- file ---------------------------------------------------------------------------------
    def _write(self, row: dict[str, Any], when: float) -> None:
        if row.get("step") is None:
            return
        if self._handle is None:  # events before run_start (or after close): keep what exists
            self._rewrite(read_metrics(self.path))
        row = {**row, "run": self._run, "session": self._session, "time": round(when, 3),
               "step": int(row["step"])}
        key = (row["kind"], row["step"])
        if key in self._keys:  # the same step evaluated again after a resume: replace it (rare)
            self._handle.flush()
            rows = [old for old in read_metrics(self.path) if (old["kind"], old["step"]) != key]
            self._rewrite(rows + [row])
            return
        self._keys.add(key)
        self._writer.writerow([_format(row.get(column)) for column in COLUMNS])
        self._handle.flush()

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        self.close()
        self._keys = {(row["kind"], row["step"]) for row in rows}
        atomic_write_text(self.path, _rows_to_csv(rows))
        self._handle = open(self.path, "a", encoding="utf-8", newline="")
        self._writer = csv.writer(self._handle, lineterminator="\n")

    def _sync(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def rows(self) -> list[dict[str, Any]]:
        """Every row of this run in the file (including those continued from a resume)."""
        if self._handle is not None:
            self._handle.flush()
        return [row for row in read_metrics(self.path)
                if self._run is None or row["run"] == self._run]

    def close(self) -> None:
        if self._handle is not None:
            try:
                self._handle.flush()
                os.fsync(self._handle.fileno())
            finally:
                self._handle.close()
                self._handle = None
