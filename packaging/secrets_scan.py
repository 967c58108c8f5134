"""Refuse to ship anything that looks like a credential.

The dataset is uploaded to Kaggle and may be public, so the build stops before writing when a file
name or a text file (also inside the wheels we build) looks like a Kaggle key or a Telegram bot
token. The message names the file and line, never the secret.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

SECRET_NAMES = re.compile(r"(^|/)(kaggle\.json|\.env(\..*)?|.*\.pem|id_rsa.*|id_ed25519.*|"
                          r"credentials(\.json)?|access_token(\.txt)?|\.netrc|\.pypirc)$", re.I)
SECRET_PATTERNS = (
    ("a Telegram bot token", re.compile(rb"(?<![\w:])\d{8,10}:[A-Za-z0-9_-]{35}(?![\w-])")),
    ("a Kaggle API key", re.compile(rb'"key"\s*:\s*"[0-9a-f]{32}"')),
    ("a Kaggle API token", re.compile(rb"\bKGAT_[0-9a-f]{32}\b")),
)
TEXT_SUFFIXES = (".py", ".json", ".txt", ".md", ".cfg", ".toml", ".ini", ".yaml", ".yml", ".csv",
                 ".sh", ".env", "METADATA", "RECORD", "WHEEL", ".typed")


class SecretFound(Exception):
    """One line: which file looks like it holds which kind of secret."""


def _check_name(where: str) -> None:
    if SECRET_NAMES.search(where):
        raise SecretFound(f"refusing to build: {where} looks like a credentials file; it must "
                          "never be uploaded (keep secrets in env variables or Kaggle Secrets)")


def _check_text(where: str, data: bytes) -> None:
    for kind, pattern in SECRET_PATTERNS:
        m = pattern.search(data)
        if m:
            line = data.count(b"\n", 0, m.start()) + 1
            raise SecretFound(f"refusing to build: {where} line {line} looks like it holds {kind}; "
                              "remove it (read secrets from env variables or Kaggle Secrets)")


def scan_file(path: Path, label: str | None = None, look_inside_zip: bool = True) -> None:
    """Raise SecretFound when `path` (or, for a wheel we built, a member) looks like a secret."""
    where = label or path.name
    _check_name(where)
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as zf:
            # A locked third-party wheel is checked by its hash, not its content (certifi ships
            # cacert.pem); the wheels we build are checked member by member.
            for name in zf.namelist() if look_inside_zip else ():
                _check_name(f"{where}!{name}")
                if name.endswith(TEXT_SUFFIXES):
                    _check_text(f"{where}!{name}", zf.read(name))
    elif path.name.endswith(TEXT_SUFFIXES):
        _check_text(where, path.read_bytes())
