"""`imet doctor`: can this session train as configured? Exit 0 when it can; otherwise one line
per blocking problem on stderr and exit 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _accelerator(text: str) -> str:
    from imet.errors import UserError
    from imet.kaggle.accelerators import canonical
    try:
        return canonical(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Report Python, torch, its CUDA build and arch list; every GPU (name, compute "
        "capability, memory, whether this torch has kernels for it, proved by a fp16 "
        "conv+matmul under autocast, bf16 too where the GPU has it); free disk in --out against "
        "the checkpoints of --arch (--keep generations and the one being written); the "
        "competition data, imet-src, the weights of --arch and earlier outputs of the run; "
        "whether Telegram is configured (never the token). Exit 0 when the session can train; "
        "otherwise one line per blocking problem and exit 2. The kernels run it first.")
    parser.add_argument("--data", type=Path, help="competition folder (default: searched "
                        "under the --input-root folders)")
    parser.add_argument("--input-root", type=Path, action="append", default=[], metavar="DIR",
                        help="folder searched for the data, imet-src, weights and earlier "
                        "outputs (repeatable; on Kaggle: /kaggle/input)")
    parser.add_argument("--out", type=Path, default=Path("."),
                        help="the run's working folder, whose free disk is checked (default .)")
    parser.add_argument("--arch", help="the backbone to be trained: checkpoint size and weights "
                        "(default: no training checks)")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                        help="the run starts from ImageNet weights: they must be found (or "
                        "downloadable) (default: as `imet train`, on for an arch that has "
                        "weights)")
    parser.add_argument("--device", default="auto", help="as `imet train --device` (default auto)")
    parser.add_argument("--accelerator", type=_accelerator, metavar="NAME",
                        help="what the kernel asked Kaggle for (its machine_shape); a GPU "
                        "shape with no usable GPU is a blocking problem")
    parser.add_argument("--notify", default="off", choices=("auto", "on", "off"),
                        help="send the blocking problems as a Telegram crash message (default "
                        "off; the kernels pass auto)")
    parser.add_argument("--kernel", help="the kernel's name, for the Telegram message")
    parser.add_argument("--keep", type=int, metavar="N", help="checkpoint generations the run "
                        "keeps, as `imet train --keep` (default: its default)")


def run(args: argparse.Namespace) -> int:
    from imet.kaggle.doctor import Settings, diagnose, send_crash
    settings = Settings(data=args.data, input_roots=list(args.input_root), out=args.out,
                        arch=args.arch, pretrained=args.pretrained, device=args.device,
                        accelerator=args.accelerator, keep=args.keep)
    report = diagnose(settings)
    print("\n".join(report.lines), flush=True)
    if not report.problems:
        print("imet doctor: this session can train as configured", flush=True)
        return 0
    for problem in report.problems:
        print(f"imet doctor: error: {problem}", file=sys.stderr, flush=True)
    send_crash(report.problems, args.notify, args.kernel)
    return 2
