"""Errors a user can act on (the CLI prints them as one line, no traceback), and the exit codes
that mean something to the next session, so any command names them without importing the trainer."""

# A full checkpoint saved, HANDOVER_FILE written (what happened, what to run next): push again.
HANDED_OVER_EXIT_CODE = 75
HANDOVER_FILE = "HANDOVER.json"
# The disk could not hold the next checkpoint; the ones already there are intact.
DISK_FULL_EXIT_CODE = 74


def _own_message(message: str) -> str:
    # torch's DataLoader re-raises a worker's exception by calling its class with the worker's
    # whole traceback, whose last line is "<module>.<class>: <the original message>".
    text = str(message)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


class UserError(Exception):
    """Bad input or a bad request. The message is one line that names the file, row or field
    and says what to do. The CLI prints it and exits with `exit_code`. Raised in a DataLoader
    worker, it keeps its own one line when the main process re-raises it."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(_own_message(message).split()))


class DataError(UserError):
    """A competition file (CSV, image, folds) is missing or malformed."""


class CheckpointError(UserError):
    """A checkpoint or model file is unreadable, foreign, or from another config/label space."""
