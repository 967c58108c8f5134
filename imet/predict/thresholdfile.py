"""thresholds.json: the decoding `validate` chose, read by `predict`.

{"format": "imet-thresholds", "version": 1, "mode": "global"|"group"|"class"|"context",
 "thresholds": [C floats, one per attribute id in labels.csv order],
 "context": r (per-image thresholds max(t, r * the image's top probability); 0: none),
 "attribute_ids": [C ints], "labels_fingerprint": str, "min_labels": int, "max_labels": int|null,
 "tta": [...], "runs": [...], "scores": {...}}
The full per-class vector is always written (even for a global threshold) so `predict` never has
to know how it was chosen; the attribute ids make a file from another label space detectable.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from imet.errors import UserError
from imet.fileio import atomic_write_text

FORMAT = "imet-thresholds"
VERSION = 1


def write_thresholds(path: Path, thresholds: np.ndarray, attribute_ids: Sequence[int],
                     labels_fingerprint: str | None, mode: str, min_labels: int = 1,
                     max_labels: int | None = None, context: float = 0.0,
                     **extra: Any) -> Path:
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thresholds.size == 1:
        thresholds = np.full(len(attribute_ids), float(thresholds[0]))
    document = {
        "format": FORMAT, "version": VERSION, "mode": mode,
        "min_labels": int(min_labels),
        "max_labels": None if max_labels is None else int(max_labels),
        "context": round(float(context), 6),
        "labels_fingerprint": labels_fingerprint, **extra,
        "attribute_ids": [int(a) for a in attribute_ids],
        "thresholds": [round(float(t), 6) for t in thresholds],
    }
    atomic_write_text(Path(path), json.dumps(document, indent=1) + "\n")
    return Path(path)


def read_thresholds(path: Path, attribute_ids: Sequence[int] | None = None,
                    labels_fingerprint: str | None = None) -> dict[str, Any]:
    """The document with `thresholds` as a float32 array; UserError naming the file when it is
    unreadable, not a thresholds file, or made for another label space."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: thresholds file not found; run `imet validate` to write one "
                        "or pass --threshold") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: unreadable thresholds file ({type(err).__name__}: {err}); "
                        "run `imet validate` again") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise UserError(f"{path}: not an imet thresholds file (no \"format\": \"{FORMAT}\"); "
                        "run `imet validate` to write one")
    try:
        values = np.asarray(document["thresholds"], dtype=np.float32)
        file_ids = [int(a) for a in document["attribute_ids"]]
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: field {err} missing or malformed; run `imet validate` again") \
            from None
    if values.shape != (len(file_ids),) or not np.all(np.isfinite(values)):
        raise UserError(f"{path}: field \"thresholds\" must hold {len(file_ids)} finite numbers; "
                        "run `imet validate` again")
    context = document.get("context", 0.0)
    if not isinstance(context, (int, float)) or not 0.0 <= context <= 1.0:
        raise UserError(f"{path}: field \"context\" must be a number from 0 to 1; run "
                        "`imet validate` again")
    document["context"] = float(context)
    if attribute_ids is not None and file_ids != [int(a) for a in attribute_ids]:
        raise UserError(f"{path}: thresholds are for {len(file_ids)} other attribute ids, the "
                        f"models predict {len(attribute_ids)}; validate the same runs again")
    if (labels_fingerprint and document.get("labels_fingerprint")
            and document["labels_fingerprint"] != labels_fingerprint):
        raise UserError(f"{path}: field \"labels_fingerprint\" differs from the models' label "
                        "space; validate the same runs again")
    document["thresholds"] = values
    return document
