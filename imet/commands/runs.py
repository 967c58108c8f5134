"""`python -m imet runs`: the experiment log of every train, validate and predict run found in
the given folders (downloaded kernel outputs, /kaggle/input), best first, plus a comparison PNG;
`python -m imet runs set-lb RUN SCORE [DIR …]` records a leaderboard score."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from imet.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print the run registry: every train/validate/predict record (imet-runs.jsonl) found "
        "recursively under DIR…, merged without duplicates, one row per run and kind, best "
        "first, and write a PNG comparing the runs (CV against LB; F2 against step). "
        "`runs set-lb RUN SCORE [DIR …]` stores a leaderboard score for RUN in every registry "
        "under DIR… that holds it.")
    parser.add_argument("dirs", nargs="*", metavar="DIR",
                        help="folders (or registry files) to read; default: the current folder. "
                        "With `set-lb RUN SCORE` first, the folders whose registries get the score")
    parser.add_argument("--format", choices=("table", "csv", "markdown"), default="table",
                        help="output format (default: table)")
    parser.add_argument("--sort", choices=("cv", "lb"), default="cv",
                        help="best first by CV F2 or by leaderboard score (default: cv)")
    parser.add_argument("--kind", choices=("train", "validate", "predict"), action="append",
                        help="show only this kind of run (repeatable; default: all)")
    parser.add_argument("--plot", default="runs.png", metavar="PNG",
                        help="where to write the comparison PNG (default: runs.png)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG")


def run(args: argparse.Namespace) -> int:
    if args.dirs and args.dirs[0] == "set-lb":
        return _set_lb(args.dirs[1:])
    from imet.registry.compare_plot import render_comparison_png
    from imet.registry.store import find_registries, merge_records, read_registry
    from imet.registry.table import FORMATS, sort_rows, summarize
    from imet.fileio import atomic_write_bytes

    roots = [Path(d) for d in (args.dirs or ["."])]
    missing = [str(r) for r in roots if not r.exists()]
    if missing:
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
    if not args.no_plot and rows:
        try:
            atomic_write_bytes(args.plot, render_comparison_png(rows))
        except OSError as err:
            raise UserError(f"runs --plot {args.plot}: cannot write ({err.strerror}); pass a "
                            "writable path or --no-plot") from None
        print(f"imet runs: wrote {args.plot}", file=sys.stderr)
    return 0


def _set_lb(rest: list[str]) -> int:
    from imet.registry.records import now_iso
    from imet.registry.store import set_lb

    if len(rest) < 2:
        raise UserError("runs set-lb: usage: python -m imet runs set-lb RUN SCORE [DIR …]")
    run_id, score_text, dirs = rest[0], rest[1], rest[2:] or ["."]
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
