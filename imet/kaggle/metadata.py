"""kernel-metadata.json: reading, checking and rendering with an owner's name."""
from __future__ import annotations

import json
import re
from pathlib import Path

from imet.errors import UserError
from imet.kaggle import accelerators

REQUIRED = ("id", "title", "code_file", "language", "kernel_type", "enable_internet",
            "enable_gpu", "dataset_sources", "competition_sources", "kernel_sources")
OWNER = "{owner}"
# The line of a kernel script that tells the session what it asked for: Kaggle gives a script
# no view of its metadata, so render (and the emulator) write the machine_shape into it.
ACCELERATOR_LINE = re.compile(r"^ACCELERATOR = .*$", re.M)


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


def requested_accelerator(meta: dict) -> str:
    """What a kernel's metadata asks for: its machine_shape; without one, the client's own
    default (enable_gpu: the default GPU), else none (a CPU)."""
    shape = meta.get("machine_shape")
    if shape:
        return accelerators.canonical(shape)
    return accelerators.DEFAULT if meta.get("enable_gpu") else accelerators.NONE


def with_accelerator(meta: dict, code: str, name: str) -> tuple[dict, str]:
    """The metadata and script asking for accelerator `name` (a known name, canonical)."""
    meta = {**meta, **accelerators.metadata_fields(name)}
    code = ACCELERATOR_LINE.sub(lambda _: f"ACCELERATOR = {name!r}", code)
    return meta, code


def render(kernel_dir: Path, owner: str, out_dir: Path, accelerator: str | None = None) -> Path:
    """Write a push-ready copy of a kernel folder with `{owner}` replaced by a user name, asking
    for `accelerator` (default: what the template asks for)."""
    if not owner or "/" in owner or OWNER in owner:
        raise UserError(f"--owner {owner!r} is not a Kaggle user name")
    meta = read_metadata(kernel_dir)
    name = accelerators.canonical(accelerator) if accelerator else requested_accelerator(meta)
    code = (Path(kernel_dir) / meta["code_file"]).read_text(encoding="utf-8")
    meta, code = with_accelerator(meta, code, name)
    text = json.dumps(meta, indent=2).replace(OWNER, owner)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / meta["code_file"]).write_text(code, encoding="utf-8")
    (out_dir / "kernel-metadata.json").write_text(text + "\n", encoding="utf-8")
    return out_dir
