"""`imet train`: train (or resume) one fold; exit 75 when the session hands over to the next,
74 when the disk has no room for a save. `imet lr-find`: the LR finder with the same flags,
which reads and writes no run folder (--out is ignored)."""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time

from imet.config import TrainConfig, add_train_options, flag_of, given_settings
from imet.errors import (DISK_FULL_EXIT_CODE as DISK_FULL, HANDED_OVER_EXIT_CODE as HANDED_OVER,
                         HANDOVER_FILE as HANDOVER, UserError)
from imet.train.events import StopRequest


def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train one fold: stage 1 (--head-epochs; none with --no-pretrained) trains the head with "
        "the body frozen, stage 2 every group at --lr times its multiplier. The full training "
        "state is checkpointed; when the time budget, a SIGTERM/SIGINT or Telegram's /stop ends "
        f"the session it saves, writes OUT/{HANDOVER} and exits with code {HANDED_OVER} (run again "
        "with --resume auto to continue exactly where it stopped); a second signal changes "
        f"nothing (the save finishes; kill -9 aborts without it). Exit {DISK_FULL}: no room on the "
        "disk for a checkpoint or model.pt (nothing written; free space or lower --keep, then "
        "resume). Flags override --config; defaults are shown in brackets.")
    # Every option is listed below; a usage line repeating all of them would be 40 lines long.
    parser.usage = "%(prog)s --data DIR --out DIR [--config FILE] [OPTION ...]"
    add_train_options(parser, archs=_ArchNames(), handover=HANDOVER)


class _ArchNames:
    """The registry's names for `--arch`'s help, looked up only when it is printed: the registry
    imports torch, which must not delay the signal handlers `run_train` installs first thing."""

    def __str__(self) -> str:
        from imet.models import ARCHS
        return ", ".join(sorted(ARCHS))


def config_from_args(args: argparse.Namespace,
                     required: tuple[str, ...] = ("data", "out")) -> TrainConfig:
    values = given_settings(args)
    from imet.models.weights import has_pretrained_weights
    if values.get("init") and "arch" not in values:  # --init tunes the model's own arch
        from imet.train.state import init_arch
        values["arch"] = init_arch(str(values["init"]))
    # Pretraining defaults to what the arch has (an unknown arch: one line listing the names).
    weighted = has_pretrained_weights(str(values.get("arch", TrainConfig.arch)))
    explicit = values.get("pretrained") is not None
    if not explicit and not weighted:
        values["pretrained"] = False
    config = TrainConfig.from_dict(values, args.config or "command line")
    if explicit and config.pretrained and not weighted and config.weights is None:
        raise UserError(f"--pretrained: {config.arch} has no ImageNet weights; train it with "
                        "--no-pretrained (its default)")
    for name in required:
        if not getattr(config, name):
            raise UserError(f"{flag_of(name)} is required (on the command line or in --config)")
    return config


def build_bus(config: TrainConfig, request_stop=None, kernel: str | None = None):
    """`kernel`: the Kaggle kernel's id; a campaign member's answers the chat as that member."""
    from imet.kaggle.render import member_of
    from imet.observe.files import InputFiles, report_subscribers
    from imet.observe.registry import record_train_subscriber
    from imet.observe.telegram import build_notifier, telegram_status
    from imet.train.distributed import env_rank
    from imet.train.events import EventBus
    # The session's first line when it starts, whatever the mode: a run that reports nowhere
    # says so and why, and run.json keeps the same (the token's source, never the token).
    telegram = telegram_status(config.notify, rank=env_rank(),
                               input_roots=config.input_root)
    inputs = InputFiles(config.input_root)  # one search of the inputs for every subscriber
    subscribers = [*report_subscribers(config.out, inputs, every_s=config.progress_every_s,
                                       telegram=telegram.record(),
                                       preface=f"imet: Telegram {telegram.line()}"),
                   record_train_subscriber(config.out, inputs)]
    notifier = build_notifier(config.notify, rank=env_rank(), request_stop=request_stop,
                              status=telegram, member=member_of(kernel))
    if notifier is not None:
        subscribers.append(notifier)
    return EventBus(subscribers)


def run_train(args: argparse.Namespace) -> int:
    # The budget counts from the CLI's start: importing torch and reading the data take its time.
    session_start = getattr(args, "started_monotonic", None) or time.monotonic()
    # Before anything slow (torch's import alone takes seconds): a SIGTERM/SIGINT during start-up
    # ends the session at the loop's first boundary, with a handover, not halfway.
    with StopRequest(process_exits=True) as stop:
        from imet.train.distributed import env_rank
        from imet.train.loop import train
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        config = config_from_args(args)
        # A GPU this torch cannot run (no kernels for it, a driver too old for the build) would
        # fail at the first CUDA operation: refused before anything is built.
        from imet.kaggle.session import KERNEL_ENV, device_problem
        if problem := device_problem(config.device):
            raise UserError(problem)
        kernel = os.environ.get(KERNEL_ENV) or None
        bus = build_bus(config, stop.request, kernel)  # Telegram's /stop asks through it too
        try:
            result = train(config, bus, session_start=session_start, stop=stop,
                           next_command=shlex.join([sys.executable, "-m", "imet", *sys.argv[1:]]),
                           kernel=kernel)
        finally:
            bus.close()
        if result.status == "handover" and env_rank() == 0:  # one line, not one per process
            print(f"imet train: handed over at step {result.step} ({result.reason}); checkpoint "
                  f"{result.checkpoint}; see {config.out}/{HANDOVER}; exit {HANDED_OVER}",
                  file=sys.stderr)
        return result.exit_code


def configure_lr_find(parser: argparse.ArgumentParser) -> None:
    configure_train(parser)
    parser.description = (
        "Exponential LR sweep before training (the Open Images YOLO notes: find the LR, then cycle "
        "it): the model, data and stage-2 optimizer `imet train` would use with the same flags, "
        "the LR raised from --start-lr to --end-lr over --steps steps on the training fold; stops "
        "early when the loss diverges. Prints the suggested --lr (steepest descent of the smoothed "
        "loss) and writes the plot to --plot. Writes nothing into any run folder.")
    parser.usage = ("%(prog)s --data DIR [--steps N] [--start-lr LR] [--end-lr LR] [--plot FILE] "
                    "[--config FILE] [OPTION ...]")
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
