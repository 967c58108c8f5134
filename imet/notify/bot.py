"""Building the python-telegram-bot `Bot` with bounded timeouts, and explaining its errors in
words a user can act on. Shared by the background sender and `notify-test`."""
from __future__ import annotations

import warnings
from typing import Any

from imet.notify.config import TelegramConfig, silence_url_loggers
from imet.report.redact import TOKEN_IN_TEXT


def quiet_retry_after_deprecation() -> None:
    """PTB 22's own RetryAfter constructor reads its deprecated int `retry_after` and warns;
    the user can do nothing about it, so it is kept out of the training log."""
    from telegram.warnings import PTBDeprecationWarning
    warnings.filterwarnings("ignore", message=r".*attribute `retry_after`",
                            category=PTBDeprecationWarning)


def explain(err: BaseException, custom_api: bool = False) -> str:
    """What is wrong and what to do, for the errors a user can fix (never holds the token:
    only the error's type and Telegram's short description are used). `custom_api`: the
    Bot API URL came from IMET_TELEGRAM_API_URL, itself a suspect."""
    from telegram.error import BadRequest, Forbidden, InvalidToken, NetworkError, TimedOut
    name = type(err).__name__
    text = TOKEN_IN_TEXT.sub("<token>", str(err))
    if isinstance(err, InvalidToken):
        where = (" (or IMET_TELEGRAM_API_URL is not a Bot API server: it should end in "
                 "/bot, e.g. http://host:8081/bot)" if custom_api else "")
        return ("the bot token was rejected (Unauthorized / Not Found); copy it again from "
                f"@BotFather into IMET_TELEGRAM_TOKEN{where}")
    if isinstance(err, Forbidden):
        return (f"the bot may not write to this chat ({text}); open the chat with your bot, "
                "press Start (or add it to the group), and check IMET_TELEGRAM_CHAT_ID")
    if isinstance(err, BadRequest) and "chat not found" in text.lower():
        return ("chat not found; send your bot a message first, then set "
                "IMET_TELEGRAM_CHAT_ID to the chat id that getUpdates shows")
    if isinstance(err, TimedOut):
        return ("the Telegram API did not answer in time; check the network (on Kaggle: "
                "Settings > Internet on) or IMET_TELEGRAM_API_URL")
    if isinstance(err, NetworkError):
        return (f"cannot reach the Telegram API ({text}); check the network (on Kaggle: "
                "Settings > Internet on) or IMET_TELEGRAM_API_URL")
    return f"{name}: {text}"


def make_bot(config: TelegramConfig, connect_timeout_s: float, read_timeout_s: float) -> Any:
    """A Bot for `config` with bounded timeouts (also used by `notify-test`)."""
    from telegram import Bot
    from telegram.request import HTTPXRequest
    silence_url_loggers(config.token)
    request = HTTPXRequest(connection_pool_size=2, connect_timeout=connect_timeout_s,
                           read_timeout=read_timeout_s, write_timeout=read_timeout_s,
                           pool_timeout=connect_timeout_s, media_write_timeout=read_timeout_s)
    updates = HTTPXRequest(connection_pool_size=1, connect_timeout=connect_timeout_s,
                           read_timeout=read_timeout_s)
    api_url = config.api_url
    file_url = (api_url[: -len("bot")] + "file/bot" if api_url.endswith("/bot")
                else api_url)
    return Bot(config.token, base_url=api_url, base_file_url=file_url, request=request,
               get_updates_request=updates)
