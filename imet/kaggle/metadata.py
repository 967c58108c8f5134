"""kernel-metadata.json: reading, checking and rendering with an owner's name."""
from __future__ import annotations

import json
from pathlib import Path

from imet.errors import UserError

REQUIRED = ("id", "title", "code_file", "language", "kernel_type", "enable_internet",
            "enable_gpu", "dataset_sources", "competition_sources", "kernel_sources")
OWNER = "{owner}"


def read_metadata(kernel_dir: Path) -> dict:
    path = Path(kernel_dir) / "kernel-metadata.json"
    if not path.is_file():
        raise UserError(f"{path}: no kernel-metadata.json in the kernel folder {kernel_dir}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    missing = [key for key in REQUIRED if key not in meta]
    if missing:
        raise UserError(f"{path}: missing field(s) {', '.join(missing)}; write them explicitly "
                        "(the kaggle client defaults enable_internet to true)")
    if not (Path(kernel_dir) / meta["code_file"]).is_file():
        raise UserError(f"{path}: code_file {meta['code_file']!r} does not exist in {kernel_dir}")
    return meta


def slug_of(ref: str) -> str:
    """'owner/name' -> 'name': the folder name an attached source gets under /kaggle/input."""
    return ref.rsplit("/", 1)[-1]


def render(kernel_dir: Path, owner: str, out_dir: Path) -> Path:
    """Write a push-ready copy of a kernel folder with `{owner}` replaced by a user name."""
    if not owner or "/" in owner or OWNER in owner:
        raise UserError(f"--owner {owner!r} is not a Kaggle user name")
    meta = read_metadata(kernel_dir)
    text = json.dumps(meta, indent=2).replace(OWNER, owner)
    out_dir.mkdir(parents=True, exist_ok=True)
    code = (Path(kernel_dir) / meta["code_file"]).read_bytes()
    (out_dir / meta["code_file"]).write_bytes(code)
    (out_dir / "kernel-metadata.json").write_text(text + "\n", encoding="utf-8")
    return out_dir
