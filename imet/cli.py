"""`python -m imet <command>`: the table of commands, grouped by concern into six modules of
imet/commands as configure_<name> / run_<name> pairs. A module is imported only when one of its
commands runs, so `--help` stays fast and a command pays for torch only when it needs it."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from imet import __version__
from imet.config import Parser
from imet.errors import HANDED_OVER_EXIT_CODE, UserError

# name -> (module under imet.commands defining configure_<name> and run_<name>, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("misc", "the whole Kaggle flow on mini-iMet in the local emulator (make demo)"),
    "mini-imet": ("data", "write the embedded mini-iMet data set (competition layout)"),
    "doctor": ("kaggle", "can this session run as configured? GPUs, torch build, disk, inputs, "
                         "Telegram"),
    "check-data": ("data", "list every problem in a competition folder (CSVs, images, folds)"),
    "folds": ("data", "multilabel-stratified cross-validation folds -> folds.csv"),
    "score": ("predict", "F2 of a submission-format CSV against the true labels"),
    "validate": ("predict", "out-of-fold predictions with TTA, thresholds and an honest F2"),
    "predict": ("predict", "offline inference of one or more runs -> submission.csv"),
    "pseudo-label": ("predict", "the test images an ensemble is confident about -> an "
                                "extra training set for `imet train --extra`"),
    "kaggle": ("kaggle", "local Kaggle emulator (run), push-ready kernels (render), sessions on "
                         "Kaggle: one kernel (chain), a plan's members then validation and "
                         "inference (campaign)"),
    "notify-test": ("misc", "send one Telegram message to check the bot token and chat id"),
    "notify-setup": ("misc", "check the Telegram settings, then keep them in the private Kaggle "
                             "dataset OWNER/imet-telegram for the kernels"),
    "train": ("train", f"train or resume one fold; exit {HANDED_OVER_EXIT_CODE} = saved and handed "
                       "over to the next session"),
    "lr-find": ("train", "exponential LR sweep with the train flags -> loss-vs-LR plot and a "
                         "suggested --lr (writes no run folder)"),
    "runs": ("runs", "run registry across kernels and sessions: table, CV-vs-LB plot, set-lb"),
    "cache": ("data", "decode every image once into a pre-resized JPEG/uint8 cache for fast "
                      "loading"),
    "weights": ("misc", "fetch pretrained weights into a folder ready for `kaggle datasets "
                        "create`"),
}

# (command, first word) -> the name whose configure_/run_ functions take over
SUBCOMMANDS: dict[tuple[str, str], str] = {("runs", "set-lb"): "runs-set-lb"}


def _command_function(name: str, verb: str, command: str | None = None):
    module = importlib.import_module(f"imet.commands.{COMMANDS[command or name][0]}")
    return getattr(module, f"{verb}_{name.replace('-', '_')}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = Parser(
        prog="imet", description="iMet Collection 2019 pipeline: data, training, validation, "
        "inference, Kaggle packaging and orchestration.")
    parser.add_argument("--version", action="version", version=f"imet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    words = [a for a in argv if not a.startswith("-")]
    chosen = words[0] if words else None
    for name, (_, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen command's module is imported: its options are needed, the others' not.
        if name == chosen:
            target = SUBCOMMANDS.get(tuple(words[:2]), name)
            _command_function(target, "configure", name)(cmd)
            cmd.set_defaults(_target=target)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Session budgets count from here: importing torch and reading the data take its time too.
    started = time.monotonic()
    # albumentations asks PyPI for its latest version at import: a stall or a warning in
    # offline kernels, a request per process in online ones.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    args.started_monotonic = started
    run = _command_function(args._target, "run", args.command)
    try:
        return int(run(args) or 0)
    except UserError as err:
        print(f"imet {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"imet {args.command}: interrupted", file=sys.stderr)
        return 130
