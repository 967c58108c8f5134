"""Choosing the checkpoint a session resumes from, and what comes with it.

The candidates are this run's own checkpoints and every `state-<step>.pt` under the input roots
(on Kaggle: the previous session's output, attached read-only). The newest usable one of this
run is copied into the out folder and loaded; the best model (model.pt) of the run it came from
is brought along, since the best evaluation may belong to an earlier session."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imet.engine.checkpoint import (NAME_PATTERN, ForeignCheckpointError,
                                    IncompatibleCheckpointError, check_identity, checkpoint_dir,
                                    list_generations, load_checkpoint, read_meta, sidecar_of)
from imet.engine.handover import MODEL_FILE
from imet.errors import CheckpointError
from imet.fileio import atomic_copy
from imet.walk import walk_folders

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resume:
    """A loaded checkpoint: `path` in this run's own folder, `found_at` where it was found (the
    same file, or the input root it was copied in from)."""
    payload: dict[str, Any]
    path: Path
    found_at: Path


@dataclass(frozen=True)
class Candidate:
    path: Path
    step: int
    meta: dict | None
    local: bool  # already in this run's own checkpoint folder


def find_candidates(out: str | Path, input_roots: list[str | Path]) -> list[Candidate]:
    """Every state-<step>.pt in the out folder's checkpoints and anywhere under input roots,
    newest first (the out folder first on equal steps: no copy needed)."""
    seen: set[Path] = set()
    found: list[Candidate] = []
    own = checkpoint_dir(out)
    for step, path in list_generations(own):
        seen.add(path.resolve())
        found.append(Candidate(path, step, read_meta(path), True))
    for folder, _, filenames in walk_folders(input_roots):
        for name in filenames:
            match = NAME_PATTERN.match(name)
            path = folder / name
            if match and path.resolve() not in seen:
                seen.add(path.resolve())
                found.append(Candidate(path, int(match.group(1)), read_meta(path), False))
    return sorted(found, key=lambda c: (c.step, c.local), reverse=True)


def copy_in(candidate: Candidate, out: str | Path) -> Path:
    """Copy a checkpoint found in an input root, and its sidecar, into this run's folder."""
    target = atomic_copy(candidate.path, checkpoint_dir(out) / candidate.path.name)
    if sidecar_of(candidate.path).is_file():
        atomic_copy(sidecar_of(candidate.path), sidecar_of(target))
    return target


def _drop_copy(path: Path) -> None:
    path.unlink(missing_ok=True)
    sidecar_of(path).unlink(missing_ok=True)


def load_resume(path: str | Path, config_fingerprint: str, labels_fingerprint: str,
                config: dict | None = None) -> Resume:
    """A checkpoint named by its path (--resume PATH, or the file rank 0 chose)."""
    payload = load_checkpoint(path, config_fingerprint, labels_fingerprint, config=config)
    return Resume(payload, Path(path), Path(path))


def choose_resume(config, config_fingerprint: str, labels_fingerprint: str,
                  dist) -> Resume | None:
    """What `--resume` (off | auto | a path) of `config` resumes from. Under torchrun rank 0
    chooses (and may copy in) the checkpoint and the others load its choice."""
    if config.resume == "off":
        return None
    settings = config.to_dict()  # named in the message when a checkpoint is another config's
    if config.resume == "auto":
        return dist.share_resume(
            lambda: find_resume(config.out, config.input_root, config_fingerprint,
                                labels_fingerprint, settings),
            lambda path: load_resume(path, config_fingerprint, labels_fingerprint, settings))
    return load_resume(config.resume, config_fingerprint, labels_fingerprint, settings)


def find_resume(out: str | Path, input_roots: list[str | Path], config_fingerprint: str,
                labels_fingerprint: str, config: dict | None = None) -> Resume | None:
    """The newest valid checkpoint of this run, copied into the out folder, loaded.

    A checkpoint of another config in this run's own folder is refused (the user changed a flag
    that decides the result); in input roots it is skipped, since Kaggle attaches other runs'
    outputs (other folds, other archs) side by side. A damaged newest generation falls back to
    the older one with a warning."""
    failures: list[str] = []
    for candidate in find_candidates(out, input_roots):
        try:
            if candidate.meta:  # without a sidecar, the identity is checked on load
                check_identity(candidate.path, candidate.meta, config_fingerprint,
                               labels_fingerprint, config)
        except ForeignCheckpointError:
            if candidate.local:
                raise
            log.info("skipping %s: another run's checkpoint", candidate.path)
            continue
        path = candidate.path if candidate.local else copy_in(candidate, out)
        try:
            payload = load_checkpoint(path, config_fingerprint, labels_fingerprint,
                                      config=config)
        except IncompatibleCheckpointError:
            if not candidate.local:
                _drop_copy(path)
            raise
        except ForeignCheckpointError:
            if candidate.local:
                raise
            _drop_copy(path)
            continue
        except CheckpointError as err:
            log.warning("checkpoint %s is unusable (%s); trying the previous generation",
                        candidate.path, err)
            failures.append(str(err))
            if not candidate.local:
                _drop_copy(path)
            continue
        return Resume(payload, path, candidate.path)
    if failures:
        raise CheckpointError(f"every checkpoint found is damaged; first: {failures[0]}; "
                              "rerun with --resume off to start over")
    return None


# What decides the numerics of a resumed run beyond its config: another torch or CUDA computes
# other bits (Kaggle's image may change between sessions).
NUMERIC_LIBRARIES = ("torch", "cuda")


def version_change(resume: Resume, now: dict[str, str], warn: bool = True) -> str | None:
    """'torch 2.10.0+cu128, CUDA 12.8 -> torch 2.14.1, CUDA none' when the checkpoint's torch
    or CUDA (its payload's "versions") differs from `now`, this session's, else None; `warn`
    logs it as one line. A checkpoint from before imet recorded CUDA is compared on torch
    alone."""
    saved = resume.payload.get("versions") or {}
    known = [name for name in NUMERIC_LIBRARIES if name in saved]
    if all(str(saved[name]) == now.get(name) for name in known):
        return None

    def text(versions: dict) -> str:
        return ", ".join(f"{'CUDA' if name == 'cuda' else name} {versions.get(name, '?')}"
                         for name in known)
    change = f"{text(saved)} -> {text(now)}"
    if warn:
        log.warning("%s was written by another torch/CUDA than this session's (%s): the run "
                    "goes on, but not bit-identical to one that never changed", resume.path.name,
                    change)
    return change


def bring_best_model(out: str | Path, resume: Resume, best_step: int) -> None:
    """A session resumed from another folder (Kaggle: the previous session's output) takes
    that run's model.pt along: the best model may come from an earlier session. The one place
    model.pt crosses sessions (kaggle/sessions leaves it to this)."""
    target = Path(out) / MODEL_FILE
    source = resume.found_at.parent.parent / MODEL_FILE
    if best_step < 0 or source.resolve() == target.resolve():
        return
    if not source.is_file():
        if not target.is_file():
            log.warning("%s not found: the best model (step %d) of the resumed run is "
                        "missing; model.pt is written again at the next improvement",
                        source, best_step)
        return
    atomic_copy(source, target)
