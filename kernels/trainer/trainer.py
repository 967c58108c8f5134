"""imet trainer kernel: trains one fold and hands over to the next session before the limit.

Push with `kaggle kernels push -p dist/kernels/trainer-f0` (render writes one kernel per fold or
member). When a session ends with a handover, push again: this kernel's own output is in
kernel_sources, so the run resumes exactly where it stopped. The settings below are the whole
configuration of the run."""
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

STARTED = time.time()
# Today's GPU sessions last 12 h (9 h on the old P100 ones); the local emulator sets its own.
SESSION_LIMIT = os.environ.get("IMET_SESSION_LIMIT", "12h")
# The settings. `imet kaggle render --config FILE` writes the lines below from your settings
# file: change that file, not these lines. A local rehearsal (`make demo`, `imet kaggle run`)
# may replace the arguments through IMET_KERNEL_ARGS. (No --num-workers: its default, auto,
# splits the CPUs between the two processes on T4 x2.)
DEFAULT_TRAIN_ARGS = ['--fold', '0', '--arch', 'timm:seresnext50_32x4d.racm_in1k', '--image-size', '320', '--batch-size', '32', '--epochs', '20']
TRAIN_ARGS = shlex.split(os.environ.get("IMET_KERNEL_ARGS", "")) or DEFAULT_TRAIN_ARGS
N_FOLDS = 5
ROOT = Path(os.environ.get("IMET_KAGGLE_ROOT", "/kaggle"))
# What this kernel asks Kaggle for, as its kernel-metadata.json's machine_shape says (`imet kaggle
# render --accelerator` writes both): the session stops at once when it cannot use that GPU.
ACCELERATOR = 'NvidiaTeslaT4'
# This kernel's id (owner/slug), which run.json and the run registry name: render and the
# emulator write it from kernel-metadata.json.
KERNEL = None
# How the run hears Telegram's commands: "chat" polls the bot itself; "relay" (a campaign writes
# it when its driver polls the bot, which allows one poller) reads what the driver relays.
TELEGRAM_COMMANDS = 'chat'
os.environ["IMET_TELEGRAM_COMMANDS"] = TELEGRAM_COMMANDS


def bootstrap() -> None:
    """Install imet and its pinned wheels from the attached imet-src dataset, offline. It is
    at input/imet-src/ in older sessions, input/datasets/<owner>/imet-src/ today: searched
    shallowest first, as deep as the bootstrap's own search (6 folders)."""
    for depth in range(7):
        found = sorted((ROOT / "input").glob("*/" * depth + "imet_bootstrap.py"))
        if found:
            code = subprocess.run([sys.executable, str(found[0])]).returncode
            if code:
                sys.exit(code)  # the bootstrap said why in one line
            return
    sys.exit(f"imet trainer kernel: error: the imet-src dataset is not attached (no "
             f"imet_bootstrap.py under {ROOT / 'input'}); add it to dataset_sources")


bootstrap()
from imet.kaggle import session as sessions

sys.exit(sessions.main("trainer", sessions.trainer, STARTED, SESSION_LIMIT, TRAIN_ARGS, N_FOLDS,
                       ACCELERATOR, KERNEL))
