"""Multi-session training on real Kaggle: push, wait, fetch the output, push again while the
run hands over. Everything goes through the official kaggle client."""
from __future__ import annotations

import re
import time
from pathlib import Path

from imet.engine.handover import EXIT_CODE as HANDED_OVER, NAME as HANDOVER
from imet.errors import UserError
from imet.kaggle.metadata import OWNER, read_metadata
from imet.registry.store import REGISTRY_NAME

TERMINAL = ("COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED")
# Only the small files are fetched after each session: checkpoints stay on Kaggle, attached to
# the next version through kernel_sources.
SMALL_OUTPUTS = (r"(^|/)(" + "|".join(map(re.escape, (HANDOVER, "run.json", "metrics.csv",
                                                       REGISTRY_NAME))) + r"|[^/]+\.png)$")


def kaggle_api():
    """An authenticated KaggleApi, or one line saying how to give it credentials."""
    try:
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


def _status_name(response) -> str:
    status = getattr(response, "status", response)
    return getattr(status, "name", str(status)).upper()


def wait_for_session(api, ref: str, poll_s: float, settle_polls: int = 3,
                     timeout_s: float | None = None) -> tuple[str, str]:
    """Poll until the pushed version ends. Right after a push the API may still report the
    previous version's end, so an end only counts once the new version was seen queued or
    running, or after `settle_polls` polls."""
    started = time.monotonic()
    seen_running, polls = False, 0
    while True:
        response = api.kernels_status(ref)
        name, polls = _status_name(response), polls + 1
        if name in TERMINAL and (seen_running or polls >= settle_polls):
            return name, getattr(response, "failure_message", "") or ""
        seen_running = seen_running or name not in TERMINAL
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise UserError(f"{ref}: still {name} after {timeout_s:.0f}s of waiting; "
                            "run `python -m imet kaggle chain` again to keep watching")
        time.sleep(poll_s)


def chain(kernel_dir: Path, max_sessions: int, out: Path, poll_s: float = 60.0,
          api=None, log=print) -> int:
    try:
        return _chain(kernel_dir, max_sessions, out, poll_s, api, log)
    except (OSError, ValueError) as err:
        # The client's HTTP errors (requests' are OSErrors) and refusals, as one line: the
        # request and the server's message, never credentials (the client sends them as headers).
        raise UserError(f"kaggle API: {type(err).__name__}: {err}".splitlines()[0]) from None


def _chain(kernel_dir: Path, max_sessions: int, out: Path, poll_s: float, api, log) -> int:
    """Returns 0 when the run finished, HANDED_OVER (75) when it still hands over after
    max_sessions, 1 when a session failed."""
    meta = read_metadata(kernel_dir)
    ref = meta["id"]
    if OWNER in ref:
        raise UserError(f"{kernel_dir}: its id {ref!r} is a template; render it first with "
                        "`python -m imet kaggle render --owner YOU` and chain dist/kernels/<k>")
    api = api or kaggle_api()
    for session in range(1, max_sessions + 1):
        pushed = api.kernels_push(str(kernel_dir))
        if getattr(pushed, "error", None):
            raise UserError(f"kaggle refused the push of {kernel_dir}: {pushed.error}")
        log(f"session {session}: pushed {ref} version {pushed.version_number} ({pushed.url})")
        status, failure = wait_for_session(api, ref, poll_s)
        dest = Path(out) / f"v{session}"
        api.kernels_output(ref, str(dest), file_pattern=SMALL_OUTPUTS, force=True, quiet=True)
        if status != "COMPLETE":
            log(f"session {session}: {status.lower()}{': ' + failure if failure else ''}; "
                f"its log is in {dest}")
            return 1
        if not (dest / HANDOVER).is_file():
            log(f"session {session}: the run finished; its summary is in {dest}")
            return 0
        log(f"session {session}: handed over ({dest / HANDOVER}); pushing the next session")
    log(f"the run still hands over after {max_sessions} sessions; chain again to go on")
    return HANDED_OVER
