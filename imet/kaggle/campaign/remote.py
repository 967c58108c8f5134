"""Real Kaggle as a campaign's backend (KaggleBackend): push, poll, fetch the output, and the
handover datasets; everything goes through the official kaggle client."""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
import shutil
import time
from pathlib import Path
from typing import Callable

from imet.errors import HANDOVER_FILE as HANDOVER, UserError
from imet.kaggle.render import read_metadata, slug_of
from imet.observe.registry import REGISTRY_NAME
from imet.observe.telegram import DATASET as TELEGRAM_DATASET, DATASET_FILE as TELEGRAM_FILE

TERMINAL = ("COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED")
# Only the small files are fetched after each session: checkpoints stay on Kaggle, attached to
# the next version through kernel_sources.
SMALL_OUTPUTS = (r"(^|/)(" + "|".join(map(re.escape, (HANDOVER, "run.json", "metrics.csv",
                                                       REGISTRY_NAME))) + r"|[^/]+\.png)$")


def kaggle_api():
    """An authenticated KaggleApi, or one line saying how to give it credentials."""
    try:
        # The package's import signs a client in already and prints the client's sign-in help
        # when it cannot: silenced here, the sign-in below prints it once.
        with contextlib.redirect_stdout(io.StringIO()):
            importlib.import_module("kaggle")
        from kaggle.api.kaggle_api_extended import KaggleApi
        api = KaggleApi()
        api.authenticate()
    except (OSError, ValueError, SystemExit) as err:
        # The client's messages name the file it looked for, never the key itself.
        raise UserError(f"kaggle client could not authenticate ({type(err).__name__}); sign "
                        "in with `kaggle auth login`, or set KAGGLE_API_TOKEN, or save the "
                        "token to ~/.kaggle/access_token (legacy: KAGGLE_USERNAME and "
                        "KAGGLE_KEY, or ~/.kaggle/kaggle.json)") from None
    return api


class PushRefused(UserError):
    """Kaggle answered a push with an error (a source it will not attach, a quota...)."""


def dataset_version(api, ref: str) -> int:
    """The number of the dataset's latest version on Kaggle; 0 for one never created."""
    from requests import HTTPError
    try:
        answer = api.dataset_status(ref, format="json(current_version_number)")
    except HTTPError as err:
        if err.response is not None and err.response.status_code == 404:
            return 0
        raise
    return int(json.loads(answer).get("current_version_number") or 0)


def dataset_private(api, ref: str) -> bool | None:
    """Kaggle's own word on the dataset's visibility (GetDataset's isPrivate); None when there
    is no such dataset."""
    from kagglesdk.datasets.types.dataset_api_service import ApiGetDatasetRequest
    from requests import HTTPError
    request = ApiGetDatasetRequest()
    request.owner_slug, request.dataset_slug = ref.split("/", 1)
    try:
        with api.build_kaggle_client() as kaggle:
            return bool(kaggle.datasets.dataset_api_client.get_dataset(request).is_private)
    except HTTPError as err:
        if err.response is not None and err.response.status_code == 404:
            return None
        raise


def dataset_files(api, ref: str) -> list[str]:
    """The names of the files in the dataset's latest version."""
    names, token = [], None
    while True:
        answer = api.dataset_list_files(ref, page_token=token, page_size=200)
        if getattr(answer, "error_message", None):
            raise UserError(f"kaggle API: listing the files of {ref}: {answer.error_message}")
        names += [f.name for f in answer.dataset_files or []]
        if not (token := answer.next_page_token):
            return names


def check_telegram_dataset(api, ref: str) -> None:
    """Refuse, in one line naming the dataset and the fix, a Telegram dataset that a kernel
    attaches and that would not give it the token (missing, or without its file) or would
    publish it (public)."""
    fix = f"`python -m imet notify-setup --owner {ref.split('/', 1)[0]}`"
    private = dataset_private(api, ref)
    if private is None:
        raise UserError(f"the kernels attach the dataset {ref} for Telegram (telegram = true), "
                        f"and Kaggle has no such dataset: write it with {fix}, or set "
                        "telegram = false")
    if not private:
        raise UserError(f"the dataset {ref} is public: attached for Telegram it would publish "
                        f"the bot's token; make it private on Kaggle (or delete it and run {fix})")
    if TELEGRAM_FILE not in dataset_files(api, ref):
        raise UserError(f"the dataset {ref} has no {TELEGRAM_FILE}, so the kernels would run "
                        f"without Telegram; write it with {fix}")


def upload_dataset(api, folder: Path, new: bool, notes: str) -> None:
    """Create the private dataset of `folder` (its dataset-metadata.json names it) or add a
    version; folders inside go up as archives (dir_mode zip), so their layout is kept."""
    if new:
        answer = api.dataset_create_new(str(folder), public=False, quiet=True, dir_mode="zip")
    else:
        answer = api.dataset_create_version(str(folder), notes, quiet=True, dir_mode="zip")
    if getattr(answer, "error", None):
        raise UserError(f"kaggle refused the dataset upload of {folder}: {answer.error}")


def wait_for_dataset(api, ref: str, poll_s: float, timeout_s: float = 3600.0) -> None:
    """Until Kaggle has processed the dataset's latest version (it can be attached then)."""
    started = time.monotonic()
    while str(api.dataset_status(ref)).lower() != "ready":
        if time.monotonic() - started > timeout_s:
            raise UserError(f"dataset {ref}: not ready after {timeout_s:.0f}s; run the same "
                            "command again to keep waiting")
        time.sleep(poll_s)


def client_errors(err: BaseException) -> UserError:
    """The client's HTTP errors (requests' are OSErrors) and refusals, as one line: the
    request and the server's message, never credentials (the client sends them as headers)."""
    return UserError(f"kaggle API: {type(err).__name__}: {err}".splitlines()[0])


# The fallback when Kaggle refuses a trainer kernel's own output as its source: before each later
# push, the whole output of the member's latest session (checkpoints included) becomes a new
# version of the private dataset `<owner>/imet-handover-<member>` (folders go up as archives, so
# `checkpoints/` keeps its place), attached instead. Each upload is saved in the state first, so
# a campaign killed mid-way does not version the dataset twice for one session.

class HandoverDatasets:
    def __init__(self, out: Path, owner: str, backend: KaggleBackend, save: Callable[[], None]):
        self.out, self.owner, self.backend, self.save = out, owner, backend, save
        self.api = backend.api

    def ref(self, member: str) -> str:
        return f"{self.owner}/imet-handover-{member}"

    def version(self, member: str, job: dict) -> None:
        """Make the dataset hold the output of the member's latest session (once per
        session), and wait until Kaggle can attach it."""
        record = job.setdefault("dataset", {"for_session": 0, "before": None})
        session, ref, asked = len(job["sessions"]), job["via_dataset"], record["before"]
        if record["for_session"] == session:
            return
        if asked is not None and dataset_version(self.api, ref) > asked:
            record.update(for_session=session, before=None)
            self.save()
            return
        folder = self.out / "handover" / member
        if folder.exists():
            shutil.rmtree(folder)
        self.backend.fetch_outputs(job["ref"], folder, pattern=None)
        metadata = {"title": ref.split("/", 1)[1], "id": ref, "licenses": [{"name": "CC0-1.0"}]}
        (folder / "dataset-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n",
                                                      encoding="utf-8")
        record["before"] = dataset_version(self.api, ref)
        self.save()
        upload_dataset(self.api, folder, record["before"] == 0,
                       f"{member}: the output of session {session}")
        record.update(for_session=session, before=None)
        self.save()
        wait_for_dataset(self.api, ref, self.backend.poll_s)


# A campaign's backend: what the driver asks of it, answered here from Kaggle, in emulated.py from
# local emulator sessions.
#
#     current_version(ref) -> int         the kernel's latest version number, 0 if never pushed
#     push(folder) -> int | None          push a rendered kernel folder: the new version's number
#                                         (None: not told); raises remote.PushRefused
#     poll(ref, watch) -> (status, failure) | None
#                                         one look at the latest version: its end, or None while
#                                         it runs; `watch` is plain data kept in the state file
#     fetch_outputs(ref, dest, pattern)   the latest version's output files matching `pattern`
#     handover_datasets(out, owner, save) the fallback through private datasets (HandoverDatasets)
#                                         for a backend whose push can refuse a kernel's own
#                                         output; None for one that never does

class KaggleBackend:
    def __init__(self, api, poll_s: float):
        self.api, self.poll_s = api, poll_s

    def check_sources(self, metas) -> None:
        """Before a push: the Telegram dataset the kernels (their metadata) attach is checked
        with Kaggle (check_telegram_dataset), each once."""
        refs = {ref for meta in metas for ref in meta["dataset_sources"]
                if slug_of(ref) == TELEGRAM_DATASET}
        for ref in sorted(refs):
            check_telegram_dataset(self.api, ref)

    def current_version(self, ref: str) -> int:
        """The kernel's latest version number (0: never pushed): how a restarted campaign tells
        whether a push it did not see answered went through."""
        from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelRequest
        from requests import HTTPError
        owner, slug = ref.split("/", 1)
        request = ApiGetKernelRequest()
        request.user_name, request.kernel_slug = owner, slug
        try:
            with self.api.build_kaggle_client() as client:
                response = client.kernels.kernels_api_client.get_kernel(request)
        except HTTPError as err:
            if err.response is not None and err.response.status_code == 404:
                return 0
            raise
        return int(response.metadata.current_version_number or 0)

    def push(self, kernel_dir: Path) -> int | None:
        self.check_sources([read_metadata(kernel_dir)])
        pushed = self.api.kernels_push(str(kernel_dir))
        if getattr(pushed, "error", None):
            raise PushRefused(f"kaggle refused the push of {kernel_dir}: {pushed.error}")
        return pushed.version_number

    def poll(self, ref: str, watch: dict, settle_polls: int = 3) -> tuple[str, str] | None:
        """One status poll of the version pushed last: (status, failure message) once it
        ended, else None. Right after a push the API may still report the previous version's
        end, so an end counts only once the new version was seen queued or running, or after
        `settle_polls` polls; `watch` (plain data, kept in the state file) carries what they saw."""
        response = self.api.kernels_status(ref)
        status = getattr(response, "status", response)
        name = getattr(status, "name", str(status)).upper()
        watch["polls"] = int(watch.get("polls", 0)) + 1
        watch["last"] = name
        if name in TERMINAL and (watch.get("seen_running") or watch["polls"] >= settle_polls):
            return name, getattr(response, "failure_message", "") or ""
        watch["seen_running"] = bool(watch.get("seen_running")) or name not in TERMINAL
        return None

    def fetch_outputs(self, ref: str, dest: Path, pattern: str | None) -> None:
        """The files of the version's output whose names match `pattern` (None: all), into dest."""
        self.api.kernels_output(ref, str(dest), file_pattern=pattern, force=True, quiet=True)

    def handover_datasets(self, out: Path, owner: str, save: Callable[[], None]):
        return HandoverDatasets(out, owner, self, save)
