"""Decode once, in memory: the pixels of each image kept after its first read, up to a budget.

A small data set (mini-iMet, a few thousand images) costs more to decode every epoch than to
train on; the plain loop a user writes decodes it once. `PixelMemo` keeps the uint8 arrays an
`ImetDataset` read, by sample index, until `budget_bytes` are held; images read after that are
decoded every time, as without a memo. What it holds is exactly what the read returned, so the
batches are bit-identical with any budget, 0 included, and after a resume (a new process starts
with an empty memo and reads the same pixels). The arrays are made read-only: a transform that
changed its input in place would make the next epoch differ, and fails loudly instead.

Each DataLoader worker holds its own copy of the dataset, so the budget a caller gives is per
process: `imet.engine.inputs` splits `--image-memory-mb` between the loader workers."""
from __future__ import annotations

from typing import Callable

import numpy as np


class PixelMemo:
    def __init__(self, budget_bytes: int):
        self.budget_bytes = max(0, int(budget_bytes))
        self.held_bytes = 0
        self._arrays: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._arrays)

    def __getstate__(self) -> dict:
        # A worker starts empty: pickling what the parent holds would copy it per worker and
        # count it against every worker's share again.
        return {"budget_bytes": self.budget_bytes, "held_bytes": 0, "_arrays": {}}

    def get(self, index: int, read: Callable[[], np.ndarray]) -> np.ndarray:
        """The pixels of sample `index`: the kept array, or `read()`'s, kept when it fits."""
        kept = self._arrays.get(index)
        if kept is not None:
            return kept
        image = read()
        if self.held_bytes + image.nbytes <= self.budget_bytes:
            image = np.ascontiguousarray(image)
            image.flags.writeable = False
            self._arrays[index] = image
            self.held_bytes += image.nbytes
        return image
