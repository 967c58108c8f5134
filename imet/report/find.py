"""Finding a run's earlier files (metrics.csv, run.json, the registry, the dataset manifest)
under the input roots, where Kaggle mounts attached outputs at a depth that varies by kind.

The roots can be large (a competition's 109k images), so the subscribers of one run share one
`InputFiles`: each says in its constructor which names it will look up, and the first look-up
walks the roots once for all of them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

from imet.walk import walk_folders


class InputFiles:
    """Files of the wanted names under `roots` (roots that are not folders are skipped), each
    name's in walk order: sorted, reproducible."""

    def __init__(self, roots: Iterable[str | os.PathLike] = ()):
        self.roots = [Path(root) for root in roots]
        self._wanted: set[str] = set()
        self._found: dict[str, list[Path]] = {}

    def want(self, *names: str) -> "InputFiles":
        self._wanted.update(names)
        return self

    def named(self, name: str) -> list[Path]:
        if name not in self._found:
            # Normally one walk for every wanted name; a name not announced before the first
            # look-up costs a walk of its own.
            names = (self._wanted | {name}) - set(self._found)
            found: dict[str, list[Path]] = {n: [] for n in names}
            folders = [root for root in self.roots if root.is_dir()]
            for folder, _, filenames in walk_folders(folders):
                for match in names.intersection(filenames):
                    found[match].append(folder / match)
            self._found.update(found)
        return list(self._found[name])


def input_files(inputs: "InputFiles | Iterable[str | os.PathLike]", *names: str) -> InputFiles:
    """`inputs` as an InputFiles that wants `names`: a shared one as it is, roots wrapped."""
    shared = inputs if isinstance(inputs, InputFiles) else InputFiles(inputs)
    return shared.want(*names)


def files_named(roots: Iterable[str | os.PathLike], name: str) -> Iterator[Path]:
    """Every file called `name` under the roots, each root in sorted (reproducible) order."""
    yield from InputFiles(roots).named(name)
