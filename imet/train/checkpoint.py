"""HANDOVER.json: what a session that stopped early leaves for the next one (and its user)."""
from __future__ import annotations

import errno
import json
import logging
import mmap
import os
import re
import shlex
import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from imet.config import TrainConfig
from imet.data.transforms import AUGMENTATION_VERSION
from imet.errors import DISK_FULL_EXIT_CODE, CheckpointError, UserError
from imet.fileio import (TEMP_SUFFIX, atomic_copy, atomic_torch_save, atomic_write_text,
                         utc_timestamp)
from imet.walk import walk_folders

HANDOVER_FILE = "HANDOVER.json"
# EX_TEMPFAIL: "temporary failure, try again" -> push the kernel again. The exit code of a
# session that handed over, for the command and for whoever launched it (kaggle/*).
# The run's best model, which the next session takes along with the checkpoint it resumes from
# (imet/train/checkpoint.py). Named here, in a module free of torch, for kaggle/* too.
MODEL_FILE = "model.pt"


def model_file_of(run: Path) -> Path:
    """RUN_DIR/model.pt, or the file itself when given a file (predict, validate, --init)."""
    run = Path(run)
    if run.is_dir():
        candidate = run / MODEL_FILE
        if not candidate.is_file():
            raise CheckpointError(f"{candidate}: model file not found; train the run to its end "
                                  "(`imet train`) or pass the model file's path")
        return candidate
    if not run.exists():
        raise CheckpointError(f"{run}: run folder or model file not found; fix the path")
    return run


def next_step_text(command: str | None) -> str:
    """What to run next: `command` with its --resume set to auto (said once, wherever the
    command had it)."""
    rerun = (f"`{resuming(command)}` again" if command
             else "the same `imet train` command again with --resume auto")
    return (f"run {rerun} (locally: in the same --out folder; on Kaggle: push the trainer "
            "kernel again with this kernel's output attached as an input, found through "
            "--input-root)")


def resuming(command: str) -> str:
    """`command` with `--resume auto` in place of any --resume it had, or added at its end."""
    words, found = shlex.split(command), False
    for index, word in enumerate(words):
        if word == "--resume" and index + 1 < len(words):
            words[index + 1], found = "auto", True
        elif word.startswith("--resume="):
            words[index], found = "--resume=auto", True
    return shlex.join(words if found else [*words, "--resume", "auto"])


def write(out: Path, *, reason: str, step: int, epoch: int, stage: int, checkpoint: str,
          next_text: str, exit_code: int, signal: str | None, session: int,
          total_steps: int, steps_taken: int) -> Path:
    """`steps_taken`: this session's steps (0: it stopped during start-up, nothing changed)."""
    what = {"budget": "the session's time budget would not fit the next unit of work plus a "
                      "save",
            "session-steps": "the session ran its --session-steps",
            "telegram": "its owner sent /stop from Telegram"}.get(
        reason, f"a stop signal ({signal or 'SIGTERM/SIGINT'}) arrived")
    taken = "no step was taken in this session; " if steps_taken == 0 else ""
    data = {"status": "handover", "reason": reason, "what_happened": f"stopped at step {step} "
            f"of {total_steps} (epoch {epoch}, stage {stage}, session {session}): {what}; "
            f"{taken}the full training state was saved", "step": step, "epoch": epoch,
            "stage": stage, "session": session, "total_steps": total_steps,
            "steps_this_session": steps_taken,
            "checkpoint": checkpoint, "next": next_text, "exit_code": exit_code,
            "time": utc_timestamp()}
    return atomic_write_text(Path(out) / HANDOVER_FILE, json.dumps(data, indent=2) + "\n")


def remove(out: Path) -> None:
    """A session that runs on makes an earlier handover note stale."""
    (Path(out) / HANDOVER_FILE).unlink(missing_ok=True)


# ---- diskspace
# Room on disk for a save (a checkpoint, model.pt): a save that cannot fit is refused before it
# starts, and a disk that fills up during a write (ENOSPC) ends the same way: one line naming the
# folder, the file, what it needs and what is free, and exit code EXIT_CODE. The files already
# there are untouched either way (atomic writes), so the run resumes once space is freed.
#
# The estimate is the bytes of the tensors about to be written plus a little for the zip records
# and the pickle: unlike the previous checkpoint's size it also holds for the first stage-2 save,
# whose optimizer state covers the whole body for the first time.

# EX_IOERR (sysexits.h): not a crash (1), not bad input (2), not a handover (75).
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class DiskFullError(UserError):
    """No room on the disk for a save; the message says what is needed and how to make room."""

    exit_code = DISK_FULL_EXIT_CODE


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensor storages inside `obj` (nested dicts, lists, tuples), each storage
    counted once, as torch.save writes it once."""
    import torch

    seen: set[tuple[str, int]] = set()
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            key = (str(item.device), storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


def expected_size(obj: Any) -> int:
    return int(tensor_bytes(obj) * 1.02) + (1 << 20)


def remedy(keep: int) -> str:
    """What makes room: checkpoints are most of a run folder, and --keep 1 drops a generation
    (at the next start-up and after every save)."""
    return "free space" + (", or keep one generation with --keep 1" if keep > 1 else "")


def _mb(size: float) -> str:
    mb = size / 1e6
    return f"{mb:.0f} MB" if mb >= 10 else f"{mb:.1f} MB"


def _error(folder: Path, shown: str, needed: int, fix: str) -> DiskFullError:
    free = shutil.disk_usage(folder).free
    # A filesystem can also run out of files (inodes) with bytes to spare.
    inodes = ", 0 inodes free" if hasattr(os, "statvfs") and os.statvfs(folder).f_ffree == 0 \
        and os.statvfs(folder).f_files else ""
    return DiskFullError(f"no space left on {folder} writing {shown} (needs ~{_mb(needed)}, "
                         f"{_mb(free)} free{inodes}): {fix}")


@contextmanager
def room_for(folder: Path, shown: str, needed: int, fix: str) -> Iterator[None]:
    """Refuse a write of ~`needed` bytes into `folder` that cannot fit, and turn a disk that
    fills up inside the block into the same DiskFullError. `shown`: the file, as the user
    knows it (relative to the run folder); `fix`: what makes room (`remedy`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(folder).free < needed:
        raise _error(folder, shown, needed, fix)
    try:
        yield
    except Exception as err:
        cause: BaseException | None = err
        while cause is not None:  # torch.save reports ENOSPC as a RuntimeError on top of it
            if isinstance(cause, OSError) and cause.errno in _FULL:
                raise _error(folder, shown, needed, fix) from None
            cause = cause.__cause__ or cause.__context__
        raise


# ---- checkpoint
# TrainState files on disk: atomic writes, two generations, verified loads (choosing the one
# to resume from: imet/train/checkpoint.py).
#
# `<out>/checkpoints/state-<step>.pt` holds the state (only tensors and plain Python values, so
# `torch.load(weights_only=True)` reads it: a checkpoint attached from a Kaggle dataset is
# untrusted input). Next to it `state-<step>.json` holds what is needed to choose a checkpoint
# without loading hundreds of MB (step, fingerprints, finished) and the size written; with the
# CRC32 that torch.save stores for every record, it catches a file truncated or damaged on its
# way through Kaggle's output/input round trip.
#
# A kill during a save leaves a temp file (`.state-<step>.pt.<pid>.<random>.tmp`, named by
# imet/fileio.py), a kill during pruning a sidecar without its checkpoint: `remove_leftovers`
# drops those at start-up and before each save, so the folder holds the kept generations only.

log = logging.getLogger(__name__)

FORMAT = "imet-trainstate"
VERSION = 1
NAME_PATTERN = re.compile(r"^state-(\d+)\.pt$")
SIDECAR_PATTERN = re.compile(r"^state-(\d+)\.json$")
# A temp file of a checkpoint or sidecar: fileio's `.<name>.<pid>.<random>.tmp`, and the
# `.<name>.tmp-<pid>` of earlier imet versions.
TEMP_PATTERN = re.compile(r"^\.state-\d+\.(?:pt|json)(?:\.(\d+)\.\w+"
                          + re.escape(TEMP_SUFFIX) + r"|\.tmp-(\d+))$")


def checkpoint_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def sidecar_of(path: Path) -> Path:
    return path.with_suffix(".json")


def save_checkpoint(payload: dict[str, Any], out: str | Path, step: int,
                    keep: int = TrainConfig.keep) -> Path:
    """Write `payload` as state-<step>.pt, verify it, then keep it and the `keep - 1` newest
    generations before it. DiskFullError (one line) when it cannot fit on the disk."""
    directory = checkpoint_dir(out)
    final = directory / f"state-{step}.pt"
    remove_leftovers(directory)
    with room_for(Path(out), f"{directory.name}/{final.name}", expected_size(payload),
                  remedy(keep)):
        # The older generation is dropped only once the new one reads back as written.
        size = atomic_torch_save(payload, final, verify=lambda written, size:
                                 verify_checkpoint(written, size, final))
        # The config too, so a refused resume can name the settings that differ.
        meta = {"format": FORMAT, "version": VERSION, "step": int(step), "size": size,
                **payload.get("meta", {}), "config": payload.get("config")}
        atomic_write_text(sidecar_of(final), json.dumps(meta, indent=1, sort_keys=True))
    prune(directory, keep, newest=step)
    return final


def verify_checkpoint(path: Path, size: int, name: Path) -> None:
    """The file has the size written and a complete zip archive (the central directory is
    written last) holding the pickle. Re-reading the data would read back the page cache, not
    the disk, and a full unpickle would add ~0.7 s for se_resnext50 without proving more about
    a file torch.save just wrote; a load checks every record's CRC32."""
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
    found = [(int(m.group(1)), p) for p in directory.iterdir()
             if (m := NAME_PATTERN.match(p.name))]
    return sorted(found, reverse=True)


def prune(directory: Path, keep: int, newest: int, later: bool = True) -> None:
    """Keep generation `newest` and the `keep - 1` before it. With `later`, steps after `newest`
    go too: they belong to a timeline the run left (a damaged generation it fell back from, a
    --resume of an older one, a run started over), and would outrank every new save."""
    generations = list_generations(directory)
    older = [path for step, path in generations if step <= newest]
    dropped = [path for step, path in generations if step > newest] if later else []
    for path in dropped + older[keep:]:
        path.unlink(missing_ok=True)
        sidecar_of(path).unlink(missing_ok=True)


def tidy(directory: Path, keep: int, resumed_step: int | None) -> None:
    """At start-up: what killed saves left behind, and, when resuming, the generations before
    the resumed one beyond `keep` (a lowered --keep frees its disk before the first save)."""
    remove_leftovers(directory)
    if resumed_step is not None:
        prune(directory, keep, resumed_step, later=False)


def _started_at(pid: int) -> float | None:
    """When process `pid` started (epoch seconds), where /proc tells (Linux), else None."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in
                    Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _writer_alive(pid: int, written: float) -> bool:
    """Whether the process that named a temp file `pid` and last wrote it at `written` lives."""
    if pid == os.getpid():  # this process writes its checkpoints one at a time, not now
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        pass
    started = _started_at(pid)
    # A process that started after the file's last write got a dead writer's PID again (a
    # restarted container counts from 1 again); 1 s for the clock ticks' rounding.
    return started is None or started <= written + 1.0


def remove_leftovers(directory: Path) -> list[str]:
    """Remove the temp files whose writer is dead and the sidecars without a checkpoint; log
    one line naming them. A temp file of a live process (another rank under torchrun, a copy
    in progress) is kept."""
    if not directory.is_dir():
        return []
    removed, freed = [], 0
    for path in sorted(directory.iterdir()):
        temp = TEMP_PATTERN.match(path.name)
        orphan = SIDECAR_PATTERN.match(path.name) and not path.with_suffix(".pt").exists()
        if not (temp or orphan):
            continue
        try:
            stat = path.stat()
            if temp and _writer_alive(int(temp.group(1) or temp.group(2)), stat.st_mtime):
                continue
            path.unlink()
        except FileNotFoundError:  # its writer finished or removed it meanwhile
            continue
        freed += stat.st_size
        removed.append(path.name)
    if removed:
        log.info("removed %d leftover file(s) of interrupted saves from %s (%.1f MB): %s",
                 len(removed), directory, freed / 1e6, ", ".join(removed))
    return removed


def read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(sidecar_of(path).read_text(encoding="utf-8"))
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return None


def damaged_record(path: Path) -> str | None:
    """What fails the zip's integrity check (a record's CRC32, the index), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        return f"not a complete zip archive ({type(err).__name__})"
    return f"record {bad} fails its CRC32 check" if bad else None


def load_checkpoint(path: str | Path, config_fingerprint: str | None = None,
                    labels_fingerprint: str | None = None,
                    map_location: str | torch.device = "cpu",
                    config: dict | None = None) -> dict[str, Any]:
    """Load and check a train state; CheckpointError (one line) for anything wrong with it.
    `config`: this run's TrainConfig.to_dict(), to name the settings a foreign one differs in."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; check --resume")
    meta = read_meta(path)
    recorded = meta.get("size") if meta else None
    if recorded is not None and recorded != path.stat().st_size:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes, but {recorded} were written "
                              f"({sidecar_of(path).name}): truncated in transfer; use the "
                              "previous generation or --resume off")
    # torch.save stores a CRC32 of every record but torch.load never checks them; the check
    # runs in a thread while torch reads the file (both release the GIL), so it costs ~nothing.
    with ThreadPoolExecutor(1) as pool:
        damage = pool.submit(damaged_record, path)
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
        if damage.result():
            raise CheckpointError(f"{path}: {damage.result()} (damaged on disk or in transfer); "
                                  "use the previous generation or --resume off")
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
    check_identity(path, {**payload.get("meta", {}), "config": payload.get("config")},
                   config_fingerprint, labels_fingerprint, config)
    return payload


class ForeignCheckpointError(CheckpointError):
    """A sound checkpoint of another run (other config or label space)."""


class IncompatibleCheckpointError(CheckpointError):
    """A checkpoint of this run written by an imet that augments differently: never skipped,
    since starting over would silently drop the run's progress."""


def config_differences(saved: dict | None, current: dict | None) -> str:
    """`image_size: 128 in the checkpoint, 96 now; ...` over the settings in the fingerprint;
    "" when either side is unknown (a checkpoint of an imet that did not record it)."""
    if not isinstance(saved, dict) or not current:
        return ""
    absent = object()
    differ = []
    for name in sorted(set(saved) | set(current)):
        if name in TrainConfig.NOT_IN_FINGERPRINT:
            continue
        then, now = saved.get(name, absent), current.get(name, absent)
        if then != now:
            differ.append(f"{name}: {'absent' if then is absent else repr(then)} in the "
                          f"checkpoint, {'absent' if now is absent else repr(now)} now")
    return "; ".join(differ)


def check_identity(path: Path, meta: dict, config_fingerprint: str | None,
                   labels_fingerprint: str | None, config: dict | None = None) -> None:
    """ForeignCheckpointError / IncompatibleCheckpointError for a checkpoint (its sidecar or
    payload meta, with its config) that is not this run's (`config`: this run's to_dict())."""
    if labels_fingerprint and meta.get("labels_fingerprint") != labels_fingerprint:
        raise ForeignCheckpointError(f"{path}: the checkpoint was trained on another label space "
                              "(labels.csv differs); resume with the same competition data")
    if config_fingerprint and meta.get("config_fingerprint") != config_fingerprint:
        differ = config_differences(meta.get("config"), config) or (
            f"fingerprint {meta.get('config_fingerprint')} != {config_fingerprint}: arch, "
            "fold, epochs, LR, seed... differ")
        raise ForeignCheckpointError(
            f"{path}: the checkpoint belongs to another training config ({differ}); rerun with "
            "the same flags, another --out, or --resume off")
    scheme = meta.get("augmentation", 1)
    if scheme != AUGMENTATION_VERSION:
        raise IncompatibleCheckpointError(
            f"{path}: the run was started by an imet that augments differently (scheme "
            f"{scheme}, this imet: {AUGMENTATION_VERSION}), so resuming would not continue the "
            "same run; finish it with the imet version that started it, or rerun with "
            "--resume off")


# ---- resume
# Choosing the checkpoint a session resumes from, and what comes with it.
#
# The candidates are this run's own checkpoints and every `state-<step>.pt` under the input roots
# (on Kaggle: the previous session's output, attached read-only). The newest usable one of this
# run is copied into the out folder and loaded; the best model (model.pt) of the run it came from
# is brought along, since the best evaluation may belong to an earlier session.


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
