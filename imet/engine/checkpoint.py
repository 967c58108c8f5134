"""TrainState files on disk: atomic writes, two generations, verified loads (choosing the one
to resume from: imet/engine/resume.py).

`<out>/checkpoints/state-<step>.pt` holds the state (only tensors and plain Python values, so
`torch.load(weights_only=True)` reads it: a checkpoint attached from a Kaggle dataset is
untrusted input). Next to it `state-<step>.json` holds what is needed to choose a checkpoint
without loading hundreds of MB (step, fingerprints, finished) and the size written; with the
CRC32 that torch.save stores for every record, it catches a file truncated or damaged on its
way through Kaggle's output/input round trip.

A kill during a save leaves a temp file (`.state-<step>.pt.<pid>.<random>.tmp`, named by
imet/fileio.py), a kill during pruning a sidecar without its checkpoint: `remove_leftovers`
drops those at start-up and before each save, so the folder holds the kept generations only."""
from __future__ import annotations

import json
import logging
import mmap
import os
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from imet.data.transforms import AUGMENTATION_VERSION
from imet.engine.config import TrainConfig
from imet.engine.diskspace import expected_size, remedy, room_for
from imet.errors import CheckpointError
from imet.fileio import TEMP_SUFFIX, atomic_torch_save, atomic_write_text

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
