"""Building run records: the train record (an event subscriber that keeps it up to date during
the run) and records for validate/predict, which call `append_record` when they are done.

Record fields: schema, run_id, kind (train|validate|predict), session, status, created, updated,
code_version {imet, manifest_sha256, git_commit}, config (secrets redacted), config_hash, fold,
arch, image_size, device, kernel, wall_s (this session), best_f2, best_step, threshold(s),
f2_history [[step, f2], …], tta, ensemble (run ids used), lb_score, lb_set_at, error; a train
session also versions (library versions, torch and cuda among them) and version_change (the
checkpoint's torch/CUDA -> this session's, when they differ; else null)."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, Iterable

from imet.registry.store import REGISTRY_NAME, merge_into, upsert
from imet.report.find import InputFiles, input_files
from imet.report.provenance import MANIFEST_NAME, code_version, config_hash
from imet.report.redact import redact
from imet.report.subscriber import RankZeroSubscriber

KINDS = ("train", "validate", "predict")
SCHEMA = 1


def now_iso(seconds: float | None = None) -> str:
    seconds = time.time() if seconds is None else seconds
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def make_record(kind: str, run_id: str, session: int = 1, *, config: dict | None = None,
                input_roots: Iterable[str | os.PathLike] = (), **fields: Any) -> dict[str, Any]:
    """A registry record with code version, timestamps, config hash filled in and every value
    passed through the secret filter. `fields`: any of the record fields listed above."""
    if kind not in KINDS:
        raise ValueError(f"record kind {kind!r}: expected one of {KINDS}")
    if not run_id:
        raise ValueError("a run record needs a run id")
    stamp = now_iso()
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
    from imet.report.artifacts import RUN_JSON, read_run_json
    summary = read_run_json(Path(str(model)).parent / RUN_JSON)
    return str(summary["run_name"]) if summary and summary.get("run_name") else None


def _member_names(runs: Any) -> list[str]:
    names = []
    for run in runs or []:
        if isinstance(run, dict):
            name = _trained_name(run.get("model")) or run.get("name") or run.get("run_name") or (
                Path(str(run["model"])).parent.name if run.get("model") else None)
        else:
            name = run
        if name:
            names.append(str(name))
    return names


def _member_dirs(summary: dict[str, Any]) -> list[Path]:
    """Run folders of the models a validate/predict summary used: their registries hold the
    training history of those runs."""
    dirs = []
    for run in summary.get("runs") or []:
        if isinstance(run, dict) and run.get("model"):
            folder = Path(str(run["model"])).parent
            if folder.is_dir():
                dirs.append(folder)
    return dirs


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
    names = _member_names(runs)
    run_id = summary.get("run_id")
    if not run_id:
        if len(names) == 1:
            run_id = names[0]
        else:
            digest = hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:8]
            run_id = f"ens-{digest}" if names else f"{kind}-{now_iso()}"
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
        roots += _member_dirs(record)
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
        self.record.update(fields, updated=now_iso(event.time),
                           wall_s=round(event.time - self._started, 3))
        upsert(self.run_dir, redact(self.record))

    def _on_run_start(self, event) -> None:
        data = event.data
        self._started = event.time
        merged = merge_into(self.run_dir, self.inputs)
        run_id = str(data.get("run_name") or "")
        # Best-so-far of a resumed run: its earlier sessions' records (the engine's evaluation
        # events repeat it too, but a session may end before its first evaluation).
        earlier = [r for r in merged if r.get("run_id") == run_id and r.get("kind") == "train"
                   and int(r.get("session") or 0) < int(data.get("session") or 1)
                   and r.get("best_f2") is not None] if data.get("resumed_from") is not None else []
        best = max(earlier, key=lambda r: r["best_f2"], default={})
        self.record = make_record(
            "train", run_id, int(data.get("session") or 1), config=data.get("config"),
            input_roots=self.inputs, config_hash=data.get("config_fingerprint"),
            status="running", created=now_iso(event.time),
            fold=data.get("fold"), arch=data.get("arch"), image_size=data.get("image_size"),
            device=data.get("device"), kernel=data.get("kernel"),
            resumed_from=data.get("resumed_from"), total_steps=data.get("total_steps"),
            versions=data.get("versions"), version_change=data.get("version_change"),
            best_f2=best.get("best_f2"), best_step=best.get("best_step"),
            threshold=best.get("threshold"), f2_history=best.get("f2_history") or [],
            wall_s=0.0)
        self._save(event)

    def _on_evaluation(self, event) -> None:
        if self.record is None:
            return
        data = event.data
        history = _f2_points(data.get("history"))
        fields: dict[str, Any] = {"best_f2": data.get("best_f2"),
                                  "best_step": data.get("best_step"), "last_step": data.get("step")}
        if history:
            fields["f2_history"] = history
        elif data.get("f2") is not None:
            fields["f2_history"] = [p for p in self.record.get("f2_history") or []
                                    if p[0] != data.get("step")] + [[data["step"], data["f2"]]]
        if data.get("is_best"):
            fields["threshold"] = data.get("threshold")
        self.record.update(fields)
        if data.get("is_best"):
            self._save(event)

    def _on_handover(self, event) -> None:
        self._save(event, status="handover", last_step=event.data.get("step"),
                   handover_reason=event.data.get("reason"))

    def _on_finish(self, event) -> None:
        data = event.data
        fields = {"status": "finished", "best_f2": data.get("best_f2"),
                  "best_step": data.get("best_step"), "sessions_total": data.get("sessions")}
        history = _f2_points(data.get("history"))
        if history:
            fields["f2_history"] = history
        self._save(event, **fields)

    def _on_failure(self, event) -> None:
        error = str(event.data.get("error") or "").strip()
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
