"""One `TrainConfig` per run: every `train` flag, saved inside every checkpoint and artifact.

`fingerprint()` hashes only the fields that decide the result, so a resumed session may point
at other folders, another time budget or another worker count and still be "the same run"."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imet.errors import UserError

# The default of every session length: a Kaggle GPU or CPU session today (the retired P100
# sessions had 9 h).
DEFAULT_TIME_BUDGET = "12h"
# `--margin auto`: the margin follows the session, a tenth of the budget with 10 minutes as the
# ceiling, so a short rehearsal session keeps most of its time for training. What follows the
# last save (the handover's plots, run.json and registry, the process's exit) takes seconds
# whatever the session's length (5-10 s measured on 2 busy cores), hence the floor; half the
# budget caps the floor so that a very short session still trains.
AUTO_MARGIN_FRACTION = 0.1
AUTO_MARGIN_FLOOR_S = 20.0
AUTO_MARGIN_CEILING_S = 600.0
AUTO_MARGIN_TEXT = (f"1/{1 / AUTO_MARGIN_FRACTION:.0f} of the budget, at least "
                    f"{AUTO_MARGIN_FLOOR_S:.0f}s (or half a shorter budget), at most "
                    f"{AUTO_MARGIN_CEILING_S / 60:.0f}m")
# `--num-workers auto`: the CPUs split between the processes of one machine, at most this many
# each (more workers than that only queue on the same cores).
AUTO_WORKERS_CEILING = 8

# `--amp-dtype` values (what each gives on which device: imet/device.py).
AMP_DTYPES = ("auto", "fp16", "bf16")

# What a body from random init (--no-pretrained) trains with unless told otherwise: no head-only
# epoch (a head on random features learns nothing worth keeping), one LR for every group at a
# random-init rate, the whole image resized (the seed preset's square crop drops labelled
# content), and the head's bias at the classes' log-odds (the first steps go to features, not to
# pulling every logit down to its class's frequency). The ImageNet recipe's defaults stay in
# TrainConfig. Why: README, "Training from random init".
RANDOM_INIT_DEFAULTS = {"head_epochs": 0, "lr": 3e-3, "lr_late_mult": 1.0, "lr_early_mult": 1.0,
                        "preset": "resize", "prior_bias": True}

def check_amp_dtype(value: str, what: str = "--amp-dtype") -> str:
    if value not in AMP_DTYPES:
        raise UserError(f"{what}: unknown dtype {value!r}; choose {', '.join(AMP_DTYPES)}")
    return value



OPTIMIZER_NAMES = ("adamw", "sgd")

GROUP_ORDER = ("early", "late", "head")


def parse_train_groups(text: str) -> tuple[str, ...]:
    """--train-groups "late,head" -> ("late", "head") in GROUP_ORDER; "" -> every group."""
    names = [name.strip() for name in text.split(",") if name.strip()] if text else []
    unknown = [name for name in names if name not in GROUP_ORDER]
    if unknown:
        raise UserError(f"--train-groups: unknown group {unknown[0]!r}; the groups are "
                        f"{', '.join(GROUP_ORDER)} (comma-separated, e.g. late,head)")
    return tuple(name for name in GROUP_ORDER if name in names) if names else GROUP_ORDER


@dataclass
class TrainConfig:
    # --- where things are (not part of the fingerprint) ---
    data: str = ""
    folds: str = ""
    out: str = ""
    weights: str | None = None
    input_root: list[str] = field(default_factory=list)
    # --- what is trained ---
    fold: int = 0
    arch: str = "se_resnext50_32x4d"
    pretrained: bool = True
    dropout: float = 0.0
    image_size: int = 320
    preset: str = "seed"
    loss: str = "bce"
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    mixup_alpha: float = 0.0
    # --- how long and how fast ---
    epochs: int = 20
    head_epochs: int = 1
    batch_size: int = 64
    eval_batch_size: int = 0
    lr: float = 4e-4
    head_lr: float = 1e-3
    lr_late_mult: float = 0.3
    lr_early_mult: float = 0.1
    weight_decay: float = 1e-4
    schedule: str = "onecycle"
    warmup: float = 0.05
    grad_clip: float = 1.0
    eval_every: int = 0
    patience: int = 4
    seed: int = 42
    amp: bool = True
    channels_last: bool = True
    deterministic: bool | None = None
    sync_bn: bool = False
    # --- mixed precision (issue 15): auto resolves per device, so it is not in the
    # fingerprint; the precision it resolved to is checked on resume instead
    # (engine/state.check_precision), with a message naming both ---
    amp_dtype: str = "auto"
    # --- the write-ups' recipes (issue 18): all decide the result, all in the fingerprint ---
    ema: float = 0.0              # weight EMA decay (0: off)
    optimizer: str = "adamw"      # adamw | sgd (imet.train.state.OPTIMIZERS)
    momentum: float = 0.9         # sgd only
    nesterov: bool = False        # sgd only
    train_groups: str = ""        # stage 2's trained groups, e.g. "late,head" ("": all)
    erasing: float = 0.0          # random erasing probability, per batch on the device
    hard_negatives: float = 0.0   # fraction of the epoch's samples seen again (top losses)
    # --- learning quality from random init (issue 22): decides the result, in the fingerprint ---
    prior_bias: bool = False      # head bias starts at the classes' training log-odds
    # --- extra training images (issue 19): the folder is where, not what (not in the
    # fingerprint); what it holds is told by its fingerprint, filled in from it at the run's
    # start (imet.train.data), so a resume with another extra set is another config ---
    extra: str = ""
    extra_fingerprint: str = ""
    # --- distillation (issue 19): the teacher files are where, their fingerprint (filled in
    # from them like extra's) and the mixing are what ---
    teacher: list[str] = field(default_factory=list)
    teacher_fingerprint: str = ""
    distill_weight: float = 0.5
    distill_temperature: float = 1.0
    # --- last-layer tuning (issue 19): --init names the model a run starts from (where, not
    # in the fingerprint); its content hash is what (filled in from it at the run's start by
    # imet.train.state, so a resume from another model is another config) ---
    init: str = ""
    init_fingerprint: str = ""
    # --- session (not part of the fingerprint) ---
    device: str = "auto"
    # "auto" defaults follow the session they run in (see worker_count, margin_seconds)
    num_workers: int | str = "auto"
    time_budget: str = DEFAULT_TIME_BUDGET
    margin: str = "auto"
    save_every: int = 0
    save_every_min: float = 30.0
    session_steps: int = 0
    resume: str = "auto"
    notify: str = "auto"
    run_name: str = ""
    progress_every_s: float = 60.0
    # --- decode once (issue 22): how many MB of decoded pixels a training process keeps in
    # memory (imet.data.images), split between its loader workers; the batches are the same with
    # any value, so not in the fingerprint ---
    image_memory_mb: int = 1024
    # --- disk (not part of the fingerprint: how many generations stay on disk changes no bit
    # of the result) ---
    keep: int = 2

    # Changing any of these does not change what the run computes.
    NOT_IN_FINGERPRINT = ("data", "folds", "out", "weights", "input_root", "extra", "teacher", "init", "device", "num_workers",
                          "time_budget", "margin", "save_every", "save_every_min", "session_steps", "resume",
                          "notify", "run_name", "progress_every_s", "eval_batch_size",
                          # how many processes share a batch is a session choice, like --device
                          "sync_bn", "amp_dtype",
                          "keep", "image_memory_mb")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise UserError(f"{source}: unknown setting {key!r}; the settings are the "
                                "`imet train` flag names (see `python -m imet train --help`)")
            kwargs[name] = _coerce(known[name], value, source)
        if not kwargs.get("pretrained", True):
            kwargs = {**RANDOM_INIT_DEFAULTS, **kwargs}
        return cls(**kwargs).validated(source)

    def fingerprint(self) -> str:
        decisive = {k: v for k, v in self.to_dict().items() if k not in self.NOT_IN_FINGERPRINT}
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]

    def budget_seconds(self) -> float:
        return parse_duration(self.time_budget, "--time-budget")

    def margin_seconds(self) -> float:
        if str(self.margin).strip().lower() == "auto":
            budget = self.budget_seconds()
            floor = min(AUTO_MARGIN_FLOOR_S, budget / 2)
            return min(max(budget * AUTO_MARGIN_FRACTION, floor), AUTO_MARGIN_CEILING_S)
        return parse_duration(self.margin, "--margin")

    def worker_count(self, cpus: int, processes: int) -> int:
        """Loader workers of one process: the number given, or for "auto" the `cpus` of the
        machine split between its `processes` (torchrun's local world), capped."""
        if self.num_workers == "auto":
            return max(1, min(AUTO_WORKERS_CEILING, cpus // max(1, processes)))
        return int(self.num_workers)

    def validated(self, source: str = "config") -> "TrainConfig":
        positive = ("epochs", "batch_size", "image_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"{source}: --{name.replace('_', '-')} must be > 0, "
                                f"got {getattr(self, name)}")
        self.num_workers = _workers_setting(self.num_workers, source)
        non_negative = ("head_epochs", "eval_every", "patience", "num_workers", "save_every",
                        "session_steps", "image_memory_mb",
                        "grad_clip", "mixup_alpha", "dropout", "weight_decay", "fold",
                        "eval_batch_size")
        for name in non_negative:
            value = getattr(self, name)
            if not isinstance(value, str) and value < 0:  # a str here: --num-workers auto
                raise UserError(f"{source}: --{name.replace('_', '-')} must be >= 0, "
                                f"got {getattr(self, name)}")
        if self.keep < 1:
            raise UserError(f"{source}: --keep must be >= 1 (the generation just written is "
                            f"always kept), got {self.keep}")
        if self.head_epochs > self.epochs:
            raise UserError(f"{source}: --head-epochs ({self.head_epochs}) is more than --epochs "
                            f"({self.epochs}); the head-only stage is part of the epochs")
        if not 0 <= self.warmup < 1:
            raise UserError(f"{source}: --warmup is a fraction of the stage's steps in [0, 1), "
                            f"got {self.warmup}")
        if self.resume not in ("auto", "off") and not self.resume.endswith(".pt"):
            raise UserError(f"{source}: --resume must be 'auto', 'off' or a path to a state-*.pt "
                            f"checkpoint, got {self.resume!r}")
        if self.notify not in ("auto", "on", "off"):
            raise UserError(f"{source}: --notify must be auto, on or off, got {self.notify!r}")
        check_amp_dtype(self.amp_dtype, f"{source}: --amp-dtype")
        budget, margin = self.budget_seconds(), self.margin_seconds()
        if margin >= budget:
            raise UserError(f"{source}: --margin {self.margin} leaves no time for a training "
                            f"step in --time-budget {self.time_budget}; give a longer budget "
                            f"or a smaller margin (default: auto, {AUTO_MARGIN_TEXT})")
        self.check_recipes(source)
        return self

    def check_recipes(self, source: str) -> None:
        if self.optimizer not in OPTIMIZER_NAMES:
            raise UserError(f"--optimizer {self.optimizer!r} is unknown; choose one of "
                            f"{', '.join(OPTIMIZER_NAMES)}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise UserError("--nesterov needs --optimizer sgd and a --momentum above 0")
        parse_train_groups(self.train_groups)
        if not 0 <= self.ema < 1:
            raise UserError(f"{source}: --ema is a decay in [0, 1) (0: off), got {self.ema}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"{source}: --momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.erasing <= 1:
            raise UserError(f"{source}: --erasing is a probability in [0, 1], got {self.erasing}")
        if not 0 <= self.distill_weight <= 1:
            raise UserError(f"{source}: --distill-weight is the teacher's share of the loss in "
                            f"[0, 1], got {self.distill_weight}")
        if self.distill_temperature <= 0:
            raise UserError(f"{source}: --distill-temperature must be > 0, got "
                            f"{self.distill_temperature}")
        if not 0 <= self.hard_negatives < 1:
            raise UserError(f"{source}: --hard-negatives is a fraction of the training samples "
                            f"in [0, 1), got {self.hard_negatives}")

    def name(self) -> str:
        return self.run_name or f"{self.arch}-fold{self.fold}"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON object whose keys are `train` flag names (dashes or underscores)."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found; check --config") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a readable JSON config ({err}); "
                        "write a JSON object of flag names to values") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: the config must be a JSON object of flag names to values")
    return values


def _workers_setting(value: Any, source: str) -> int | str:
    """"auto" or a whole number (a flag and a JSON file give it as text or as a number)."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        return int(str(value).strip())
    except ValueError:
        raise UserError(f"{source}: --num-workers must be auto or a number >= 0, "
                        f"got {value!r}") from None


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _coerce(spec: dataclasses.Field, value: Any, source: str) -> Any:
    """Values from JSON: accept what JSON can hold for the field's type, refuse the rest."""
    default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
    name = f"--{spec.name.replace('_', '-')}"
    if isinstance(default, list):
        items = value if isinstance(value, list) else [value]
        return [str(v) for v in items]
    if value is None:
        return None
    if isinstance(default, bool) or spec.name == "deterministic":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{source}: {name} must be true or false, got {value!r}")
    try:
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{source}: {name} must be a {type(default).__name__}, "
                        f"got {value!r}") from None
    return str(value)


# ---- duration
# Durations as people write them (--time-budget 9h, --time-limit 30m) and read them: ETAs,
# session time left, a run's wall time. Below every layer that takes or shows one (commands,
# kernels, console, Telegram, the runs table).

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d*)?)\s*h)?\s*(?:(\d+(?:\.\d*)?)\s*m)?\s*"
                       r"(?:(\d+(?:\.\d*)?)\s*s?)?\s*$", re.IGNORECASE)


def parse_duration(text: str | float | int, what: str = "--time-budget") -> float:
    """'9h', '30m', '90s', '1h30m', '5400' or 5400 -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if not str(text).strip() or match is None or not any(match.groups()):
            raise UserError(f"{what}: cannot read {text!r} as a duration; "
                            "write seconds (5400) or a duration such as 9h, 30m, 90s, 1h30m")
        hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds < 0:
        raise UserError(f"{what}: {text!r} is negative; give a duration >= 0")
    return seconds


def format_duration(seconds: object, sep: str = "") -> str:
    """`seconds` as its two largest units: "45s", "1m05s", "1h02m", "3d2h"; "?" for what is not
    a duration (None, not a number, NaN, infinite, negative). `sep` goes between the two: the
    console packs a dozen figures into each log line and leaves it out, a Telegram message is
    read on a phone and puts a space there ("1h 02m")."""
    try:
        value = float(seconds)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "?"
    if not math.isfinite(value) or value < 0:
        return "?"
    days, rest = divmod(int(round(value)), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{sep}{hours}h"
    if hours:
        return f"{hours}h{sep}{minutes:02d}m"
    if minutes:
        return f"{minutes}m{sep}{secs:02d}s"
    return f"{secs}s"
