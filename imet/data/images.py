"""Image decoding with errors a user can act on.

A truncated or corrupt image must stop training with the image named, not with a PIL
traceback from inside a DataLoader worker, so every decode goes through `load_rgb`."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from imet.errors import DataError

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
    """Short side -> `size` exactly as albumentations' SmallestMaxSize with the pipelines'
    scaling computes it (area averaging when shrinking, bilinear when enlarging), so the cache,
    the `seed` preset's crop and the eval transforms agree bit for bit (a test checks it
    against the eval transform's first step). Written with cv2 because importing
    albumentations pulls in torch: seconds per cache worker. The image itself when it already
    has that size."""
    height, width = image.shape[:2]
    scale = size / min(height, width)
    target = max(1, round(height * scale)), max(1, round(width * scale))
    if target == (height, width):
        return image
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(image, (target[1], target[0]), interpolation=interpolation)
