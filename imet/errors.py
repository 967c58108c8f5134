"""Errors a user can act on: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input or a bad request. The message is one line that names the file, row or field
    and says what to do. The CLI prints it and exits with `exit_code`."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class DataError(UserError):
    """A competition file (CSV, image, folds) is missing or malformed."""


class CheckpointError(UserError):
    """A checkpoint or model file is unreadable, foreign, or from another config/label space."""
