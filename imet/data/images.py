"""Images from file to pixels: decoding with errors a user can act on, the decode-once image
cache on disk (`imet cache` builds it, training reads it) and the in-memory memo of decoded
pixels.

A truncated or corrupt image must stop training with the image named, not with a PIL
traceback from inside a DataLoader worker, so every decode goes through `load_rgb`."""
from __future__ import annotations

import io
import json
import os
import time
import warnings
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from imet.errors import DataError, UserError
from imet.fileio import TEMP_SUFFIX, atomic_write_bytes, atomic_write_text
from imet.walk import walk_folders

# Images beyond this many pixels are refused instead of decoded (PIL's own bomb check only
# warns below ~179 Mpx; iMet's largest images are a few Mpx).
MAX_PIXELS = 64_000_000
# A training image with a shorter side than this is a placeholder or a broken export, not a
# picture (iMet's short side is 300 px; mini-iMet's smallest is 16).
MIN_SIDE = 16
_ADVICE = "re-download the image or remove its row from the CSV"
# What an image file's name promises, by suffix (PIL's format names).
SUFFIX_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def load_rgb(path, min_side: int = 0) -> np.ndarray:
    """The image as uint8 [H, W, 3]; DataError naming the file when missing/corrupt/truncated
    or when its shorter side is below `min_side` pixels."""
    return _decode(Path(path), min_side)[0]


def _decode(path: Path, min_side: int) -> tuple[np.ndarray, str | None]:
    """(uint8 RGB pixels, the format PIL found in the file)."""
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise DataError(f"{path}: image is {image.width}x{image.height}, larger than "
                                f"{MAX_PIXELS} pixels; resize it or {_ADVICE}")
            if min(image.width, image.height) < min_side:
                raise DataError(f"{path}: image is {image.width}x{image.height} px, its shorter "
                                f"side below the minimum of {min_side} px; {_ADVICE}")
            # load() decodes every byte: a truncated file fails here, not later.
            image.load()
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8), image.format
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: image not found; check --data or {_ADVICE}") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (corrupt or not a PNG/JPEG); {_ADVICE}") \
            from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # PIL reports truncation as OSError("image file is truncated ...") and bad chunks as
        # SyntaxError / ValueError.
        detail = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"{path}: cannot decode image ({detail}); {_ADVICE}") from None


def image_findings(path, min_side: int = MIN_SIDE) -> tuple[str | None, str | None]:
    """(problem, warning) for `check-data`, each one line or None: a problem when the image
    does not decode or is smaller than `min_side`; a warning when its format is not the one its
    name says (a JPEG named .png trains fine, but a tool that trusts the name may not)."""
    path = Path(path)
    try:
        image, found = _decode(path, max(1, min_side))
    except DataError as err:
        return str(err), None
    expected = SUFFIX_FORMATS.get(path.suffix.lower())
    if expected and found and found != expected:
        return None, (f"{path}: a {found} file named {path.suffix}; convert it to {expected} "
                      "or rename it (imet reads it either way)")
    return None, None


def scale_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Short side -> `size` bit for bit as albumentations' SmallestMaxSize with the pipelines'
    scaling (area down, bilinear up), so cache, `seed` crop and eval transforms agree (a test
    checks it); cv2, because importing albumentations pulls in torch: seconds per cache worker."""
    height, width = image.shape[:2]
    scale = size / min(height, width)
    target = max(1, round(height * scale)), max(1, round(width * scale))
    if target == (height, width):
        return image
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(image, (target[1], target[0]), interpolation=interpolation)


# The decode-once image cache: a PNG at iMet's geometry costs ~3 ms to decode on one core, more
# than the whole augmentation at 320 px; a JPEG (q95) costs ~1 ms, a raw .npy ~0.1 ms at ~10x
# the disk. Images keep their SHORT side at the training size (`scale_short_side`), so random
# crops still see the whole image (the `seed` geometry is unchanged, exactly for npy). A folder
# holds imet-cache.json (settings, one entry per source) and train/<id>.jpg|.npy, test/...;
# entries are keyed by the source's relative path, byte size and mtime: a changed source's entry
# is stale, rebuilt by `imet cache` and bypassed by the dataset.
MANIFEST = "imet-cache.json"
MANIFEST_FORMAT, MANIFEST_VERSION = "imet-image-cache", 1
SPLIT_DIRS = ("train", "test")
_REBUILD = "rebuild it with `python -m imet cache`"
# OpenCV >= 4.10 decodes straight to RGB; older ones need a channel swap.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
CACHE_ENV = "IMET_CACHE_DIR"  # the folder a session trains from (the Kaggle trainer sets it)


def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise OSError("JPEG encoding failed")
    return data.tobytes()


def _read_jpeg(path: Path) -> np.ndarray:
    if _IMREAD_RGB is not None:
        image = cv2.imread(str(path), _IMREAD_RGB)
    else:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        image = None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image is None:
        raise DataError(f"{path}: cached image missing or unreadable; {_REBUILD}")
    return image


def _encode_npy(image: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(image, dtype=np.uint8), allow_pickle=False)
    return buffer.getvalue()


def _read_npy(path: Path) -> np.ndarray:
    try:
        image = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: cached array missing or unreadable ({type(err).__name__}); "
                        f"{_REBUILD}") from None
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"{path}: cached array is {image.dtype}{list(image.shape)}, not uint8 "
                        f"HxWx3; {_REBUILD}")
    return image


@dataclass(frozen=True)
class StorageFormat:
    suffix: str
    encode: callable  # (image, quality) -> the file's bytes
    read: callable
    help: str


FORMATS: dict[str, StorageFormat] = {
    "jpeg": StorageFormat(".jpg", _encode_jpeg, _read_jpeg,
                          "JPEG at --quality: ~1/10 the bytes of raw, lossy, ~1 ms to decode"),
    "npy": StorageFormat(".npy", _encode_npy, _read_npy,
                         "raw uint8 array: exact, fastest to read, ~10x the disk of jpeg"),
}


def source_key(path: Path) -> list:
    """What identifies a source file's content cheaply: byte size and mtime (hashing 20 GB of
    PNGs would cost as much as the decode the cache saves)."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def read_manifest(cache_dir: Path) -> dict | None:
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable cache manifest ({type(err).__name__}); delete "
                        f"the folder and {_REBUILD}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path}: not an imet image cache manifest; choose another --out")
    if manifest.get("version") != MANIFEST_VERSION:
        raise DataError(f"{path}: cache version {manifest.get('version')} is not "
                        f"{MANIFEST_VERSION}; delete the folder and {_REBUILD}")
    return manifest


class ImageCache:
    """An opened cache folder. `resolve(paths)` maps a dataset's source paths to cached files."""

    def __init__(self, cache_dir, manifest: dict | None = None):
        self.cache_dir = Path(cache_dir)
        manifest = manifest if manifest is not None else read_manifest(self.cache_dir)
        if manifest is None:
            raise DataError(f"{self.cache_dir / MANIFEST}: not found; {_REBUILD} "
                            "(--out names the folder)")
        self.size = int(manifest["size"])
        self.image_format = manifest["image_format"]
        self.quality = manifest.get("quality")
        self.entries = manifest["entries"]

    def __repr__(self) -> str:
        return (f"ImageCache({str(self.cache_dir)!r}, {self.image_format}, size {self.size}, "
                f"{len(self.entries)} images)")

    def describe(self) -> dict:
        """What decides the pixels the cache yields (for a run's config/fingerprint)."""
        return {"size": self.size, "image_format": self.image_format, "quality": self.quality}

    def resolve(self, image_paths, warn: bool = True) -> "CachedImages":
        """Cached file per path, or None where the source is not cached or changed since."""
        image_paths = [Path(p) for p in image_paths]
        found, stale = [], 0
        for path in image_paths:
            entry = self.entries.get(f"{path.parent.name}/{path.name}")
            if entry is None:
                found.append(None)
                continue
            try:
                fresh = entry[:2] == source_key(path)
            except FileNotFoundError:
                fresh = True  # only the cached copy is attached (e.g. a later Kaggle session)
            stale += not fresh
            found.append(str(self.cache_dir / entry[2]) if fresh else None)
        missing = sum(f is None for f in found)
        if warn and missing:
            warnings.warn(f"{self.cache_dir}: {missing} of {len(found)} images are not cached "
                          f"or changed since ({stale} changed); they are decoded from the "
                          f"source, slower; {_REBUILD}", stacklevel=2)
        return CachedImages(image_paths, found, self.image_format)


class CachedImages:
    """Per-index loader: the cached copy when there is one, else the source. Picklable, so
    DataLoader workers get it with the dataset."""

    def __init__(self, sources: list, cached: list, image_format: str):
        self.sources, self.cached, self.image_format = sources, cached, image_format

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def hits(self) -> int:
        return sum(c is not None for c in self.cached)

    def load(self, index: int) -> np.ndarray:
        cached = self.cached[index]
        return (load_rgb(self.sources[index]) if cached is None
                else FORMATS[self.image_format].read(Path(cached)))


def find_cache(size: int, roots=()) -> ImageCache | None:
    """The first cache of short side `size` in $IMET_CACHE_DIR or under `roots` (on Kaggle a
    previous session's output is attached some levels under /kaggle/input). Caches of other
    sizes are skipped."""
    env = os.environ.get(CACHE_ENV)
    for folder in chain([Path(env)] if env else [],
                        (folder for folder, _, files in walk_folders(roots) if MANIFEST in files)):
        manifest = read_manifest(folder)
        if manifest is not None and int(manifest.get("size", -1)) == int(size):
            return ImageCache(folder, manifest)
    return None


SAVE_EVERY_S = 5.0


def _cache_one(job: tuple) -> tuple:
    """Worker: decode, resize, write atomically. Returns (name, key, error or None)."""
    source, target, name, size, fmt, quality, min_side = job
    try:
        key = source_key(Path(source))
        image = scale_short_side(load_rgb(source, min_side), size)
        atomic_write_bytes(target, FORMATS[fmt].encode(image, quality))
        return name, key, None
    except (DataError, OSError, cv2.error) as err:
        return name, None, str(err) if isinstance(err, DataError) else " ".join(
            f"{source}: {err}".split())


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
                workers: int = 1, splits=SPLIT_DIRS, progress: bool = True,
                folders: dict | None = None) -> BuildResult:
    """Cache every image of `data_root`'s split folders (`folders`: split -> folder, as the
    layout found them; default data_root/<split>) into `out`, each under its folder's name, the
    key `ImageCache.resolve` looks up. Fresh entries are kept,
    stale or missing ones rebuilt, entries of vanished sources dropped. Every file is written
    atomically and the manifest saved every SAVE_EVERY_S, so an interrupted build resumes where
    its manifest stops."""
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
    folders = {s: Path(f) for s, f in (folders or {s: data_root / s for s in splits}).items()
               if s in splits}
    listed = {f"{folder.name}/{e.name}": (Path(e.path), split)
              for split, folder in folders.items() if folder.is_dir()
              for e in sorted(os.scandir(folder), key=lambda e: e.name)
              if e.is_file() and e.name.lower().endswith(tuple(SUFFIX_FORMATS))}
    names = list(listed)
    if not names:
        raise DataError(f"{data_root}: no images in {', '.join(f'{f}/' for f in folders.values())}"
                        "; --data must be the competition folder")
    out.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(out, [f.name for f in folders.values()])
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
            (out / entry[2]).unlink(missing_ok=True)
    wanted = set(names)
    removed = [n for n in entries if n not in wanted]
    for name in removed:
        (out / entries.pop(name)[2]).unlink(missing_ok=True)
    suffix = FORMATS[fmt].suffix
    jobs, reused = [], 0
    for name in names:
        target, entry = str(Path(name).with_suffix(suffix)), entries.get(name)
        source, split = listed[name]
        if entry is not None and entry[:2] == source_key(source) and (out / entry[2]).is_file():
            reused += 1
            continue
        entries.pop(name, None)
        (out / target).parent.mkdir(parents=True, exist_ok=True)
        # A training image training would refuse is not cached under another size either.
        min_side = MIN_SIDE if split == "train" else 0
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
                    Path(entry.path).unlink(missing_ok=True)


class PixelMemo:
    """Decode once, in memory (mini-iMet costs more to decode every epoch than to train on):
    keeps the uint8 arrays an `ImetDataset` read, by sample index, until `budget_bytes` are held.
    It holds exactly what the read returned, so batches are bit-identical with any budget (0
    included) and after a resume; the arrays are read-only, so a transform that changed its input
    in place fails loudly instead of changing the next epoch. The budget is per process (each
    DataLoader worker has its own copy): `imet.train.data` splits `--image-memory-mb`."""


    def __init__(self, budget_bytes: int):
        self.budget_bytes = max(0, int(budget_bytes))
        self.held_bytes = 0
        self._arrays: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._arrays)

    def __getstate__(self) -> dict:
        # A worker starts empty: pickling what the parent holds would copy it per worker and
        # count it against every worker's share again.
        return {"budget_bytes": self.budget_bytes, "held_bytes": 0, "_arrays": {}}

    def get(self, index: int, read: Callable[[], np.ndarray]) -> np.ndarray:
        """The pixels of sample `index`: the kept array, or `read()`'s, kept when it fits."""
        kept = self._arrays.get(index)
        if kept is not None:
            return kept
        image = read()
        if self.held_bytes + image.nbytes <= self.budget_bytes:
            image = np.ascontiguousarray(image)
            image.flags.writeable = False
            self._arrays[index] = image
            self.held_bytes += image.nbytes
        return image
