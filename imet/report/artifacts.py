"""run.json (the run's summary) and plots/*.png, written when a session ends: at a handover
(so a half-done run's output already shows its curves), at the finish, and after a failure.

run.json carries the list of sessions (number, device, kernel, start, wall time, how it ended)
across a chain of Kaggle sessions: a resumed session reads the previous run.json from the run
dir or, on Kaggle, from the attached previous output."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable

from imet.fileio import atomic_write_text
from imet.report.find import InputFiles, input_files
from imet.report.metrics_csv import FILENAME as METRICS_FILENAME, read_metrics
from imet.report.provenance import MANIFEST_NAME, code_version
from imet.report.redact import redact
from imet.report.subscriber import RankZeroSubscriber

log = logging.getLogger(__name__)

RUN_JSON = "run.json"


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def read_run_json(path: str | os.PathLike) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == "imet-run" else None


def find_run_json(run_name: str,
                  inputs: InputFiles | Iterable[str | os.PathLike]) -> dict[str, Any] | None:
    """The run.json of `run_name` with the most sessions among the input roots (recursive)."""
    best = None
    for path in input_files(inputs, RUN_JSON).named(RUN_JSON):
        data = read_run_json(path)
        if data and data.get("run_name") == run_name and (
                best is None or len(data.get("sessions", [])) > len(best["sessions"])):
            best = data
    return best


class ArtifactWriter(RankZeroSubscriber):
    """Event subscriber writing <run_dir>/run.json and <run_dir>/plots/*.png."""

    def __init__(self, run_dir: str | os.PathLike,
                 input_roots: InputFiles | Iterable[str | os.PathLike] = ()):
        self.run_dir = Path(run_dir)
        self.inputs = input_files(input_roots, RUN_JSON, MANIFEST_NAME)
        self.summary: dict[str, Any] = {}
        self._session: dict[str, Any] | None = None
        self._history: list[dict[str, Any]] = []

    def _on_run_start(self, event) -> None:
        data = event.data
        run_name = str(data.get("run_name") or "")
        previous = None  # a fresh start (no checkpoint) owes nothing to an older run.json
        if data.get("resumed_from") is not None:
            previous = read_run_json(self.run_dir / RUN_JSON)
            if not previous or previous.get("run_name") != run_name:
                previous = find_run_json(run_name, self.inputs)
        # Sessions before this one; a later one left by an abandoned attempt is not history.
        sessions = [s for s in (previous or {}).get("sessions", [])
                    if int(s.get("session") or 0) < int(data.get("session") or 1)]
        config = redact(data.get("config") or {})
        self._session = {"session": data.get("session"), "started": _iso(event.time),
                         "start_time": event.time, "device": data.get("device"),
                         "kernel": data.get("kernel"), "resumed_from": data.get("resumed_from"),
                         "wall_s": None, "ended": None}
        keep = previous or {}
        self.summary = {
            "format": "imet-run", "version": 1, "run_name": run_name, "status": "running",
            "arch": data.get("arch"), "fold": data.get("fold"),
            "image_size": data.get("image_size"), "total_steps": data.get("total_steps"),
            "config": config, "config_hash": data.get("config_fingerprint"),
            "code_version": code_version(self.inputs),
            "best_f2": keep.get("best_f2"), "best_step": keep.get("best_step"),
            "threshold": keep.get("threshold"), "sessions": sessions + [self._session],
        }
        if data.get("init_f2") is not None:  # --init: the untuned model's F2 (first session)
            self.summary["init_f2"] = data["init_f2"]

    def _on_init_evaluation(self, event) -> None:
        self.summary["init_f2"] = event.data.get("f2")

    def _on_evaluation(self, event) -> None:
        data = event.data
        if data.get("is_best"):
            self.summary["threshold"] = data.get("threshold")
        self.summary["best_f2"] = data.get("best_f2")
        self.summary["best_step"] = data.get("best_step")
        self._history = list(data.get("history") or self._history)

    def _end_session(self, event, status: str, **extra: Any) -> list[str]:
        if self._session is not None:
            self._session["wall_s"] = round(event.time - self._session["start_time"], 3)
            self._session["ended"] = status
        self.summary.update(status=status, updated=_iso(event.time), **extra)
        self.summary["total_wall_s"] = round(sum(s.get("wall_s") or 0.0
                                                 for s in self.summary.get("sessions", [])), 3)
        # run.json first: drawing the plots takes seconds, and a session cut by its limit
        # while drawing must still leave its summary.
        self._write_json()
        plots = self._write_plots()
        self.summary["plots"] = [os.path.relpath(p, self.run_dir) for p in plots]
        self._write_json()
        return plots

    def _write_plots(self) -> list[str]:
        rows = [row for row in read_metrics(self.run_dir / METRICS_FILENAME)
                if row.get("run") in (None, self.summary.get("run_name"))]
        history = rows or self._history
        title = f"{self.summary.get('run_name')} (fold {self.summary.get('fold')})"
        try:
            # matplotlib only here: `predict` reads run.json through this module and draws
            # nothing (~0.3 CPU-s of imports saved there).
            from imet.report.plots import write_plots
            return write_plots(self.run_dir, history, title=title)
        except Exception as err:  # a plot must never cost the run its run.json
            log.warning("plots for %s failed: %s: %s", self.run_dir, type(err).__name__, err)
            return []

    def _write_json(self) -> None:
        summary = {k: v for k, v in self.summary.items()}
        summary["sessions"] = [{k: v for k, v in s.items() if k != "start_time"}
                               for s in summary.get("sessions", [])]
        atomic_write_text(self.run_dir / RUN_JSON,
                          json.dumps(redact(summary), indent=2, default=str) + "\n")

    def _on_handover(self, event) -> None:
        data = event.data
        self._end_session(event, "handover", next=data.get("next"), reason=data.get("reason"),
                          checkpoint=data.get("checkpoint"), last_step=data.get("step"))

    def _on_finish(self, event) -> None:
        data = event.data
        self._history = list(data.get("history") or self._history)
        artifacts = [str(a) for a in data.get("artifacts") or []]
        self.summary.update(best_f2=data.get("best_f2", self.summary.get("best_f2")),
                            best_step=data.get("best_step", self.summary.get("best_step")),
                            duration_s=data.get("duration_s"))
        plots = self._end_session(event, "finished", next=None)
        listed = artifacts + [p for p in plots + [str(self.run_dir / RUN_JSON)]
                              if p not in artifacts]
        self.summary["artifacts"] = [os.path.relpath(p, self.run_dir) if os.path.isabs(p)
                                     else p for p in listed]
        self._write_json()

    def _on_failure(self, event) -> None:
        if not self.run_dir.is_dir():  # refused before the run began (bad input): nothing written
            return
        error = str(event.data.get("error") or "").strip()
        self._end_session(event, "failed", error=error.splitlines()[0][:500] if error else "")
