"""`imet lr-find`: the LR finder with the flags of `imet train`; prints the suggested --lr and
writes the loss-against-LR plot to --plot. No run folder is read or written (--out is ignored)."""
from __future__ import annotations

import argparse
import logging

from imet.commands import train as train_command


def configure(parser: argparse.ArgumentParser) -> None:
    train_command.configure(parser)
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


def run(args: argparse.Namespace) -> int:
    from imet.engine.lr_find import lr_find
    from imet.report.lr_plot import write_lr_plot

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = train_command.config_from_args(args, required=("data",))
    sweep = lr_find(config, args.steps, args.start_lr, args.end_lr)
    suggestion = sweep.suggestion()
    plot = write_lr_plot(args.plot, sweep.lrs, sweep.losses, sweep.smoothed, suggestion,
                         title=f"LR finder: {config.arch}, fold {config.fold}")
    ended = "stopped early: the loss diverged" if sweep.diverged else "no divergence"
    print(f"imet lr-find: swept {sweep.lrs[0]:.2e} .. {sweep.lrs[-1]:.2e} over "
          f"{len(sweep.lrs)} steps ({ended}); plot {plot}")
    print(f"suggested --lr {suggestion:.2e}")
    return 0
