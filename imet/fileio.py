"""Atomic file writes for every layer (and its JSON, sha256 and UTC-time helpers): a kill, a power
cut or a full disk leaves the old file or the new one, never half of one (temp file in the same
folder, flush, fsync, os.replace, fsync of the folder). Temp files are `.<name>.<pid>.<random>.tmp`
so a cleanup can tell a dead writer's from a live one's; a finished file has plain `open`'s mode
(0666 less the umask), not mkstemp's 0600. Nothing else in imet renames anything into place."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, Callable, Iterator

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb",
                verify: Callable[[Path, int], None] | None = None, **open_kw) -> Iterator[IO]:
    """A handle on a temp file beside `path` that replaces `path` when the block ends without an
    exception (else `path` is left as it was). `verify(temp_path, size_written)` runs after the
    fsync and before the rename: raising there keeps the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX,
                               dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kw) as handle:
            yield handle
            handle.flush()
            size = handle.tell()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if verify is not None:
            verify(Path(tmp), size)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike,
                      verify: Callable[[Path, int], None] | None = None) -> int:
    """torch.save through atomic_open; returns the size written."""
    import torch
    with atomic_open(path, "wb", verify=verify) as handle:
        torch.save(obj, handle)
        return handle.tell()


def atomic_copy(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy `source` to `target` so that `target` is never seen half-copied."""
    with open(source, "rb") as src, atomic_open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return Path(target)


def atomic_symlink(link: str | os.PathLike, points_to: str | os.PathLike,
                   target_is_directory: bool = False) -> Path:
    """Make `link` a symlink to `points_to`, swapped in by rename so it always points somewhere."""
    link = Path(link)
    tmp = link.parent / f".{link.name}.{os.getpid()}{TEMP_SUFFIX}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(points_to, target_is_directory=target_is_directory)
    os.replace(tmp, link)
    fsync_dir(link.parent)
    return link


def move_folder_into_place(built: str | os.PathLike, target: str | os.PathLike,
                           replace: bool = True) -> bool:
    """Rename the finished folder `built` to `target` (a folder already there is swapped out by a
    second rename and removed; with replace=False it is kept and `built` removed instead: another
    writer got there first). Returns whether `built` took the place."""
    built, target = Path(built), Path(target)
    if replace and target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
        os.replace(built, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.rename(built, target)
        except OSError:
            if replace:
                raise
            shutil.rmtree(built)
            return False
    fsync_dir(target.parent)
    return True


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside `folder` durable. Best effort: some platforms and filesystems cannot
    open or fsync a folder, and the file's own data is already synced by then."""
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of the file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json_object(path: str | os.PathLike) -> dict | None:
    """The JSON object in the file, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def utc_timestamp(seconds: float | None = None) -> str:
    """`seconds` since the epoch (default now) in UTC to the second: "2019-05-28T14:03:00Z"."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
