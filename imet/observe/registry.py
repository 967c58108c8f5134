"""The run registry: the experiment log across kernels and sessions, as JSON lines with one
record per (run id, kind, session), the records train, validate and predict write into it, and
what `imet runs` shows of it (a table, CSV or markdown, and a comparison plot).

Every kernel writes the registry into its output folder after merging its attached inputs'
registries, so the newest output carries the whole history forward. The file is small (a line
per session) and always rewritten atomically: a kill leaves the old or the new file."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from imet.config import format_duration
from imet.errors import UserError
from imet.fileio import atomic_write_text, utc_timestamp
from imet.observe.console import redact
from imet.observe.files import (MANIFEST_NAME, RUN_JSON, InputFiles, code_version, config_hash,
                                input_files, png_bytes, read_run_json, short_code_version)
from imet.train.events import Evaluation, Failure, Finish, Handover, RankZeroSubscriber, RunStart

log = logging.getLogger(__name__)

REGISTRY_NAME = "imet-runs.jsonl"
_STATUS_RANK = {"finished": 4, "failed": 3, "handover": 2, "running": 1}


def record_key(record: dict[str, Any]) -> tuple[str, str, int]:
    return (str(record["run_id"]), str(record["kind"]), int(record.get("session") or 1))


def read_registry(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of one registry file; lines that are not records are skipped with a warning (a
    hand-edited or foreign file must not stop a kernel)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(lines, 1):
        try:
            if line.strip():
                record = json.loads(line)
                record_key(record)
                records.append(record)
        except (ValueError, KeyError, TypeError) as err:
            log.warning("%s line %d: not a run record (%s); skipped", path, number, err)
    return records


def find_registries(roots: InputFiles | Iterable[str | os.PathLike]) -> list[Path]:
    """Registry files under the roots (recursive, a file given directly counts too), root by
    root; `roots` may be the run's shared InputFiles."""
    inputs = input_files(roots, REGISTRY_NAME)
    under = inputs.named(REGISTRY_NAME)
    found: list[Path] = []
    for root in inputs.roots:
        found.extend([root] if root.is_file() else [p for p in under if p.is_relative_to(root)])
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def completeness(record: dict[str, Any]) -> tuple:
    """Order among copies of one (run id, kind, session) record: the further the session got,
    the more fields it filled, the later it was updated, the better."""
    return (_STATUS_RANK.get(str(record.get("status")), 0),
            len(record.get("f2_history") or []),
            sum(1 for value in record.values() if value not in (None, "", [], {})),
            str(record.get("updated") or ""))


def merge_records(*groups: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (run id, kind, session), the most complete copy; a leaderboard score set
    on any copy survives (the most recently set one wins). Order: first appearance."""
    best: dict[tuple, dict[str, Any]] = {}
    lb: dict[tuple, tuple[str, Any]] = {}
    for group in groups:
        for record in group:
            key = record_key(record)
            if key not in best or completeness(record) > completeness(best[key]):
                best[key] = record
            if record.get("lb_score") is not None:
                stamp = str(record.get("lb_set_at") or "")
                if key not in lb or stamp > lb[key][0]:
                    lb[key] = (stamp, record["lb_score"])
    return [{**record, "lb_score": lb[key][1], "lb_set_at": lb[key][0] or None} if key in lb
            else record for key, record in best.items()]


def write_registry(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> Path:
    text = "".join(json.dumps(record, sort_keys=True, default=str) + "\n" for record in records)
    return atomic_write_text(path, text)


def registry_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / REGISTRY_NAME


def merge_into(folder: str | os.PathLike, input_roots: Iterable[str | os.PathLike] = ()
               ) -> list[dict[str, Any]]:
    """Merge every registry under the input roots into <folder>/imet-runs.jsonl; returns the
    merged records."""
    target = registry_path(folder)
    sources = [p for p in find_registries(input_roots) if p.resolve() != target.resolve()]
    merged = merge_records(read_registry(target), *(read_registry(p) for p in sources))
    if merged or target.exists():
        write_registry(target, merged)
    return merged


def upsert(folder: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Put `record` into <folder>'s registry, replacing the copy with the same key."""
    target, key = registry_path(folder), record_key(record)
    stored = read_registry(target)
    # A leaderboard score set by hand on the stored copy is kept when the run rewrites its record.
    previous = next((old for old in stored if record_key(old) == key), {})
    if previous.get("lb_score") is not None and record.get("lb_score") is None:
        record = {**record, "lb_score": previous["lb_score"],
                  "lb_set_at": previous.get("lb_set_at")}
    return write_registry(target, [old for old in stored if record_key(old) != key] + [record])


def set_lb(roots: Iterable[str | os.PathLike], run: str, score: float, stamp: str
           ) -> tuple[str, list[Path]]:
    """Record a leaderboard score on every record of `run` (exact id, else a unique prefix) in
    every registry under the roots. Returns (run id, files changed); UserError when no registry
    or no such run is found."""
    paths = find_registries(roots)
    shown = ", ".join(str(Path(r)) for r in roots)
    if not paths:
        raise UserError(f"no {REGISTRY_NAME} under {shown}: pass the folder holding the "
                        "downloaded kernel outputs")
    ids = {str(r["run_id"]) for p in paths for r in read_registry(p)}
    if run not in ids:
        matches = sorted(i for i in ids if i.startswith(run))
        if len(matches) != 1:
            known = ", ".join(sorted(ids)[:20]) or "none"
            what = "matches several runs" if matches else "is not a run"
            raise UserError(f"runs set-lb: {run!r} {what} in {shown} (runs: {known}); "
                            "give the full run id")
        run = matches[0]
    changed = []
    for path in paths:
        records = read_registry(path)
        if not any(str(r["run_id"]) == run for r in records):
            continue
        records = [{**r, "lb_score": float(score), "lb_set_at": stamp}
                   if str(r["run_id"]) == run else r for r in records]
        try:
            write_registry(path, records)
        except OSError as err:
            raise UserError(f"runs set-lb: cannot write {path} ({err.strerror}); copy the "
                            "folder somewhere writable (attached Kaggle inputs are read-only)"
                            ) from None
        changed.append(path)
    return run, changed


# Run records: the train record is kept up to date during the run by an event subscriber;
# validate and predict call `append_record` when they are done. Record fields: schema, run_id,
# kind (train|validate|predict), session, status, created, updated, code_version {imet,
# manifest_sha256, git_commit}, config (secrets redacted), config_hash, fold, arch, image_size,
# device, kernel, wall_s (this session), best_f2, best_step, threshold(s), f2_history [[step,
# f2], …], tta, ensemble (run ids used), lb_score, lb_set_at, error; a train session also
# versions (library versions, torch and cuda among them) and version_change (the checkpoint's
# torch/CUDA -> this session's, when they differ; else null).

KINDS = ("train", "validate", "predict")
SCHEMA = 1


def make_record(kind: str, run_id: str, session: int = 1, *, config: dict | None = None,
                input_roots: Iterable[str | os.PathLike] = (), **fields: Any) -> dict[str, Any]:
    """A registry record with code version, timestamps, config hash filled in and every value
    passed through the secret filter. `fields`: any of the record fields listed above."""
    if kind not in KINDS:
        raise ValueError(f"record kind {kind!r}: expected one of {KINDS}")
    if not run_id:
        raise ValueError("a run record needs a run id")
    stamp = utc_timestamp()
    record: dict[str, Any] = {
        "schema": SCHEMA, "run_id": str(run_id), "kind": kind, "session": int(session),
        "status": "finished", "created": stamp, "updated": stamp,
        "code_version": code_version(input_roots), "config": config or {},
        "config_hash": config_hash(config), "fold": None, "arch": None, "image_size": None,
        "best_f2": None, "best_step": None, "threshold": None, "tta": None, "ensemble": None,
        "lb_score": None,
    }
    record.update(fields)
    return redact(record)


def _trained_name(model: Any) -> str | None:
    """The train run id of a model file: the run_name in the run.json beside it (predict and
    validate name a run after its folder, which on Kaggle is an input slug, not the run id)."""
    if not model:
        return None
    summary = read_run_json(Path(str(model)).parent / RUN_JSON)
    return str(summary["run_name"]) if summary and summary.get("run_name") else None


def _member_name(run: Any) -> Any:
    if not isinstance(run, dict):
        return run
    return _trained_name(run.get("model")) or run.get("name") or run.get("run_name") or (
        Path(str(run["model"])).parent.name if run.get("model") else None)


def _common(runs: Any, key: str) -> Any:
    values = {run.get(key) for run in runs or [] if isinstance(run, dict)} - {None}
    return values.pop() if len(values) == 1 else None


def record_from_summary(summary: dict[str, Any],
                        input_roots: Iterable[str | os.PathLike] = ()) -> dict[str, Any]:
    """A registry record from the summary `imet validate` / `imet predict` return (kind, f2,
    tta, runs [{name, arch, fold, image_size…}], seconds…): the fields the table needs are lifted
    to the top, the rest kept under "details". The run id is the member run's name, or for an
    ensemble "ens-" + a hash of the member names (the names are in "ensemble")."""
    kind = summary.get("kind")
    if kind not in KINDS:
        raise ValueError(f"run record: kind {kind!r} is not one of {KINDS}")
    runs = summary.get("runs") or []
    names = [str(name) for name in map(_member_name, runs) if name]
    run_id = summary.get("run_id")
    if not run_id:
        if len(names) == 1:
            run_id = names[0]
        else:
            digest = hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:8]
            run_id = f"ens-{digest}" if names else f"{kind}-{utc_timestamp()}"
    tta = summary.get("tta")
    threshold = summary.get("threshold", summary.get("threshold_global"))
    details = {key: value for key, value in summary.items() if key not in ("runs", "kind")}
    return make_record(
        kind, run_id, int(summary.get("session") or 1), config=summary.get("config"),
        input_roots=input_roots, best_f2=summary.get("best_f2", summary.get("f2")),
        threshold=threshold, threshold_mode=summary.get("mode"),
        tta="+".join(map(str, tta)) if isinstance(tta, (list, tuple)) else tta,
        ensemble=names if len(names) > 1 else None, members=names,
        fold=summary.get("fold", _common(runs, "fold")),
        arch=summary.get("arch", _common(runs, "arch")),
        image_size=summary.get("image_size", _common(runs, "image_size")),
        wall_s=summary.get("wall_s", summary.get("seconds")), details=details)


def append_record(folder: str | os.PathLike, record: dict[str, Any],
                  input_roots: Iterable[str | os.PathLike] = ()) -> Path:
    """For validate/predict: merge the input roots' registries into <folder>'s, then add (or
    replace) `record`: one built with `make_record`, or the summary validate/predict return
    (see `record_from_summary`; then the registries beside the models it used are merged too).
    Returns the registry path."""
    roots = list(input_roots)
    if record.get("schema") != SCHEMA or not record.get("run_id"):
        # the registries beside the models it used hold those runs' training history
        models = [Path(str(run["model"])).parent for run in record.get("runs") or []
                  if isinstance(run, dict) and run.get("model")]
        roots += [folder for folder in models if folder.is_dir()]
        record = record_from_summary(record, input_roots)
    merge_into(folder, roots)
    return upsert(folder, redact(dict(record)))


class TrainRecorder(RankZeroSubscriber):
    """Event subscriber keeping the train record of the current session in <run_dir>'s registry:
    written at run start (after merging the inputs' registries), at each new best evaluation, at a
    handover, at the finish and after a failure."""

    def __init__(self, run_dir: str | os.PathLike,
                 input_roots: InputFiles | Iterable[str | os.PathLike] = ()):
        self.run_dir = Path(run_dir)
        self.inputs = input_files(input_roots, REGISTRY_NAME, MANIFEST_NAME)
        self.record: dict[str, Any] | None = None
        self._started = None

    def _save(self, event, **fields: Any) -> None:
        if self.record is None:
            return
        self.record.update(fields, updated=utc_timestamp(event.time),
                           wall_s=round(event.time - self._started, 3))
        upsert(self.run_dir, redact(self.record))

    def _on_run_start(self, event: RunStart) -> None:
        self._started = event.time
        merge_into(self.run_dir, self.inputs)
        self.record = make_record(
            "train", event.run_name, event.session, config=event.config, input_roots=self.inputs,
            config_hash=event.config_fingerprint, status="running",
            created=utc_timestamp(event.time), fold=event.fold, arch=event.arch,
            image_size=event.image_size, device=event.device, kernel=event.kernel,
            resumed_from=event.resumed_from, total_steps=event.total_steps,
            versions=event.versions, version_change=event.version_change,
            best_f2=event.best_f2, best_step=event.best_step, threshold=event.threshold,
            f2_history=_f2_points(event.history), wall_s=0.0)
        self._save(event)

    def _on_evaluation(self, event: Evaluation) -> None:
        if self.record is None:
            return
        history = _f2_points(event.history)
        if not history and event.f2 is not None:
            history = [p for p in self.record.get("f2_history") or []
                       if p[0] != event.step] + [[event.step, event.f2]]
        self.record.update(best_f2=event.best_f2, best_step=event.best_step, last_step=event.step)
        if history:
            self.record["f2_history"] = history
        if event.is_best:
            self.record["threshold"] = event.threshold
            self._save(event)

    def _on_handover(self, event: Handover) -> None:
        self._save(event, status="handover", last_step=event.step, handover_reason=event.reason)

    def _on_finish(self, event: Finish) -> None:
        fields = {"status": "finished", "best_f2": event.best_f2,
                  "best_step": event.best_step, "sessions_total": event.sessions}
        history = _f2_points(event.history)
        if history:
            fields["f2_history"] = history
        self._save(event, **fields)

    def _on_failure(self, event: Failure) -> None:
        error = str(event.error or "").strip()
        self._save(event, status="failed", error=error.splitlines()[0][:300] if error else "")


def _f2_points(history) -> list[list]:
    """[[step, f2], ...] of the evaluation rows of an event's history."""
    return [[row.get("step"), row.get("f2")] for row in history or []
            if row.get("f2") is not None and row.get("step") is not None]


def record_train_subscriber(run_dir: str | os.PathLike,
                            input_roots: InputFiles | Iterable[str | os.PathLike] = ()
                            ) -> TrainRecorder:
    """The subscriber the train command attaches to its EventBus."""
    return TrainRecorder(run_dir, input_roots)


# The `runs` table: one row per (run id, kind), its sessions folded together, best first.
# Written by hand rather than with pandas' to_markdown: that needs `tabulate`, one more wheel to
# bundle into the offline Kaggle dataset for three small formatters.
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
    texts = [text for text in (_torch_text(r.get("versions")) for r in group) if text]
    return [text for i, text in enumerate(texts) if i == 0 or texts[i - 1] != text]


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
            "tta": latest.get("tta"), "lb": lb.get("lb_score"),
            "ensemble": latest.get("ensemble") or [],
            "code": short_code_version(latest.get("code_version")), "torch": _torches(group),
            "config": latest.get("config_hash"), "f2_history": history})
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
        "arch": str(row.get("arch") or ""),
        "size": "" if row.get("size") is None else str(row["size"]),
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

    def cell(row: dict[str, Any], column: str) -> Any:
        value = row.get(column)
        if column == "threshold":
            return _threshold_cell(row)
        if isinstance(value, (list, tuple)):
            return " ".join("" if v is None else str(v) for v in value)
        return "" if value is None else value
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([cell(row, column) for column in columns] for row in rows)
    return buffer.getvalue()


FORMATS = {"table": format_table, "markdown": format_markdown, "csv": format_csv}


# The runs comparison PNG: CV F2 against leaderboard score (one point per run), and validation
# F2 against step for each trained run.

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
    # matplotlib's object API on the Agg canvas (no pyplot), imported only here: see files.py.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
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
    cv_ax.set(xlabel="CV F2", ylabel="leaderboard score", title="CV against LB")
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
    f2_ax.set(xlabel="step", ylabel="validation F2", title="F2 against step")
    f2_ax.grid(True, alpha=0.3)
    return png_bytes(figure)
