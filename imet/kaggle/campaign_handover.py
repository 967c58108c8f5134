"""The campaign's fallback when Kaggle refuses a trainer kernel's own output as its source: the
member's checkpoint is handed over through a private dataset of its own,
`<owner>/imet-handover-<member>`. Before each later push the campaign fetches the whole output
of the member's latest session (checkpoints included), adds it as a new version of that
dataset (folders go up as archives, so `checkpoints/` keeps its place beside model.pt) and
attaches the dataset instead of the output. Each upload is saved in the state first, so a
campaign killed mid-way does not version the dataset twice for one session."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from imet.kaggle import remote


class HandoverDatasets:
    def __init__(self, out: Path, owner: str, api, poll_s: float, save: Callable[[], None]):
        self.out, self.owner, self.api, self.poll_s, self.save = out, owner, api, poll_s, save

    def ref(self, member: str) -> str:
        return f"{self.owner}/imet-handover-{member}"

    def version(self, member: str, job: dict) -> None:
        """Make the dataset hold the output of the member's latest session (once per
        session), and wait until Kaggle can attach it."""
        record = job.setdefault("dataset", {"for_session": 0, "before": None})
        session = len(job["sessions"])
        if record["for_session"] == session:
            return
        ref = job["via_dataset"]
        asked = record["before"]
        if asked is not None and remote.dataset_version(self.api, ref) > asked:
            record.update(for_session=session, before=None)
            self.save()
            return
        folder = self.out / "handover" / member
        if folder.exists():
            shutil.rmtree(folder)
        remote.fetch_outputs(self.api, job["ref"], folder, pattern=None)
        metadata = {"title": ref.split("/", 1)[1], "id": ref, "licenses": [{"name": "CC0-1.0"}]}
        (folder / "dataset-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n",
                                                      encoding="utf-8")
        record["before"] = remote.dataset_version(self.api, ref)
        self.save()
        remote.upload_dataset(self.api, folder, record["before"] == 0,
                              f"{member}: the output of session {session}")
        record.update(for_session=session, before=None)
        self.save()
        remote.wait_for_dataset(self.api, ref, self.poll_s)
