"""`python -m imet runs`: the experiment log of every train, validate and predict run found in
the given folders (downloaded kernel outputs, /kaggle/input), best first, and on request a
comparison PNG. `runs set-lb` is its own module (imet/commands/runs_set_lb.py)."""
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


def run(args: argparse.Namespace) -> int:
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
    if args.plot and rows:
        try:
            atomic_write_bytes(args.plot, render_comparison_png(rows))
        except OSError as err:
            raise UserError(f"runs --plot {args.plot}: cannot write ({err.strerror}); pass a "
                            "writable path") from None
        print(f"imet runs: wrote {args.plot}", file=sys.stderr)
    return 0
