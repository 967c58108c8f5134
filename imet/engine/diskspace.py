"""Room on disk for a save (a checkpoint, model.pt): a save that cannot fit is refused before it
starts, and a disk that fills up during a write (ENOSPC) ends the same way: one line naming the
folder, the file, what it needs and what is free, and exit code EXIT_CODE. The files already
there are untouched either way (atomic writes), so the run resumes once space is freed.

The estimate is the bytes of the tensors about to be written plus a little for the zip records
and the pickle: unlike the previous checkpoint's size it also holds for the first stage-2 save,
whose optimizer state covers the whole body for the first time."""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from imet.errors import UserError

# EX_IOERR (sysexits.h): not a crash (1), not bad input (2), not a handover (75).
EXIT_CODE = 74
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class DiskFullError(UserError):
    """No room on the disk for a save; the message says what is needed and how to make room."""

    exit_code = EXIT_CODE


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
