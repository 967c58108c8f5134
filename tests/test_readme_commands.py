"""Every command that README.md and docs/*.md print, run as printed.

The commands are read from the fenced shell blocks (```bash) of the files themselves; only the
placeholders the README names are filled in: YOUR_KAGGLE_NAME (the stand-in Kaggle's user) and
DATA (mini-iMet). They run in document order from a folder laid out like a clone (repo_like),
where `python` and `kaggle` are this interpreter and its client (what `. .venv/bin/activate`
gives), and the services they talk to are stood in: Kaggle's
API (tests/kaggle_standin.py, through the real kaggle client) and the weights hosts
(tests/hub_standin.py, through huggingface_hub and urllib). The TOML blocks are the files the
commands read (run.toml, plan.toml).

Each printed command is run, unless NOT_RUN names it with the reason (each entry is reported as
a skipped test with that reason); a command of imet that is not run is still parsed by imet's
own parser. The Telegram settings are in the environment, as the README asks, against the
stand-in Bot API (tests/telegram_standin.py). The commands of "Rehearse at home first" run the
kernels in the emulator (root only), each kernel's settings made small through
IMET_KERNEL_ARGS, as the README says a rehearsal may; the others run without root. Chain and
campaign get `--poll` (POLL_FLAGS): they wait 60 s between polls by default."""
from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from hub_standin import HubStandin
from kaggle_standin import USER, KaggleStandin
from telegram_standin import TelegramStandin

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell"}
PLACEHOLDERS = ("YOUR_KAGGLE_NAME", "DATA")
REHEARSAL = "Rehearse at home first"

# Printed commands that are not run here, each with why; matched by the start of the command as
# printed. Every entry must match a printed command (a stale entry fails the inventory test).
NOT_RUN = {
    "make demo": "the whole flow in the emulator, minutes: tests/test_kaggle_campaign_emulate.py "
                 "runs its campaign, tests/test_kaggle_e2e.py its kernels",
    "make test": "the test suite, this test included",
    ". .venv/bin/activate": "this test runs in .venv: `python` is its interpreter, `kaggle` its "
                            "client",
    "kaggle auth login": "an interactive sign-in at kaggle.com; the stand-in takes a throwaway "
                         "kaggle.json instead",
    "torchrun --nproc_per_node 2": "two processes training se_resnext50_32x4d need its ImageNet "
                                   "weights and take minutes on a CPU: tests/test_distributed.py "
                                   "trains under torchrun",
    "python -m imet kaggle campaign plan.toml --out emu/campaign --emulate":
        "trains every member of the plan in the emulator (minutes): "
        "tests/test_kaggle_campaign_emulate.py runs an emulated campaign",
}
# Added to a command as printed: without it a status poll waits 60 s.
POLL_FLAGS = {"python -m imet kaggle chain": ["--poll", "0.01"],
              "python -m imet kaggle campaign": ["--poll", "0.01"]}
KERNEL_ARGS = {
    "kernels/trainer": "--arch tiny_cnn --image-size 32 --batch-size 8 --epochs 2 --patience 0 "
                       "--num-workers 0 --notify off",
    "kernels/validation": "--tta none --batch-size 16 --num-workers 0",
    "kernels/inference": "--tta none --batch-size 16 --num-workers 0",
}
COMMAND_START = re.compile(r"^(python|kaggle|make|torchrun|\.) ")


@dataclass
class Block:
    path: Path
    line: int
    heading: str
    lang: str
    text: str


@dataclass
class Command:
    block: Block
    text: str  # as printed, continuation lines joined, the comment cut

    def __str__(self):
        return f"{self.block.path.name}:{self.block.line} ({self.block.heading}): {self.text}"

    def argv(self, values: dict) -> list[str]:
        return [fill(a, values) for a in shlex.split(self.text)]


def heading_text(line: str) -> str:
    return line.lstrip("#").strip()


def blocks(path: Path) -> list[Block]:
    found, heading, fence = [], "", None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if fence is None and line.startswith("```"):
            fence = Block(path, number, heading, line[3:].strip(), "")
        elif fence is not None and line.startswith("```"):
            found.append(fence)
            fence = None
        elif fence is not None:
            fence.text += line + "\n"
        elif line.startswith("#"):
            heading = heading_text(line)
    assert fence is None, f"{path.name}:{fence.line}: a fence that never closes"
    return found


def all_blocks() -> list[Block]:
    return [b for path in DOCUMENTS for b in blocks(path)]


def commands_of(block: Block) -> list[Command]:
    joined = block.text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(Command(block, shlex.join(words)))
    return out


def all_commands() -> list[Command]:
    return [c for b in all_blocks() if b.lang in SHELL for c in commands_of(b)]


def fill(text: str, values: dict) -> str:
    for name, value in values.items():
        text = re.sub(rf"\b{name}\b", value, text)
    return text


def not_run_reason(command: Command) -> str | None:
    return next((why for start, why in NOT_RUN.items() if command.text.startswith(start)), None)


def imet_argv(argv: list[str]) -> list[str] | None:
    """The arguments imet's parser gets, for a command that runs imet."""
    if "-m" in argv and argv[argv.index("-m") + 1:argv.index("-m") + 2] == ["imet"]:
        return argv[argv.index("-m") + 2:]
    return None


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        fenced ^= line.startswith("```")
        if not fenced and re.match(r"^#{1,6} ", line):
            base = anchor(heading_text(line))
            seen[base] = seen.get(base, -1) + 1
    return {base + (f"-{n}" if n else "") for base, count in seen.items()
            for n in range(count + 1)}


# ---------------------------------------------------------------------------------- inventory


def test_every_printed_command_is_run_or_says_why_not():
    commands = all_commands()
    assert len(commands) >= 15, "the shell blocks were not found"
    for command in commands:
        argv = command.argv({name: name.lower() for name in PLACEHOLDERS})
        left = sorted({w for a in argv for w in re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", a)})
        assert not left, f"{command}: {left} are no placeholders the README names " \
                         f"({', '.join(PLACEHOLDERS)}): print a command that runs"
        assert not any(a.startswith("[") or a.endswith("]") for a in argv), \
            f"{command}: [optional] parts make a synopsis, not a command"
        if not_run_reason(command) and (args := imet_argv(argv)) is not None:
            from imet.cli import build_parser
            try:
                build_parser(args).parse_args(args)
            except SystemExit as exc:
                pytest.fail(f"{command}: imet's parser refuses it (exit {exc.code})")


@pytest.mark.parametrize("start", list(NOT_RUN))
def test_not_run(start):
    printed = [c for c in all_commands() if c.text.startswith(start)]
    assert printed, f"NOT_RUN lists {start!r}, which no document prints any more"
    pytest.skip(f"{printed[0]}: not run: {NOT_RUN[start]}")


def test_no_command_hides_in_a_block_that_is_not_a_shell_block():
    for block in all_blocks():
        if block.lang in SHELL:
            continue
        if block.lang == "toml":
            tomllib.loads(fill(block.text, {"YOUR_KAGGLE_NAME": USER}))
            continue
        for line in block.text.splitlines():
            assert not COMMAND_START.match(line), \
                f"{block.path.name}:{block.line}: {line!r} in a ```{block.lang} block: " \
                "mark it ```bash so that it is run"


def test_the_readme_names_its_placeholders():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    quick = text.split("## Quick start on Kaggle", 1)[1].split("\n## ", 1)[0]
    for name in PLACEHOLDERS:
        assert f"`{name}`" in quick, f"the quick start does not say what {name} stands for"


def test_the_quick_start_is_short_and_each_line_is_its_sections_command():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    readme = text.split("## Quick start on Kaggle", 1)
    assert "## Two commands" in readme[0] and "## Commands" not in readme[0] \
        and "## Telegram" not in readme[0], "the quick start follows 'Two commands' and " \
                                            "comes before the command table and Telegram"
    quick = readme[1].split("\n## ", 1)[0].strip()
    assert len(quick.splitlines()) <= 20
    items = re.split(r"\n(?=\d+\. )", quick.split("\n\n", 1)[1])
    by_heading: dict[str, list[Command]] = {}
    for command in all_commands():
        by_heading.setdefault(anchor(command.block.heading), []).append(command)
    for item in items:
        links = re.findall(r"\]\(#([^)]+)\)", item)
        assert links, f"quick start line without a link to its section: {item!r}"
        printed = [c.text for link in links for c in by_heading.get(link, [])]
        for code in re.findall(r"`([^`]+)`", item):
            if not COMMAND_START.match(code):
                continue
            head, _, tail = code.partition(" … ")
            assert any(p == code or (tail and p.startswith(head + " ") and p.endswith(" " + tail))
                       for p in printed), \
                f"quick start `{code}` is not a command its sections ({', '.join(links)}) print"


def test_every_link_between_the_documents_lands():
    for path in [*DOCUMENTS, REPO / "benchmarks" / "README.md"]:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, fragment = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            assert linked.exists(), f"{path.name}: link to {target}: no such file"
            if fragment and linked.suffix == ".md":
                assert fragment in anchors(linked), f"{path.name}: link to {target}: no such heading"


# ------------------------------------------------------------------------------------- running


def run_printed(command: Command, argv: list[str], cwd: Path, env: dict):
    if argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    elif argv[0] == "kaggle":
        argv = [str(Path(sys.executable).parent / "kaggle"), *argv[1:]]
    for start, flags in POLL_FLAGS.items():
        if command.text.startswith(start):
            argv = [*argv, *flags]
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (str(command), proc.stdout[-3000:], proc.stderr[-2000:])
    if argv[0].endswith("kaggle"):  # the client says some failures with exit 0
        assert "error" not in proc.stdout.lower(), (str(command), proc.stdout)
    return proc


def repo_like(tmp_path: Path) -> Path:
    """A clone's root: the build's defaults are relative to the folder its script is in
    (dist/kaggle-dataset, its source), so the source and packaging/ are copied; the kernel
    templates and the wheel cache are linked."""
    cwd = tmp_path / "clone"
    cwd.mkdir()
    for name in ("imet", "packaging"):
        shutil.copytree(REPO / name, cwd / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, cwd / name)
    for name in ("kernels", "wheels"):
        (cwd / name).symlink_to(REPO / name)
    return cwd


def no_account_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KAGGLE_") and "proxy" not in k.lower()}
    return {**env, "KAGGLE_CONFIG_DIR": str(tmp_path / "no-kaggle-config"),
            "IMET_TELEGRAM_TOKEN": ""}


class AnySession(dict):
    """Every pushed version of every kernel ends well: a trainer with its run finished, the
    validation with thresholds, the inference with a submission."""

    def get(self, slug, default=None):
        name = slug.split("/")[-1]
        if name.startswith("imet-trainer-"):
            run = {"format": "imet-run", "run_name": name, "status": "finished", "best_f2": 0.5,
                   "sessions": [{"session": 1, "wall_s": 60.0}]}
            files = {"run.json": json.dumps(run).encode(), "metrics.csv": b"step,f2\n"}
        elif name == "imet-validation":
            files = {"thresholds.json": b"{}"}
        else:
            files = {"submission.csv": b"id,attribute_ids\nabc,1 2\n"}
        return [{"files": files}] * 100


class AnyFile(dict):
    """A weights host that has every file asked for."""

    def __init__(self, data):
        super().__init__()
        self.data = data

    def get(self, key, default=None):
        return self.data


def check_effect(command: Command, cwd: Path, kaggle: KaggleStandin, before: int) -> None:
    """What a command is for, beyond its exit code."""
    calls = kaggle.calls[before:]
    words = command.text.split()
    if words[:3] in (["kaggle", "datasets", "create"], ["kaggle", "datasets", "version"]):
        folder = cwd / words[words.index("-p") + 1]
        ref = json.loads((folder / "dataset-metadata.json").read_text())["id"]
        assert ref.startswith(USER + "/") and kaggle.datasets.get(ref, {}).get("versions"), \
            f"{command}: no version of {ref} reached Kaggle"
    if words[:3] == ["kaggle", "kernels", "push"]:
        folder = cwd / words[words.index("-p") + 1]
        slug = json.loads((folder / "kernel-metadata.json").read_text())["id"]
        assert any(c.get("method") == "SaveKernel" and c["body"].get("slug") == slug
                   for c in calls), f"{command}: {slug} was not pushed"
    if command.text.startswith("python -m imet notify-setup"):
        dataset = kaggle.datasets.get(f"{USER}/imet-telegram", {})
        assert dataset.get("private") is True and any(
            f["name"] == "imet-telegram.json" for f in dataset["versions"][-1]["files"]), \
            f"{command}: no private imet-telegram dataset with its file"
    if words[:4] == ["python", "-m", "imet", "kaggle"] and words[4] in ("chain", "campaign"):
        assert "GetDataset" in [c.get("method") for c in calls], \
            f"{command}: pushed without asking Kaggle about the imet-telegram dataset"
    if "imet kaggle campaign" in command.text:
        out = cwd / words[words.index("--out") + 1]
        assert (out / "submission.csv").is_file(), f"{command}: no submission came back"


def kaggle_files(blocks_: list[Block], cwd: Path, mini_data: Path) -> None:
    """The files a user writes before the commands that read them: the README's render settings
    as run.toml, its campaign keys on top of them as plan.toml, and a folds.csv (mini-iMet's)
    for the plan's `folds` key."""
    toml = {b.heading: fill(b.text, {"YOUR_KAGGLE_NAME": USER}) for b in blocks_
            if b.lang == "toml"}
    run = toml["2. Render the kernels for your user name"]
    (cwd / "run.toml").write_text(run)
    campaign = next(text for heading, text in toml.items() if heading.startswith("A campaign"))
    own = set(tomllib.loads(campaign))
    top, members = (re.split(r"^(?=\[\[member\]\])", run, maxsplit=1, flags=re.M) + [""])[:2]
    kept = [line for line in top.splitlines()
            if not line.strip() or line.split("=", 1)[0].strip() not in own]
    (cwd / "plan.toml").write_text(campaign + "\n".join(kept) + "\n" + members)
    shutil.copy(mini_data / "folds.csv", cwd / "folds.csv")


def test_the_kaggle_path_runs_as_printed(mini_data, tmp_path):
    cwd = repo_like(tmp_path)
    readme_blocks = all_blocks()
    kaggle_files(readme_blocks, cwd, mini_data)
    values = {"YOUR_KAGGLE_NAME": USER, "DATA": str(mini_data)}
    ran = []
    with KaggleStandin() as kaggle, HubStandin() as hub, TelegramStandin() as telegram:
        from safetensors.torch import save
        import torch
        kaggle.sessions = AnySession()
        hub.repos = AnyFile({"model.safetensors": save({"w": torch.zeros(2)})})
        hub.files = AnyFile(b"pretrained weights, as far as the fetch can tell" * 100)
        env = {**no_account_env(tmp_path), **kaggle.client_env(tmp_path / "home"),
               "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",  # the hub is not Kaggle
               "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"),
               "HF_HUB_DISABLE_TELEMETRY": "1", "IMET_WEIGHTS_URL_BASE": hub.url + "/files",
               "TORCH_HOME": str(tmp_path / "torch-home"),
               "IMET_TELEGRAM_TOKEN": "123456789:AAHreadmeStandinToken_abcdefghijklm",
               "IMET_TELEGRAM_CHAT_ID": "42", "IMET_TELEGRAM_API_URL": telegram.api_url}
        for command in all_commands():
            if not_run_reason(command) or command.block.heading == REHEARSAL:
                continue
            before = len(kaggle.calls)
            started = time.monotonic()
            run_printed(command, command.argv(values), cwd, env)
            print(f"{time.monotonic() - started:5.1f}s {command.text}")
            check_effect(command, cwd, kaggle, before)
            ran.append(command.text)
    assert any(c.startswith("python -m imet kaggle render") for c in ran) and \
        any(c.startswith("kaggle kernels push") for c in ran), ran


@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() != 0, reason="the emulator's isolation needs root")
def test_the_rehearsal_runs_as_printed_without_a_kaggle_account(mini_data, tmp_path):
    build, *runs = [c for c in all_commands() if c.block.heading == REHEARSAL]
    assert build.text.startswith("python packaging/build_dataset.py") and \
        "--out dist/local-dataset" in build.text and "--owner" not in build.text
    cwd = repo_like(tmp_path)
    env = no_account_env(tmp_path)
    kernels = []
    for command in [build, *runs]:
        argv = command.argv({"DATA": str(mini_data)})
        extra = {}
        if command is not build:
            kernel = argv[argv.index("run") + 1]
            kernels.append(kernel)
            extra = {"IMET_KERNEL_ARGS": KERNEL_ARGS[kernel]}
        run_printed(command, argv, cwd, {**env, **extra})
    assert kernels == list(KERNEL_ARGS)
    assert not (cwd / "dist" / "local-dataset" / "dataset-metadata.json").exists()
    submission = cwd / "emu" / "inference" / "output" / "submission.csv"
    with open(mini_data / "sample_submission.csv") as f:
        expected = {row["id"] for row in csv.DictReader(f)}
    with open(submission) as f:
        assert {row["id"] for row in csv.DictReader(f)} == expected
