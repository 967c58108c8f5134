"""`imet demo` (the whole Kaggle flow at home), `imet notify-test` (one Telegram message, to
check the token and chat id) and `imet weights fetch` (pretrained weights, online, into a folder
ready for `kaggle datasets create`).

The demo runs on mini-iMet in the local emulator, each step printed as the command a user would
type, then run: one campaign of two members (folds 0, 1) trained in parallel in short sessions
(180 s, at most 300 steps), so each hands over and resumes as across 12-hour Kaggle sessions."""
from __future__ import annotations

import argparse
import asyncio
import html
import importlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

from imet.errors import UserError

REPO = Path(__file__).resolve().parents[2]
# Minutes on 2 CPU cores (40 epochs, no early stopping, ~750 steps a member on 600 images) with
# an arch without ImageNet weights (config.RANDOM_INIT_DEFAULTS); --session-steps 300 hands over
# as a spent budget would, so members resume on any machine, not by the luck of their speed. Each
# session first pays a Kaggle session's bootstrap install (~20 s), doctor and cache build.
TRAIN_ARGS = ("--arch tiny_cnn --image-size 64 --batch-size 32 --epochs 40 --patience 0 "
              "--num-workers 0 --progress-every-s 15 --session-steps 300")
EVAL_ARGS = "--tta none,hflip --batch-size 64 --num-workers 0"
MEMBERS = (("f0", 0), ("f1", 1))


def configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.description = ("`python -m imet demo`: the whole Kaggle flow at home, on mini-iMet, "
                          "in the local emulator.")
    parser.add_argument("--out", type=Path, default=Path("demo"),
                        help="folder for everything the demo writes (default demo/; replaced)")
    parser.add_argument("--session-limit", default="180s", metavar="DURATION",
                        help="the emulated Kaggle session limit, the plan's session_hours "
                        "(default 180s)")
    parser.add_argument("--max-sessions", type=int, default=20, metavar="N",
                        help="most sessions of each member, the plan's max_sessions (default 20)")


def _step(title: str, argv: list[str]) -> None:
    print(f"\n== {title}\n$ {shlex.join(argv)}", flush=True)
    if code := subprocess.run(argv, env=os.environ, cwd=REPO).returncode:
        raise UserError(f"demo step '{title}' failed with exit code {code} (see above)")


def _imet(*args: object) -> list[str]:
    return [sys.executable, "-m", "imet", *map(str, args)]


def plan_text(session_limit: str, max_sessions: int) -> str:
    """The demo's campaign plan (README, "A campaign"): what a user would write."""
    from imet.config import parse_duration
    hours = parse_duration(session_limit, "--session-limit") / 3600
    lines = ["# The demo's campaign: see `python -m imet kaggle campaign --help`, README.",
             'owner = "demo"',
             '# The kernels ask Kaggle for GPU T4 x2; at home they run on the CPU (their doctor',
             "# stops a session that asked for a GPU and got none).", 'accelerator = "none"',
             "n_folds = 2", "parallel = 2", f"max_sessions = {max_sessions}", "retries = 1",
             f"session_hours = {hours:.6g}", "gpu_hours = 2",
             f"train_args = {json.dumps(TRAIN_ARGS.split())}",
             f"validate_args = {json.dumps(EVAL_ARGS.split())}",
             f"predict_args = {json.dumps(EVAL_ARGS.split() + ['--ensemble', 'mean'])}"]
    for name, fold in MEMBERS:
        lines += ["", "[[member]]", f'name = "{name}"', f"fold = {fold}"]
    return "\n".join(lines) + "\n"


def run_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    data, dataset, camp = out / "data", out / "dataset", out / "campaign"
    _step("1. mini-iMet, the embedded data set", _imet("mini-imet", "--out", data))
    _step("2. check every file up front", _imet("check-data", "--data", data))
    _step("3. the source dataset: imet + pinned wheels for this interpreter",
          [sys.executable, "packaging/build_dataset.py", "--out", str(dataset), "--owner", "demo",
           "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}"])
    plan = out / "campaign.toml"
    plan.write_text(plan_text(args.session_limit, args.max_sessions), encoding="utf-8")
    print(f"\n== 4. the campaign's plan: two members, folds 0 and 1 ({plan})\n"
          f"{plan.read_text(encoding='utf-8')}", end="", flush=True)
    _step("5. the campaign in the emulator: both trainers in parallel, each over several "
          "sessions, then validation and inference over both",
          _imet("kaggle", "campaign", plan, "--out", camp, "--emulate",
                "--input", f"imet-2019-fgvc6={data}", "--input", f"imet-src={dataset}"))
    emulated = camp / "emulator"
    _step("6. F2 of submission.csv against the true test labels",
          _imet("score", "--truth", data / "test_labels.csv", "--pred", camp / "submission.csv",
                "--labels", data / "labels.csv"))
    _step("7. the run registry carried through every kernel",
          _imet("runs", emulated / "imet-inference" / "output", "--plot", out / "runs.png"))
    from imet.commands.predict import score_files
    f2 = score_files(data / "test_labels.csv", camp / "submission.csv").f2
    jobs = json.loads((camp / "campaign.json").read_text(encoding="utf-8"))["jobs"]
    sessions = ", ".join(f"{name} {len(jobs[name]['sessions'])}" for name, _ in MEMBERS)
    print(f"\ndemo done in {time.monotonic() - started:.0f}s; sessions per member: {sessions}; "
          f"submission F2 {f2:.4f}.\n  submission: {camp / 'submission.csv'}\n"
          f"  campaign table: {camp / 'status.md'}\n  training plots and metrics: "
          f"{emulated}/imet-trainer-f*/output/plots, …/metrics.csv\n"
          f"  validation report: {emulated / 'imet-validation' / 'output'}\n"
          f"  session logs: {emulated}/*/v*/log.txt\n  runs compared: {out / 'runs.png'}")
    return 0


def configure_notify_test(parser: argparse.ArgumentParser) -> None:
    from imet.commands.kaggle import add_input_root
    parser.description = (
        "Send one Telegram message with the settings a training run would use "
        "(IMET_TELEGRAM_TOKEN, IMET_TELEGRAM_CHAT_ID and optional IMET_TELEGRAM_API_URL, "
        "from the environment, Kaggle Secrets, then imet-telegram.json under --input-root: "
        "the imet-telegram dataset) and say where the token came from, or what is wrong.")
    parser.add_argument("--text", default=None,
                        help="message to send (default: a short test line naming this host)")
    add_input_root(parser, "imet-telegram.json, as `imet train` searches it")
    _add_timeout(parser)


def _add_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for Telegram on each request (default: 10)")


def _telegram_config(use_kaggle_secrets: bool, input_roots=()):
    """The Telegram settings `notify-test`/`notify-setup` check, found as training finds them,
    with python-telegram-bot there to check them; a UserError saying what is missing
    otherwise."""
    from imet.observe.telegram import ConfigProblem, load_config
    try:
        config = load_config(os.environ, use_kaggle_secrets=use_kaggle_secrets,
                             input_roots=input_roots)
    except ConfigProblem as problem:
        raise UserError(str(problem)) from None
    try:
        importlib.import_module("telegram")
    except ImportError:
        raise UserError("python-telegram-bot is not installed; run "
                        "pip install 'python-telegram-bot>=22,<23'") from None
    return config


def run_notify_test(args: argparse.Namespace) -> int:
    config = _telegram_config(use_kaggle_secrets=True, input_roots=args.input_root)
    text = args.text or (f"✅ imet notify-test from {socket.gethostname()} at "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}: this chat will receive "
                         "imet's training reports.")
    username = asyncio.run(_send(config, html.escape(text, quote=False), args.timeout))
    print(f"imet notify-test: sent a message to chat {config.chat_id} as @{username} "
          f"(token from {config.source})")
    return 0


def configure_notify_setup(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Check IMET_TELEGRAM_TOKEN and IMET_TELEGRAM_CHAT_ID from the environment with one "
        "getMe and one message, then write them into the private Kaggle dataset "
        "OWNER/imet-telegram (created, or a new version) through the kaggle client. Attached to "
        "a kernel it gives the token to every session, where a push drops Kaggle Secrets. "
        "Refuses a dataset of that name that is public.")
    parser.add_argument("--owner", required=True, help="your Kaggle user name")
    _add_timeout(parser)


def run_notify_setup(args: argparse.Namespace) -> int:
    import tempfile

    from imet.kaggle.campaign.remote import (client_errors, dataset_private, dataset_version,
                                             kaggle_api, upload_dataset)
    from imet.kaggle.render import telegram_dataset
    from imet.observe.telegram import CHAT_VAR, DATASET, DATASET_FILE, TOKEN_VAR
    config = _telegram_config(use_kaggle_secrets=False)
    ref = telegram_dataset(args.owner)  # the dataset render attaches
    username = asyncio.run(_send(config, f"✅ imet notify-setup: this chat will receive the "
                                 f"reports of kernels attaching {html.escape(ref)}.",
                                 args.timeout))
    api = kaggle_api()
    try:
        version = dataset_version(api, ref)
        if version and dataset_private(api, ref) is False:
            raise UserError(f"the dataset {ref} is public: it would publish the token; delete "
                            "it on Kaggle (or make it private) and run this again")
        # The token is on disk only in this private folder, only while the client uploads it.
        with tempfile.TemporaryDirectory(prefix="imet-telegram-") as folder:
            (Path(folder) / "dataset-metadata.json").write_text(json.dumps(
                {"title": DATASET, "id": ref, "licenses": [{"name": "other"}]}))
            (Path(folder) / DATASET_FILE).write_text(json.dumps(
                {TOKEN_VAR: config.token, CHAT_VAR: config.chat_id}))
            os.chmod(Path(folder) / DATASET_FILE, 0o600)
            upload_dataset(api, Path(folder), new=not version, notes="imet notify-setup")
    except OSError as err:  # requests' HTTP errors; never the token (it is in no request URL)
        raise client_errors(err) from None
    print(f"imet notify-setup: @{username} wrote to chat {config.chat_id}; the private dataset "
          f"{ref} {'has a new version' if version else 'was created'}: `telegram = true` in "
          "the run's settings (run.toml, the campaign's plan) attaches it to the kernels that "
          "send")
    return 0


async def _send(config, text: str, timeout: float) -> str:
    from telegram.error import TelegramError

    from imet.observe.telegram import DEFAULT_API_URL, explain, make_bot
    bot = make_bot(config, timeout, timeout)
    step = "checking the token (getMe)"
    try:
        await bot.initialize()
        step = f"sending to chat {config.chat_id}"
        await bot.send_message(config.chat_id, text, parse_mode="HTML")
        return bot.username
    except TelegramError as err:
        raise UserError(f"{step} failed: "
                        f"{explain(err, config.api_url != DEFAULT_API_URL)}") from None
    except Exception as err:  # anything else still gets one clean line, token scrubbed
        raise UserError(config.scrub(f"{step} failed: {type(err).__name__}: {err}")) from None
    finally:
        with suppress(Exception):
            await asyncio.wait_for(bot.shutdown(), timeout)


URL_BASE_ENV = "IMET_WEIGHTS_URL_BASE"


def configure_weights(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Download pretrained ImageNet weights on an online machine into a flat folder that "
        "`kaggle datasets create -p DIR` uploads as it is (dataset <owner>/imet-weights). timm "
        "archs come from the Hugging Face hub (HF_ENDPOINT is honoured), pretrainedmodels and "
        "torchvision archs from their official URLs (data.lip6.fr, download.pytorch.org). weights-manifest.json records the sha256, "
        "size and source of every file. Interrupted, the same command resumes: finished files "
        "are kept, a cut URL download continues where it stopped. Attach the dataset to a kernel "
        "and `imet train --pretrained` finds the files under the input root.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fetch = sub.add_parser("fetch", help="download the weights of some archs into DIR",
                           description=parser.description)
    fetch.add_argument("archs", nargs="*", metavar="ARCH",
                       help="e.g. timm:seresnext50_32x4d.racm_in1k, se_resnext50_32x4d, "
                            "resnet18 (default: the archs of the trainer kernels that `imet "
                            "kaggle render` writes from --config, else from the templates)")
    fetch.add_argument("--config", type=Path, metavar="FILE",
                       help="the run's settings file render and campaign read (TOML): with no "
                            "ARCH, fetch what its members train")
    fetch.add_argument("--kernels", type=Path, default=Path("kernels"), metavar="DIR",
                       help="the kernel templates (default: kernels)")
    fetch.add_argument("--out", required=True, metavar="DIR", help="the dataset folder to fill")
    fetch.add_argument("--owner", required=True, metavar="NAME",
                       help="Kaggle user that owns the dataset (its id: NAME/imet-weights)")
    fetch.add_argument("--url-base", default=os.environ.get(URL_BASE_ENV), metavar="URL",
                       help=f"fetch pretrainedmodels/torchvision files from URL/<file name> "
                            f"instead of their official hosts (default: ${URL_BASE_ENV})")


def kernel_archs(kernels: Path, config: Path | None) -> list[str]:
    """The archs whose ImageNet weights the rendered trainer kernels load: each member's
    `--arch` (TrainConfig's default where none is given), unless it trains --no-pretrained."""
    import dataclasses

    from imet.config import TrainConfig, train_parser
    from imet.kaggle.campaign.plan import KEYS as CAMPAIGN_KEYS
    from imet.kaggle.render import load, member_train_args, members_of, templates_in
    from imet.models.weights import has_pretrained_weights

    settings = load(config, CAMPAIGN_KEYS)
    if not (kernels / "trainer" / "kernel-metadata.json").is_file():
        raise UserError(f"no ARCH given and {kernels}/ holds no trainer template to read the "
                        "default from: name the archs, or pass --kernels DIR")
    trainer = templates_in(kernels)["trainer"]
    default = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "arch")
    archs = []
    for member in members_of(settings, trainer):
        given, _ = train_parser().parse_known_args(member_train_args(settings, member, trainer))
        arch = given.arch or default
        if given.pretrained is not False and has_pretrained_weights(arch):
            archs.append(arch)
    if not archs:
        raise UserError(f"{config or kernels}: no trainer member starts from ImageNet weights; "
                        "name the archs to fetch")
    return list(dict.fromkeys(archs))


def run_weights(args) -> int:
    from imet.models.weights import MANIFEST, fetch_weights
    if args.config and args.archs:
        raise UserError("give ARCH names or --config, not both")
    archs = args.archs or kernel_archs(args.kernels, args.config)
    manifest = fetch_weights(archs, args.out, args.owner, url_base=args.url_base,
                             log=lambda line: print(line, flush=True))
    total = sum(entry["size"] for entry in manifest["files"].values())
    print(f"{args.out}: {len(manifest['files'])} weight files ({total / 2 ** 20:.1f} MiB), "
          f"{MANIFEST} and dataset-metadata.json; upload with "
          f"`kaggle datasets create -p {args.out}`")
    return 0
