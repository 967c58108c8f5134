"""imet inference kernel: submission.csv from one or several trained runs, internet off.

Attach the trainer outputs (the runs) and the validation output (thresholds.json), push with
`kaggle kernels push -p dist/kernels/inference`, then submit its submission.csv. The settings
below are the whole configuration of this kernel."""
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
# may replace the arguments through IMET_KERNEL_ARGS.
DEFAULT_PREDICT_ARGS = ['--tta', 'none,hflip', '--ensemble', 'mean']
PREDICT_ARGS = shlex.split(os.environ.get("IMET_KERNEL_ARGS", "")) or DEFAULT_PREDICT_ARGS
# None: no pseudo-labels. A list of `imet pseudo-label` flags (e.g. ['--min-prob', '0.9'];
# [] for its defaults): the confident test images also become an extra training set in
# working/pseudo/, which a trainer kernel with `--extra auto` in its arguments trains on.
PSEUDO_LABEL_ARGS = None
ROOT = Path(os.environ.get("IMET_KAGGLE_ROOT", "/kaggle"))
# What this kernel asks Kaggle for, as its kernel-metadata.json's machine_shape says (`imet kaggle
# render --accelerator` writes both): the session stops at once when it cannot use that GPU.
ACCELERATOR = 'NvidiaTeslaT4'


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
    sys.exit(f"imet inference kernel: error: the imet-src dataset is not attached (no "
             f"imet_bootstrap.py under {ROOT / 'input'}); add it to dataset_sources")


bootstrap()
from imet.kaggle import session as sessions

sys.exit(sessions.main("inference", sessions.inference, STARTED, SESSION_LIMIT, PREDICT_ARGS,
                       ACCELERATOR, PSEUDO_LABEL_ARGS))
