"""Kaggle's image at home: a fresh virtual environment per session that sees only the image's
packages, so that a kernel's bootstrap installs the imet-src dataset's wheels as on Kaggle.

Installing torch and friends into a new venv copies gigabytes (minutes), so the environment
instead sees a folder of symlinks to exactly the platform distributions (PLATFORM and what they
need) that a given interpreter already has, through a .pth file, as Kaggle's image has them
preinstalled. Left out of that folder: imet and every package an attached dataset bundles (but
not its FALLBACK wheels, which stand in only for what the image lacks), so their imports succeed
only after the bootstrap installed them. No `--system-site-packages`: it would also show the
interpreter's editable imet.

The template (a venv and its view) is built once per interpreter and set of platform versions
and kept in a cache folder; each session gets a copy of the small venv (milliseconds), so what
one session's bootstrap installed is never seen by the next, as on Kaggle.

Standard library only (and `packaging`, which pip vendors): `python platform_env.py` runs in the
interpreter whose packages stand in for the image, which need not have imet; packaging/lock.py
reads PLATFORM and FALLBACK from here without importing the rest of imet.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import sys
from pathlib import Path

# Kaggle's Python image preinstalls these (and their own dependencies). Installing our copies over
# them would replace the CUDA build of torch or the versions Kaggle tuned together, so they are the
# platform: packaging/lock.py does not bundle them, and the emulator shows only them.
PLATFORM = {
    "torch": "preinstalled with CUDA on Kaggle; bundle only with --include-torch",
    "torchvision": "preinstalled, matched to torch",
    "numpy": "preinstalled; every compiled package on the image is built against it",
    "pandas": "preinstalled",
    "pillow": "preinstalled (torchvision's image backend)",
    "opencv-python": "preinstalled as cv2",
    "opencv-python-headless": "albumentations asks for it, but only imports cv2, which Kaggle has",
    "opencv-contrib-python": "preinstalled variant of cv2",
    "scipy": "preinstalled",
    "scikit-learn": "preinstalled",
    "matplotlib": "preinstalled; compiled (contourpy, kiwisolver) and heavy to bundle",
    "tqdm": "preinstalled; pretrainedmodels and kaggle need it",
    # The image's timm stack is tuned together (timm, huggingface_hub, safetensors, and the
    # transformers that share the latter two): a second copy would replace it for every notebook
    # cell, so the image's copy is kept whenever it satisfies setup.py (see FALLBACK).
    "timm": "preinstalled (Kaggle's image ships timm 1.x); imet's timm:<name> archs need >=0.9",
    "safetensors": "preinstalled with timm and transformers",
    "huggingface-hub": "preinstalled with timm and transformers",
}
# Platform packages that the dataset also bundles, with the dependencies the image may lack, as
# fallback wheels (wheels/requirements-fallback.txt): the bootstrap installs one only when the
# image's copy is missing or does not satisfy the version imet asks for.
FALLBACK = ("timm", "safetensors", "huggingface-hub")
# pip belongs to the image too; sharing it spares ensurepip (~20 s on a loaded machine).
TOOLS = ("pip",)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(spec: str):
    try:
        from packaging.requirements import Requirement
    except ImportError:  # an interpreter without `packaging` still has pip's copy
        from pip._vendor.packaging.requirements import Requirement
    return Requirement(spec)


def platform_closure(exclude: set[str]) -> list[md.Distribution]:
    """This interpreter's platform distributions and their dependencies, minus `exclude`."""
    dists = {canonical(d.metadata["Name"]): d for d in md.distributions()}
    seen: dict[str, md.Distribution] = {}
    todo = [*PLATFORM, *TOOLS]
    while todo:
        name = canonical(todo.pop())
        if name in seen or name in exclude or name not in dists:
            continue
        seen[name] = dists[name]
        for spec in dists[name].requires or []:
            req = _requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def describe(exclude: set[str]) -> dict:
    """What a view of this interpreter's platform holds: versions and the top-level entries."""
    dists = platform_closure({canonical(e) for e in exclude})
    entries: dict[str, str] = {}
    for dist in dists:
        for top in sorted({Path(str(f)).parts[0] for f in dist.files or []}):
            src = Path(dist.locate_file(top))
            if top not in ("..", "__pycache__") and src.exists():
                entries.setdefault(top, str(src))
    return {"executable": os.path.realpath(sys.executable), "version": sys.version,
            "dists": sorted(f"{canonical(d.metadata['Name'])}=={d.version}" for d in dists),
            "entries": entries}


if __name__ == "__main__":
    json.dump(describe(set(sys.argv[1:])), sys.stdout)
