"""Finding a run's earlier files (metrics.csv, run.json, the registry, the dataset manifest)
under the input roots, where Kaggle mounts attached outputs at a depth that varies by kind."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

from imet.walk import walk_folders

# Deep enough for /kaggle/input/notebooks/<user>/<kernel>/<run>/..., shallow enough that a
# large attached data set (109k images in a few folders) is not listed file by file forever.
MAX_DEPTH = 6


def files_named(roots: Iterable[str | os.PathLike], name: str,
                max_depth: int = MAX_DEPTH) -> Iterator[Path]:
    """Every file called `name` under the roots, at most `max_depth` folders down, each root in
    sorted (reproducible) order. Roots that are not folders are skipped."""
    folders = [Path(root) for root in roots if Path(root).is_dir()]
    for folder, _, filenames in walk_folders(folders, max_depth):
        if name in filenames:
            yield folder / name
