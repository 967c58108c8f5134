"""The run registry on disk: JSON lines, one record per (run id, kind, session).

Every kernel writes the registry into its output folder after merging the registries of its
attached inputs, so the newest output always carries the whole history forward. The file is
small (one line per session) and always rewritten atomically: a kill leaves the old or the new
file, never half of one."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from imet.fileio import atomic_write_text
from imet.report.find import InputFiles, input_files

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
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record_key(record)
        except (ValueError, KeyError, TypeError) as err:
            log.warning("%s line %d: not a run record (%s); skipped", path, number, err)
            continue
        records.append(record)
    return records


def find_registries(roots: InputFiles | Iterable[str | os.PathLike]) -> list[Path]:
    """Registry files under the roots (recursive, a file given directly counts too), root by
    root; `roots` may be the run's shared InputFiles."""
    inputs = input_files(roots, REGISTRY_NAME)
    under = inputs.named(REGISTRY_NAME)
    found: list[Path] = []
    for root in inputs.roots:
        found.extend([root] if root.is_file() else [p for p in under if p.is_relative_to(root)])
    unique, seen = [], set()
    for path in found:
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            unique.append(path)
    return unique


def _filled(value: Any) -> bool:
    return value not in (None, "", [], {})


def completeness(record: dict[str, Any]) -> tuple:
    """Order among copies of one (run id, kind, session) record: the further the session got,
    the more fields it filled, the later it was updated, the better."""
    return (_STATUS_RANK.get(str(record.get("status")), 0),
            len(record.get("f2_history") or []),
            sum(1 for value in record.values() if _filled(value)),
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
    merged = []
    for key, record in best.items():
        if key in lb:
            record = {**record, "lb_score": lb[key][1], "lb_set_at": lb[key][0] or None}
        merged.append(record)
    return merged


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
    target = registry_path(folder)
    key = record_key(record)
    stored = read_registry(target)
    records = [old for old in stored if record_key(old) != key]
    # A leaderboard score set by hand on the stored copy is kept when the run rewrites its record.
    previous = [old for old in stored if record_key(old) == key]
    if previous and previous[0].get("lb_score") is not None and record.get("lb_score") is None:
        record = {**record, "lb_score": previous[0]["lb_score"],
                  "lb_set_at": previous[0].get("lb_set_at")}
    return write_registry(target, records + [record])


def set_lb(roots: Iterable[str | os.PathLike], run: str, score: float, stamp: str
           ) -> tuple[str, list[Path]]:
    """Record a leaderboard score on every record of `run` (exact id, else a unique prefix) in
    every registry under the roots. Returns (run id, files changed); UserError when no registry
    or no such run is found."""
    from imet.errors import UserError

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
