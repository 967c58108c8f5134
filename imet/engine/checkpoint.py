"""TrainState files on disk: atomic writes, two generations, verified loads, resume discovery.

`<out>/checkpoints/state-<step>.pt` holds the state (only tensors and plain Python values, so
`torch.load(weights_only=True)` reads it: a checkpoint attached from a Kaggle dataset is
untrusted input). Next to it `state-<step>.json` holds what is needed to choose a checkpoint
without loading hundreds of MB (step, fingerprints, finished) and the file's sha256, which
catches a file truncated or damaged on its way through Kaggle's output/input round trip."""
from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import queue
import re
import shutil
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imet.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = "imet-trainstate"
VERSION = 1
KEEP = 2
_NAME = re.compile(r"^state-(\d+)\.pt$")


def checkpoint_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def sidecar_of(path: Path) -> Path:
    return path.with_suffix(".json")


def fsync_dir(directory: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class _HashingWriter:
    """A file wrapper that hashes what torch.save writes, in a second thread: the digest costs
    neither a second pass over the file nor time on the writing thread (hashlib releases the
    GIL). torch.save hands over a fresh bytes object per record, safe to pass along as is."""

    def __init__(self, handle):
        self.handle = handle
        self.size = 0
        self._digest = hashlib.sha256()
        self._chunks: queue.Queue = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._hash, name="checkpoint-sha256", daemon=True)
        self._thread.start()

    def _hash(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._digest.update(chunk)

    def write(self, data) -> int:
        self._chunks.put(bytes(data) if not isinstance(data, bytes) else data)
        self.size += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()

    def hexdigest(self) -> str:
        self._chunks.put(None)
        self._thread.join()
        return self._digest.hexdigest()


def save_checkpoint(payload: dict[str, Any], out: str | Path, step: int,
                    keep: int = KEEP) -> Path:
    """Write `payload` as state-<step>.pt, verify it, then drop generations beyond `keep`."""
    directory = checkpoint_dir(out)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"state-{step}.pt"
    tmp = directory / f".state-{step}.pt.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            writer = _HashingWriter(handle)
            torch.save(payload, writer)
            handle.flush()
            os.fsync(handle.fileno())
        sha = writer.hexdigest()
        # The older generation is dropped only once the new one reads back as written.
        verify_checkpoint(tmp, writer.size, final)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    meta = {"format": FORMAT, "version": VERSION, "step": int(step), "sha256": sha,
            "size": final.stat().st_size, **payload.get("meta", {})}
    _write_json_atomic(sidecar_of(final), meta)
    fsync_dir(directory)
    prune(directory, keep)
    return final


def verify_checkpoint(path: Path, size: int, name: Path) -> None:
    """The file has the size written and a complete zip archive (the central directory is
    written last) holding the pickle. Re-hashing the file would read back the page cache, not
    the disk, and a full unpickle would add ~0.7 s for se_resnext50 without proving more about
    a file torch.save just wrote; a load checks the sha256 from the sidecar."""
    problem = None
    try:
        if path.stat().st_size != size:
            problem = f"{path.stat().st_size} bytes on disk, {size} written"
        else:
            with zipfile.ZipFile(path) as archive:
                if not any(n.endswith("/data.pkl") for n in archive.namelist()):
                    problem = "it holds no data.pkl"
    except (OSError, zipfile.BadZipFile) as err:
        problem = f"{type(err).__name__}: {err}"
    if problem:
        raise CheckpointError(f"{name}: the checkpoint just written does not read back "
                              f"({problem}); check the disk (free space, errors)")


def list_generations(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def prune(directory: Path, keep: int = KEEP) -> None:
    for _, path in list_generations(directory)[keep:]:
        path.unlink(missing_ok=True)
        sidecar_of(path).unlink(missing_ok=True)


def read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(sidecar_of(path).read_text(encoding="utf-8"))
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return None


def load_checkpoint(path: str | Path, config_fingerprint: str | None = None,
                    labels_fingerprint: str | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a train state; CheckpointError (one line) for anything wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; check --resume")
    meta = read_meta(path)
    expected_sha = meta.get("sha256") if meta else None
    # The hash runs in a thread while torch reads the file (hashlib and torch's loader both
    # release the GIL), so the check costs little beyond the load itself.
    with ThreadPoolExecutor(1) as pool:
        sha = pool.submit(file_sha256, path) if expected_sha else None
        try:
            # mmap: the tensors are read once, straight into the objects they are restored
            # into; private mapping, so training never writes into the checkpoint file.
            with torch.serialization.set_default_mmap_options(mmap.MAP_PRIVATE):
                payload = torch.load(path, map_location=map_location, weights_only=True,
                                     mmap=True)
        except Exception as err:
            payload, load_error = None, err
        else:
            load_error = None
        if sha is not None and sha.result() != expected_sha:
            raise CheckpointError(f"{path}: the file does not match the sha256 recorded in "
                                  f"{sidecar_of(path).name} (truncated or damaged in transfer)")
    if load_error is not None:
        err = load_error
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{path}: not a readable train state ({type(err).__name__}: "
                              f"{first_line[:200]}); use the previous generation or "
                              "--resume off") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an imet train state (format "
                              f"{payload.get('format') if isinstance(payload, dict) else None!r})")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: train state version {payload.get('version')} is not "
                              f"supported by this imet (expects {VERSION})")
    check_identity(path, payload.get("meta", {}), config_fingerprint, labels_fingerprint)
    return payload


class ForeignCheckpointError(CheckpointError):
    """A sound checkpoint of another run (other config or label space)."""


def check_identity(path: Path, meta: dict, config_fingerprint: str | None,
                   labels_fingerprint: str | None) -> None:
    if labels_fingerprint and meta.get("labels_fingerprint") != labels_fingerprint:
        raise ForeignCheckpointError(f"{path}: the checkpoint was trained on another label space "
                              "(labels.csv differs); resume with the same competition data")
    if config_fingerprint and meta.get("config_fingerprint") != config_fingerprint:
        raise ForeignCheckpointError(
            f"{path}: the checkpoint belongs to another training config (fingerprint "
            f"{meta.get('config_fingerprint')} != {config_fingerprint}: arch, fold, epochs, LR, "
            "seed... differ); rerun with the same flags, another --out, or --resume off")


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
    visited: set[str] = set()
    for root in input_roots:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            # Inputs may be linked in (the emulator, some mounts): follow links, never twice.
            real = os.path.realpath(dirpath)
            if real in visited:
                dirnames[:] = []
                continue
            visited.add(real)
            dirnames.sort()
            for name in filenames:
                match = _NAME.match(name)
                path = Path(dirpath) / name
                if match and path.resolve() not in seen:
                    seen.add(path.resolve())
                    found.append(Candidate(path, int(match.group(1)), read_meta(path), False))
    return sorted(found, key=lambda c: (c.step, c.local), reverse=True)


def copy_in(candidate: Candidate, out: str | Path) -> Path:
    """Copy a checkpoint found in an input root into this run's folder (atomically)."""
    directory = checkpoint_dir(out)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / candidate.path.name
    tmp = directory / f".{candidate.path.name}.tmp-{os.getpid()}"
    try:
        shutil.copyfile(candidate.path, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    if sidecar_of(candidate.path).is_file():
        shutil.copyfile(sidecar_of(candidate.path), sidecar_of(target))
    fsync_dir(directory)
    return target


def find_resume(out: str | Path, input_roots: list[str | Path], config_fingerprint: str,
                labels_fingerprint: str) -> tuple[dict[str, Any], Path, Path] | None:
    """(payload, local path, where it was found): the newest valid checkpoint of this run,
    copied into the out folder, loaded.

    A checkpoint of another config in this run's own folder is refused (the user changed a flag
    that decides the result); in input roots it is skipped, since Kaggle attaches other runs'
    outputs (other folds, other archs) side by side. A damaged newest generation falls back to
    the older one with a warning."""
    failures: list[str] = []
    for candidate in find_candidates(out, input_roots):
        try:
            if candidate.meta:  # without a sidecar, the identity is checked on load
                check_identity(candidate.path, candidate.meta, config_fingerprint,
                               labels_fingerprint)
        except ForeignCheckpointError:
            if candidate.local:
                raise
            log.info("skipping %s: another run's checkpoint", candidate.path)
            continue
        path = candidate.path if candidate.local else copy_in(candidate, out)
        try:
            payload = load_checkpoint(path, config_fingerprint, labels_fingerprint)
        except ForeignCheckpointError:
            if candidate.local:
                raise
            path.unlink(missing_ok=True)
            sidecar_of(path).unlink(missing_ok=True)
            continue
        except CheckpointError as err:
            log.warning("checkpoint %s is unusable (%s); trying the previous generation",
                        candidate.path, err)
            failures.append(str(err))
            if not candidate.local:
                path.unlink(missing_ok=True)
                sidecar_of(path).unlink(missing_ok=True)
            continue
        return payload, path, candidate.path
    if failures:
        raise CheckpointError(f"every checkpoint found is damaged; first: {failures[0]}; "
                              "rerun with --resume off to start over")
    return None
