"""`python -m imet kaggle campaign PLAN --out DIR`: every member of a plan trained on Kaggle as
parallel kernels across sessions, then one validation and one inference over all of them."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def configure(sub) -> None:
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
    campaign.add_argument("--poll", type=float, default=60.0, metavar="SECONDS",
                          help="seconds between status polls (default 60)")


class _Refusing(argparse.ArgumentParser):
    def error(self, message: str):
        from imet.errors import UserError
        raise UserError(message)


# What each kernel passes itself where its command requires it: stand-ins, so that the
# command's own parser can judge the plan's flags alone.
GIVEN_BY_KERNEL = {"train": [], "validate": ["--data", "D", "--run", "R"],
                   "predict": ["--data", "D", "--runs", "R"]}


def check_args(command: str, args: list[str], where: str) -> None:
    """Refuse what `imet <command>`'s own parser refuses: an unknown flag, a bad value."""
    import importlib
    from imet.errors import UserError
    parser = _Refusing(prog=f"imet {command}", add_help=False)
    importlib.import_module(f"imet.commands.{command}").configure(parser)
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
    from imet.kaggle import campaign_plan, remote
    from imet.kaggle.campaign import Campaign
    from imet.kaggle.campaign_state import load_state
    from imet.kaggle.kernel_set import templates_in
    plan = campaign_plan.load(args.plan, args.kernels, check_args)
    chosen = render_accelerators(plan.settings, [], list(templates_in(args.kernels)))
    args.out.mkdir(parents=True, exist_ok=True)
    state = load_state(args.out, plan)
    send, close = telegram()
    try:
        from imet.kaggle.campaign_kaggle import KaggleBackend
        campaign = Campaign(plan, args.out, args.kernels, state, chosen,
                            KaggleBackend(remote.kaggle_api(), args.poll), args.poll, notify=send)
        return campaign.run()
    except (OSError, ValueError) as err:
        raise remote.client_errors(err) from None
    finally:
        close()
