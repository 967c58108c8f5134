"""The run's settings that `imet kaggle render --config FILE` writes into the kernels: a TOML
file the user keeps, so that rendering again never puts the defaults back.

    owner = "you"                          # optional: render's --owner
    accelerator = "NvidiaTeslaT4"          # or a table: {trainer = "NvidiaL4", inference = "none"}
    competition = "imet-2019-fgvc6"
    src_dataset = "you/imet-src"           # a bare slug is taken as the owner's
    weights_dataset = "you/imet-weights"
    n_folds = 5                            # the folds each trainer kernel makes
    train_args = ["--batch-size", "32"]    # every member's `imet train` flags
    validate_args = ["--tta", "none,hflip"]
    predict_args = ["--tta", "none,hflip", "--ensemble", "mean"]
    pseudo_label_args = ["--min-prob", "0.9"]   # optional: the inference kernel pseudo-labels too

    [[member]]                             # one trainer kernel each: imet-trainer-<name>
    name = "f0"                            # default f<fold>
    fold = 0
    arch = "se_resnext50_32x4d"            # optional: --arch, --image-size, --epochs
    image_size = 320
    epochs = 20
    args = ["--lr", "3e-4"]                # more `imet train` flags of this member
                                           # ("--extra", "auto": the inference kernel's
                                           # pseudo-labels, its output attached)

Whatever the file leaves out is the template's: its DEFAULT_*_ARGS lines, one member per fold.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from imet.errors import UserError

KEYS = ("owner", "accelerator", "competition", "src_dataset", "weights_dataset", "n_folds",
        "train_args", "validate_args", "predict_args", "pseudo_label_args", "member")
MEMBER_KEYS = ("name", "fold", "arch", "image_size", "epochs", "args")
# Member fields that are `imet train` flags, in the order they are written.
MEMBER_FLAGS = (("fold", "--fold"), ("arch", "--arch"), ("image_size", "--image-size"),
                ("epochs", "--epochs"))
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,29}")


@dataclass
class Member:
    name: str
    fold: int
    flags: list[str]  # this member's fold, arch, image size and epochs as flags
    args: list[str] = field(default_factory=list)  # its other `imet train` flags


@dataclass
class Settings:
    source: str = "defaults"
    owner: str | None = None
    accelerator: dict[str, str] = field(default_factory=dict)  # kernel ("" = all) -> name
    competition: str | None = None
    src_dataset: str | None = None
    weights_dataset: str | None = None
    n_folds: int | None = None
    train_args: list[str] | None = None
    validate_args: list[str] | None = None
    predict_args: list[str] | None = None
    pseudo_label_args: list[str] | None = None  # None: the inference kernel writes none
    members: list[Member] | None = None  # None: one per fold of the template
    extra: dict = field(default_factory=dict)  # the keys a caller allowed beyond these


def read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror})") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: not valid TOML ({err})") from None


def _strings(value, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise UserError(f"{where}: expected a list of strings such as [\"--lr\", \"3e-4\"]")
    return [str(v) for v in value]


def _unknown(table: dict, allowed, where: str) -> None:
    for key in table:
        if key not in allowed:
            raise UserError(f"{where}: unknown key {key!r}; the keys are {', '.join(allowed)}")


def _member(table, index: int, where: str) -> Member:
    where = f"{where}: member {index + 1}"
    if not isinstance(table, dict):
        raise UserError(f"{where}: expected a [[member]] table")
    _unknown(table, MEMBER_KEYS, where)
    fold = table.get("fold")
    if not isinstance(fold, int) or isinstance(fold, bool) or fold < 0:
        raise UserError(f"{where}: fold must be a whole number from 0 (got {fold!r})")
    name = str(table.get("name", f"f{fold}"))
    if not NAME.fullmatch(name):
        raise UserError(f"{where}: name {name!r} must be 1-30 lowercase letters, digits or "
                        "dashes (it becomes the kernel slug imet-trainer-<name>)")
    flags = []
    for key, flag in MEMBER_FLAGS:
        if key in table:
            flags += [flag, str(table[key])]
    return Member(name, fold, flags, _strings(table.get("args", []), f"{where}: args"))


def parse(data: dict, source: str, allowed_extra: tuple[str, ...] = ()) -> Settings:
    _unknown(data, KEYS + allowed_extra, source)
    for key in ("owner", "competition", "src_dataset", "weights_dataset"):
        if key in data and not (isinstance(data[key], str) and data[key]):
            raise UserError(f"{source}: {key} must be a name in quotes (got {data[key]!r})")
    accelerator = data.get("accelerator", {})
    if isinstance(accelerator, str):
        accelerator = {"": accelerator}
    if not isinstance(accelerator, dict):
        raise UserError(f"{source}: accelerator must be a name or a table kernel = name")
    settings = Settings(source=source, owner=data.get("owner"), accelerator=accelerator,
                        competition=data.get("competition"),
                        src_dataset=data.get("src_dataset"),
                        weights_dataset=data.get("weights_dataset"), n_folds=data.get("n_folds"),
                        extra={k: data[k] for k in allowed_extra if k in data})
    for key in ("train_args", "validate_args", "predict_args", "pseudo_label_args"):
        if key in data:
            setattr(settings, key, _strings(data[key], f"{source}: {key}"))
    if settings.n_folds is not None and (not isinstance(settings.n_folds, int)
                                         or settings.n_folds < 2):
        raise UserError(f"{source}: n_folds must be a whole number of at least 2")
    if "member" in data:
        if not isinstance(data["member"], list) or not data["member"]:
            raise UserError(f"{source}: member must be one or more [[member]] tables")
        settings.members = [_member(t, i, source) for i, t in enumerate(data["member"])]
        names = [m.name for m in settings.members]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UserError(f"{source}: two members are named {twice[0]!r}; give each its "
                            "own name")
    return settings


def load(path: Path | None, allowed_extra: tuple[str, ...] = ()) -> Settings:
    if path is None:
        return Settings()
    return parse(read_toml(path), str(path), allowed_extra)


def without_flags(args: list[str], flags) -> list[str]:
    """`args` less every `--flag VALUE` (and `--flag=VALUE`) of `flags`."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        elif not any(arg.startswith(flag + "=") for flag in flags):
            kept.append(arg)
    return kept
