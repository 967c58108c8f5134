"""A campaign's plan: the render settings (render.py: members, flags, datasets,
accelerator) and the campaign's own keys, checked whole before anything is pushed.

    owner = "you"
    parallel = 2          # GPU sessions at once (Kaggle allows a few)
    max_sessions = 5      # sessions per member
    retries = 1           # a failed session is pushed again this many times, then dropped
    gpu_hours = 30        # for the whole campaign, counted from the sessions' own timings
    session_hours = 12    # what one session may use: no push once it would pass gpu_hours
    folds = "data/folds.csv"   # optional: the members' folds must be in it
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from imet.errors import UserError
from imet.kaggle import render
from imet.kaggle.render import (Member, Settings, member_train_args, members_of, read_metadata,
                                read_setting, templates_in)

KEYS = ("parallel", "max_sessions", "retries", "gpu_hours", "session_hours", "folds")
# The settings each kernel gives its command itself (the parser's names for them): a plan that
# sets them would fight the kernel.
KERNEL_SETTINGS = {"train": ("data", "folds", "out", "time_budget", "resume", "input_root"),
                   "validate": ("data", "folds", "runs", "out", "time_limit"),
                   "predict": ("data", "runs", "out", "probs_dir", "time_budget", "thresholds"),
                   "pseudo-label": ("data", "runs", "out")}
# The settings key holding each kernel command's flags.
ARGS_KEYS = {"validate": "validate_args", "predict": "predict_args",
             "pseudo-label": "pseudo_label_args"}


def _check(command: str, args: list[str], where: str,
           check_args: Callable[..., set[str]], whole: bool = True) -> None:
    kernel = {"train": "trainer", "validate": "validation kernel",
              "predict": "inference kernel", "pseudo-label": "inference kernel"}[command]
    given = check_args(command, args, where, whole)
    for name in KERNEL_SETTINGS[command]:
        if name in given:
            raise UserError(f"{where}: --{name.replace('_', '-')} is set by the {kernel} itself; "
                            "leave it out")


@dataclass
class Plan:
    path: Path
    settings: Settings
    members: list[Member]
    train_args: dict[str, list[str]]  # member name -> its full `imet train` flags
    owner: str
    parallel: int = 2
    max_sessions: int = 5
    retries: int = 1
    gpu_hours: float = 30.0
    session_hours: float = 12.0


def _number(extra: dict, key: str, default, kind, least, where: str):
    value = extra.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            kind is int and not isinstance(value, int)) or value < least:
        raise UserError(f"{where}: {key} must be {'a whole number' if kind is int else 'a number'}"
                        f" of at least {least} (got {value!r})")
    return kind(value)


def _folds_in(path: Path, where: str) -> set[int]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as err:
        raise UserError(f"{where}: folds {str(path)!r}: cannot read it ({err.strerror})") from None
    try:
        return {int(row["fold"]) for row in rows}
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where}: folds {str(path)!r} has no whole-number fold column; make "
                        "it with `python -m imet folds`") from None


def check(settings: Settings, kernels: Path, check_args: Callable[..., set[str]],
          folds_file: Path | None = None) -> tuple[list[Member], dict[str, list[str]]]:
    """The settings' members and each one's full `imet train` flags, once every flag list they
    hold passed `check_args(command, args, where, whole)`: what `imet <command>` would refuse
    (its own parser and config, from the command layer) is refused here in one line naming the
    settings file and the key, before anything is written or pushed. A member's fold must be
    one the trainer makes (or, with `folds_file`, one that file holds)."""
    where = settings.source
    trainer = templates_in(kernels)["trainer"]
    members = members_of(settings, trainer)
    if folds_file is not None:
        folds, source = _folds_in(folds_file, where), str(folds_file)
    else:
        script = trainer / read_metadata(trainer)["code_file"]
        n_folds = settings.n_folds or read_setting(script.read_text(encoding="utf-8"),
                                                   "N_FOLDS", script)
        folds, source = set(range(n_folds)), f"the {n_folds} folds the trainer kernel makes"
    if settings.train_args is not None:
        _check("train", settings.train_args, f"{where}: train_args", check_args, whole=False)
    train_args = {}
    for member in members:
        if member.fold not in folds:
            raise UserError(f"{where}: member {member.name!r}: fold {member.fold} is not in "
                            f"{source} (folds {', '.join(map(str, sorted(folds)))})")
        if member.args:
            _check("train", member.args, f"{where}: member {member.name!r}: args", check_args,
                   whole=False)
        args = member_train_args(settings, member, trainer)
        _check("train", args, f"{where}: member {member.name!r}", check_args)
        train_args[member.name] = args
    for command, key in ARGS_KEYS.items():
        if getattr(settings, key) is not None:
            _check(command, getattr(settings, key), f"{where}: {key}", check_args)
    return members, train_args


def load(path: Path, kernels: Path, check_args: Callable[..., set[str]]) -> Plan:
    """The plan at `path`, or one line naming what is wrong (`check`)."""
    where = str(path)
    settings = render.load(Path(path), KEYS)
    if not settings.owner:
        raise UserError(f"{where}: no owner; add owner = \"YOUR_KAGGLE_NAME\"")
    extra = settings.extra
    folds_file = Path(path).parent / str(extra["folds"]) if "folds" in extra else None
    members, train_args = check(settings, kernels, check_args, folds_file)
    return Plan(Path(path), settings, members, train_args, settings.owner,
                parallel=_number(extra, "parallel", 2, int, 1, where),
                max_sessions=_number(extra, "max_sessions", 5, int, 1, where),
                retries=_number(extra, "retries", 1, int, 0, where),
                gpu_hours=_number(extra, "gpu_hours", 30.0, float, 0.001, where),
                session_hours=_number(extra, "session_hours", 12.0, float, 0.001, where))
