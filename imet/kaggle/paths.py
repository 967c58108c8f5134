"""Where things are on Kaggle: the one module that knows Kaggle's directory layout.

Inputs appear at /kaggle/input/<slug>/ or under /kaggle/input/{competitions,datasets,
notebooks,models}/…/<slug>/, so everything here searches by what a folder holds, never by one
hard-coded path. `IMET_KAGGLE_ROOT` replaces /kaggle (the local emulator sets it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from imet.engine.handover import MODEL_FILE, NAME as HANDOVER
from imet.errors import UserError
from imet.walk import walk_folders

ROOT_ENV = "IMET_KAGGLE_ROOT"
DEFAULT_ROOT = "/kaggle"
# Where the inference kernel writes its pseudo-labels (`imet pseudo-label`) in its working
# folder, and the value of `imet train --extra` in a trainer kernel's arguments that asks for
# the attached extra training set, found by what its folder holds (`find_extra_sets`).
PSEUDO_DIR = "pseudo"
EXTRA_AUTO = "auto"


def kaggle_root(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(ROOT_ENV) or DEFAULT_ROOT)


def input_root(env: Mapping[str, str] | None = None) -> Path:
    return kaggle_root(env) / "input"


def working_dir(env: Mapping[str, str] | None = None) -> Path:
    return kaggle_root(env) / "working"


def temp_dir(env: Mapping[str, str] | None = None) -> Path:
    """Kaggle's scratch folder: written during a session, never part of its output."""
    return kaggle_root(env) / "temp"


def find_folders_with(root: Path, *names: str) -> list[Path]:
    """Folders under root (root included) that hold every one of `names` as files, shallowest
    first (then in name order), so the attached input itself wins over copies inside it."""
    if not root.is_dir():
        return []
    found = []
    for folder, subfolders, files in walk_folders([root]):
        if all(name in files for name in names):
            found.append(folder)
        # A folder of images is a leaf: its thousands of files are never folders to search.
        if len(files) > 1000:
            subfolders[:] = []
    return sorted(found, key=lambda folder: (len(folder.parts), folder))


def find_competition_data(root: Path | None = None) -> Path:
    """The folder holding the competition's files (labels.csv, sample_submission.csv)."""
    root = input_root() if root is None else root
    found = find_folders_with(root, "labels.csv", "sample_submission.csv")
    if not found:
        raise UserError(f"no competition data under {root}: no folder holds labels.csv and "
                        "sample_submission.csv; attach the imet-2019-fgvc6 competition "
                        "(competition_sources in kernel-metadata.json)")
    return found[0]


def find_source_dataset(root: Path | None = None) -> Path:
    """The imet source dataset (the folder holding MANIFEST.json and the bootstrap)."""
    root = input_root() if root is None else root
    found = find_folders_with(root, "MANIFEST.json", "imet_bootstrap.py")
    if not found:
        raise UserError(f"the imet source dataset is not attached: no MANIFEST.json with "
                        f"imet_bootstrap.py under {root}; build it with "
                        "`python packaging/build_dataset.py`, upload it and add it to "
                        "dataset_sources")
    return found[0]


def find_run_dirs(root: Path | None = None) -> list[Path]:
    """Folders holding a trained model (model.pt), e.g. attached trainer outputs."""
    root = input_root() if root is None else root
    return find_folders_with(root, MODEL_FILE)


def find_previous_output(root: Path | None = None) -> list[Path]:
    """Earlier sessions' outputs of a run: folders with a handover note, else with a run.json."""
    root = input_root() if root is None else root
    return find_folders_with(root, HANDOVER) or find_folders_with(root, "run.json")


def extra_auto_at(args: list[str]) -> list[int]:
    """Where `imet train` arguments say `--extra auto`: the index of each `auto` value after an
    `--extra`, and of each `--extra=auto`."""
    return [i for i, arg in enumerate(args)
            if arg == f"--extra={EXTRA_AUTO}"
            or (arg == EXTRA_AUTO and i > 0 and args[i - 1] == "--extra")]


def asks_extra_auto(args: list[str]) -> bool:
    """Whether `imet train` arguments say `--extra auto` (or `--extra=auto`)."""
    return bool(extra_auto_at(args))


def find_extra_sets(root: Path | None = None) -> list[Path]:
    """Extra training sets (imet/data/extra.py) under root, shallowest first: folders with
    labels.csv, train/ and train.csv or soft_targets.npz, as `imet pseudo-label` writes them,
    and without the competition's sample_submission.csv (the competition data has the rest)."""
    from imet.data.extra import SOFT_TARGETS
    root = input_root() if root is None else root
    if not root.is_dir():
        return []
    found = []
    for folder, subfolders, files in walk_folders([root]):
        if "labels.csv" in files and "train" in subfolders and \
                "sample_submission.csv" not in files and \
                ("train.csv" in files or SOFT_TARGETS in files):
            found.append(folder)
        if len(files) > 1000:  # a folder of images, as in find_folders_with
            subfolders[:] = []
    return sorted(found, key=lambda folder: (len(folder.parts), folder))
