"""A fresh venv that sees only Kaggle's platform set, built in seconds.

Installing torch and friends into a new venv copies gigabytes (minutes on this machine), so the
new venv instead sees a folder of symlinks to exactly the platform distributions already installed
in the project venv (torch, torchvision, numpy, pandas, pillow, opencv, scipy, scikit-learn,
matplotlib, tqdm, timm and what they need), through a .pth file, just as Kaggle's image has them
preinstalled. Everything the imet dataset bundles is left out of that folder, so an import of
imet, six, albumentations, ... can only succeed after the bootstrap installed them.
"""
from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

# pip belongs to the image too; sharing it spares ensurepip (~20 s on a loaded machine).
PLATFORM_ROOTS = ("pip", "torch", "torchvision", "numpy", "pandas", "pillow", "opencv-python-headless",
                  "scipy", "scikit-learn", "matplotlib", "tqdm", "timm")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def platform_closure(exclude: set[str]) -> list[md.Distribution]:
    """The installed platform distributions and their dependencies, minus `exclude`."""
    dists = {canonical(d.metadata["Name"]): d for d in md.distributions()}
    seen: dict[str, md.Distribution] = {}
    todo = list(PLATFORM_ROOTS)
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


def make_platform_venv(path: Path, exclude: set[str]) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    view = path / "kaggle-platform"
    view.mkdir()
    for dist in platform_closure({canonical(e) for e in exclude}):
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in sorted(tops):
            src = Path(dist.locate_file(top))
            if top in ("..", "__pycache__") or not src.exists() or (view / top).exists():
                continue
            (view / top).symlink_to(src)
    purelib = Path(subprocess.run(
        [str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "kaggle_platform.pth").write_text(str(view) + "\n")
    return path
