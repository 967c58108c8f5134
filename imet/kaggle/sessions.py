"""What each kernel does in one Kaggle session, so that the kernel scripts stay short.

Each function finds its inputs under the Kaggle input root (any mount layout), runs the
imet commands as shell steps, and leaves its outputs in the working folder. A missing input is
one line naming it and exit code 2."""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from imet.engine.handover import EXIT_CODE as HANDED_OVER, MODEL_FILE, NAME as HANDOVER
from imet.errors import UserError
from imet.kaggle import image_cache
from imet.kaggle.paths import (EXTRA_AUTO, PSEUDO_DIR, extra_auto_at, find_competition_data,
                               find_extra_sets, find_folders_with, find_previous_output,
                               find_run_dirs, input_root, temp_dir, working_dir)
from imet.kaggle.shell import run_step
from imet.probfile import ENSEMBLE_PROBS

# Never carried from a previous session's output: the engine copies the checkpoint it resumes
# from, and the best model beside it, itself (imet/engine/resume.py); the handover note
# belongs to the session that wrote it. Image caches (any folder that is one, at any depth) are
# never carried either: gigabytes each session would copy (imet/kaggle/image_cache.py).
NOT_CARRIED = ("checkpoints", MODEL_FILE, HANDOVER)


def _imet(*args: object) -> list[str]:
    return [sys.executable, "-m", "imet", *map(str, args)]


def gpu_count() -> int:
    # Importing torch costs seconds of the session: skipped where no NVIDIA device node exists
    # (CPU sessions, the emulator).
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        return 0
    import torch
    return torch.cuda.device_count()


def train_launcher(gpus: int) -> list[str]:
    """`python -m imet` on one GPU or none; torchrun with one process per GPU when the session
    has several (Kaggle's T4 x2), so both train."""
    if gpus <= 1:
        return _imet()
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(gpus), "-m", "imet"]


def _seconds_left(started: float, session_limit: str) -> float:
    from imet.engine.config import parse_duration
    return parse_duration(session_limit, "session limit") - (time.time() - started)


def _carry_previous_output(previous: Path, work: Path) -> None:
    """Bring the previous session's files (metrics, plots, registry) forward, so
    this session's output is the whole run, as the next session and the user expect."""
    def caches(folder, names):
        return [name for name in names if image_cache.is_cache(Path(folder) / name)]

    for item in previous.iterdir():
        if item.name in NOT_CARRIED or (work / item.name).exists() or image_cache.is_cache(item):
            continue
        if item.is_dir():
            shutil.copytree(item, work / item.name, ignore=caches)
        else:
            shutil.copy2(item, work / item.name)


def doctor(kernel: str, data: Path, accelerator: str | None, kernel_args: list[str],
           arch: str | None = None) -> int:
    """`imet doctor` as a session's first step, in a process of its own (CUDA stays out of the
    kernel's process): non-zero when the session cannot do its job, said in one line per
    problem and sent to Telegram. `arch`: the one trained when the arguments name none."""
    from imet.kaggle.doctor import doctor_flags
    asked = ["--accelerator", accelerator] if accelerator is not None else []
    return run_step(_imet("doctor", "--data", data, "--input-root", input_root(), "--out",
                          working_dir(), "--kernel", kernel, *asked,
                          *doctor_flags(kernel_args, arch)))


def with_extra_found(train_args: list[str]) -> list[str]:
    """`train_args` with `--extra auto` replaced by the one extra training set attached (the
    inference kernel's pseudo-labels, say); UserError when there is none, or several."""
    positions = extra_auto_at(train_args)
    if not positions:
        return train_args
    found = find_extra_sets(input_root())
    if len(found) != 1:
        what = (f"{len(found)} of them ({found[0]}, {found[1]})" if found else "none")
        raise UserError(f"--extra {EXTRA_AUTO}: needs one extra training set under "
                        f"{input_root()} (a folder with labels.csv, train/ and train.csv or "
                        f"soft_targets.npz, as `imet pseudo-label` writes it), found {what}; "
                        "attach the inference kernel whose pseudo_label_args made it "
                        "(kernel_sources), or pass --extra with the folder")
    print(f"extra training set (--extra {EXTRA_AUTO}): {found[0]}", flush=True)
    args = list(train_args)
    for i in positions:
        args[i] = str(found[0]) if args[i] == EXTRA_AUTO else f"--extra={found[0]}"
    return args


def trainer(started: float, session_limit: str, train_args: list[str], n_folds: int = 5,
            accelerator: str | None = None) -> int:
    data = find_competition_data()
    from imet.engine.config import TrainConfig
    code = doctor("trainer", data, accelerator, train_args, TrainConfig.arch)
    if code:
        return code
    train_args = with_extra_found(train_args)
    work = working_dir()
    previous = find_previous_output(input_root())
    if previous:
        print(f"resuming from the attached output {previous[0]}", flush=True)
        _carry_previous_output(previous[0], work)
    folds = work / "folds.csv"
    if not folds.exists():
        code = run_step(_imet("folds", "--data", data, "--n-folds", n_folds, "--out", folds))
        if code:
            return code
    cache = image_cache.prepare(data, train_args, _seconds_left(started, session_limit), work,
                                temp_dir(), input_root(), _imet(), resumed=bool(previous))
    if cache is not None:  # this process is the kernel's: the training it starts inherits it
        os.environ[image_cache.CACHE_ENV] = str(cache)
    launcher = train_launcher(gpu_count())  # before the budget: it may import torch (seconds)
    left = _seconds_left(started, session_limit)
    code = run_step([*launcher, *map(str, ("train", "--data", data, "--folds", folds,
                                           "--out", work, "--time-budget", f"{left:.0f}",
                                           "--resume", "auto", "--input-root", input_root(),
                                           *train_args))])
    # torchrun reports any worker's non-zero exit (75 included) as its own failure (1): the
    # handover note, removed at the start of every training session, tells a handover apart.
    if code and launcher != _imet() and (work / HANDOVER).is_file():
        code = HANDED_OVER
    if code == HANDED_OVER:
        print(f"session ended with a handover ({work / HANDOVER}): push this kernel again; "
              "its own output is attached through kernel_sources", flush=True)
        return 0
    return code


def validation(started: float, session_limit: str, validate_args: list[str],
               accelerator: str | None = None) -> int:
    data = find_competition_data()
    code = doctor("validation", data, accelerator, validate_args)
    if code:
        return code
    runs = _runs()
    folds = find_folders_with(input_root(), "folds.csv")
    if not folds:
        raise UserError(f"no folds.csv under {input_root()}: attach the trainer kernel's output "
                        "(kernel_sources)")
    left = _seconds_left(started, session_limit)
    return run_step(_imet("validate", "--data", data, "--folds", folds[0] / "folds.csv",
                          "--run", *runs, "--out", working_dir(), "--time-limit", f"{left:.0f}",
                          *validate_args))


def inference(started: float, session_limit: str, predict_args: list[str],
              accelerator: str | None = None, pseudo_label_args: list[str] | None = None) -> int:
    """submission.csv; with `pseudo_label_args` (a list, empty included) also the confident
    test images as an extra training set in working/pseudo/, from the probabilities the
    prediction saved (no second inference): a trainer kernel takes it with `--extra auto`."""
    data = find_competition_data()
    code = doctor("inference", data, accelerator, predict_args)
    if code:
        return code
    runs = _runs()
    work = working_dir()
    thresholds = find_folders_with(input_root(), "thresholds.json")
    extra = ["--thresholds", thresholds[0] / "thresholds.json"] if thresholds else []
    left = _seconds_left(started, session_limit)
    code = run_step(_imet("predict", "--data", data, "--runs", *runs,
                          "--out", work / "submission.csv", "--probs-dir", work / "probs",
                          "--time-limit", f"{left:.0f}", *extra, *predict_args))
    if code or pseudo_label_args is None:
        return code
    # One file per run (named by the run); ENSEMBLE_PROBS is predict's own combination, which
    # pseudo-label makes again with its --ensemble (default mean: probabilities, not ranks).
    members = [path for path in sorted((work / "probs").glob("*.npz"))
               if path.name != ENSEMBLE_PROBS]
    return run_step(_imet("pseudo-label", "--data", data, "--runs", *members,
                          "--out", work / PSEUDO_DIR, *pseudo_label_args))


def _runs() -> list[Path]:
    runs = find_run_dirs()
    if not runs:
        raise UserError(f"no trained model (model.pt) under {input_root()}: attach the trainer "
                        "kernel's output (kernel_sources) or a dataset of runs")
    return runs


def main(kernel: str, session: Callable[..., int], *args) -> int:
    """Run one kernel session; user errors are one line, not a traceback."""
    try:
        return session(*args)
    except UserError as err:
        print(f"imet {kernel} kernel: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
