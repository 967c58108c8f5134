"""`python -m imet runs set-lb RUN SCORE [DIR …]`: record a leaderboard score for a run in
every registry under the folders that holds it."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from imet.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.prog = "imet runs set-lb"
    parser.description = (
        "Store the public leaderboard score of RUN (a run id, or a unique prefix of one) in "
        "every run registry (imet-runs.jsonl) under DIR… that holds it; `imet runs --sort lb` "
        "then ranks by it.")
    parser.add_argument("set_lb", choices=["set-lb"], metavar="set-lb", help=argparse.SUPPRESS)
    parser.add_argument("run", metavar="RUN", help="run id or a unique prefix of one")
    parser.add_argument("score", metavar="SCORE", help="the leaderboard score, e.g. 0.65432")
    parser.add_argument("dirs", nargs="*", metavar="DIR",
                        help="folders whose registries get the score; default: the current folder")


def run(args: argparse.Namespace) -> int:
    from imet.registry.records import now_iso
    from imet.registry.store import set_lb

    run_id, score_text, dirs = args.run, args.score, args.dirs or ["."]
    try:
        score = float(score_text)
    except ValueError:
        score = math.nan
    if not math.isfinite(score):
        raise UserError(f"runs set-lb: SCORE {score_text!r} is not a number; give the public "
                        "leaderboard score, e.g. 0.65432")
    run_id, changed = set_lb([Path(d) for d in dirs], run_id, score, now_iso())
    for path in changed:
        print(f"imet runs: {run_id}: leaderboard {score:g} recorded in {path}")
    return 0
