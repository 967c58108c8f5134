"""Building the decode-once image cache (`imet cache`): every source image decoded, resized
and written once; the format and the reading side are `imet.data.cache`.

Every file is written atomically (imet.fileio); the manifest is saved every few seconds, so an
interrupted build resumes where its manifest stops."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2

from imet.data.cache import (FORMATS, MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION,
                             SPLIT_DIRS, read_manifest, source_key)
from imet.data.images import MIN_SIDE, load_rgb, scale_short_side
from imet.errors import DataError, UserError
from imet.fileio import TEMP_SUFFIX, atomic_write_bytes, atomic_write_text

SOURCE_SUFFIXES = (".png", ".jpg", ".jpeg")
SAVE_EVERY_S = 5.0


def list_sources(data_root: Path, splits=SPLIT_DIRS) -> list[str]:
    """Image paths relative to `data_root`, sorted, from the split folders that exist."""
    names = []
    for split in splits:
        folder = data_root / split
        if folder.is_dir():
            names += sorted(f"{split}/{e.name}" for e in os.scandir(folder)
                            if e.is_file() and e.name.lower().endswith(SOURCE_SUFFIXES))
    return names


def _cache_one(job: tuple) -> tuple:
    """Worker: decode, resize, write atomically. Returns (name, key, error or None)."""
    source, target, name, size, fmt, quality, min_side = job
    try:
        key = source_key(Path(source))
        image = scale_short_side(load_rgb(source, min_side), size)
        atomic_write_bytes(target, FORMATS[fmt].encode(image, quality))
        return name, key, None
    except (DataError, OSError, cv2.error) as err:
        return name, None, " ".join(f"{source}: {err}".split()) if not isinstance(
            err, DataError) else str(err)


@dataclass
class BuildResult:
    cache_dir: Path
    total: int
    built: int
    reused: int
    removed: int
    errors: list
    bytes: int
    seconds: float


def build_cache(data_root, out, size: int, fmt: str = "jpeg", quality: int = 95,
                workers: int = 1, splits=SPLIT_DIRS, progress: bool = True) -> BuildResult:
    """Cache every image of `data_root`'s split folders into `out` (see the module doc).
    Fresh entries are kept, stale or missing ones rebuilt, entries of vanished sources dropped."""
    data_root, out = Path(data_root), Path(out)
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(sorted(FORMATS))}")
    if not isinstance(size, int) or size < 8:
        raise UserError(f"--size {size!r}: must be an integer of at least 8 pixels")
    if not 1 <= quality <= 100:
        raise UserError(f"--quality {quality}: must be in 1..100")
    if not data_root.is_dir():
        raise DataError(f"{data_root}: data folder not found; pass --data pointing at the "
                        "competition files (train/ and test/)")
    started = time.monotonic()
    names = list_sources(data_root, splits)
    if not names:
        raise DataError(f"{data_root}: no images in {', '.join(f'{s}/' for s in splits)}; "
                        "--data must be the competition folder")
    out.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(out, splits)
    old = read_manifest(out)
    settings = {"size": size, "image_format": fmt, "quality": quality if fmt == "jpeg" else None,
                "resize": "SmallestMaxSize area-down linear-up"}
    entries = {}
    if old is not None and all(old.get(k) == v for k, v in settings.items()):
        entries = old.get("entries", {})
    elif old is not None:
        print(f"{out}: cached with other settings ({old.get('image_format')}, size "
              f"{old.get('size')}); rebuilding every image")
        for entry in old.get("entries", {}).values():
            _unlink_quietly(out / entry[2])
    wanted = set(names)
    removed = [n for n in entries if n not in wanted]
    for name in removed:
        _unlink_quietly(out / entries.pop(name)[2])
    suffix = FORMATS[fmt].suffix
    jobs, reused = [], 0
    for name in names:
        target = str(Path(name).with_suffix(suffix))
        entry = entries.get(name)
        source = data_root / name
        if entry is not None and entry[:2] == source_key(source) and (out / entry[2]).is_file():
            reused += 1
            continue
        entries.pop(name, None)
        (out / target).parent.mkdir(parents=True, exist_ok=True)
        # A training image training would refuse is not cached under another size either.
        min_side = MIN_SIDE if Path(name).parts[0] == "train" else 0
        jobs.append((str(source), str(out / target), name, size, fmt, quality, min_side))

    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **settings,
                "entries": entries}
    errors, last_save = [], time.monotonic()

    def save() -> None:
        # Every listed entry's file is already durable (atomic_write_bytes syncs it before the
        # worker reports it), so a crash never leaves an entry that points at an empty file.
        atomic_write_text(out / MANIFEST, json.dumps(manifest, separators=(",", ":")))

    try:
        for name, key, error in _run_jobs(jobs, workers, progress):
            if error is not None:
                errors.append(error)
            else:
                entries[name] = [*key, str(Path(name).with_suffix(suffix))]
            if time.monotonic() - last_save > SAVE_EVERY_S:
                save()
                last_save = time.monotonic()
    finally:
        save()  # also on Ctrl-C: the next run resumes after the last finished image
    total_bytes = sum((out / e[2]).stat().st_size for e in entries.values())
    return BuildResult(out, len(names), len(jobs) - len(errors), reused, len(removed), errors,
                       total_bytes, time.monotonic() - started)


def _run_jobs(jobs: list, workers: int, progress: bool):
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), unit="img", disable=not progress or not jobs,
               mininterval=1.0, desc="caching")
    try:
        if workers <= 1:
            for job in jobs:
                yield _cache_one(job)
                bar.update()
            return
        from multiprocessing import get_context

        # spawn, not fork: the caller may hold threads (torch, tqdm) that fork would copy half-way.
        with get_context("spawn").Pool(workers) as pool:
            for result in pool.imap_unordered(_cache_one, jobs, chunksize=16):
                yield result
                bar.update()
    finally:
        bar.close()


def _remove_temporaries(out: Path, splits) -> None:
    """Half-written files of an interrupted build (workers killed between write and rename)."""
    for split in splits:
        if (out / split).is_dir():
            for entry in os.scandir(out / split):
                if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
                    _unlink_quietly(Path(entry.path))


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
