"""Kaggle's image at home: a fresh venv per session that sees only the image's packages, so a
kernel's bootstrap installs the imet-src dataset's wheels as on Kaggle.

Installing torch and friends into a venv copies gigabytes, so the venv instead sees, through a
.pth file, a folder of symlinks to the platform distributions (PLATFORM and their needs) a given
interpreter has. Left out: imet and every package an attached dataset bundles (not its FALLBACK
wheels), so their imports succeed only after the bootstrap. No `--system-site-packages`: it
would show the interpreter's editable imet. The template (venv and view) is cached per
interpreter and platform versions; each session copies the small venv (milliseconds), so no
session sees what an earlier one's bootstrap installed.

Standard library only (and `packaging`, which pip vendors): it runs in the interpreter standing
in for the image, which need not have imet; packaging/lock.py imports PLATFORM and FALLBACK.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import sys
from pathlib import Path

# Kaggle's image preinstalls these (and their dependencies); our copies would replace its CUDA
# torch or the versions Kaggle tuned together, so lock.py does not bundle them and the emulator
# shows only them.
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
    # The image's timm stack (timm, huggingface_hub, safetensors, and transformers sharing the
    # last two) is tuned together: the image's copy is kept whenever it satisfies setup.py.
    "timm": "preinstalled (Kaggle's image ships timm 1.x); imet's timm:<name> archs need >=0.9",
    "safetensors": "preinstalled with timm and transformers",
    "huggingface-hub": "preinstalled with timm and transformers",
}
# Platform packages the dataset also bundles as fallback wheels (wheels/requirements-fallback.txt
# lists them): each installed only when the image's copy is missing or does not satisfy imet.
FALLBACK = ("timm", "safetensors", "huggingface-hub")
# pip belongs to the image too; sharing it spares ensurepip (~20 s on a loaded machine).
TOOLS = ("pip",)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def platform_closure(exclude: set[str]) -> list[md.Distribution]:
    """This interpreter's platform distributions and their dependencies, minus `exclude`."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # an interpreter without `packaging` still has pip's copy
        from pip._vendor.packaging.requirements import Requirement
    dists = {canonical(d.metadata["Name"]): d for d in md.distributions()}
    seen: dict[str, md.Distribution] = {}
    todo = [*PLATFORM, *TOOLS]
    while todo:
        name = canonical(todo.pop())
        if name in seen or name in exclude or name not in dists:
            continue
        seen[name] = dists[name]
        for spec in dists[name].requires or []:
            req = Requirement(spec)
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
