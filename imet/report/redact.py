"""Keep secrets out of everything imet writes (run.json, the run registry, logs).

Secrets reach imet only through the environment or Kaggle Secrets, but a config dict may still
carry one (a user pasting a token into a config file, a notify section built from env). Every
config that leaves the process goes through `redact` first."""
from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "<redacted>"

# Key names whose values are credentials whatever they hold.
_SECRET_KEY = re.compile(r"(token|secret|password|passwd|api[_-]?key|credential|^key$|_key$)",
                         re.IGNORECASE)
# A Telegram bot token, "<bot id>:<secret>" as @BotFather gives it ("123456789:AA…", a
# 35-character secret), with room for older and future bots. The one definition of its shape:
# imet.notify checks a configured token against it and scrubs error texts with TOKEN_IN_TEXT.
TELEGRAM_TOKEN = re.compile(r"\d{5,}:[A-Za-z0-9_-]{20,}")
# A token-shaped substring. Lookarounds, not \b: in a Bot API URL the token follows "bot"
# directly (".../bot123456789:AA…"), where \b finds no boundary.
TOKEN_IN_TEXT = re.compile(r"(?<!\d)" + TELEGRAM_TOKEN.pattern + r"(?![A-Za-z0-9_-])")
# Values that look like credentials wherever they appear: bot tokens and 32-hex Kaggle API keys.
_SECRET_VALUE = re.compile(TOKEN_IN_TEXT.pattern
                           + r"|(?<![0-9A-Za-z])[0-9a-f]{32}(?![0-9A-Za-z])")
# Environment variables whose values must never be written anywhere.
_SECRET_ENV = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|KAGGLE_KEY)", re.IGNORECASE)


def secret_env_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables (long enough to be worth matching)."""
    env = os.environ if environ is None else environ
    return [value for name, value in env.items() if _SECRET_ENV.search(name) and len(value) >= 8]


def redact(value: Any, environ: dict[str, str] | None = None) -> Any:
    """A copy of `value` (JSON-like) with secret keys dropped to REDACTED and secret-looking
    strings (token patterns, values of secret env vars) replaced."""
    env_secrets = secret_env_values(environ)
    return _redact(value, env_secrets)


def _redact(value: Any, env_secrets: list[str]) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if _SECRET_KEY.search(str(key)) and item not in (None, "", False):
                out[key] = REDACTED
            else:
                out[key] = _redact(item, env_secrets)
        return out
    if isinstance(value, (list, tuple)):
        return [_redact(item, env_secrets) for item in value]
    if isinstance(value, str):
        text = _SECRET_VALUE.sub(REDACTED, value)
        for secret in env_secrets:
            text = text.replace(secret, REDACTED)
        return text
    return value
