"""One `TrainConfig` per run: every `imet train` option, saved inside every checkpoint and artifact.

Each field declares its option once (`option`: flag, help, default, whether it decides the
result); the parser, `--help`, `fingerprint()` and `train_parser` (the kernel side) are built
from that. The fingerprint hashes only deciding fields, so a resumed session may point at other
folders, budget or worker count and still be "the same run". Also how durations read (9h, ETAs)."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable

from imet.errors import HANDED_OVER_EXIT_CODE, UserError
from imet.metrics.f2 import METRICS

# The default of every session length: a Kaggle GPU or CPU session.
DEFAULT_TIME_BUDGET = "12h"
# `--margin auto`: a tenth of the budget, at most 10 minutes (a short rehearsal keeps its time to
# train); at least what follows the last save (plots, run.json, registry, exit: 5-10 s on 2 busy
# cores whatever the session), but at most half the budget so that a very short one still trains.
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
OPTIMIZER_NAMES = ("adamw", "sgd")
FROZEN_BN = ("stage1", "all", "off")
RECIPES = ("imet", "writeup")
GROUP_ORDER = ("early", "late", "head")

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
    """`seconds` as its two largest units: "45s", "1m05s", "1h02m", "3d2h"; "?" for what is not a
    duration (None, NaN, infinite, negative...). `sep` goes between the two: "" in the packed
    console lines, " " in Telegram messages read on a phone ("1h 02m")."""
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


def check_amp_dtype(value: str, what: str = "--amp-dtype") -> None:
    if value not in AMP_DTYPES:
        raise UserError(f"{what}: unknown dtype {value!r}; choose {', '.join(AMP_DTYPES)}")


def parse_train_groups(text: str) -> tuple[str, ...]:
    """--train-groups "late,head" -> ("late", "head") in GROUP_ORDER; "" -> every group."""
    names = [name.strip() for name in text.split(",") if name.strip()] if text else []
    if unknown := [name for name in names if name not in GROUP_ORDER]:
        raise UserError(f"--train-groups: unknown group {unknown[0]!r}; the groups are "
                        f"{', '.join(GROUP_ORDER)} (comma-separated, e.g. late,head)")
    return tuple(name for name in GROUP_ORDER if name in names) if names else GROUP_ORDER


def option(default: Any, help: str, *, fingerprint: bool = True, kind: type | None = None,
           metavar: str | None = None, shown: str | None = None, random_init: Any = None,
           writeup: Any = None, internal: bool = False) -> Any:
    """A TrainConfig field with its `imet train` option `--<name>`: `help` (then its default in
    brackets, or `shown`), `fingerprint` (decides what the run computes), `kind` (where the default
    does not tell the type), `random_init` (the default with --no-pretrained, where it differs),
    `writeup` (the default with --recipe writeup, where it differs), `internal` (filled in by imet
    itself: accepted, but not listed in --help)."""
    if kind is None:
        kind = list if isinstance(default, list) else str if default is None else type(default)
    metadata = {"help": help, "fingerprint": fingerprint, "kind": kind, "metavar": metavar,
                "shown": shown, "random_init": random_init, "writeup": writeup,
                "internal": internal}
    if isinstance(default, list):
        return field(default_factory=list, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    # ---- the data: which images train and validate, how they are augmented
    data: str = option("", "competition folder, its files found by content as `imet "
                       "check-data` reports them (2019: labels.csv, train.csv, train/) (required)",
                       fingerprint=False)
    folds: str = option("", "folds.csv (id,fold) from `imet folds` (default: DATA/folds.csv)",
                        fingerprint=False)
    fold: int = option(0, "validation fold; the other folds train")
    # Where, not what: extra_fingerprint (by imet.train.data) makes another set another run.
    extra: str = option(
        "", "extra training images in the iMet layout (DIR/train.csv, DIR/train/), e.g. from "
        "`imet pseudo-label`: they train beside the fold's training images, never validate; an "
        "id also in --data's train.csv is refused", fingerprint=False)
    extra_fingerprint: str = option("", "the --extra set's fingerprint, filled in from it (given: "
                                    "the set must have this one)", internal=True)
    image_size: int = option(320, "square training/eval image side in pixels")
    preset: str = option(
        "resize", "training augmentation preset: seed (random square crop in the loader; flip, "
        "brightness/contrast, shift-scale-rotate and noise per batch on the device) | resize "
        "(resize to a square, flip) | pad (pad to a square, resize, flip)", writeup="seed")
    mixup_alpha: float = option(0.0, "mixup Beta(alpha, alpha); 0 turns mixup off")
    erasing: float = option(0.0, "random erasing probability: a rectangle of 2-33%% of the image "
                            "filled with a random gray, drawn per sample in the loader, applied "
                            "per batch on the device (any preset; 0: off)")
    hard_negatives: float = option(
        0.0, "hard-negative mining: each epoch also sees again this fraction of the samples, "
        "those of largest loss in the epoch before (epoch 0: drawn at random); epochs get "
        "longer by as much (0: off)")

    # ---- the model: its body, where its weights come from, its head
    arch: str = option("se_resnext50_32x4d", "backbone name, one of: %(archs)s; or any timm model "
                       "as timm:<name>[.<tag>] (e.g. timm:convnext_tiny.fb_in22k_ft_in1k); "
                       "tiny_cnn for CPU smoke runs")
    pretrained: bool = option(
        True, "start the body from ImageNet weights (--no-pretrained: random init; default: on "
        "for an arch that has weights, off for one without, as tiny_cnn)", shown="auto")
    weights: str | None = option(
        None, "ImageNet weights file of --arch (.safetensors, .pth or .bin; default: searched in "
        "the --input-root folders and $TORCH_HOME/hub/checkpoints, for timm archs also Hugging "
        "Face hub caches; downloaded only when online)", fingerprint=False)
    # Where, not what: init_fingerprint (by imet.train.state) makes another model another run.
    init: str = option(
        "", "start from this run's best model (RUN/model.pt, or a model.pt file) instead of "
        "ImageNet or random weights, e.g. to tune its head on other data with --train-groups "
        "head; the arch is the model's (another --arch, or a model of another label space than "
        "--data's labels.csv, is refused). Before the first step the untuned model is scored on "
        "the validation fold (run.json: init_f2)", fingerprint=False, metavar="RUN")
    init_fingerprint: str = option("", "the --init model's fingerprint (a hash of the file), "
                                   "filled in from it (given: the file must have this one)",
                                   internal=True)
    dropout: float = option(0.0, "dropout before the head's linear layer")
    prior_bias: bool = option(True, "start the head's bias at each class's log-odds in the "
                              "training labels (the focal-loss paper's prior init), instead of "
                              "predicting ~0.5 for every class", writeup=False)

    # ---- the loss, and distillation from a teacher's probabilities
    loss: str = option("bce", "loss (bce | focal | soft_f2)")
    focal_alpha: float = option(0.25, "focal loss alpha")
    focal_gamma: float = option(2.0, "focal loss gamma")
    # The teacher files are where; their fingerprint (filled in from them like extra's) is what.
    teacher: list[str] = option(
        [], "distillation: a teacher's probabilities (.npz: `imet validate`'s OOF file, `imet "
        "pseudo-label --soft`'s soft_targets.npz; repeatable) for every training image, "
        "--extra's included; the loss mixes in BCE to them", fingerprint=False, metavar="FILE")
    teacher_fingerprint: str = option("", "the --teacher probabilities' fingerprint, filled in "
                                      "from them (given: they must have this one)", internal=True)
    distill_weight: float = option(
        0.5, "with --teacher: the teacher's share of the loss, (1 - W) * loss on the true "
        "labels + W * T^2 * BCE to the tempered teacher probabilities")
    distill_temperature: float = option(
        1.0, "with --teacher: T, both sides' logits divided by it (> 1 softens)")

    # ---- optimisation: stages, learning rates, optimizer, schedule
    recipe: str = option(
        "imet", "where the defaults of the settings marked 'writeup' come from: imet (measured "
        "on a transfer task: docs/training.md, \"Fine-tuning defaults\") | writeup (the iMet "
        "2019 write-ups' recipe for an ImageNet body); a flag given wins, and --no-pretrained's "
        "defaults apply under imet")
    epochs: int = option(20, "epochs in all, stage 1 included")
    head_epochs: int = option(1, "stage 1: epochs training the head only, body frozen (0: none)",
                              random_init=0)
    batch_size: int = option(64, "training batch size")
    lr: float = option(5e-3, "stage 2 peak LR of the head; the body groups get it times the "
                       "multipliers", random_init=3e-3, writeup=4e-4)
    head_lr: float = option(1e-3, "stage 1 peak LR of the head")
    lr_late_mult: float = option(1.0, "stage 2 LR multiplier of the late body group",
                                 writeup=0.3)
    lr_early_mult: float = option(1.0, "stage 2 LR multiplier of the early body group",
                                  writeup=0.1)
    train_groups: str = option(
        "", "stage 2 trains only these groups of early, late, head (comma-separated, e.g. "
        "late,head: the early group stays frozen in both stages, no gradient computed, its "
        "BatchNorm statistics kept; default: all)")
    frozen_bn: str = option(
        "stage1", "the body's BatchNorm statistics kept as loaded (eval mode): stage1 (while the "
        "body is frozen, so stage 1 leaves the whole body as it came) | all (stage 2 too: the "
        "pretrained statistics, for small batches) | off (they follow the training batches); "
        "the groups --train-groups leaves out keep theirs in any case")
    optimizer: str = option("adamw", "adamw | sgd (SGD with momentum), over the same parameter "
                            "groups and LR schedules")
    momentum: float = option(0.9, "SGD momentum (onecycle cycles it between 0.85 and 0.95 instead)")
    nesterov: bool = option(False, "SGD: Nesterov momentum")
    weight_decay: float = option(1e-4, "weight decay of the optimizer (AdamW: decoupled; SGD: L2)")
    schedule: str = option("onecycle", "per-batch LR schedule of each stage (onecycle | cosine "
                           "| cyclic | constant)")
    warmup: float = option(0.05, "warm-up fraction of each stage's steps (onecycle: the rising "
                           "part)")
    grad_clip: float = option(1.0, "clip the gradient norm to this (0: off)")
    ema: float = option(0.0, "weight EMA decay, e.g. 0.999, warmed up as min(DECAY, (1+n)/(10+n)) "
                        "after n steps; evaluation and model.pt use the EMA weights (0: off)")
    seed: int = option(42, "seed of the sample order, augmentation, initialization and mixup")

    # ---- evaluation and early stopping
    eval_batch_size: int = option(0, "evaluation batch size (0: twice --batch-size)",
                                  fingerprint=False)
    eval_every: int = option(0, "also evaluate every N steps (0: at each epoch end only)")
    patience: int = option(4, "stop after N stage-2 evaluations without a better --metric "
                           "(0: never)")
    # "auto" is resolved from the data before the fingerprint is taken (imet.train.data), so the
    # checkpoint holds the metric itself and a resumed session tunes for the same one.
    metric: str = option(
        "auto", "what each evaluation tunes its threshold for and scores, so which model is best "
        "(model.pt) and when --patience stops: f2 | micro-f1 | auto (the competition's, told by "
        "--data's labels: iMet 2019 and 2021 F2, 2020 micro-F1, the metric its Evaluation "
        "section names); F2 and micro-F1 are both recorded")

    # ---- device and precision. amp_dtype "auto" resolves per device, so it stays out of the
    # fingerprint; imet.train.checkpoint.check_precision checks the precision on resume instead.
    device: str = option("auto", "auto | cpu | cuda | cuda:N (under torchrun: one GPU per "
                         "process, by LOCAL_RANK)", fingerprint=False)
    amp: bool = option(True, "mixed precision, dtype per --amp-dtype (--no-amp: fp32 on every "
                       "device)")
    amp_dtype: str = option("auto", "autocast dtype: auto (fp16 + GradScaler on a GPU without fast "
                            "bf16 such as the T4, bf16 from Ampere on, off on CPU) | fp16 (with "
                            "GradScaler) | bf16; an explicit dtype runs CPU autocast too. A "
                            "resumed run keeps the precision it started in", fingerprint=False)
    channels_last: bool = option(True, "channels_last memory format on CUDA (ignored on CPU)")
    deterministic: bool | None = option(
        None, "deterministic algorithms (default: on for CPU, off for CUDA)", kind=bool)
    # How many processes share a batch is a session choice, like --device.
    sync_bn: bool = option(
        False, "under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm; on "
        "CPU a gloo equivalent) instead of each process's share", fingerprint=False)

    # ---- data loading: the batches are the same whatever these say
    num_workers: int | str = option(
        "auto", "data loader workers of each training process (results do not depend on it); "
        "auto: the machine's CPUs split between torchrun's processes on it, at most "
        f"{AUTO_WORKERS_CEILING} each", fingerprint=False)
    image_memory_mb: int = option(
        1024, "decode once: MB of decoded training pixels, and as many again of resized "
        "validation pixels, each training process keeps in memory after their first read, split "
        "between its loader workers (results do not depend on it; 0: decode every epoch)",
        fingerprint=False)

    # ---- the session: where the run lives, how long this session may take, what it resumes
    out: str = option("", "run folder: checkpoints/, model.pt, metrics.csv, run.json, plots/, "
                      "%(handover)s (required)", fingerprint=False)
    input_root: list[str] = option(
        [], "folder searched recursively for checkpoints to resume and pretrained weights "
        "(repeatable; on Kaggle: /kaggle/input)", fingerprint=False)
    resume: str = option("auto", "auto: newest valid checkpoint of this run in --out and the "
                         "--input-root folders; off: start over; or a state-<step>.pt path",
                         fingerprint=False)
    time_budget: str = option(
        DEFAULT_TIME_BUDGET, "session length: seconds or a duration such as 9h, 30m, 90s, "
        f"1h30m; the run saves and exits {HANDED_OVER_EXIT_CODE} before it would be exceeded",
        fingerprint=False)
    margin: str = option(
        "auto", "time kept free at the end of the budget for what follows the last save (same "
        f"format); auto: {AUTO_MARGIN_TEXT}. A margin that leaves no time for a step is "
        "refused, and a session that ends without one fails (exit 2) instead of handing over",
        fingerprint=False)
    session_steps: int = option(
        0, "hand over after N training steps in this session, as the budget would (rehearse a "
        "multi-session run; 0: off)", fingerprint=False)

    # ---- checkpoints: how often, and how many generations stay on disk
    save_every: int = option(0, "also checkpoint every N steps (0: off)", fingerprint=False)
    save_every_min: float = option(30.0, "also checkpoint when this many minutes passed since "
                                   "the last save", fingerprint=False)
    keep: int = option(
        2, "checkpoint generations kept in OUT/checkpoints (1 halves the disk they take; 2 keeps "
        "the previous one to fall back to if the newest is damaged)", fingerprint=False)

    # ---- reporting
    notify: str = option("auto", "Telegram notifications: auto/on (when IMET_TELEGRAM_TOKEN and "
                         "IMET_TELEGRAM_CHAT_ID are found: environment, Kaggle Secrets, then "
                         "imet-telegram.json under --input-root; the chat's /status, /plot, "
                         "/stop are answered; behind the flood limit only the newest progress and "
                         "evaluation are sent) or off (no messages, no polling); the "
                         "session's first line says which, and why when off",
                         fingerprint=False)
    run_name: str = option("", "name in reports and notifications (default: ARCH-foldN)",
                           fingerprint=False)
    progress_every_s: float = option(60.0, "seconds between progress lines when the output is "
                                     "not a terminal", fingerprint=False)

    # The settings whose change leaves what the run computes as it is (from the declarations).
    NOT_IN_FINGERPRINT: ClassVar[frozenset[str]]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                near = close_match(name, [n for n, f in known.items()
                                          if not f.metadata["internal"]])
                near = near and (near.replace("_", "-") if "-" in key else near)
                hint = f"did you mean {near}? " if near else ""
                raise UserError(f"{source}: unknown setting {key!r}; {hint}the settings are the "
                                "`imet train` flag names (see `python -m imet train --help`)")
            kwargs[name] = _coerce(known[name], value, source)
        if kwargs.get("recipe") == "writeup":
            kwargs = {**WRITEUP_DEFAULTS, **kwargs}
        elif not kwargs.get("pretrained", True):
            kwargs = {**RANDOM_INIT_DEFAULTS, **kwargs}
        return cls(**kwargs).validated(source)

    def fingerprint(self) -> str:
        decisive = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                    if f.metadata["fingerprint"]}
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
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) <= 0:
                raise UserError(f"{source}: {flag_of(name)} must be > 0, got {getattr(self, name)}")
        self.num_workers = _workers_setting(self.num_workers, source)
        for name in ("head_epochs", "eval_every", "patience", "num_workers", "save_every",
                     "session_steps", "image_memory_mb", "grad_clip", "mixup_alpha", "dropout",
                     "weight_decay", "fold", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, str) and value < 0:  # a str here: --num-workers auto
                raise UserError(f"{source}: {flag_of(name)} must be >= 0, got {value}")
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
        if self.metric not in ("auto", *METRICS):
            raise UserError(f"{source}: --metric must be auto, {' or '.join(METRICS)}, got "
                            f"{self.metric!r}")
        if self.budget_seconds() <= self.margin_seconds():
            raise UserError(f"{source}: --margin {self.margin} leaves no time for a training "
                            f"step in --time-budget {self.time_budget}; give a longer budget "
                            f"or a smaller margin (default: auto, {AUTO_MARGIN_TEXT})")
        if self.recipe not in RECIPES:
            raise UserError(f"{source}: --recipe must be one of {', '.join(RECIPES)}, got "
                            f"{self.recipe!r}")
        if self.frozen_bn not in FROZEN_BN:
            raise UserError(f"{source}: --frozen-bn must be one of {', '.join(FROZEN_BN)}, got "
                            f"{self.frozen_bn!r}")
        if self.optimizer not in OPTIMIZER_NAMES:
            raise UserError(f"--optimizer {self.optimizer!r} is unknown; choose one of "
                            f"{', '.join(OPTIMIZER_NAMES)}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise UserError("--nesterov needs --optimizer sgd and a --momentum above 0")
        parse_train_groups(self.train_groups)
        for name, ok, rule in (
                ("ema", 0 <= self.ema < 1, "is a decay in [0, 1) (0: off)"),
                ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
                ("erasing", 0 <= self.erasing <= 1, "is a probability in [0, 1]"),
                ("distill_weight", 0 <= self.distill_weight <= 1,
                 "is the teacher's share of the loss in [0, 1]"),
                ("distill_temperature", self.distill_temperature > 0, "must be > 0"),
                ("hard_negatives", 0 <= self.hard_negatives < 1,
                 "is a fraction of the training samples in [0, 1)")):
            if not ok:
                raise UserError(f"{source}: {flag_of(name)} {rule}, got {getattr(self, name)}")
        return self

    def name(self) -> str:
        return self.run_name or f"{self.arch}-fold{self.fold}"


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
    """Values from a config file (TOML or JSON): accept what it can hold for the field's type,
    refuse the rest."""
    kind, name = spec.metadata["kind"], flag_of(spec.name)
    if isinstance(value, (dict, list)) and kind is not list:
        raise UserError(f"{source}: {name} takes one value, got {value!r}")
    if kind is list:
        return [str(v) for v in (value if isinstance(value, list) else [value])]
    if value is None:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{source}: {name} must be true or false, got {value!r}")
    try:
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{source}: {name} must be a {kind.__name__}, got {value!r}") from None
    return str(value)


TrainConfig.NOT_IN_FINGERPRINT = frozenset(
    f.name for f in dataclasses.fields(TrainConfig) if not f.metadata["fingerprint"])
# A body from random init (--no-pretrained) trains by default with no head-only epoch (a head on
# random features learns nothing worth keeping) and at the LR measured from random init (3e-3;
# 5e-3 was measured for pretrained bodies). Why: docs/training.md, "Training from random init".
RANDOM_INIT_DEFAULTS = {f.name: f.metadata["random_init"] for f in dataclasses.fields(TrainConfig)
                        if f.metadata["random_init"] is not None}
# --recipe writeup: the iMet 2019 write-ups' recipe for an ImageNet body, where imet's measured
# defaults differ from it (why: docs/training.md, "Fine-tuning defaults").
WRITEUP_DEFAULTS = {f.name: f.metadata["writeup"] for f in dataclasses.fields(TrainConfig)
                    if f.metadata["writeup"] is not None}


# ---- the parser of `imet train`'s options, built from the declarations above

def flag_of(name: str) -> str:
    """A TrainConfig field's flag: `image_size` -> `--image-size`."""
    return "--" + name.replace("_", "-")


def close_match(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate nearest a mistyped `word`, or None when none is near (difflib's ratio)."""
    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


class Parser(argparse.ArgumentParser):
    """The parser of every imet command: a mistyped flag, command or choice is answered with
    the nearest name ("did you mean"), which argparse does only from Python 3.14 on."""

    def suggestion(self, word: str) -> str:
        """" (did you mean --X?)" for an unknown `word` (a flag, or --flag=value), or ""."""
        flags = [flag for action in self._actions if action.help != argparse.SUPPRESS
                 for flag in action.option_strings]
        near = close_match(word.partition("=")[0], flags) if word.startswith("-") else None
        return f" (did you mean {near}?)" if near else ""

    def parse_args(self, args=None, namespace=None):
        # The unknown words are the chosen (sub)command's, and its options hold the near names.
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            parser = self
            while chosen := next((action.choices[getattr(parsed, action.dest)]
                                  for action in parser._actions
                                  if isinstance(action, argparse._SubParsersAction)
                                  and getattr(parsed, action.dest, None) in action.choices), None):
                parser = chosen
            flag = next((word for word in unknown if word.startswith("-")), "")
            parser.error(f"unrecognized arguments: {' '.join(unknown)}{parser.suggestion(flag)}")
        return parsed

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            near = close_match(str(value), map(str, action.choices))
            raise argparse.ArgumentError(
                action, f"invalid choice: {value!r} (choose from "
                f"{', '.join(map(repr, action.choices))})"
                + (f"; did you mean {near!r}?" if near else ""))


class RefusingParser(Parser):
    """A parser whose refusal is a UserError (one line) instead of a usage message and an exit:
    for arguments read outside their own command (a kernel's, a plan's, a render's)."""

    def error(self, message: str):
        raise UserError(message)

    def no_flag(self, where: str, word: str) -> UserError:
        """The one line refusing `word`, a flag this parser lacks, with the closest it has."""
        return UserError(f"{where}: {self.prog} has no flag {word!r}{self.suggestion(word)}; "
                         f"see `python -m {self.prog} --help`")


def add_train_options(parser: argparse.ArgumentParser, names: Iterable[str] | None = None,
                      **help_values: object) -> None:
    """`imet train`'s options on `parser`: --config, then each field's flag (`names`: only those
    fields', no --config), each defaulting to None so a namespace tells what was given.
    `help_values` fill the %(name)s a higher layer owns (the arch registry, the handover file)."""
    if names is None:
        parser.add_argument("--config", metavar="FILE", help="TOML file of flag names (dashes or "
                            "underscores) = values, e.g. epochs = 20, arch = \"resnet50\" (a "
                            "JSON object is read too); command-line flags override it")
    defaults = TrainConfig()
    for spec in dataclasses.fields(TrainConfig):
        if names is not None and spec.name not in names:
            continue
        declared, kind = spec.metadata, spec.metadata["kind"]
        shown = declared["shown"] or getattr(defaults, spec.name)
        text = f"{declared['help']} [{shown if shown not in ('', None, []) else '-'}]"
        if declared["random_init"] is not None:
            text = f"{text[:-1]}; {declared['random_init']} with --no-pretrained]"
        if declared["writeup"] is not None:
            text = f"{text[:-1]}; {declared['writeup']} with --recipe writeup]"
        if kind is bool:
            how = {"action": argparse.BooleanOptionalAction}
        elif kind is list:
            how = {"action": "append", "metavar": declared["metavar"] or "DIR"}
        else:
            how = {"type": kind if kind in (int, float) else str,
                   "metavar": declared["metavar"] or spec.name.upper()}
        action = parser.add_argument(flag_of(spec.name), default=None, **how,
                                     help=argparse.SUPPRESS if declared["internal"] else text)
        vars(action).update(help_values)


def train_parser(names: Iterable[str] | None = None) -> RefusingParser:
    """`imet train`'s parser for its arguments read elsewhere (a kernel, render, a campaign's
    plan); with `names`, one that knows only those fields' flags."""
    parser = RefusingParser(prog="imet train", add_help=False)
    add_train_options(parser, None if names is None else set(names))
    return parser


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a parsed `imet train` command line sets: its --config file's settings (keyed as the
    file writes them), each replaced by its flag where one was given (keyed by field name)."""
    values = read_config(Path(args.config)) if getattr(args, "config", None) else {}
    for spec in dataclasses.fields(TrainConfig):
        given = getattr(args, spec.name, None)
        if given is not None:
            values.pop(spec.name.replace("_", "-"), None)
            values[spec.name] = given
    return values


def read_config(path: Path) -> dict[str, Any]:
    """A --config file: TOML (`epochs = 20`), the format of every imet settings file, or a JSON
    object (`{"epochs": 20}`, the older format, still read); a TOML document never starts with
    "{", so the first character tells them apart."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found; check --config") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read the config ({err})") from None
    if text.lstrip().startswith("{"):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err}); write the settings as TOML "
                            "lines such as epochs = 20") from None
        if not isinstance(values, dict):
            raise UserError(f"{path}: the config must be a JSON object of flag names to values")
    else:
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise UserError(f"{path}: not valid TOML ({err}); write one flag name = value per "
                            "line, e.g. epochs = 20 or arch = \"resnet50\"") from None
    if table := next((key for key, value in values.items() if isinstance(value, dict)), None):
        raise UserError(f"{path}: {table!r} is a table; write the settings at the top, one flag "
                        "name = value per line, e.g. epochs = 20")
    return values


def without_settings(args: list[str], names: Iterable[str]) -> list[str]:
    """`imet train` arguments less each flag, with its value, that sets one of the fields
    `names`: what a parser of only those flags leaves over, in their order."""
    return train_parser(names).parse_known_args(list(args))[1]
