"""Where the Telegram settings come from: the environment first, then Kaggle Secrets.

The token is a credential: it lives only in `TelegramConfig.token`, which is left out of the
repr, and `scrub()` removes it from any text before that text is logged or shown."""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Mapping

from imet.report.redact import TELEGRAM_TOKEN

log = logging.getLogger(__name__)

TOKEN_VAR = "IMET_TELEGRAM_TOKEN"
CHAT_VAR = "IMET_TELEGRAM_CHAT_ID"
API_URL_VAR = "IMET_TELEGRAM_API_URL"
DEFAULT_API_URL = "https://api.telegram.org/bot"
# Kaggle's secrets client talks to a backend over the network; offline it may hang, so it
# gets a bounded time and training starts regardless.
KAGGLE_SECRETS_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class TelegramConfig:
    token: str = field(repr=False)
    chat_id: str
    api_url: str = DEFAULT_API_URL
    source: str = "environment"

    def __repr__(self) -> str:  # never the token, even by accident in a debug print
        return (f"TelegramConfig(token=<set>, chat_id={self.chat_id!r}, "
                f"api_url={self.api_url!r}, source={self.source!r})")

    def scrub(self, text: object) -> str:
        return scrub(text, self.token)


def scrub(text: object, token: str | None) -> str:
    """`text` as a string with the token (and its secret half alone) replaced."""
    out = str(text)
    if token:
        out = out.replace(token, "<token>")
        secret = token.partition(":")[2]
        if len(secret) >= 8:
            out = out.replace(secret, "<token>")
    return out


class ConfigProblem(Exception):
    """Why notifications are off, as one line a user can act on (never holds the token)."""


def _kaggle_secret_reader() -> Callable[[str], str | None] | None:
    """A `get_secret(label)` from Kaggle's client, or None away from Kaggle."""
    try:
        from kaggle_secrets import UserSecretsClient  # only exists inside Kaggle kernels
    except Exception:
        return None
    try:
        client = UserSecretsClient()
    except Exception as err:
        log.debug("Kaggle Secrets unavailable: %s", type(err).__name__)
        return None

    def get(label: str) -> str | None:
        return _call_bounded(client.get_secret, label)
    return get


def _call_bounded(fn: Callable[[str], str], label: str) -> str | None:
    """fn(label) in a daemon thread, given KAGGLE_SECRETS_TIMEOUT_S at most; None on any
    failure (a missing secret, no internet, a timeout)."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn(label)
        except BaseException as err:  # the client raises its own backend errors
            box["error"] = type(err).__name__
    thread = threading.Thread(target=target, name="imet-kaggle-secret", daemon=True)
    thread.start()
    thread.join(KAGGLE_SECRETS_TIMEOUT_S)
    if thread.is_alive():
        log.debug("Kaggle Secrets did not answer for %s within %.0f s", label,
                  KAGGLE_SECRETS_TIMEOUT_S)
        return None
    if "error" in box:
        log.debug("Kaggle Secrets has no %s (%s)", label, box["error"])
        return None
    value = box.get("value")
    return str(value) if value else None


def load_config(env: Mapping[str, str] | None = None,
                use_kaggle_secrets: bool = True) -> TelegramConfig:
    """The Telegram settings, or ConfigProblem saying what is missing or malformed."""
    env = os.environ if env is None else env
    token = (env.get(TOKEN_VAR) or "").strip()
    chat_id = (env.get(CHAT_VAR) or "").strip()
    source = "environment"
    if (not token or not chat_id) and use_kaggle_secrets:
        reader = _kaggle_secret_reader()
        if reader is not None:
            token = token or (reader(TOKEN_VAR) or "").strip()
            chat_id = chat_id or (reader(CHAT_VAR) or "").strip()
            source = "Kaggle Secrets"
    if not token:
        raise ConfigProblem(f"{TOKEN_VAR} is not set (environment or Kaggle Secrets); "
                            "create a bot with @BotFather and set it")
    if not TELEGRAM_TOKEN.fullmatch(token):  # a paste error worth naming early
        raise ConfigProblem(f"{TOKEN_VAR} does not look like a bot token (expected "
                            "'<digits>:<letters>' as @BotFather gives it); check for quotes "
                            "or spaces")
    if not chat_id:
        raise ConfigProblem(f"{CHAT_VAR} is not set (environment or Kaggle Secrets); send "
                            "your bot a message, then read the chat id from "
                            "https://api.telegram.org/bot<token>/getUpdates")
    api_url = normalize_api_url((env.get(API_URL_VAR) or "").strip() or DEFAULT_API_URL)
    return TelegramConfig(token=token, chat_id=chat_id, api_url=api_url, source=source)


def normalize_api_url(url: str) -> str:
    """The Bot API base that python-telegram-bot appends the token to: a self-hosted server
    given as "http://host:8081" or ".../" becomes "http://host:8081/bot"; a URL holding a
    "{token}" placeholder is used as it is."""
    if "{token}" in url:
        return url
    url = url.rstrip("/")
    return url if url.endswith("/bot") else url + "/bot"


# Loggers that print request URLs (httpx, httpcore at INFO/DEBUG) or the Bot API URL
# (python-telegram-bot at DEBUG): every one of them would print the token.
_URL_LOGGERS = ("httpx", "httpcore")


class _TokenFilter(logging.Filter):
    def __init__(self, token: str):
        super().__init__("imet-token-filter")
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.token in message or self.token.partition(":")[2] in message:
            record.msg, record.args = scrub(message, self.token), None
        return True


def silence_url_loggers(token: str | None = None) -> None:
    """Raise the URL-printing loggers to WARNING and scrub the token from what they still say.

    python-telegram-bot's own logger goes to CRITICAL unless the user set a level: every
    error it logs (with a traceback, e.g. for a proxy's non-JSON answer) reaches us as an
    exception too, and we report that one line ourselves, scrubbed. Idempotent."""
    loggers = [logging.getLogger(name) for name in _URL_LOGGERS]
    for logger in loggers:
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
    ptb = logging.getLogger("telegram")
    if ptb.level == logging.NOTSET:
        ptb.setLevel(logging.CRITICAL)
    elif ptb.level < logging.WARNING:
        ptb.setLevel(logging.WARNING)
    for logger in loggers + [ptb]:
        if token and not any(isinstance(f, _TokenFilter) and f.token == token
                             for f in logger.filters):
            logger.addFilter(_TokenFilter(token))
