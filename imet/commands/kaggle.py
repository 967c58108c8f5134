"""`python -m imet kaggle run|render|chain|campaign …`: the local Kaggle emulator, push-ready
kernels, sessions on Kaggle."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imet.engine.config import DEFAULT_TIME_BUDGET, parse_duration
from imet.engine.handover import EXIT_CODE as HANDED_OVER, NAME as HANDOVER
from imet.errors import UserError


def input_source(text: str) -> tuple[str, Path]:
    """An `--input SLUG=PATH` value (kaggle run, kaggle campaign --emulate)."""
    slug, sep, path = text.partition("=")
    if not sep or not slug or not path:
        raise argparse.ArgumentTypeError(f"--input {text!r}: expected SLUG=PATH")
    return slug, Path(path)


def duration(flag: str):
    """The argparse type of a duration flag: seconds or 12h/30m/90s."""
    def seconds(text: str) -> float:
        try:
            return parse_duration(text, flag)
        except UserError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return seconds


def _accelerators(given: list[str], kernels: list[str]) -> dict[str, str]:
    """kernel name -> accelerator from `--accelerator [KERNEL=]NAME` values (later ones win);
    a retired name is accepted with one warning line, as the kaggle client does."""
    from imet.kaggle import accelerators
    chosen: dict[str, str] = {}
    for text in given:
        kernel, sep, name = text.rpartition("=")
        if sep and kernel not in kernels:
            raise UserError(f"--accelerator {text!r}: no kernel {kernel!r}; the kernels are "
                            f"{', '.join(kernels)}")
        name = accelerators.canonical(name)
        warning = accelerators.retired_warning(name)
        if warning:
            print(f"imet kaggle render: {warning}", file=sys.stderr)
        chosen.update({k: name for k in ([kernel] if sep else kernels)})
    return chosen


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kaggle_command", metavar="ACTION")
    sub.required = True
    run = sub.add_parser("run", help="run a kernel folder in a local Kaggle-like root",
                         description="Run KERNEL_DIR's script as Kaggle would: inputs mounted "
                         "read-only under input/<slug>, cwd in working/, no network when its "
                         "metadata turns internet off, killed at the time limit. Each session's "
                         "working/ is kept as OUT/v<N>/kaggle/working.")
    run.add_argument("kernel_dir", type=Path, help="folder with kernel-metadata.json and script")
    run.add_argument("--input", type=input_source, action="append", default=[],
                     metavar="SLUG=PATH",
                     help="attach PATH as /kaggle/input/SLUG (repeatable)")
    run.add_argument("--time-limit", type=duration("--time-limit"),
                     default=DEFAULT_TIME_BUDGET,
                     metavar="DURATION", help="session limit: seconds or 12h/30m/90s (default "
                     "%(default)s, today's Kaggle sessions)")
    run.add_argument("--out", type=Path, required=True, help="folder for the sessions' roots")
    run.add_argument("--chain", type=int, default=1, metavar="N",
                     help="re-run with the previous output attached under the kernel's own slug "
                     "while the run hands over, at most N sessions (default 1)")
    run.add_argument("--python", default=sys.executable, metavar="EXE",
                     help="interpreter standing in for Kaggle's image (default: this one): "
                     "each session runs in a fresh virtual environment of it that sees only its "
                     "platform packages (torch, numpy, pandas, ...; cached in "
                     "$IMET_PLATFORM_ENV_CACHE or ~/.cache/imet/platform-env), never "
                     "its imet, so the kernel's bootstrap installs the dataset's wheels as on "
                     "Kaggle")
    run.add_argument("--accelerator", metavar="NAME",
                     help="ask for this machine_shape instead of the metadata's, as `kaggle "
                     "kernels push --accelerator` does (none: a CPU); the session still runs "
                     "on this machine, so a GPU asked for on a machine without one is refused "
                     "by the kernel's doctor")
    chain = sub.add_parser("chain", help="train across Kaggle sessions: push, wait, push again",
                           description="Push a rendered kernel folder with the kaggle client, "
                           f"wait for the session to end, fetch its small outputs ({HANDOVER}, "
                           "run.json, metrics.csv, plots) into OUT/v<N>, and push again while "
                           f"the run hands over. Exit 0: finished; {HANDED_OVER}: still handing "
                           "over after --max-sessions; 1: a session failed.")
    chain.add_argument("kernel_dir", type=Path,
                       help="a push-ready folder (dist/kernels/trainer-f0)")
    chain.add_argument("--max-sessions", type=int, default=5, metavar="N",
                       help="push at most N sessions (default 5)")
    chain.add_argument("--out", type=Path, default=Path("dist/chain"),
                       help="where each session's small outputs go (default dist/chain)")
    chain.add_argument("--poll", type=float, default=60.0, metavar="SECONDS",
                       help="seconds between status polls (default 60)")
    render = sub.add_parser("render", help="write push-ready kernel folders for an owner",
                            description="Write OUT/trainer-<member> (one trainer kernel per fold "
                            "or member, each its own slug imet-trainer-<member> and its own "
                            "output in kernel_sources), OUT/validation and OUT/inference (every "
                            "trainer output attached) from kernels/<name>, with {owner} replaced, "
                            "the accelerator asked for in machine_shape and the script's "
                            "ACCELERATOR line, and the run's settings (--config) in the scripts' "
                            "DEFAULT_*_ARGS lines (and the inference's PSEUDO_LABEL_ARGS; a "
                            "trainer whose args say --extra auto gets the inference output "
                            "attached). A kernel edited by hand since render wrote it "
                            "is refused unless --force.")
    render.add_argument("--owner", help="your Kaggle user name (default: the settings file's "
                        "owner)")
    render.add_argument("--config", type=Path, metavar="FILE",
                        help="the run's settings (TOML: members, train_args, validate_args, "
                        "predict_args, pseudo_label_args, accelerator, datasets; see README); "
                        "without it, the "
                        "templates' defaults, one member per fold")
    render.add_argument("--force", action="store_true",
                        help="overwrite kernels edited by hand since render wrote them")
    render.add_argument("--kernels", type=Path, default=Path("kernels"),
                        help="folder of kernel templates (default kernels)")
    render.add_argument("--out", type=Path, default=Path("dist/kernels"),
                        help="where to write them (default dist/kernels)")
    render.add_argument("--accelerator", action="append", default=[], metavar="[KERNEL=]NAME",
                        help="machine_shape of every kernel, or of one (trainer=NvidiaL4; "
                        "repeatable, over the settings file's): NvidiaTeslaT4 (GPU T4 x2, the "
                        "default), NvidiaL4, NvidiaTeslaA100, NvidiaH100, TpuV5E8, or none for "
                        "a CPU")
    from imet.commands.kaggle_campaign import configure as configure_campaign
    configure_campaign(sub)


def render_accelerators(settings, given: list[str], kernels: list[str]) -> dict[str, str]:
    """The settings file's accelerators, then the command line's (later ones win)."""
    from_file = [f"{k}={v}" if k else str(v) for k, v in settings.accelerator.items()]
    return _accelerators(from_file + list(given), kernels)


def run(args: argparse.Namespace) -> int:
    if args.kaggle_command == "chain":
        from imet.kaggle.remote import chain
        if args.max_sessions < 1:
            raise UserError(f"--max-sessions {args.max_sessions}: must be at least 1")
        return chain(args.kernel_dir, args.max_sessions, args.out, args.poll)
    if args.kaggle_command == "render":
        return _render(args)
    if args.kaggle_command == "campaign":
        from imet.commands.kaggle_campaign import run as run_campaign
        return run_campaign(args)
    from imet.kaggle.emulator import run_chain
    if args.chain < 1:
        raise UserError(f"--chain {args.chain}: must be at least 1")
    results = run_chain(args.kernel_dir, dict(args.input), args.out, args.time_limit, args.chain,
                        python=args.python, accelerator=args.accelerator)
    for r in results:
        state = "killed at the time limit" if r.timed_out else f"exit {r.exit_code}"
        more = ", handed over" if r.handover else ""
        print(f"session v{r.version}: {state}{more} after {r.seconds:.1f}s; output {r.output}; "
              f"log {r.log}")
    last = results[-1]
    return 0 if last.ok and last.handover is None else (last.exit_code or 1)


def _render(args: argparse.Namespace) -> int:
    from imet.kaggle import kernel_set, settings as kernel_settings
    from imet.kaggle.campaign_plan import KEYS as CAMPAIGN_KEYS
    from imet.kaggle.metadata import read_metadata, requested_accelerator
    settings = kernel_settings.load(args.config, CAMPAIGN_KEYS)
    owner = args.owner or settings.owner
    if not owner:
        raise UserError("--owner is required (or an owner = \"NAME\" line in --config)")
    kernels = list(kernel_set.templates_in(args.kernels))
    chosen = render_accelerators(settings, args.accelerator, kernels)
    planned = kernel_set.plan_kernels(args.kernels, owner, settings, chosen)
    for out in kernel_set.write_kernels(args.out, planned, args.force):
        print(f"rendered {out} (accelerator {requested_accelerator(read_metadata(out))})")
    return 0
