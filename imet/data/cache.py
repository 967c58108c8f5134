"""Decode-once image cache, the reading side: the storage formats, the manifest, and what a
training run opens (`find_cache`, `ImageCache`). Building one is `imet.data.cache_build`.

A PNG at iMet's geometry costs ~3 ms to decode on one core, more than the whole augmentation
at 320 px; the cache replaces it with a small JPEG (q95, ~1 ms) or a raw uint8 array (.npy,
~0.1 ms, but ~10x the disk). Images are stored with their SHORT side at the training size
(`imet.data.images.scale_short_side`, the `seed` preset's first per-image step, equal to the
eval pipeline's SmallestMaxSize), so random crops still see the whole image and the `seed`
preset's geometry is unchanged (exactly, for npy).

Layout of a cache folder:
    imet-cache.json           manifest (format, size, quality, one entry per source image)
    train/<id>.jpg|.npy, test/<id>.jpg|.npy
Entries are keyed by the source file's path relative to the data folder, its byte size and
mtime: an entry whose source changed is stale and is rebuilt (by `imet cache`) or bypassed (by
the dataset, which then decodes the source)."""
from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from imet.data.images import load_rgb
from imet.errors import DataError
from imet.walk import walk_folders

MANIFEST = "imet-cache.json"
MANIFEST_FORMAT, MANIFEST_VERSION = "imet-image-cache", 1
SPLIT_DIRS = ("train", "test")
_REBUILD = "rebuild it with `python -m imet cache`"
# OpenCV >= 4.10 decodes straight to RGB; older ones need a channel swap.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)

# The folder a session points the training at (the Kaggle trainer kernel sets it).
CACHE_ENV = "IMET_CACHE_DIR"


# ---- storage formats (registry) ---------------------------------------------------------------

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


# ---- manifest ---------------------------------------------------------------------------------

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


# ---- reading ----------------------------------------------------------------------------------

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
            name = f"{path.parent.name}/{path.name}"
            entry = self.entries.get(name)
            if entry is None:
                found.append(None)
                continue
            try:
                fresh = entry[:2] == source_key(path)
            except FileNotFoundError:
                fresh = True  # only the cached copy is attached (e.g. a later Kaggle session)
            if not fresh:
                stale += 1
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
        if cached is None:
            return load_rgb(self.sources[index])
        return FORMATS[self.image_format].read(Path(cached))


def find_cache(size: int, roots=()) -> ImageCache | None:
    """The first cache of short side `size` in $IMET_CACHE_DIR or under `roots` (on Kaggle a
    previous session's output is attached some levels under /kaggle/input). Caches of other
    sizes are skipped."""
    if os.environ.get(CACHE_ENV):
        found = _cache_of_size(Path(os.environ[CACHE_ENV]), size)
        if found is not None:
            return found
    for folder, _, files in walk_folders(roots):
        if MANIFEST in files:
            found = _cache_of_size(folder, size)
            if found is not None:
                return found
    return None


def _cache_of_size(folder: Path, size: int) -> ImageCache | None:
    manifest = read_manifest(folder)
    if manifest is not None and int(manifest.get("size", -1)) == int(size):
        return ImageCache(folder, manifest)
    return None
