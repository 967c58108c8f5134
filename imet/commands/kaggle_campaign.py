"""`python -m imet kaggle campaign PLAN --out DIR`: every member of a plan trained on Kaggle as
parallel kernels across sessions, then one validation and one inference over all of them."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def configure(sub) -> None:
    from imet.commands.kaggle import duration, input_source
    campaign = sub.add_parser(
        "campaign", help="train a plan's members on Kaggle in parallel, then validate and "
        "predict over all of them",
        description="Render one trainer kernel per member of PLAN (TOML, see README) into "
        "DIR/kernels, push up to `parallel` of them at once through the kaggle client, push "
        "again on every handover and the next member when a slot frees, push a failed session "
        "again up to `retries` times, and stop pushing once another session would pass "
        "`gpu_hours`. Then push the validation kernel with every trainer output attached, then "
        "the inference kernel, and fetch DIR/submission.csv. DIR/campaign.json holds the state: "
        "run the same command again after a kill to go on without pushing anything twice. "
        "DIR/status.csv and status.md hold the table. Exit 0 once submission.csv is fetched, "
        "1 otherwise.")
    campaign.add_argument("plan", type=Path, help="the plan (TOML)")
    campaign.add_argument("--out", type=Path, required=True,
                          help="the campaign's folder: state, table, kernels, outputs")
    campaign.add_argument("--kernels", type=Path, default=Path("kernels"),
                          help="folder of kernel templates (default kernels)")
    campaign.add_argument("--poll", type=float, default=None, metavar="SECONDS",
                          help="seconds between status polls (default 60; 1 with --emulate)")
    campaign.add_argument("--accelerator", action="append", default=[], metavar="[KERNEL=]NAME",
                          help="machine_shape of every kernel, or of one, over the plan's "
                          "(repeatable, as `imet kaggle render --accelerator`); none: a CPU, "
                          "what an emulated session on a machine without a GPU needs")
    home = campaign.add_argument_group(
        "rehearsing at home", "--emulate runs every kernel in the local emulator (as `imet "
        "kaggle run` does) instead of Kaggle, with the same state file, table, budget, retries "
        "and Telegram messages: up to `parallel` sessions at once, each killed at the session "
        "limit, each trainer session with its own previous output attached under its slug, "
        "the validation with every trainer output, the inference with those and the "
        "validation's. Each session runs in a process of its own that outlives a killed "
        "campaign, as a Kaggle session does: the same command again picks it up; one gone "
        "without a recorded end counts as failed (see `retries`). Sessions log to "
        "DIR/emulator/<slug>/v<N>/log.txt; the console shows the campaign's events.")
    home.add_argument("--emulate", action="store_true",
                      help="run the kernels in the local emulator (as `imet kaggle run`: "
                      "root on Linux for the read-only inputs and the kernels with internet "
                      "off)")
    home.add_argument("--input", type=input_source, action="append", default=[],
                      metavar="NAME=PATH",
                      help="with --emulate: PATH stands for the source named NAME, the slug of "
                      "a dataset_sources or competition_sources entry of the kernels (e.g. "
                      "imet-2019-fgvc6=DATA, imet-src=DATASET, imet-weights=WEIGHTS); "
                      "repeatable. Every source the rendered kernels attach must be given, "
                      "or the campaign is refused before anything runs, except the weights "
                      "dataset: without it the sessions run without it, which members that "
                      "train from random init (an arch without ImageNet weights, "
                      "--no-pretrained) need not; a member that needs weights then looks for "
                      "them as `imet train` does (input roots, caches, the network of a kernel "
                      "with internet on), and its doctor stops the session in one line when "
                      "they cannot be had")
    home.add_argument("--session-limit", type=duration("--session-limit"), default=None,
                      metavar="DURATION",
                      help="with --emulate: kill each session after this long (seconds or "
                      "12h/30m/90s; default the plan's session_hours)")


class _Refusing(argparse.ArgumentParser):
    def error(self, message: str):
        from imet.errors import UserError
        raise UserError(message)


# What each kernel passes itself where its command requires it: stand-ins, so that the
# command's own parser can judge the plan's flags alone.
GIVEN_BY_KERNEL = {"train": [], "validate": ["--data", "D", "--run", "R"],
                   "predict": ["--data", "D", "--runs", "R"],
                   "pseudo-label": ["--data", "D", "--runs", "R", "--out", "O"]}


def check_args(command: str, args: list[str], where: str) -> None:
    """Refuse what `imet <command>`'s own parser refuses: an unknown flag, a bad value."""
    import importlib
    from imet.errors import UserError
    parser = _Refusing(prog=f"imet {command}", add_help=False)
    importlib.import_module(f"imet.commands.{command.replace('-', '_')}").configure(parser)
    try:
        _, unknown = parser.parse_known_args(GIVEN_BY_KERNEL[command] + list(args))
    except UserError as err:
        raise UserError(f"{where}: imet {command}: {err}") from None
    if unknown:
        raise UserError(f"{where}: imet {command} has no flag {unknown[0]!r}; see "
                        f"`python -m imet {command} --help`")


def telegram():
    """A function sending one plain message to Telegram, and the close of the sender; a
    no-op when Telegram is not configured."""
    from imet.notify.config import ConfigProblem, load_config
    try:
        config = load_config(os.environ, use_kaggle_secrets=False)
    except ConfigProblem as problem:
        if os.environ.get("IMET_TELEGRAM_TOKEN"):
            print(f"imet kaggle campaign: Telegram off: {problem}", file=sys.stderr)
        return (lambda text: None), (lambda: None)
    from imet.notify.messages import Outgoing, pack
    from imet.notify.sender import TelegramSender
    sender = TelegramSender(config)

    def send(text: str) -> None:
        for piece in pack(text.splitlines()):
            sender.submit(Outgoing("campaign", piece, html=False))
    return send, sender.close


def run(args: argparse.Namespace) -> int:
    from imet.commands.kaggle import render_accelerators
    from imet.errors import UserError
    from imet.kaggle import campaign_plan, remote
    from imet.kaggle.campaign import Campaign
    from imet.kaggle.campaign_state import load_state
    from imet.kaggle.kernel_set import templates_in
    if not args.emulate and (args.input or args.session_limit is not None):
        raise UserError(f"{'--input' if args.input else '--session-limit'} is for --emulate; "
                        "add --emulate to rehearse the campaign at home")
    plan = campaign_plan.load(args.plan, args.kernels, check_args)
    chosen = render_accelerators(plan.settings, args.accelerator, list(templates_in(args.kernels)))
    backend = _emulator(args, plan, chosen) if args.emulate else None
    args.out.mkdir(parents=True, exist_ok=True)
    state = load_state(args.out, plan, "emulator" if args.emulate else "kaggle")
    send, close = telegram()
    poll = args.poll if args.poll is not None else (1.0 if args.emulate else 60.0)
    try:
        if backend is None:
            from imet.kaggle.campaign_kaggle import KaggleBackend
            backend = KaggleBackend(remote.kaggle_api(), poll)
        return Campaign(plan, args.out, args.kernels, state, chosen, backend, poll,
                        notify=send).run()
    except (OSError, ValueError) as err:
        if args.emulate:  # the machine's trouble (disk, permissions): one line, not a traceback
            raise UserError(f"imet kaggle campaign --emulate: {type(err).__name__}: "
                            f"{err}".splitlines()[0]) from None
        raise remote.client_errors(err) from None
    finally:
        close()


def _emulator(args: argparse.Namespace, plan, chosen: dict):
    """The emulator backend, once every source the kernels attach has its --input."""
    from imet.errors import UserError
    from imet.kaggle.campaign_emulator import EmulatorBackend, missing_inputs
    from imet.kaggle.kernel_set import WEIGHTS_DATASET, plan_kernels
    from imet.kaggle.metadata import slug_of
    inputs = dict(args.input)
    for name, path in inputs.items():
        if not path.exists():
            raise UserError(f"--input {name}={path}: no such file or folder")
    planned = plan_kernels(args.kernels, plan.owner, plan.settings, chosen)
    weights = slug_of(plan.settings.weights_dataset or WEIGHTS_DATASET)
    missing = missing_inputs(planned, inputs, {weights})
    if missing:
        raise UserError(f"--emulate: the kernels attach {', '.join(missing)}, which no --input "
                        f"gives; add --input {missing[0]}=PATH"
                        + (" (and the others)" if len(missing) > 1 else ""))
    if weights not in inputs:
        print(f"imet kaggle campaign: no --input {weights}=PATH: the sessions run without the "
              "weights dataset", flush=True)
    limit = args.session_limit if args.session_limit is not None else plan.session_hours * 3600
    return EmulatorBackend(args.out / "emulator", inputs, limit)
