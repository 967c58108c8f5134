"""Walking the input roots: where Kaggle mounts attached datasets and outputs at depths that vary
by kind, and the local emulator links them in. Sits beside imet/errors.py, below every layer
that searches them (checkpoints, weights, earlier run files, Kaggle inputs)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

# The one depth limit of every search of the input roots: Kaggle mounts inputs at most 6 below
# (/kaggle/input/models/<owner>/<model>/<framework>/<variation>/<version>/), and a run's
# checkpoints/ or a Hugging Face cache (hub/models--timm--<name>/snapshots/<rev>/) sits below.
INPUT_DEPTH = 9


def walk_folders(roots: Iterable[str | os.PathLike], max_depth: int | None = INPUT_DEPTH
                 ) -> Iterator[tuple[Path, list[str], list[str]]]:
    """(folder, subfolder names, file names) under each root, top-down and sorted, so a search
    finds the same file on every run. Links are followed (mounts, the emulator's) but each real
    folder is visited once across all roots, so a link loop cannot hang a search; none deeper than
    `max_depth` (None: no limit) is listed. Clearing the subfolder list skips what is below."""
    seen: set[str] = set()
    for root in roots:
        base = len(Path(root).parts)
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames.sort()
            if max_depth is not None and len(Path(dirpath).parts) - base >= max_depth:
                dirnames[:] = []
            yield Path(dirpath), dirnames, filenames
