"""Where a campaign's kernels run: its backend. The campaign driver (campaign.py) asks a backend
five things, and this one answers them from real Kaggle through the kaggle client
(imet/kaggle/remote.py); campaign_emulator.py answers them from local emulator sessions.

    current_version(ref) -> int         the kernel's latest version number, 0 if never pushed
    push(folder) -> int | None          push a rendered kernel folder: the new version's number
                                        (None: not told); raises remote.PushRefused
    poll(ref, watch) -> (status, failure) | None
                                        one look at the latest version: its end, or None while
                                        it runs; `watch` is plain data kept in the state file
    fetch_outputs(ref, dest, pattern)   the latest version's output files matching `pattern`
    handover_datasets(out, owner, save) the fallback through private datasets (campaign_handover)
                                        for a backend whose push can refuse a kernel's own
                                        output; None for one that never does
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from imet.kaggle import remote
from imet.kaggle.campaign_handover import HandoverDatasets


class KaggleBackend:
    def __init__(self, api, poll_s: float):
        self.api, self.poll_s = api, poll_s

    def current_version(self, ref: str) -> int:
        return remote.current_version(self.api, ref)

    def push(self, folder: Path) -> int | None:
        return remote.push(self.api, folder).version_number

    def poll(self, ref: str, watch: dict) -> tuple[str, str] | None:
        return remote.poll_session(self.api, ref, watch)

    def fetch_outputs(self, ref: str, dest: Path, pattern: str | None) -> None:
        remote.fetch_outputs(self.api, ref, dest, pattern)

    def handover_datasets(self, out: Path, owner: str,
                          save: Callable[[], None]) -> HandoverDatasets:
        return HandoverDatasets(out, owner, self.api, self.poll_s, save)
