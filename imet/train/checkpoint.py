"""Checkpointing: a run's training state on disk, the checkpoint a session resumes from, and the
hand-over note of a session that stopped early.

`<out>/checkpoints/state-<step>.pt` holds a TrainState as tensors and plain Python values only
(RNG states converted), so `torch.load(weights_only=True)` reads it: a checkpoint attached from a
Kaggle dataset is untrusted input. Restoring it and going on gives the same bits as never having
stopped. The sidecar `state-<step>.json` holds what choosing a checkpoint needs without loading
hundreds of MB (step, fingerprints, finished, config) and the size written, which with
torch.save's per-record CRC32 catches a file truncated or damaged in Kaggle's output/input round
trip. model.pt belongs to imet/models/modelfile.py."""
from __future__ import annotations

import dataclasses
import errno
import importlib.metadata
import json
import logging
import mmap
import os
import platform
import random
import re
import shlex
import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from imet import __version__
from imet.config import TrainConfig
from imet.data.transforms import AUGMENTATION_VERSION
from imet.errors import DISK_FULL_EXIT_CODE, HANDOVER_FILE, CheckpointError, UserError
from imet.fileio import (TEMP_SUFFIX, atomic_copy, atomic_torch_save, atomic_write_text,
                         utc_timestamp)
from imet.models.modelfile import MODEL_FILE
from imet.train.state import Counters, TrainState
from imet.walk import walk_folders

log = logging.getLogger(__name__)

FORMAT = "imet-trainstate"
VERSION = 2
NAME_PATTERN = re.compile(r"^state-(\d+)\.pt$")
SIDECAR_PATTERN = re.compile(r"^state-(\d+)\.json$")
# A temp file of a checkpoint or sidecar, as imet/fileio.py names it: `.<name>.<pid>.<random>.tmp`.
TEMP_PATTERN = re.compile(r"^\.state-\d+\.(?:pt|json)\.(\d+)\.\w+" + re.escape(TEMP_SUFFIX) + "$")
# The errnos of a full disk or quota: a save that meets one ends as DiskFullError.
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
# What decides the numerics of a resumed run beyond its config: another torch or CUDA computes
# other bits (Kaggle's image may change between sessions).
NUMERIC_LIBRARIES = ("torch", "cuda")


class DiskFullError(UserError):
    """No room on the disk for a save; the message says what is needed and how to make room.
    The files there are untouched (atomic writes), so the run resumes once space is freed."""

    exit_code = DISK_FULL_EXIT_CODE


class ForeignCheckpointError(CheckpointError):
    """A sound checkpoint of another run (other config or label space)."""


class IncompatibleCheckpointError(CheckpointError):
    """A checkpoint of this run that this imet cannot continue (another format or augmentation
    scheme): never skipped, since starting over would silently drop the run's progress."""


def checkpoint_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def checkpoint_path(out: str | Path, step: int) -> Path:
    return checkpoint_dir(out) / f"state-{step}.pt"


def sidecar_of(path: Path) -> Path:
    return path.with_suffix(".json")


# The payload: a TrainState as plain data, and back ------------------------------------------

def capture_rng() -> dict[str, Any]:
    version, state, gauss = random.getstate()
    np_state = np.random.get_state(legacy=True)
    return {
        # A tensor, not a list of 625 ints: the weights_only unpickler reads lists item by item.
        "python": [int(version), torch.tensor(state, dtype=torch.int64), gauss],
        "numpy": [str(np_state[0]), torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(rng: dict[str, Any]) -> None:
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state.tolist()), gauss))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"] and torch.cuda.is_available():
        # A session may get another GPU count; restore what both have.
        for index, cuda_state in enumerate(rng["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)


def library_versions() -> dict[str, str]:
    # str(): torch's version is a TorchVersion object, which weights_only loading refuses.
    # torchvision's from its metadata: importing it costs seconds (it pulls in torch._dynamo).
    try:
        torchvision = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        torchvision = "absent"
    return {"imet": str(__version__), "torch": str(torch.__version__),
            "cuda": str(torch.version.cuda or "none"), "torchvision": torchvision,
            "numpy": str(np.__version__), "python": platform.python_version()}


def state_payload(state: TrainState) -> dict[str, Any]:
    """Everything that decides the future of the run. Its "meta" also goes into the sidecar, the
    precision so that a session in another one is refused (`check_precision`)."""
    c = state.counters
    meta = {"config_fingerprint": state.config.fingerprint(),
            "labels_fingerprint": state.labels_fingerprint, "run_name": state.config.name(),
            "arch": state.config.arch, "fold": state.config.fold, "step": c.step,
            "epoch": c.epoch, "stage": c.stage, "finished": c.finished,
            "best_f2": c.best_f2, "session": c.session,
            "augmentation": AUGMENTATION_VERSION, "precision": state.precision.name}
    return {
        "format": FORMAT, "version": VERSION, "meta": meta,
        "config": state.config.to_dict(), "labels": state.labels,
        "counters": dataclasses.asdict(c), "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "hard_negatives": (state.hard_negatives.state_dict()
                           if state.hard_negatives is not None else None),
        "rng": {**capture_rng(), "mixup": state.mix_generator.get_state()},
        "versions": library_versions(),
    }


def restore_state(state: TrainState, resume: Resume) -> None:
    """Put `resume`'s payload into `state`, a TrainState built for the same run (fresh=False):
    the stage's optimizer and scheduler are rebuilt before their state is loaded."""
    check_precision(resume, state)
    payload = resume.payload
    counters = Counters(**payload["counters"])
    state.model.load_state_dict(payload["model"])
    state.enter_stage(counters.stage)
    state.counters = counters
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    if payload["scaler"]:
        state.scaler.load_state_dict(payload["scaler"])
    restore_rng(payload["rng"])
    state.mix_generator.set_state(payload["rng"]["mixup"])
    if state.ema is not None:
        state.ema.load_state_dict(payload["ema"])
    if state.hard_negatives is not None:
        state.hard_negatives.load_state_dict(payload["hard_negatives"])


def _asked(config: dict[str, Any]) -> str:
    return f"--amp-dtype {config['amp_dtype']}" if config["amp"] else "--no-amp"


def check_precision(resume: Resume, state: TrainState) -> None:
    """CheckpointError when `resume` trained in another precision than `state` would: its
    optimizer and scaler state, and the run's numbers, belong to the one it started in."""
    saved = resume.payload["meta"]["precision"]
    if saved == state.precision.name:
        return
    hint = "--no-amp" if saved == "fp32" else f"--amp-dtype {saved}"
    raise CheckpointError(
        f"{resume.path}: the run trained in {saved} ({_asked(resume.payload['config'])}) and "
        f"this session would train in {state.precision.name} ({_asked(state.config.to_dict())} "
        f"on {state.device_type}); resume with {hint}, or start over with --resume off")


# Saving: room on the disk first, atomic, verified, `keep` generations --------------------------
# A save that cannot fit is refused before it starts (as is a disk filling up during the write):
# one line with the folder, file, need and free space. The need is the tensors' bytes, not the
# last checkpoint's size, so it holds for the first stage-2 save (whole-body optimizer state).

def expected_size(obj: Any) -> int:
    """Bytes a torch.save of `obj` takes: the tensor storages inside it (nested dicts, lists,
    tuples), each counted once as torch.save writes it once, plus 2% and 1 MiB."""
    seen: set[tuple[str, int]] = set()
    total, stack = 0, [obj]
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
    return int(total * 1.02) + (1 << 20)


def remedy(keep: int) -> str:
    """What makes room: checkpoints are most of a run folder, and --keep 1 drops a generation
    (at the next start-up and after every save)."""
    return "free space" + (", or keep one generation with --keep 1" if keep > 1 else "")


def _mb(size: float) -> str:
    mb = size / 1e6
    return f"{mb:.0f} MB" if mb >= 10 else f"{mb:.1f} MB"


def _disk_full(folder: Path, shown: str, needed: int, fix: str) -> DiskFullError:
    free = shutil.disk_usage(folder).free
    # A filesystem can also run out of files (inodes) with bytes to spare.
    inodes = ", 0 inodes free" if hasattr(os, "statvfs") and os.statvfs(folder).f_ffree == 0 \
        and os.statvfs(folder).f_files else ""
    return DiskFullError(f"no space left on {folder} writing {shown} (needs ~{_mb(needed)}, "
                         f"{_mb(free)} free{inodes}): {fix}")


@contextmanager
def room_for(folder: Path, shown: str, needed: int, fix: str) -> Iterator[None]:
    """Refuse a write of ~`needed` bytes into `folder` that cannot fit, and turn a disk filling up
    inside the block into the same DiskFullError. `shown`: the file relative to the run folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(folder).free < needed:
        raise _disk_full(folder, shown, needed, fix)
    try:
        yield
    except Exception as err:
        cause: BaseException | None = err
        while cause is not None:  # torch.save reports ENOSPC as a RuntimeError on top of it
            if isinstance(cause, OSError) and cause.errno in _FULL:
                raise _disk_full(folder, shown, needed, fix) from None
            cause = cause.__cause__ or cause.__context__
        raise


def save_checkpoint(payload: dict[str, Any], out: str | Path, step: int,
                    keep: int = TrainConfig.keep) -> Path:
    """Write `payload` (`state_payload`) as state-<step>.pt, verify it, then keep it and the
    `keep - 1` newest generations before it. DiskFullError (one line) when it cannot fit."""
    final = checkpoint_path(out, step)
    directory = final.parent
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
    """The file has the size written and a complete zip archive (central directory written last)
    holding the pickle. Re-reading the data would read the page cache, not the disk, and an
    unpickle adds ~0.7 s (se_resnext50) proving no more; a load checks every record's CRC32."""
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
    return sorted(((int(m.group(1)), p) for p in directory.iterdir()
                   if (m := NAME_PATTERN.match(p.name))), reverse=True)


def remove_generation(path: Path) -> None:
    path.unlink(missing_ok=True)
    sidecar_of(path).unlink(missing_ok=True)


def prune(directory: Path, keep: int, newest: int, later: bool = True) -> None:
    """Keep generation `newest` and the `keep - 1` before it. With `later`, steps after `newest`
    go too: they belong to a timeline the run left (a damaged generation it fell back from, a
    --resume of an older one, a run started over), and would outrank every new save."""
    generations = list_generations(directory)
    older = [path for step, path in generations if step <= newest]
    dropped = [path for step, path in generations if step > newest] if later else []
    for path in dropped + older[keep:]:
        remove_generation(path)


def tidy(directory: Path, keep: int, resumed_step: int | None) -> None:
    """At start-up: what killed saves left behind, and, when resuming, the generations before
    the resumed one beyond `keep` (a lowered --keep frees its disk before the first save)."""
    remove_leftovers(directory)
    if resumed_step is not None:
        prune(directory, keep, resumed_step, later=False)


# A kill during a save leaves a temp file, one during pruning a sidecar without its checkpoint:
# `remove_leftovers` drops those at start-up and before each save.

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
    """Remove (and log in one line) the temp files whose writer is dead (not another rank's or a
    copy in progress) and the sidecars without a checkpoint."""
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
            if temp and _writer_alive(int(temp.group(1)), stat.st_mtime):
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


# Loading: intact, this format, this run --------------------------------------------------------

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
    payload = err = None
    with ThreadPoolExecutor(1) as pool:
        damage = pool.submit(damaged_record, path)
        try:
            # mmap: the tensors are read once, straight into the objects they are restored
            # into; private mapping, so training never writes into the checkpoint file.
            with torch.serialization.set_default_mmap_options(mmap.MAP_PRIVATE):
                payload = torch.load(path, map_location=map_location, weights_only=True,
                                     mmap=True)
        except Exception as error:
            err = error
        if damage.result():
            raise CheckpointError(f"{path}: {damage.result()} (damaged on disk or in transfer); "
                                  "use the previous generation or --resume off")
    if err is not None:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{path}: not a readable train state ({type(err).__name__}: "
                              f"{first_line[:200]}); use the previous generation or "
                              "--resume off") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an imet train state (format "
                              f"{payload.get('format') if isinstance(payload, dict) else None!r})")
    if payload.get("version") != VERSION:
        raise IncompatibleCheckpointError(
            f"{path} was written by checkpoint format {payload.get('version')}; this imet reads "
            f"format {VERSION}: finish the run with the imet that started it, or start over "
            "with --resume off")
    check_identity(path, {**payload.get("meta", {}), "config": payload.get("config")},
                   config_fingerprint, labels_fingerprint, config)
    return payload


def config_differences(saved: dict | None, current: dict | None) -> str:
    """`image_size: 128 in the checkpoint, 96 now; ...` over the settings in the fingerprint;
    "" when either side is not known."""
    if not isinstance(saved, dict) or not current:
        return ""
    absent = object()
    pairs = ((name, saved.get(name, absent), current.get(name, absent))
             for name in sorted(set(saved) | set(current))
             if name not in TrainConfig.NOT_IN_FINGERPRINT)
    return "; ".join(f"{name}: {'absent' if then is absent else repr(then)} in the checkpoint, "
                     f"{'absent' if now is absent else repr(now)} now"
                     for name, then, now in pairs if then != now)


def check_identity(path: Path, meta: dict, config_fingerprint: str | None,
                   labels_fingerprint: str | None, config: dict | None = None) -> None:
    """ForeignCheckpointError / IncompatibleCheckpointError for a checkpoint (its sidecar or
    payload meta, with its config) that is not this run's (`config`: this run's to_dict())."""
    if labels_fingerprint and meta.get("labels_fingerprint") != labels_fingerprint:
        raise ForeignCheckpointError(f"{path}: the checkpoint was trained on another label space "
                                     "(the labels table differs); resume with the same competition "
                                     "data")
    if config_fingerprint and meta.get("config_fingerprint") != config_fingerprint:
        differ = config_differences(meta.get("config"), config) or (
            f"fingerprint {meta.get('config_fingerprint')} != {config_fingerprint}: arch, "
            "fold, epochs, LR, seed... differ")
        raise ForeignCheckpointError(
            f"{path}: the checkpoint belongs to another training config ({differ}); rerun with "
            "the same flags, another --out, or --resume off")
    scheme = meta.get("augmentation")
    if scheme != AUGMENTATION_VERSION:
        raise IncompatibleCheckpointError(
            f"{path}: the run was started by an imet that augments differently (scheme "
            f"{scheme}, this imet: {AUGMENTATION_VERSION}), so resuming would not continue the "
            "same run; finish it with the imet version that started it, or rerun with "
            "--resume off")


# Resuming: which checkpoint a session continues from, and what comes with it -------------------
# The newest usable one of this run (its own, or any `state-<step>.pt` under the input roots) is
# copied into the out folder and loaded; its run's model.pt comes along, since the best
# evaluation may belong to an earlier session.

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


def choose_resume(config, config_fingerprint: str, labels_fingerprint: str,
                  dist) -> Resume | None:
    """What `--resume` (off | auto | a path) resumes from; under torchrun rank 0 chooses (and
    may copy in) the checkpoint and the others load its choice."""
    if config.resume == "off":
        return None
    settings = config.to_dict()  # named in the message when a checkpoint is another config's
    if config.resume == "auto":
        return dist.share_resume(
            lambda: find_resume(config.out, config.input_root, config_fingerprint,
                                labels_fingerprint, settings),
            lambda path: load_resume(path, config_fingerprint, labels_fingerprint, settings))
    return load_resume(config.resume, config_fingerprint, labels_fingerprint, settings)


def load_resume(path: str | Path, config_fingerprint: str, labels_fingerprint: str,
                config: dict | None = None) -> Resume:
    """A checkpoint named by its path (--resume PATH, or the file rank 0 chose)."""
    payload = load_checkpoint(path, config_fingerprint, labels_fingerprint, config=config)
    return Resume(payload, Path(path), Path(path))


def find_resume(out: str | Path, input_roots: list[str | Path], config_fingerprint: str,
                labels_fingerprint: str, config: dict | None = None) -> Resume | None:
    """The newest valid checkpoint of this run, copied into the out folder, loaded. Another
    config's is refused in this run's own folder (a flag that decides the result changed) and
    skipped in input roots (Kaggle attaches other folds' and archs' outputs side by side); a
    damaged newest generation falls back to the older one with a warning."""
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
        path = candidate.path
        if not candidate.local:  # copied into this run's folder, with its sidecar
            path = atomic_copy(candidate.path, checkpoint_dir(out) / candidate.path.name)
            if sidecar_of(candidate.path).is_file():
                atomic_copy(sidecar_of(candidate.path), sidecar_of(path))
        try:
            payload = load_checkpoint(path, config_fingerprint, labels_fingerprint,
                                      config=config)
        except CheckpointError as err:
            if not candidate.local:
                remove_generation(path)
            foreign = isinstance(err, ForeignCheckpointError)
            if isinstance(err, IncompatibleCheckpointError) or (foreign and candidate.local):
                raise
            if not foreign:
                log.warning("checkpoint %s is unusable (%s); trying the previous generation",
                            candidate.path, err)
                failures.append(str(err))
            continue
        return Resume(payload, path, candidate.path)
    if failures:
        raise CheckpointError(f"every checkpoint found is damaged; first: {failures[0]}; "
                              "rerun with --resume off to start over")
    return None


def find_candidates(out: str | Path, input_roots: list[str | Path]) -> list[Candidate]:
    """Every state-<step>.pt in the out folder's checkpoints and anywhere under input roots,
    newest first (the out folder first on equal steps: no copy needed)."""
    found = [Candidate(path, step, read_meta(path), True)
             for step, path in list_generations(checkpoint_dir(out))]
    seen = {candidate.path.resolve() for candidate in found}
    for folder, _, filenames in walk_folders(input_roots):
        for name in filenames:
            match = NAME_PATTERN.match(name)
            path = folder / name
            if match and path.resolve() not in seen:
                seen.add(path.resolve())
                found.append(Candidate(path, int(match.group(1)), read_meta(path), False))
    return sorted(found, key=lambda c: (c.step, c.local), reverse=True)


def version_change(resume: Resume, now: dict[str, str], warn: bool = True) -> str | None:
    """'torch 2.10.0+cu128, CUDA 12.8 -> torch 2.14.1, CUDA none' when the checkpoint's torch or
    CUDA differs from `now` (this session's), else None; `warn` logs it as one line."""
    saved = resume.payload["versions"]
    if all(str(saved[name]) == now[name] for name in NUMERIC_LIBRARIES):
        return None
    change = " -> ".join(", ".join(f"{'CUDA' if name == 'cuda' else name} {versions[name]}"
                                   for name in NUMERIC_LIBRARIES) for versions in (saved, now))
    if warn:
        log.warning("%s was written by another torch/CUDA than this session's (%s): the run "
                    "goes on, but not bit-identical to one that never changed", resume.path.name,
                    change)
    return change


def bring_best_model(out: str | Path, resume: Resume, best_step: int) -> None:
    """A session resumed from another folder (Kaggle: the previous session's output) takes that
    run's model.pt along (the best model may be an earlier session's): the one place it crosses."""
    target = Path(out) / MODEL_FILE
    source = resume.found_at.parent.parent / MODEL_FILE
    if best_step < 0 or source.resolve() == target.resolve():
        return
    if source.is_file():
        atomic_copy(source, target)
    elif not target.is_file():
        log.warning("%s not found: the best model (step %d) of the resumed run is missing; "
                    "model.pt is written again at the next improvement", source, best_step)


# The hand-over note a session that stopped early leaves for the next one (and its user) ----------

def next_step_text(command: str | None) -> str:
    """What to run next: `command` with its --resume set to auto."""
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


def write_handover(out: Path, *, reason: str, step: int, epoch: int, stage: int,
                   checkpoint: str, next_text: str, exit_code: int, signal: str | None,
                   session: int, total_steps: int, steps_taken: int) -> Path:
    """HANDOVER.json; `steps_taken`: this session's steps (0: stopped during start-up)."""
    what = {"budget": "the session's time budget would not fit the next unit of work plus a save",
            "session-steps": "the session ran its --session-steps",
            "telegram": "its owner sent /stop from Telegram"}.get(
        reason, f"a stop signal ({signal or 'SIGTERM/SIGINT'}) arrived")
    taken = "no step was taken in this session; " if steps_taken == 0 else ""
    data = {"status": "handover", "reason": reason, "what_happened": f"stopped at step {step} "
            f"of {total_steps} (epoch {epoch}, stage {stage}, session {session}): {what}; "
            f"{taken}the full training state was saved", "step": step, "epoch": epoch,
            "stage": stage, "session": session, "total_steps": total_steps,
            "steps_this_session": steps_taken, "checkpoint": checkpoint, "next": next_text,
            "exit_code": exit_code, "time": utc_timestamp()}
    return atomic_write_text(Path(out) / HANDOVER_FILE, json.dumps(data, indent=2) + "\n")


def remove_handover(out: Path) -> None:
    """A session that runs on makes an earlier hand-over note stale."""
    (Path(out) / HANDOVER_FILE).unlink(missing_ok=True)
