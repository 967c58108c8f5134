"""What `imet kaggle render` wrote into a kernel folder, so a later render never overwrites a
hand edit: a manifest beside the files holding the sha256 of each file as written."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from imet.errors import UserError
from imet.fileio import atomic_write_text

MANIFEST = ".imet-rendered.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _recorded(out_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def check_untouched(out_dir: Path, files: dict[str, str], force: bool = False) -> None:
    """Refuse, in one line naming the file, to replace a file that differs from what render
    last wrote there (or, never written by render, from what it would write now)."""
    if force:
        return
    recorded = _recorded(Path(out_dir))
    for name, text in files.items():
        path = Path(out_dir) / name
        if not path.is_file():
            continue
        current = _sha256(path.read_bytes())
        expected = recorded.get(name, _sha256(text.encode("utf-8")))
        if current != expected:
            raise UserError(f"{path}: edited by hand since `imet kaggle render` wrote it; put "
                            "the change into the settings file (render --config FILE) and "
                            "render again, or pass --force to overwrite it")


def write_rendered(out_dir: Path, files: dict[str, str]) -> Path:
    """Write the files and the manifest of what was written."""
    out_dir = Path(out_dir)
    for name, text in files.items():
        atomic_write_text(out_dir / name, text)
    manifest = {"format": "imet-rendered", "version": 1,
                "files": {name: _sha256(text.encode("utf-8")) for name, text in files.items()}}
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return out_dir
