"""Long-polling `getUpdates` for the owner's commands, as a task on the sender's event loop.

It answers only the configured chat: any other chat's messages get no reply and their text
is never logged (they are counted). Every update is acknowledged by the next call's offset,
and at start-up everything sent before this session began is skipped, so an old /stop is
never replayed. Replies go through the sender's queue (its pacing, retries and close bound).

Failures are survived like the sender's: 429 waits as asked, 5xx, timeouts and refused
connections back off and retry; a bot token Telegram rejects, or a first contact that never
succeeds (offline at start-up), turns the commands off with one line. The task is cancelled
when the sender closes, a long poll in flight included."""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any, Callable

from imet.notify.bot import explain
from imet.notify.commands import RunCommands
from imet.notify.config import DEFAULT_API_URL, TelegramConfig
from imet.notify.messages import NORMAL, Outgoing
from imet.notify.sender import _seconds as retry_after_seconds

log = logging.getLogger(__name__)


class _HideUpdates(logging.Filter):
    """python-telegram-bot logs the raw updates when it cannot parse them (any chat's text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "Received data was" in str(record.msg):
            record.msg, record.args = "Error while parsing updates (data not shown)", None
        return True


class UpdateListener:
    """Polls for updates and answers the owner's commands through `submit`."""

    def __init__(self, config: TelegramConfig, commands: RunCommands, *,
                 poll_timeout_s: float = 30.0, backoff_s: float = 2.0,
                 max_backoff_s: float = 60.0, start_attempts: int = 3,
                 started: float | None = None):
        self._config = config
        self.commands = commands
        self._poll_timeout = max(0, int(poll_timeout_s))
        self._backoff = float(backoff_s)
        self._max_backoff = float(max_backoff_s)
        self._start_attempts = int(start_attempts)
        # Telegram dates are whole seconds: a message of this session's first second counts.
        self._started = int(time.time() if started is None else started)
        self._offset: int | None = None
        self.stats = {"answered": 0, "ignored_chats": 0, "skipped_old": 0, "failures": 0}
        ptb = logging.getLogger("telegram.Bot")
        if not any(isinstance(f, _HideUpdates) for f in ptb.filters):
            ptb.addFilter(_HideUpdates())

    async def __call__(self, bot: Any, submit: Callable[[Outgoing], bool]) -> None:
        try:
            await self._poll(bot, submit)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # polling must end quietly, whatever happened
            log.warning("Telegram commands stopped: %s", self._config.scrub(
                f"{type(err).__name__}: {err}"))
        finally:
            if self.stats["ignored_chats"]:
                log.info("Telegram: %d message(s) from other chats ignored",
                         self.stats["ignored_chats"])

    async def _poll(self, bot: Any, submit: Callable[[Outgoing], bool]) -> None:
        from telegram.error import Conflict, Forbidden, InvalidToken, NetworkError, RetryAfter
        contacted, failures = False, 0
        while True:
            try:
                if not contacted:
                    await bot.initialize()
                updates = await bot.get_updates(
                    offset=self._offset, timeout=timedelta(seconds=self._poll_timeout),
                    allowed_updates=["message"])
            except RetryAfter as err:
                await asyncio.sleep(retry_after_seconds(err))
                continue
            except (InvalidToken, Forbidden) as err:
                log.warning("Telegram commands off: %s", explain(err, self._custom_api()))
                return
            except (Conflict, NetworkError) as err:  # Conflict: another poller of this bot
                failures += 1
                self.stats["failures"] += 1
                if not contacted and failures >= self._start_attempts:
                    log.info("Telegram commands off: %s", explain(err, self._custom_api()))
                    return
                log.debug("Telegram getUpdates failed (%d in a row): %s", failures,
                          self._config.scrub(f"{type(err).__name__}: {err}"))
                await asyncio.sleep(min(self._max_backoff, self._backoff * 2 ** (failures - 1)))
                continue
            if not contacted:
                contacted = True
                log.info("Telegram commands on: /status, /plot, /stop, /help from chat %s",
                         self._config.chat_id)
            failures = 0
            for update in updates:
                self._offset = update.update_id + 1  # the next call acknowledges it
                self._handle(update, submit)

    def _custom_api(self) -> bool:
        return self._config.api_url != DEFAULT_API_URL

    def _handle(self, update: Any, submit: Callable[[Outgoing], bool]) -> None:
        message = update.message
        if message is None:
            return
        if str(message.chat.id) != str(self._config.chat_id):
            self.stats["ignored_chats"] += 1
            log.debug("Telegram: ignored a message from another chat (%d so far)",
                      self.stats["ignored_chats"])
            return
        if message.date is not None and message.date.timestamp() < self._started:
            self.stats["skipped_old"] += 1
            log.debug("Telegram: skipped a message sent before this session started")
            return
        replies = self.commands.answer(message.text or "")
        if replies or self.commands.plot_wanted:
            self.stats["answered"] += 1
        for text in replies:
            submit(Outgoing("command", text, NORMAL))
