"""`imet runs`: the experiment log of every run found in the given folders (kernel outputs,
/kaggle/input), best first, and on request a comparison PNG; `imet runs set-lb` records a run's
leaderboard score in every registry under the folders that holds it."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from imet.errors import UserError
from imet.fileio import atomic_write_bytes, utc_timestamp


def configure_runs(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print the run registry: every train/validate/predict record (imet-runs.jsonl) found "
        "recursively under DIR…, merged without duplicates, one row per run and kind, best "
        "first; with --plot, also a PNG comparing the runs (CV against LB; F2 against step). "
        "`runs set-lb RUN SCORE [DIR …]` stores a leaderboard score (see `runs set-lb --help`).")
    parser.add_argument("dirs", nargs="*", metavar="DIR",
                        help="folders (or registry files) to read; default: the current folder")
    parser.add_argument("--format", choices=("table", "csv", "markdown"), default="table",
                        help="output format (default: table)")
    parser.add_argument("--sort", choices=("cv", "lb"), default="cv",
                        help="best first by CV F2 or by leaderboard score (default: cv)")
    parser.add_argument("--kind", choices=("train", "validate", "predict"), action="append",
                        help="show only this kind of run (repeatable; default: all)")
    parser.add_argument("--plot", metavar="PNG",
                        help="also write the comparison PNG there (default: no PNG)")


def run_runs(args: argparse.Namespace) -> int:
    from imet.observe.registry import (FORMATS, find_registries, merge_records, read_registry,
                                       render_comparison_png, sort_rows, summarize)
    roots = [Path(d) for d in (args.dirs or ["."])]
    if missing := [str(r) for r in roots if not r.exists()]:
        raise UserError(f"{', '.join(missing)}: no such folder or file; pass folders holding "
                        "kernel outputs (or imet-runs.jsonl files)")
    paths = find_registries(roots)
    records = merge_records(*(read_registry(p) for p in paths))
    if args.kind:
        records = [r for r in records if r.get("kind") in args.kind]
    rows = sort_rows(summarize(records), by=args.sort)
    sys.stdout.write(FORMATS[args.format](rows))
    if not paths:
        print(f"imet runs: no run registry found under {', '.join(map(str, roots))}",
              file=sys.stderr)
    if args.plot and rows:
        try:
            atomic_write_bytes(args.plot, render_comparison_png(rows))
        except OSError as err:
            raise UserError(f"runs --plot {args.plot}: cannot write ({err.strerror}); pass a "
                            "writable path") from None
        print(f"imet runs: wrote {args.plot}", file=sys.stderr)
    return 0


def configure_runs_set_lb(parser: argparse.ArgumentParser) -> None:
    parser.prog = "imet runs set-lb"
    parser.description = ("Store the public leaderboard score of RUN (a run id, or a unique prefix "
                          "of one) in every run registry (imet-runs.jsonl) under DIR… that holds "
                          "it; `imet runs --sort lb` then ranks by it.")
    parser.add_argument("set_lb", choices=["set-lb"], metavar="set-lb", help=argparse.SUPPRESS)
    parser.add_argument("run", metavar="RUN", help="run id or a unique prefix of one")
    parser.add_argument("score", metavar="SCORE", help="the leaderboard score, e.g. 0.65432")
    parser.add_argument("dirs", nargs="*", metavar="DIR",
                        help="folders whose registries get the score; default: the current folder")


def run_runs_set_lb(args: argparse.Namespace) -> int:
    from imet.observe.registry import set_lb
    try:
        score = float(args.score)
    except ValueError:
        score = math.nan
    if not math.isfinite(score):
        raise UserError(f"runs set-lb: SCORE {args.score!r} is not a number; give the public "
                        "leaderboard score, e.g. 0.65432")
    run_id, changed = set_lb([Path(d) for d in args.dirs or ["."]], args.run, score,
                             utc_timestamp())
    for path in changed:
        print(f"imet runs: {run_id}: leaderboard {score:g} recorded in {path}")
    return 0
