"""`imet doctor` (can this session run as configured?) and `imet kaggle run|render|chain|
campaign`: the local Kaggle emulator, push-ready kernels, and sessions on Kaggle, one kernel
handed over from session to session (chain) or every member of a plan (campaign)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from contextlib import suppress
from pathlib import Path

from imet.config import DEFAULT_TIME_BUDGET, close_match, parse_duration
from imet.errors import HANDED_OVER_EXIT_CODE as HANDED_OVER, HANDOVER_FILE as HANDOVER, UserError


def _argument_type(convert):
    """`convert` as an argparse type: its UserError is argparse's refusal of the value."""
    def parse(text: str):
        try:
            return convert(text)
        except UserError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return parse


def duration(flag: str):
    """The argparse type of a duration flag: seconds or 12h/30m/90s."""
    return _argument_type(lambda text: parse_duration(text, flag))


def _accelerator(text: str) -> str:
    from imet.kaggle.render import canonical
    return canonical(text)


def configure_doctor(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Report Python, torch, its CUDA build and arch list; every GPU (name, compute "
        "capability, memory, whether this torch has kernels for it, proved by a fp16 "
        "conv+matmul under autocast, bf16 too where the GPU has it); free disk in --out against "
        "the checkpoints of --arch (--keep generations and the one being written); the folder "
        "found for each input (competition data, source dataset, the weights of --arch, the "
        "run's previous output), or which attached inputs were searched and how deep; "
        "whether Telegram is configured (never the token). Exit 0 when nothing blocks the "
        "session (the training checks only with --arch); otherwise one line per blocking problem "
        "and exit 2. The kernels run it first.")
    parser.add_argument("--data", type=Path, help="competition folder (default: searched "
                        "under the --input-root folders)")
    add_input_root(parser, "the data, imet-src, weights and earlier outputs")
    parser.add_argument("--out", type=Path, default=Path("."),
                        help="the run's working folder, whose free disk is checked (default .)")
    parser.add_argument("--arch", help="the backbone to be trained: checkpoint size and weights "
                        "(default: no training checks)")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                        help="the run starts from ImageNet weights: they must be found (or "
                        "downloadable) (default: as `imet train`, on for an arch that has weights)")
    parser.add_argument("--device", default="auto", help="as `imet train --device` (default auto)")
    parser.add_argument("--accelerator", type=_argument_type(_accelerator), metavar="NAME",
                        help="what the kernel asked Kaggle for (its machine_shape); a GPU "
                        "shape with no usable GPU is a blocking problem")
    parser.add_argument("--notify", default="off", choices=("auto", "on", "off"),
                        help="send the blocking problems as a Telegram crash message (default "
                        "off; the kernels pass auto)")
    parser.add_argument("--kernel", help="the kernel's name, for the Telegram message")
    parser.add_argument("--kernel-id", metavar="OWNER/SLUG", help="the trainer kernel's id: an "
                        "attached output of another kernel is not this run's previous output, "
                        "and one handing over is a blocking problem")
    parser.add_argument("--train-args", metavar="ARGS", help="the run's `imet train` arguments "
                        "(one quoted string), whose fingerprint names this run")
    parser.add_argument("--keep", type=int, metavar="N", help="checkpoint generations the run "
                        "keeps, as `imet train --keep` (default: its default)")


def add_input_root(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--input-root", type=Path, action="append", default=[], metavar="DIR",
                        help=f"folder searched for {what} (repeatable; on Kaggle: /kaggle/input)")


def run_doctor(args: argparse.Namespace) -> int:
    from imet.kaggle.session import Settings, diagnose, send_crash
    report = diagnose(Settings(data=args.data, input_roots=list(args.input_root), out=args.out,
                               arch=args.arch, pretrained=args.pretrained, device=args.device,
                               accelerator=args.accelerator, keep=args.keep,
                               kernel_id=args.kernel_id, fingerprint=_fingerprint(args.train_args, args.data)))
    print("\n".join(report.lines), flush=True)
    if not report.problems:
        session = f"the {args.kernel} session" if args.kernel else "this session"
        print(f"imet doctor: nothing blocks {session}"
              + (f"; it can train {args.arch} as configured" if args.arch else
                 "" if args.kernel else " (add --arch NAME to check the disk and weights a "
                 "training needs)"), flush=True)
        return 0
    for problem in report.problems:
        print(f"imet doctor: error: {problem}", file=sys.stderr, flush=True)
    send_crash(report.problems, args.notify, args.kernel, list(args.input_root))
    return 2


def _fingerprint(train_args: str | None, data: Path | None = None) -> str | None:
    """The fingerprint of the run `imet train` arguments describe on the competition `data`, as
    far as they decide it (--extra, --init and --teacher add their files' later; --metric auto is
    the data's competition's metric, as training resolves it); None when they are refused."""
    if train_args is None:
        return None
    import shlex

    from imet.commands.train import config_from_args
    from imet.config import train_parser
    try:
        known, _ = train_parser().parse_known_args(shlex.split(train_args))
        config = config_from_args(known, required=())
        if config.metric == "auto" and data is not None:
            from imet.data.labels import competition_metric, find_layout, read_labels
            layout = find_layout(data, test=False)
            config.metric = competition_metric(layout, read_labels(layout.labels_csv))
        return config.fingerprint()
    except UserError:
        return None  # `imet train` says why, in its own line


def input_source(text: str) -> tuple[str, Path]:
    """An `--input [OWNER/]SLUG=PATH` value (kaggle run, kaggle campaign --emulate)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path or name.count("/") > 1 or "" in name.split("/"):
        raise argparse.ArgumentTypeError(f"--input {text!r}: expected SLUG=PATH or "
                                         "OWNER/SLUG=PATH")
    return name, Path(path)


def add_layout(parser) -> None:
    from imet.kaggle import LAYOUTS
    parser.add_argument("--input-layout", choices=LAYOUTS, default=LAYOUTS[0],
                        help="how the emulated sessions mount their inputs: nested (default), as "
                        "today's Kaggle does, or flat, each at input/<slug> as older sessions did")


def add_competition_data(parser) -> None:
    parser.add_argument("--data", type=Path, metavar="DIR", help="the competition folder: the "
                        "kernels attach the competition whose files it holds (found by content, "
                        "as `imet check-data` names it) when the settings name no competition, "
                        "and a settings competition that is not it is refused (default: the "
                        "settings' competition, else the templates' imet-2019-fgvc6)")


def competition_from(settings, data: Path | None, inputs: dict[str, Path] | None = None) -> None:
    """Set settings.competition from the competition folder's files when the settings name none:
    --data, else (--emulate) the one --input whose folder holds a labels table. Says which
    competition the kernels attach and why; a settings competition other than the one found is
    refused in one line."""
    from imet.data.labels import (competition_of, find_layout, labels_tables, layout_problems,
                                  read_labels)
    found = [(data, find_layout(data))] if data else [
        (path, layout) for path in (inputs or {}).values() if path.is_dir() and labels_tables(path)
        for layout, problems in [layout_problems(path)] if not problems]
    if len(found) != 1:
        if settings.competition:
            print(f"competition: {settings.competition} ({settings.source})", flush=True)
        return
    (folder, layout), = found
    slug, why = competition_of(layout, read_labels(layout.labels_csv))
    flag = "--data" if data else "--input"
    if slug is None and not settings.competition:
        raise UserError(f"{flag} {folder}: not one of the iMet competitions ({why}); name "
                        "it in the settings: competition = \"SLUG\"")
    if slug and settings.competition and settings.competition != slug:
        raise UserError(f"{settings.source}: competition = {settings.competition!r}, but "
                        f"{flag} {folder} holds {slug}'s files ({why}); fix one of them")
    if not settings.competition:
        settings.competition = slug
        print(f"competition: {slug} (the files of {folder}: {why})", flush=True)
    else:
        print(f"competition: {settings.competition} ({settings.source})", flush=True)


def existing_inputs(given: list[tuple[str, Path]]) -> dict[str, Path]:
    """The `--input SLUG=PATH` values, each checked to exist before any session starts."""
    for slug, path in given:
        if not path.exists():
            raise UserError(f"--input {slug}={path}: no such file or folder")
    return dict(given)


def render_accelerators(settings, given: list[str], kernels: list[str]) -> dict[str, str]:
    """kernel name -> accelerator from the settings file's, then `--accelerator [KERNEL=]NAME`
    (later ones win); a retired name is accepted with a warning, as the kaggle client does."""
    from imet.kaggle.render import canonical, retired_warning
    # (where it was given, kernel or "" for all, name)
    from_file = [(f"{settings.source}: accelerator" + (f".{k}" if k else ""), k, str(v))
                 for k, v in settings.accelerator.items()]
    chosen: dict[str, str] = {}
    for where, kernel, name in from_file + [("--accelerator", *text.rpartition("=")[::2])
                                            for text in given]:
        if kernel and kernel not in kernels:
            near = close_match(kernel, kernels)
            raise UserError(f"{where}: no kernel {kernel!r}; "
                            + (f"did you mean {near}? " if near else "")
                            + f"the kernels are {', '.join(kernels)}")
        name = canonical(name, where)
        if warning := retired_warning(name):
            print(f"imet kaggle render: {warning}", file=sys.stderr)
        chosen.update({k: name for k in ([kernel] if kernel else kernels)})
    return chosen


def configure_kaggle(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kaggle_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="run a kernel folder in a local Kaggle-like root",
                         description="Run KERNEL_DIR's script as Kaggle would: inputs mounted "
                         "read-only as today's Kaggle mounts them (input/competitions/<slug>, "
                         "input/datasets/<owner>/<slug>, input/notebooks/<owner>/<slug>; "
                         "--input-layout flat: input/<slug>), cwd in working/, no network when its "
                         "metadata turns internet off, killed at the time limit. Each session's "
                         "working/ is kept as OUT/v<N>/kaggle/working.",
                         epilog="IMET_KERNEL_ARGS, when set, replaces the kernel's own arguments "
                         "(the DEFAULT_TRAIN_ARGS, DEFAULT_VALIDATE_ARGS or DEFAULT_PREDICT_ARGS "
                         "line of its script) in every session, split as a shell would; "
                         "a trainer rehearses small with, e.g., IMET_KERNEL_ARGS=\"--arch "
                         "tiny_cnn --epochs 2 --session-steps 3\" (a handover every 3 steps).")
    run.add_argument("kernel_dir", type=Path, help="folder with kernel-metadata.json and script")
    run.add_argument("--input", type=input_source, action="append", default=[],
                     metavar="[OWNER/]SLUG=PATH", help="attach PATH as the input SLUG "
                     "(repeatable): the competition, dataset or kernel source of the metadata "
                     "with that slug, whose owner it takes unless OWNER is given; a slug the "
                     "metadata does not name is a dataset of the kernel's owner")
    add_layout(run)
    run.add_argument("--time-limit", type=duration("--time-limit"), default=DEFAULT_TIME_BUDGET,
                     metavar="DURATION", help="session limit: seconds or 12h/30m/90s (default "
                     "%(default)s, today's Kaggle sessions)")
    run.add_argument("--out", type=Path, required=True, help="folder for the sessions' roots")
    run.add_argument("--chain", type=int, default=1, metavar="N",
                     help="re-run with the previous output attached under the kernel's own slug "
                     "while the run hands over, at most N sessions (default 1)")
    run.add_argument("--python", default=sys.executable, metavar="EXE",
                     help="interpreter standing in for Kaggle's image (default: this one): each "
                     "session runs in a fresh virtual environment of it that sees only its "
                     "platform packages (torch, numpy, pandas, ...; cached in "
                     "$IMET_PLATFORM_ENV_CACHE or ~/.cache/imet/platform-env), never its imet, so "
                     "the kernel's bootstrap installs the dataset's wheels as on Kaggle")
    run.add_argument("--accelerator", metavar="NAME", help="ask for this machine_shape instead of "
                     "the metadata's, as `kaggle kernels push --accelerator` does (none: a CPU); "
                     "the session still runs on this machine, so a GPU asked for on a machine "
                     "without one is refused by the kernel's doctor")
    chain = sub.add_parser("chain", help="train across Kaggle sessions: push, wait, push again",
                           description="Push a rendered kernel folder with the kaggle client, "
                           f"wait for the session to end, fetch its small outputs ({HANDOVER}, "
                           "run.json, metrics.csv, plots) into OUT/v<N>, and push again while "
                           f"the run hands over. The first push of a kernel that does not "
                           "exist on Kaggle yet leaves its own output out of kernel_sources. "
                           "An attached imet-telegram dataset must exist on Kaggle, be private "
                           "and hold imet-telegram.json, or nothing is pushed. "
                           f"Exit 0: finished; {HANDED_OVER}: still handing over after "
                           "--max-sessions; 1: a session failed.")
    chain.add_argument("kernel_dir", type=Path,
                       help="a push-ready folder (dist/kernels/trainer-f0)")
    chain.add_argument("--max-sessions", type=int, default=5, metavar="N",
                       help="push at most N sessions (default 5)")
    chain.add_argument("--out", type=Path, default=None,
                       help="where each session's small outputs go, OUT/v<N> emptied before "
                       "they are fetched (default dist/chain/<the kernel's slug>, so no chain "
                       "reads another kernel's)")
    chain.add_argument("--poll", type=float, default=60.0, metavar="SECONDS",
                       help="seconds between status polls (default 60)")
    render = sub.add_parser(
        "render", help="write push-ready kernel folders for an owner",
        description="Write OUT/trainer-<member> (one trainer kernel per fold or member, each its "
        "own slug imet-trainer-<member> and its own output in kernel_sources), OUT/validation and "
        "OUT/inference (every trainer output attached) from kernels/<name>, with {owner} replaced, "
        "the accelerator asked for in machine_shape and the script's ACCELERATOR line, and the "
        "run's settings (--config) in the scripts' DEFAULT_*_ARGS lines (and the inference's "
        "PSEUDO_LABEL_ARGS; a trainer whose args say --extra auto gets the inference output "
        "attached). Each flag list of the settings is first checked by its command's own "
        "parser: an unknown flag or bad value is one line naming the file and the key, and "
        "nothing is written. A kernel edited by hand since render wrote it is refused unless "
        "--force; a kernel folder in OUT that the settings no longer make is removed, or, "
        "edited since, refused unless --force.")
    render.add_argument("--owner", help="your Kaggle user name (default: the settings file's "
                        "owner)")
    render.add_argument("--config", type=Path, metavar="FILE",
                        help="the run's settings (TOML: members, train_args, validate_args, "
                        "predict_args, pseudo_label_args, accelerator, datasets, telegram; see "
                        "README); "
                        "without it, the templates' defaults, one member per fold")
    render.add_argument("--force", action="store_true",
                        help="overwrite kernels edited by hand since render wrote them, and "
                        "remove edited ones the settings no longer make")
    render.add_argument("--kernels", type=Path, default=Path("kernels"),
                        help="folder of kernel templates (default kernels)")
    render.add_argument("--out", type=Path, default=Path("dist/kernels"),
                        help="where to write them (default dist/kernels)")
    add_competition_data(render)
    render.add_argument("--accelerator", action="append", default=[], metavar="[KERNEL=]NAME",
                        help="machine_shape of every kernel, or of one (trainer=NvidiaL4; "
                        "repeatable, over the settings file's): NvidiaTeslaT4 (GPU T4 x2, the "
                        "default), NvidiaL4, NvidiaTeslaA100, NvidiaH100, TpuV5E8, or none for "
                        "a CPU")
    campaign = sub.add_parser(
        "campaign", help="train a plan's members on Kaggle in parallel, then validate and predict "
        "over all of them", description="Render one trainer kernel per member of PLAN (TOML, see "
        "README) into DIR/kernels, push up to `parallel` of them at once through the kaggle "
        "client, push again on every handover and the next member when a slot frees, push a failed "
        "session again up to `retries` times, and stop pushing once another session would pass "
        "`gpu_hours`. Then push the validation kernel with every trainer output attached, then the "
        "inference kernel, and fetch DIR/submission.csv. DIR/campaign.json holds the state: run "
        "the same command again after a kill to go on without pushing anything twice. "
        "DIR/status.csv and status.md hold the table. With telegram = true the kernels that send "
        "attach <owner>/imet-telegram, which must exist on Kaggle, be private and hold "
        "imet-telegram.json, or nothing is pushed. Exit 0 once submission.csv is fetched, 1 "
        "otherwise.")
    campaign.add_argument("plan", type=Path, help="the plan (TOML)")
    campaign.add_argument("--out", type=Path, required=True,
                          help="the campaign's folder: state, table, kernels, outputs")
    campaign.add_argument("--kernels", type=Path, default=Path("kernels"),
                          help="folder of kernel templates (default kernels)")
    campaign.add_argument("--poll", type=float, default=None, metavar="SECONDS",
                          help="seconds between status polls (default 60; 1 with --emulate)")
    add_competition_data(campaign)
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
                      help="run the kernels in the local emulator (as `imet kaggle run`: root on "
                      "Linux for the read-only inputs and the kernels with internet off)")
    home.add_argument(
        "--input", type=input_source, action="append", default=[], metavar="NAME=PATH",
        help="with --emulate: PATH stands for the source named NAME, the slug of a dataset_sources "
        "or competition_sources entry of the kernels (e.g. imet-2019-fgvc6=DATA, imet-src=DATASET, "
        "imet-weights=WEIGHTS); repeatable. Every source the rendered kernels attach must be "
        "given, or the campaign is refused before anything runs, except the weights dataset: "
        "without it the sessions run without it, which members that train from random init (an "
        "arch without ImageNet weights, --no-pretrained) need not; a member that needs weights "
        "then looks for them as `imet train` does (input roots, caches, the network of a kernel "
        "with internet on), and its doctor stops the session in one line when they cannot be had")
    add_layout(home)
    home.add_argument("--session-limit", type=duration("--session-limit"), default=None,
                      metavar="DURATION", help="with --emulate: kill each session after this long "
                      "(seconds or 12h/30m/90s; default the plan's session_hours)")


def run_kaggle(args: argparse.Namespace) -> int:
    action = {"chain": _chain, "render": _render, "campaign": run_kaggle_campaign}
    if args.kaggle_command in action:
        return action[args.kaggle_command](args)
    from imet.kaggle.campaign.emulated import run_chain
    if args.chain < 1:
        raise UserError(f"--chain {args.chain}: must be at least 1")
    results = run_chain(args.kernel_dir, existing_inputs(args.input), args.out, args.time_limit,
                        args.chain, python=args.python, accelerator=args.accelerator,
                        layout=args.input_layout)
    for r in results:
        state = "killed at the time limit" if r.timed_out else f"exit {r.exit_code}"
        more = ", handed over" if r.handover else ""
        print(f"session v{r.version}: {state}{more} after {r.seconds:.1f}s; output {r.output}; "
              f"log {r.log}")
    last = results[-1]
    return 0 if last.ok and last.handover is None else (last.exit_code or 1)


def _chain(args: argparse.Namespace) -> int:
    """`imet kaggle chain`: a one-member campaign on Kaggle (driver.Chain)."""
    from imet.kaggle.campaign import remote
    from imet.kaggle.campaign.driver import Chain
    from imet.kaggle.render import OWNER, read_metadata, slug_of
    if args.max_sessions < 1:
        raise UserError(f"--max-sessions {args.max_sessions}: must be at least 1")
    if OWNER in (ref := read_metadata(args.kernel_dir)["id"]):
        raise UserError(f"{args.kernel_dir}: its id {ref!r} is a template; render it first with "
                        "`python -m imet kaggle render --owner YOU` and chain dist/kernels/<k>")
    backend = _kaggle_backend(args.poll, [read_metadata(args.kernel_dir)])
    try:
        out = args.out or Path("dist/chain") / slug_of(ref)
        return Chain(args.kernel_dir, backend, args.max_sessions, out, args.poll).run()
    except (OSError, ValueError) as err:
        raise remote.client_errors(err) from None


def _kaggle_backend(poll: float, metas: list[dict]):
    """The kaggle client's backend, once the Telegram dataset the kernels (their metadata)
    attach passed its check, before anything is written or pushed."""
    from imet.kaggle.campaign import remote
    try:
        backend = remote.KaggleBackend(remote.kaggle_api(), poll)
        backend.check_sources(metas)
    except (OSError, ValueError) as err:
        raise remote.client_errors(err) from None
    return backend


def _render(args: argparse.Namespace) -> int:
    from imet.kaggle.campaign.plan import KEYS as CAMPAIGN_KEYS, check
    from imet.kaggle.render import (TRAINER, load, plan_kernels, read_metadata,
                                    requested_accelerator, stale_kernels, templates_in,
                                    write_kernels)
    settings = load(args.config, CAMPAIGN_KEYS)
    if not (owner := args.owner or settings.owner):
        raise UserError("--owner is required (or an owner = \"NAME\" line in --config)")
    check(settings, args.kernels, check_args)
    competition_from(settings, args.data)
    chosen = render_accelerators(settings, args.accelerator, list(templates_in(args.kernels)))
    planned = plan_kernels(args.kernels, owner, settings, chosen)
    stale = stale_kernels(args.out, planned, args.force)
    for out in write_kernels(args.out, planned, args.force):
        print(f"rendered {out} (accelerator {requested_accelerator(read_metadata(out))})")
    for out in stale:
        shutil.rmtree(out)
        print(f"removed {out}: these settings no longer render it")
    trainer = args.out / next(folder for folder in planned if folder.startswith(TRAINER))
    print(f"first push of a trainer: `python -m imet kaggle chain {trainer}` (its kernel does "
          "not exist yet, so chain leaves its own output out of kernel_sources until it does); "
          f"once it exists, `kaggle kernels push -p {trainer}` works too")
    return 0


def check_args(command: str, args: list[str], where: str, whole: bool = True) -> set[str]:
    """Refuse what `imet <command>`'s own parser refuses (an unknown flag, a bad value) and, for
    `whole` train arguments (a member's all, not a part of them), what its config refuses
    (--epochs 0, --head-epochs past --epochs, …); the names (dests) of the settings `args`
    give, as that parser reads them."""
    from imet.commands.predict import configure_predict, configure_pseudo_label, configure_validate
    from imet.commands.train import configure_train
    from imet.config import RefusingParser, TrainConfig, given_settings
    parser = RefusingParser(prog=f"imet {command}", add_help=False)
    {"train": configure_train, "validate": configure_validate, "predict": configure_predict,
     "pseudo-label": configure_pseudo_label}[command](parser)
    # What each kernel passes itself where its command requires it: stand-ins, so that the
    # command's own parser can judge the plan's flags alone.
    given_by_kernel = {"train": [], "validate": ["--data", "D", "--run", "R"],
                       "predict": ["--data", "D", "--runs", "R"],
                       "pseudo-label": ["--data", "D", "--runs", "R", "--out", "O"]}[command]
    try:
        parsed, unknown = parser.parse_known_args(given_by_kernel + list(args))
    except UserError as err:
        raise UserError(f"{where}: imet {command}: {err}") from None
    if unknown:
        raise parser.no_flag(where, unknown[0])
    # A --config file or an --init model is read on Kaggle, where it is; the arch needs the
    # registry, which imports torch: the trainer's doctor refuses an unknown one first thing.
    if command == "train" and whole and not (parsed.config or parsed.init):
        TrainConfig.from_dict(given_settings(parsed), f"{where}: imet train")
    # Parsed alone (its only refusal then: the missing required flags), `args` leave each setting
    # they do not give at this marker; a list, which a repeatable flag copies before it appends.
    unset: list = []
    parser.set_defaults(**dict.fromkeys(vars(parsed), unset))
    alone = argparse.Namespace()
    with suppress(UserError):
        parser.parse_known_args(list(args), alone)
    return {name for name, value in vars(alone).items() if value is not unset}


def telegram():
    """(send one plain message to Telegram, close the sender, the chat's commands as the
    campaign's CommandRelay hears them); no-ops and None without Telegram."""
    from imet.observe.messages import CampaignCommands, Outgoing, pack
    from imet.observe.telegram import CommandRelay, ConfigProblem, TelegramSender, load_config
    try:
        config = load_config(os.environ, use_kaggle_secrets=False)
    except ConfigProblem as problem:
        if os.environ.get("IMET_TELEGRAM_TOKEN"):
            print(f"imet kaggle campaign: Telegram off: {problem}", file=sys.stderr)
        return (lambda text: None), (lambda: None), None
    commands = CampaignCommands()
    sender = TelegramSender(config, listen=CommandRelay(config, commands))

    def send(text: str) -> None:
        for piece in pack(text.splitlines()):
            sender.submit(Outgoing("campaign", piece, html=False))
    return send, sender.close, commands


def run_kaggle_campaign(args: argparse.Namespace) -> int:
    from imet.kaggle import LAYOUTS
    from imet.kaggle.campaign import plan as campaign_plan, remote
    from imet.kaggle.campaign.driver import Campaign
    from imet.kaggle.campaign.state import load_state
    from imet.kaggle.render import plan_kernels, templates_in
    home_only = ["--input"] * bool(args.input) + ["--session-limit"] * (
        args.session_limit is not None) + ["--input-layout"] * (args.input_layout != LAYOUTS[0])
    if not args.emulate and home_only:
        raise UserError(f"{home_only[0]} is for --emulate; add --emulate to rehearse the "
                        "campaign at home")
    plan = campaign_plan.load(args.plan, args.kernels, check_args)
    competition_from(plan.settings, args.data, existing_inputs(args.input) if args.emulate
                     else None)
    chosen = render_accelerators(plan.settings, args.accelerator, list(templates_in(args.kernels)))
    poll = args.poll if args.poll is not None else (1.0 if args.emulate else 60.0)
    planned = plan_kernels(args.kernels, plan.owner, plan.settings, chosen)
    metas = [json.loads(files["kernel-metadata.json"]) for files in planned.values()]
    state = load_state(args.out, plan, "emulator" if args.emulate else "kaggle")  # reads only
    backend = _emulator(args, plan, planned) if args.emulate else _kaggle_backend(poll, metas)
    args.out.mkdir(parents=True, exist_ok=True)
    send, close, commands = telegram()
    try:
        return Campaign(plan, args.out, args.kernels, state, chosen, backend, poll,
                        notify=send, commands=commands).run()
    except (OSError, ValueError) as err:
        if args.emulate:  # the machine's trouble (disk, permissions): one line, not a traceback
            raise UserError(f"imet kaggle campaign --emulate: {type(err).__name__}: "
                            f"{err}".splitlines()[0]) from None
        raise remote.client_errors(err) from None
    finally:
        close()


def _emulator(args: argparse.Namespace, plan, planned: dict):
    """The emulator backend, once every source the kernels (`planned`) attach has its --input,
    the Telegram dataset one holding its file."""
    from imet.kaggle.campaign.emulated import EmulatorBackend, missing_inputs
    from imet.kaggle.render import WEIGHTS_DATASET, slug_of
    from imet.observe.telegram import DATASET, DATASET_FILE
    inputs = existing_inputs(args.input)
    weights = slug_of(plan.settings.weights_dataset or WEIGHTS_DATASET)
    if missing := missing_inputs(planned, inputs, {weights}):
        raise UserError(f"--emulate: the kernels attach {', '.join(missing)}, which no --input "
                        f"gives; add --input {missing[0]}=PATH"
                        + (" (and the others)" if len(missing) > 1 else ""))
    for name, path in inputs.items():
        if plan.settings.telegram and slug_of(name) == DATASET and \
                not (path / DATASET_FILE).is_file():
            raise UserError(f"--input {name}={path}: no {DATASET_FILE} in it, so the sessions "
                            "would run without Telegram; put the file there as `python -m imet "
                            "notify-setup` writes it (README: Telegram)")
    if weights not in {slug_of(name) for name in inputs}:
        print(f"imet kaggle campaign: no --input {weights}=PATH: the sessions run without the "
              "weights dataset", flush=True)
    limit = args.session_limit if args.session_limit is not None else plan.session_hours * 3600
    return EmulatorBackend(args.out / "emulator", inputs, limit, layout=args.input_layout)
