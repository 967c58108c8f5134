"""`imet train`: train (or resume) one fold; exit 75 when the session hands over to the next,
74 when the disk has no room for a save."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
import time

from imet.config import (
    AUTO_MARGIN_TEXT,
    AUTO_WORKERS_CEILING,
    RANDOM_INIT_DEFAULTS,
    TrainConfig,
    read_config_file,
)
from imet.errors import (
    DISK_FULL_EXIT_CODE as DISK_FULL,
    HANDED_OVER_EXIT_CODE as HANDED_OVER,
    HANDOVER_FILE as HANDOVER,
)
from imet.train.events import StopRequest

DEFAULTS = TrainConfig()

# flag name -> help. Every TrainConfig field is a flag; the help says what it decides.
HELP = {
    "data": "competition folder: labels.csv, train.csv, train/ (required)",
    "folds": "folds.csv (id,fold) from `imet folds` (default: DATA/folds.csv)",
    "out": f"run folder: checkpoints/, model.pt, metrics.csv, run.json, plots/, {HANDOVER} "
           "(required)",
    "weights": "ImageNet weights file of --arch (.safetensors, .pth or .bin; default: "
               "searched in the --input-root folders and $TORCH_HOME/hub/checkpoints, for timm "
               "archs also Hugging Face hub caches; downloaded only when online)",
    "input_root": "folder searched recursively for checkpoints to resume and pretrained weights "
                  "(repeatable; on Kaggle: /kaggle/input)",
    "fold": "validation fold; the other folds train",
    "arch": "backbone name, one of: %(archs)s; or any timm model as timm:<name>[.<tag>] (e.g. "
            "timm:convnext_tiny.fb_in22k_ft_in1k); tiny_cnn for CPU smoke runs",
    "pretrained": "start the body from ImageNet weights (--no-pretrained: random init; "
                  "default: on for an arch that has weights, off for one without, as tiny_cnn)",
    "dropout": "dropout before the head's linear layer",
    "image_size": "square training/eval image side in pixels",
    "preset": "training augmentation preset: seed (random square crop in the loader; flip, "
              "brightness/contrast, shift-scale-rotate and noise per batch on the device) | "
              "resize (resize to a square, flip) | pad (pad to a square, resize, flip)",
    "loss": "loss (bce | focal | soft_f2)",
    "focal_alpha": "focal loss alpha",
    "focal_gamma": "focal loss gamma",
    "mixup_alpha": "mixup Beta(alpha, alpha); 0 turns mixup off",
    "epochs": "epochs in all, stage 1 included",
    "head_epochs": "stage 1: epochs training the head only, body frozen (0: none)",
    "batch_size": "training batch size",
    "eval_batch_size": "evaluation batch size (0: twice --batch-size)",
    "lr": "stage 2 peak LR of the head; the body groups get it times the multipliers",
    "head_lr": "stage 1 peak LR of the head",
    "lr_late_mult": "stage 2 LR multiplier of the late body group",
    "lr_early_mult": "stage 2 LR multiplier of the early body group",
    "weight_decay": "weight decay of the optimizer (AdamW: decoupled; SGD: L2)",
    "schedule": "per-batch LR schedule of each stage (onecycle | cosine | cyclic | constant)",
    "warmup": "warm-up fraction of each stage's steps (onecycle: the rising part)",
    "grad_clip": "clip the gradient norm to this (0: off)",
    "eval_every": "also evaluate every N steps (0: at each epoch end only)",
    "patience": "stop after N stage-2 evaluations without a better F2 (0: never)",
    "seed": "seed of the sample order, augmentation, initialization and mixup",
    "amp": "mixed precision, dtype per --amp-dtype (--no-amp: fp32 on every device)",
    "channels_last": "channels_last memory format on CUDA (ignored on CPU)",
    "deterministic": "deterministic algorithms (default: on for CPU, off for CUDA)",
    "sync_bn": "under torchrun: BatchNorm statistics over the global batch "
               "(SyncBatchNorm; on CPU a gloo equivalent) instead of each process's share",
    "amp_dtype": "autocast dtype: auto (fp16 + GradScaler on a GPU without fast bf16 such as "
                 "the T4, bf16 from Ampere on, off on CPU) | fp16 (with GradScaler) | bf16; an "
                 "explicit dtype runs CPU autocast too. A resumed run keeps the precision it "
                 "started in",
    "ema": "weight EMA decay, e.g. 0.999, warmed up as min(DECAY, (1+n)/(10+n)) after n steps; "
           "evaluation and model.pt use the EMA weights (0: off)",
    "optimizer": "adamw | sgd (SGD with momentum), over the same parameter groups and LR "
                 "schedules",
    "momentum": "SGD momentum (onecycle cycles it between 0.85 and 0.95 instead)",
    "nesterov": "SGD: Nesterov momentum",
    "train_groups": "stage 2 trains only these groups of early, late, head (comma-separated, "
                    "e.g. late,head: the early group stays frozen in both stages, no gradient "
                    "computed, its BatchNorm statistics kept; default: all)",
    "erasing": "random erasing probability: a rectangle of 2-33%% of the image filled with a "
               "random gray, drawn per sample in the loader, applied per batch on the device "
               "(any preset; 0: off)",
    "hard_negatives": "hard-negative mining: each epoch also sees again this fraction of the "
                      "samples, those of largest loss in the epoch before (epoch 0: drawn at "
                      "random); epochs get longer by as much (0: off)",
    "prior_bias": "start the head's bias at each class's log-odds in the training labels "
                  "(the focal-loss paper's prior init), instead of predicting ~0.5 for every "
                  "class",
    "extra": "extra training images in the iMet layout (DIR/train.csv, DIR/train/), e.g. from "
             "`imet pseudo-label`: they train beside the fold's training images, never "
             "validate; an id also in --data's train.csv is refused",
    "extra_fingerprint": "the --extra set's fingerprint, filled in from it (given: the set "
                         "must have this one)",
    "teacher": "distillation: a teacher's probabilities (.npz: `imet validate`'s OOF file, "
               "`imet pseudo-label --soft`'s soft_targets.npz; repeatable) for every training "
               "image, --extra's included; the loss mixes in BCE to them",
    "teacher_fingerprint": "the --teacher probabilities' fingerprint, filled in from them "
                           "(given: they must have this one)",
    "distill_weight": "with --teacher: the teacher's share of the loss, (1 - W) * loss on the "
                      "true labels + W * T^2 * BCE to the tempered teacher probabilities",
    "distill_temperature": "with --teacher: T, both sides' logits divided by it (> 1 softens)",
    "init": "start from this run's best model (RUN/model.pt, or a model.pt file) instead of "
            "ImageNet or random weights, e.g. to tune its head on other data with "
            "--train-groups head; the arch is the model's (another --arch, or a model of "
            "another label space than --data's labels.csv, is refused). Before the first step "
            "the untuned model is scored on the validation fold (run.json: init_f2)",
    "init_fingerprint": "the --init model's fingerprint (a hash of the file), filled in from "
                        "it (given: the file must have this one)",
    "device": "auto | cpu | cuda | cuda:N (under torchrun: one GPU per process, by LOCAL_RANK)",
    "num_workers": "data loader workers of each training process (results do not depend on "
                   "it); auto: the machine's CPUs split between torchrun's processes on it, at "
                   f"most {AUTO_WORKERS_CEILING} each",
    "time_budget": "session length: seconds or a duration such as 9h, 30m, 90s, 1h30m; the "
                   f"run saves and exits {HANDED_OVER} before it would be exceeded",
    "margin": "time kept free at the end of the budget for what follows the last save (same "
              f"format); auto: {AUTO_MARGIN_TEXT}. A margin that leaves no time for a step is "
              "refused, and a session that ends without one fails (exit 2) instead of handing "
              "over",
    "save_every": "also checkpoint every N steps (0: off)",
    "save_every_min": "also checkpoint when this many minutes passed since the last save",
    "session_steps": "hand over after N training steps in this session, as the budget would "
                     "(rehearse a multi-session run; 0: off)",
    "resume": "auto: newest valid checkpoint of this run in --out and the --input-root "
              "folders; off: start over; or a state-<step>.pt path",
    "notify": "Telegram notifications: auto/on (when IMET_TELEGRAM_TOKEN and "
              "IMET_TELEGRAM_CHAT_ID are set; the chat's /status, /plot, /stop are answered) "
              "or off (no messages, no polling)",
    "run_name": "name in reports and notifications (default: ARCH-foldN)",
    "progress_every_s": "seconds between progress lines when the output is not a terminal",
    "image_memory_mb": "decode once: MB of decoded training pixels, and as many again of "
                       "resized validation pixels, each training process keeps in memory after "
                       "their first read, split between its loader workers (results do not "
                       "depend on it; 0: decode every epoch)",
    "keep": "checkpoint generations kept in OUT/checkpoints (1 halves the disk they take; 2 "
            "keeps the previous one to fall back to if the newest is damaged)",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train one fold: stage 1 (--head-epochs; none with --no-pretrained) trains the head with "
        "the body frozen, stage 2 every group with discriminative LRs. The full training state "
        "is checkpointed; when the time budget, a SIGTERM/SIGINT or Telegram's /stop ends the "
        f"session it saves, writes OUT/{HANDOVER} and exits with code {HANDED_OVER} (run again with --resume auto to continue exactly "
        "where it stopped); a second signal changes nothing (the save finishes; kill -9 aborts "
        f"without it). Exit {DISK_FULL}: no room on the disk for a checkpoint or model.pt "
        "(nothing written; free space or lower --keep, then resume). "
        "Flags override --config; defaults are shown in brackets.")
    parser.add_argument("--config", metavar="FILE",
                        help="JSON object of flag names (dashes or underscores) to values; "
                             "command-line flags override it")
    for spec in dataclasses.fields(TrainConfig):
        default = getattr(DEFAULTS, spec.name)
        shown = "auto" if spec.name == "pretrained" else default
        text = f"{HELP[spec.name]} [{shown if shown not in ('', None, []) else '-'}]"
        if spec.name in RANDOM_INIT_DEFAULTS:
            text = f"{text[:-1]}; {RANDOM_INIT_DEFAULTS[spec.name]} with --no-pretrained]"
        if isinstance(default, bool) or spec.name == "deterministic":
            parser.add_argument(_flag(spec.name), action=argparse.BooleanOptionalAction,
                                default=None, help=text)
        elif isinstance(default, list):
            parser.add_argument(_flag(spec.name), action="append", default=None,
                                metavar="FILE" if spec.name == "teacher" else "DIR", help=text)
        else:
            kind = type(default) if isinstance(default, (int, float)) else str
            action = parser.add_argument(_flag(spec.name), type=kind, default=None,
                                         metavar="RUN" if spec.name == "init" else
                                         spec.name.upper(), help=text)
            if spec.name == "arch":
                action.archs = _ArchNames()


class _ArchNames:
    """The registry's names for `--arch`'s help (so it never falls behind), looked up only when
    the help is printed: the registry imports torch, which must not delay the signal handlers
    `run` installs first thing."""

    def __str__(self) -> str:
        from imet.models import ARCHS
        return ", ".join(sorted(ARCHS))


def config_from_args(args: argparse.Namespace,
                     required: tuple[str, ...] = ("data", "out")) -> TrainConfig:
    values = dict(read_config_file(args.config)) if args.config else {}
    source = args.config or "command line"
    for spec in dataclasses.fields(TrainConfig):
        given = getattr(args, spec.name, None)
        if given is not None:
            values.pop(spec.name.replace("_", "-"), None)
            values[spec.name] = given
    from imet.errors import UserError
    from imet.models.weights import has_pretrained_weights
    if values.get("init") and "arch" not in values:  # --init tunes the model's own arch
        from imet.train.state import init_arch
        values["arch"] = init_arch(str(values["init"]))
    # Pretraining defaults to what the arch has (an unknown arch: one line listing the names).
    weighted = has_pretrained_weights(str(values.get("arch", DEFAULTS.arch)))
    explicit = values.get("pretrained") is not None
    if not explicit and not weighted:
        values["pretrained"] = False
    config = TrainConfig.from_dict(values, source)
    if explicit and config.pretrained and not weighted and config.weights is None:
        raise UserError(f"--pretrained: {config.arch} has no ImageNet weights; train it with "
                        "--no-pretrained (its default)")
    for name in required:
        if not getattr(config, name):
            raise UserError(f"{_flag(name)} is required (on the command line or in --config)")
    return config


def build_bus(config: TrainConfig, request_stop=None):
    from imet.observe.files import InputFiles, report_subscribers
    from imet.observe.registry import record_train_subscriber
    from imet.observe.telegram import build_notifier
    from imet.train.distributed import env_rank
    from imet.train.events import EventBus

    inputs = InputFiles(config.input_root)  # one search of the inputs for every subscriber
    subscribers = [*report_subscribers(config.out, inputs, every_s=config.progress_every_s),
                   record_train_subscriber(config.out, inputs)]
    notifier = build_notifier(config.notify, rank=env_rank(), request_stop=request_stop)
    if notifier is not None:
        subscribers.append(notifier)
    return EventBus(subscribers)


def run_train(args: argparse.Namespace) -> int:
    # The budget counts from the CLI's start: importing torch and reading the data take session
    # time too.
    session_start = getattr(args, "started_monotonic", None) or time.monotonic()
    # Before anything slow (torch's import alone takes seconds): a SIGTERM/SIGINT during
    # start-up ends the session at the loop's first boundary, with a handover, instead of
    # killing it halfway.
    with StopRequest() as stop:
        return _train(args, session_start, stop)


def _train(args: argparse.Namespace, session_start: float, stop: StopRequest) -> int:
    from imet.train.loop import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)
    # A GPU this torch cannot run (no kernels for it, a driver too old for the build) would
    # fail at the first CUDA operation: refused before anything is built.
    from imet.errors import UserError
    from imet.kaggle.session import KERNEL_ENV, device_problem
    problem = device_problem(config.device)
    if problem:
        raise UserError(problem)
    bus = build_bus(config, stop.request)  # Telegram's /stop asks through it, as a signal does
    try:
        result = train(config, bus, session_start=session_start, stop=stop,
                       next_command=shlex.join([sys.executable, "-m", "imet", *sys.argv[1:]]),
                       kernel=os.environ.get(KERNEL_ENV) or None)
    finally:
        bus.close()
    from imet.train.distributed import env_rank
    if result.status == "handover" and env_rank() == 0:  # one line, not one per process
        print(f"imet train: handed over at step {result.step} ({result.reason}); checkpoint "
              f"{result.checkpoint}; see {config.out}/{HANDOVER}; exit {HANDED_OVER}",
              file=sys.stderr)
    return result.exit_code


# ---- lr_find
# `imet lr-find`: the LR finder with the flags of `imet train`; prints the suggested --lr and
# writes the loss-against-LR plot to --plot. No run folder is read or written (--out is ignored).

def configure_lr_find(parser: argparse.ArgumentParser) -> None:
    configure_train(parser)
    parser.description = (
        "Exponential LR sweep before training (the Open Images YOLO notes: find the LR, then "
        "cycle it): the model, data and stage-2 optimizer `imet train` would use with the same "
        "flags, the LR raised from --start-lr to --end-lr over --steps steps on the training "
        "fold; stops early when the loss diverges. Prints the suggested --lr (steepest descent "
        "of the smoothed loss) and writes the plot to --plot. Writes nothing into any run "
        "folder.")
    group = parser.add_argument_group("lr-find")
    group.add_argument("--steps", type=int, default=100, metavar="N",
                       help="training steps of the sweep [100]")
    group.add_argument("--start-lr", type=float, default=1e-7, help="first LR [1e-07]")
    group.add_argument("--end-lr", type=float, default=1.0, help="last LR [1.0]")
    group.add_argument("--plot", default="lr-find.png", metavar="FILE",
                       help="where the loss-vs-LR plot goes [lr-find.png in the current folder]")


def run_lr_find(args: argparse.Namespace) -> int:
    from imet.train.lr_find import lr_find, write_lr_plot

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = config_from_args(args, required=("data",))
    sweep = lr_find(config, args.steps, args.start_lr, args.end_lr)
    suggestion = sweep.suggestion()
    plot = write_lr_plot(args.plot, sweep.lrs, sweep.losses, sweep.smoothed, suggestion,
                         title=f"LR finder: {config.arch}, fold {config.fold}")
    ended = "stopped early: the loss diverged" if sweep.diverged else "no divergence"
    print(f"imet lr-find: swept {sweep.lrs[0]:.2e} .. {sweep.lrs[-1]:.2e} over "
          f"{len(sweep.lrs)} steps ({ended}); plot {plot}")
    print(f"suggested --lr {suggestion:.2e}")
    return 0
