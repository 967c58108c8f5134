"""kernel-metadata.json: reading, checking and rendering with an owner's name."""
from __future__ import annotations

import ast
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
ACCELERATOR = "ACCELERATOR"


def _setting_line(name: str) -> re.Pattern:
    """A settings line of a kernel script: `NAME = <a Python literal>` on one line."""
    return re.compile(rf"^{re.escape(name)} = .*$", re.M)


def read_setting(code: str, name: str, where: object):
    """The literal value of the script's `NAME = …` line."""
    found = _setting_line(name).findall(code)
    if len(found) != 1:
        raise UserError(f"{where}: expected one line `{name} = …` in the kernel script, found "
                        f"{len(found)}")
    return ast.literal_eval(found[0].split(" = ", 1)[1])


def with_setting(code: str, name: str, value, where: object, required: bool = True) -> str:
    """The script with its `NAME = …` line holding `value` (render's settings lines)."""
    pattern = _setting_line(name)
    if required:
        read_setting(code, name, where)
    return pattern.sub(lambda _: f"{name} = {value!r}", code)


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
    return meta, with_setting(code, ACCELERATOR, name, meta.get("id"), required=False)


def check_owner(owner: str) -> str:
    if not owner or "/" in owner or OWNER in owner:
        raise UserError(f"--owner {owner!r} is not a Kaggle user name")
    return owner


def prepare(kernel_dir: Path, owner: str, accelerator: str | None = None,
            settings: dict | None = None, fields: dict | None = None) -> dict[str, str]:
    """The files of a push-ready copy of a kernel folder (name -> text): `{owner}` replaced by
    a user name, asking for `accelerator` (default: what the template asks for), the script's
    settings lines holding `settings` (NAME -> value) and the metadata updated with `fields`."""
    check_owner(owner)
    meta = read_metadata(kernel_dir)
    name = accelerators.canonical(accelerator) if accelerator else requested_accelerator(meta)
    script = Path(kernel_dir) / meta["code_file"]
    code = script.read_text(encoding="utf-8")
    meta, code = with_accelerator({**meta, **(fields or {})}, code, name)
    for setting, value in (settings or {}).items():
        code = with_setting(code, setting, value, script)
    text = json.dumps(meta, indent=2).replace(OWNER, owner)
    return {meta["code_file"]: code, "kernel-metadata.json": text + "\n"}


def render(kernel_dir: Path, owner: str, out_dir: Path, accelerator: str | None = None,
           force: bool = False) -> Path:
    """Write a push-ready copy of a kernel folder (see `prepare`); a copy edited by hand since
    render wrote it is refused unless `force`."""
    from imet.kaggle.rendered import check_untouched, write_rendered
    files = prepare(kernel_dir, owner, accelerator)
    check_untouched(out_dir, files, force)
    return write_rendered(out_dir, files)
