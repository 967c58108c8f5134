"""The decode-once image cache (`imet cache`) in a Kaggle training run.

A cache attached as input (a dataset or another kernel's output, found under the input root)
is used as it is. Otherwise the trainer kernel builds one in Kaggle's scratch folder
(/kaggle/temp), which no session carries forward: a cache under /kaggle/working would be part of
the output, 4.8 GB copied into every next session. So a run that uses a cache pays its build
once per session, and it pays back only when the session then runs enough epochs.

The figures (benchmarks/README.md, `python benchmarks/bench_cache_payback.py`, per 1,000 images
on one core): the build costs BUILD_S seconds; the loader needs PNG_EPOCH_S per epoch from the
PNGs and SAVED_S less from the cache. Both divide by the same number of cores, so the build pays
for itself after BUILD_S / SAVED_S (~1.8) epochs of a session, whatever the data size, as long
as the loader sets the pace (where the GPU does, the cache saves less, and the build costs a
few minutes of a 12-hour session).

The choice is made once, in the run's first session, and written to CHOICE (carried with the
run): a JPEG cache changes the pixels, and a resumed run must read the images it started with.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from imet.data.cache import CACHE_ENV
from imet.engine.config import TrainConfig, read_config_file
from imet.errors import DataError
from imet.fileio import atomic_write_text
from imet.kaggle.shell import run_step

BUILD_S = 5.1        # cache build, seconds per 1,000 images (JPEG q95, short side 320)
PNG_EPOCH_S = 4.1    # loader, seconds per epoch per 1,000 images, from the PNGs
SAVED_S = 2.8        # ... and that much less from the cache
PAYBACK_EPOCHS = BUILD_S / SAVED_S
CHOICE = "image-cache.json"
FOLDER = "imet-cache"


def is_cache(folder: Path) -> bool:
    """A cache folder (its manifest): what the sessions never carry forward."""
    from imet.data.cache import read_manifest  # cv2 and numpy: only when there is a folder
    try:
        return folder.is_dir() and read_manifest(folder) is not None
    except DataError:  # a damaged manifest is still a cache, and still not carried
        return True


def run_settings(train_args: list[str]) -> tuple[int, int, int]:
    """(image size, epochs, loader workers) of the run the kernel's arguments describe."""
    parser = argparse.ArgumentParser(add_help=False)
    for flag in ("--config", "--image-size", "--epochs", "--num-workers"):
        parser.add_argument(flag)
    known, _ = parser.parse_known_args(train_args)
    values = {k.replace("-", "_"): v for k, v in
              (read_config_file(known.config) if known.config else {}).items()}
    picked = {}
    for name in ("image_size", "epochs", "num_workers"):
        given = getattr(known, name)
        picked[name] = given if given is not None else values.get(name, getattr(TrainConfig, name))
    # "auto" workers: the machine's CPUs, which the session's processes share between them
    workers = TrainConfig(num_workers=picked["num_workers"]).worker_count(os.cpu_count() or 1, 1)
    return int(picked["image_size"]), int(picked["epochs"]), workers


def should_build(epochs: int, images: int, workers: int, seconds_left: float) -> tuple[bool, str]:
    """Whether a cache built now pays for itself in this session, and why in words. The
    session runs the epochs left or those that fit, whichever is fewer; an epoch from the PNGs
    takes at least PNG_EPOCH_S per 1,000 images per loader process."""
    per_epoch = max(images, 1) / 1000 * PNG_EPOCH_S / max(workers, 1)
    fit = max(seconds_left, 0) / per_epoch
    session = min(epochs, fit)
    why = (f"{epochs} epochs to run, ~{fit:.0f} fit in the {seconds_left / 60:.0f} min left: "
           f"~{session:.1f} this session, {PAYBACK_EPOCHS:.1f} pay back the build "
           "(benchmarks/README.md)")
    return session >= PAYBACK_EPOCHS, why


def prepare(data: Path, train_args: list[str], seconds_left: float, work: Path, temp: Path,
            input_root: Path, python_m_imet: list[str], resumed: bool = False) -> Path | None:
    """Use an attached cache (the training finds it under the input root itself), or build one
    in `temp` when the run chose to: then its folder, for the training's $IMET_CACHE_DIR; else
    None. `resumed`: an earlier session of the run exists; without its choice it read the PNGs
    (an imet from before this choice), and so does the rest."""
    from imet.data.cache import find_cache
    size, epochs, workers = run_settings(train_args)
    attached = find_cache(size, [input_root])
    if attached is not None:
        print(f"image cache: using the attached {attached.cache_dir}", flush=True)
        return None
    choice_file = work / CHOICE
    if choice_file.is_file():
        choice = json.loads(choice_file.read_text())
        print(f"image cache: the run chose in its first session to "
              f"{'build' if choice['build'] else 'not build'} one ({choice['why']})", flush=True)
    elif resumed:
        choice = {"build": False, "size": size, "why": "the run's earlier sessions read the PNGs"}
        print(f"image cache: not building one: {choice['why']}", flush=True)
    else:
        images = _rows(data / "train.csv")
        build, why = should_build(epochs, images, workers, seconds_left)
        choice = {"build": build, "size": size, "why": why}
        atomic_write_text(choice_file, json.dumps(choice, indent=1) + "\n")
        print(f"image cache: {'building' if build else 'not building'} one: {why}", flush=True)
    if not choice["build"]:
        return None
    cache = temp / f"{FOLDER}-{size}"
    temp.mkdir(parents=True, exist_ok=True)
    code = run_step([*python_m_imet, "cache", "--data", str(data), "--size", str(size),
                     "--out", str(cache), "--split", "train", "--workers",
                     str(os.cpu_count() or 1), "--no-progress"])
    if code:
        print(f"image cache: the build ended with exit code {code}; the images it could not "
              "cache are read from the PNGs", flush=True)
    return cache


def _rows(csv_path: Path) -> int:
    with open(csv_path, "rb") as f:
        return max(sum(1 for _ in f) - 1, 0)
