"""`python -m imet demo`: the whole Kaggle flow at home, on mini-iMet, in the local emulator.

Each step is the command a user would type; it is printed, then run. The trainer's sessions are
short (a 120 s limit, at most 500 steps each), so the run hands over and resumes in later
sessions, exactly as it would across 12-hour Kaggle sessions."""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from imet.errors import UserError

REPO = Path(__file__).resolve().parents[2]
# Small enough for 2 CPU cores in minutes (40 epochs without early stopping, 1,200 steps), with
# the defaults of an arch without ImageNet weights (engine/config.py RANDOM_INIT_DEFAULTS). The
# trainer hands over after 500 steps of a session (--session-steps, as a spent budget would), so
# it resumes in later sessions on any machine, not by the luck of its speed. Each session first
# pays what a Kaggle session pays: the bootstrap's install into a fresh environment (~20 s),
# the doctor and the cache build; ~50 s of training fit in one 120 s session.
TRAIN_ARGS = ("--arch tiny_cnn --image-size 64 --batch-size 32 --epochs 40 --patience 0 "
              "--num-workers 0 --progress-every-s 15 --session-steps 500")
EVAL_ARGS = "--tta none,hflip --batch-size 64 --num-workers 0"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--out", type=Path, default=Path("demo"),
                        help="folder for everything the demo writes (default demo/; replaced)")
    parser.add_argument("--session-limit", default="120s", metavar="DURATION",
                        help="the emulated Kaggle session limit of the trainer (default 120s)")
    parser.add_argument("--max-sessions", type=int, default=20, metavar="N",
                        help="most trainer sessions to chain (default 20)")


def _step(title: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    print(f"\n== {title}\n$ {shown + ' ' if shown else ''}{shlex.join(argv)}", flush=True)
    code = subprocess.run(argv, env={**os.environ, **(env or {})}, cwd=REPO).returncode
    if code:
        raise UserError(f"demo step '{title}' failed with exit code {code} (see above)")


def _imet(*args: object) -> list[str]:
    return [sys.executable, "-m", "imet", *map(str, args)]


def _last_output(folder: Path) -> Path:
    versions = sorted(folder.glob("v*"), key=lambda p: int(p.name[1:]))
    return versions[-1] / "kaggle" / "working"


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    data, dataset, kaggle = out / "data", out / "dataset", out / "kaggle"
    _step("1. mini-iMet, the embedded data set", _imet("mini-imet", "--out", data))
    _step("2. check every file up front", _imet("check-data", "--data", data))
    _step("3. the source dataset: imet + pinned wheels for this interpreter",
          [sys.executable, "packaging/build_dataset.py", "--out", str(dataset), "--owner", "demo",
           "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}"])
    # On CPU on purpose: the kernels ask Kaggle for GPU T4 x2, and their doctor stops a session
    # that asked for a GPU and got none.
    inputs = ["--input", f"imet-2019-fgvc6={data}", "--input", f"imet-src={dataset}",
              "--accelerator", "none"]
    _step("4. trainer kernel, chained across short sessions",
          _imet("kaggle", "run", "kernels/trainer", *inputs, "--time-limit", args.session_limit,
                "--chain", args.max_sessions, "--out", kaggle / "trainer"),
          {"IMET_KERNEL_ARGS": TRAIN_ARGS})
    trained = _last_output(kaggle / "trainer")
    sessions = len(list((kaggle / "trainer").glob("v*")))
    _step("5. validation kernel: OOF predictions, TTA, thresholds",
          _imet("kaggle", "run", "kernels/validation", *inputs, "--input",
                f"imet-trainer={trained}", "--time-limit", "30m", "--out", kaggle / "validation"),
          {"IMET_KERNEL_ARGS": EVAL_ARGS})
    validated = _last_output(kaggle / "validation")
    _step("6. inference kernel, internet off",
          _imet("kaggle", "run", "kernels/inference", *inputs, "--input",
                f"imet-trainer={trained}", "--input", f"imet-validation={validated}",
                "--time-limit", "30m", "--out", kaggle / "inference"),
          {"IMET_KERNEL_ARGS": EVAL_ARGS + " --ensemble mean"})
    predicted = _last_output(kaggle / "inference")
    _step("7. F2 of submission.csv against the true test labels",
          _imet("score", "--truth", data / "test_labels.csv", "--pred",
                predicted / "submission.csv", "--labels", data / "labels.csv"))
    _step("8. the run registry carried through every kernel",
          _imet("runs", predicted, "--plot", out / "runs.png"))
    print(f"\ndemo done in {time.monotonic() - started:.0f}s; the trainer used {sessions} "
          f"session(s).\n  submission: {predicted / 'submission.csv'}\n"
          f"  training plots and metrics: {trained / 'plots'}, {trained / 'metrics.csv'}\n"
          f"  validation report: {validated}\n  kernel logs: {kaggle}/*/v*/log.txt\n"
          f"  runs compared: {out / 'runs.png'}")
    return 0
