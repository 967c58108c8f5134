"""Telegram notifications for imet runs (python-telegram-bot 22), as an EventBus subscriber.

`telegram_status()` says whether notifications are on and where the token came from, or why
they are off (asked off, not rank 0, not configured); `imet train` prints it first and keeps it
in run.json. `build_notifier()` returns a subscriber, or None when they are off (training goes
on); telegram is imported only once the settings are found. In a campaign, one bot: the
driver's CommandRelay alone polls and relays the commands to the kernels' RelayReader. The token lives only in
`TelegramConfig.token`, kept out of the repr, and `scrub()` removes it from any text before
that text is logged or shown."""
from __future__ import annotations

import asyncio
import atexit
import dataclasses
import functools
import importlib
import json
import logging
import os
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Mapping

from imet.errors import UserError
from imet.observe import messages
from imet.observe.console import TELEGRAM_TOKEN, TOKEN_IN_TEXT, redact, scrub_text
from imet.observe.messages import (ALL, COALESCED, CRITICAL, LOW, NORMAL, RELAY_HEADER,
                                   CampaignCommands, Outgoing, RunCommands, esc, pack,
                                   relay_lines)
from imet.train.events import (Checkpoint, Evaluation, Event, Failure, Finish, Handover, Progress,
                               RankZeroSubscriber, RunStart)

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
    source: str = "environment"  # where the token came from: or "Kaggle Secrets", "dataset"

    def __repr__(self) -> str:  # never the token, even by accident in a debug print
        return (f"TelegramConfig(token=<set>, chat_id={self.chat_id!r}, "
                f"api_url={self.api_url!r}, source={self.source!r})")

    def scrub(self, text: object) -> str:
        return scrub(text, self.token)

    def describe(self, err: BaseException) -> str:
        """"<type>: <message>" of an error, scrubbed."""
        return self.scrub(f"{type(err).__name__}: {err}")

    @property
    def custom_api(self) -> bool:
        """The Bot API URL came from IMET_TELEGRAM_API_URL (itself a suspect when it fails)."""
        return self.api_url != DEFAULT_API_URL


def scrub(text: object, token: str | None) -> str:
    """`text` as a string with the token (and its secret half alone) and anything token-shaped
    replaced."""
    secret = (token or "").partition(":")[2]
    return scrub_text(text, [token or "", secret if len(secret) >= 8 else ""], "<token>",
                      TOKEN_IN_TEXT)


class ConfigProblem(Exception):
    """Why notifications are off, as one line a user can act on (never holds the token)."""


# A push drops a kernel's secret bindings; an attached private dataset stays attached. Its one
# file, found by name anywhere under the input roots (Kaggle mounts datasets at varying depths):
#   {"IMET_TELEGRAM_TOKEN": "123456789:AA...", "IMET_TELEGRAM_CHAT_ID": "4242"}
DATASET = "imet-telegram"
DATASET_FILE = "imet-telegram.json"


def _kaggle_secret_reader() -> Callable[[str], str | None] | None:
    """A `get_secret(label)` from Kaggle's client, or None away from Kaggle."""
    try:
        from kaggle_secrets import UserSecretsClient  # only exists inside Kaggle kernels
    except Exception:
        return None
    try:
        return functools.partial(_call_bounded, UserSecretsClient().get_secret)
    except Exception as err:
        log.debug("Kaggle Secrets unavailable: %s", type(err).__name__)
        return None


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


def _not_set(var: str, in_kaggle: bool, first_time: str) -> ConfigProblem:
    """`var` is missing: where it goes (most often the bot exists and only the secret is not
    attached to this kernel), then how to get its value the first time."""
    where = (f"no Kaggle secret labelled {var} is attached to this kernel: in the kernel's "
             "editor, Add-ons > Secrets, add it or switch the existing one on" if in_kaggle else
             f"set it in the environment (export {var}=...), or attach a Kaggle secret of that "
             "label to the kernel (editor: Add-ons > Secrets)")
    return ConfigProblem(f"{var} is not set: {where}, or attach the private dataset "
                         f"<owner>/{DATASET} holding {DATASET_FILE} (README: Telegram); "
                         f"{first_time}")


def _dataset_settings(roots: Iterable[str | os.PathLike]) -> tuple[Path, dict[str, str]] | None:
    """The settings in the first DATASET_FILE under `roots` and its path; None when there is
    none; ConfigProblem when it is not a JSON object of strings (its text is never quoted: it
    holds the token) or an attached DATASET folder lacks it."""
    from imet.walk import walk_folders
    bare = None
    for folder, _, files in walk_folders(roots):
        if DATASET_FILE not in files:
            bare = bare or (folder if folder.name == DATASET else None)
            continue
        path = folder / DATASET_FILE
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            values = None
        if not isinstance(values, dict) or not isinstance(values.get(TOKEN_VAR), str) or \
                not isinstance(values.get(CHAT_VAR, ""), (str, int)):
            raise ConfigProblem(f"{path} is not a JSON object like {{\"{TOKEN_VAR}\": "
                                f"\"<token>\", \"{CHAT_VAR}\": \"<chat id>\"}}; write the "
                                f"{DATASET} dataset again (README: Telegram)")
        return path, {var: str(values.get(var) or "").strip() for var in (TOKEN_VAR, CHAT_VAR)}
    if bare is not None:
        raise ConfigProblem(f"the {DATASET} dataset at {bare} has no {DATASET_FILE}; write it "
                            "again (README: Telegram)")
    return None


def load_config(env: Mapping[str, str] | None = None, use_kaggle_secrets: bool = True,
                input_roots: Iterable[str | os.PathLike] = ()) -> TelegramConfig:
    """The Telegram settings, or ConfigProblem saying what is missing or malformed. Each is
    looked for in the environment, then Kaggle Secrets, then an attached DATASET under
    `input_roots`."""
    env = os.environ if env is None else env
    token = (env.get(TOKEN_VAR) or "").strip()
    chat_id = (env.get(CHAT_VAR) or "").strip()
    source, reader = "environment", None
    if (not token or not chat_id) and use_kaggle_secrets:
        reader = _kaggle_secret_reader()
        if reader is not None:
            if not token:
                token, source = (reader(TOKEN_VAR) or "").strip(), "Kaggle Secrets"
            chat_id = chat_id or (reader(CHAT_VAR) or "").strip()
    where = ""
    if (not token or not chat_id) and (found := _dataset_settings(input_roots)):
        path, values = found
        if not token:
            token, source, where = values[TOKEN_VAR], "dataset", f" in {path}"
        chat_id = chat_id or values[CHAT_VAR]
    if not token:
        raise _not_set(TOKEN_VAR, reader is not None, "a new bot's token comes from @BotFather")
    if not TELEGRAM_TOKEN.fullmatch(token):  # a paste error worth naming early
        raise ConfigProblem(f"{TOKEN_VAR}{where} does not look like a bot token (expected "
                            "'<digits>:<letters>' as @BotFather gives it); check for quotes "
                            "or spaces")
    if not chat_id:
        raise _not_set(CHAT_VAR, reader is not None, "the chat id: send your bot a message, "
                       "then read it from https://api.telegram.org/bot<token>/getUpdates")
    # The Bot API base PTB appends the token to: a self-hosted "http://host:8081" or ".../"
    # becomes "http://host:8081/bot"; a URL holding a "{token}" placeholder is used as it is.
    api_url = (env.get(API_URL_VAR) or "").strip() or DEFAULT_API_URL
    if "{token}" not in api_url:
        api_url = api_url.rstrip("/").removesuffix("/bot") + "/bot"
    return TelegramConfig(token=token, chat_id=chat_id, api_url=api_url, source=source)


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

    httpx/httpcore print request URLs at INFO/DEBUG, PTB the Bot API URL at DEBUG: each would
    print the token. PTB's own logger goes to CRITICAL unless the user set a level: every error
    it logs (with a traceback) reaches us as an exception too, reported as one scrubbed line."""
    loggers = [logging.getLogger(name) for name in ("httpx", "httpcore")]
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


def explain(err: BaseException, custom_api: bool = False) -> str:
    """What is wrong and what to do, for the errors a user can fix (never holds the token:
    only the error's type and Telegram's short description are used). `custom_api`: the
    Bot API URL came from IMET_TELEGRAM_API_URL, itself a suspect."""
    from telegram.error import BadRequest, Forbidden, InvalidToken, NetworkError, TimedOut
    text = scrub(err, None)
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
    return f"{type(err).__name__}: {text}"


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
    file_url = api_url[: -len("bot")] + "file/bot" if api_url.endswith("/bot") else api_url
    return Bot(config.token, base_url=api_url, base_file_url=file_url, request=request,
               get_updates_request=updates)


class LoopWaiter:
    """`wait` runs `loop` instead of sleeping on the Condition; `wake` (any thread) cuts it short
    as `Condition.notify` would: the listening worker's loop serves the long poll meanwhile."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._kick = asyncio.Event()

    def wait(self, condition: threading.Condition, timeout: float | None) -> None:
        """Like `condition.wait(timeout)` (called with it held; a spurious wake is possible)."""
        self._kick.clear()  # a kick from before this point was seen: the caller checked
        condition.release()
        try:
            self._loop.run_until_complete(self._nap(timeout))
        finally:
            condition.acquire()

    async def _nap(self, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(self._kick.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._kick.set)
        except RuntimeError:  # the loop closed in between: nobody to wake
            pass


# The sender: delivery on a background thread that can never slow or break training. PTB 22 is
# asyncio-based and not thread-safe, so one daemon thread owns one event loop and one Bot; the
# training thread only appends to a deque under a lock (`submit`, microseconds). The worker does
# all waiting (pacing, Telegram's RetryAfter, backoff, the breaker's cooldown) in `_take`, on a
# Condition, so `close()` can cut any wait short and its deadline bounds everything, an
# in-flight request included (cancelled). PTB's own rate limiter and retries live in
# telegram.ext's Application, which wants to own the process's event loop and polling.
# `listen` (an UpdateListener) runs as a task on the same loop: while the worker would wait the
# loop runs a nap that `submit` and `close` cut short, so the long poll always progresses and
# never delays a message or the close bound.


@dataclass(slots=True, eq=False)
class _Pending:
    item: Outgoing
    attempts: int = 0


class TelegramSender:
    """Sends `Outgoing` items to one chat, in order, at most one per `min_interval_s`."""

    def __init__(self, config: TelegramConfig, *, min_interval_s: float = 1.1,
                 connect_timeout_s: float = 5.0, read_timeout_s: float = 10.0,
                 max_queue: int = 64, max_attempts: int = 3, backoff_s: float = 2.0,
                 breaker_threshold: int = 5, breaker_cooldown_s: float = 300.0,
                 max_retry_after_s: float = 120.0, close_timeout_s: float = 10.0,
                 listen: Callable[[Any, Callable[[Outgoing], bool]], Awaitable[None]]
                 | None = None):
        self._config = config
        self._min_interval = float(min_interval_s)
        self._connect_timeout = float(connect_timeout_s)
        self._read_timeout = float(read_timeout_s)
        self._max_queue = int(max_queue)
        self._max_attempts = int(max_attempts)
        self._backoff = float(backoff_s)
        self._breaker_threshold = int(breaker_threshold)
        self._breaker_cooldown = float(breaker_cooldown_s)
        self._max_retry_after = float(max_retry_after_s)
        self.close_timeout_s = min(float(close_timeout_s), 10.0)
        self._chat_id: str | int = config.chat_id

        self._wake = threading.Condition(threading.Lock())
        self._queue: deque[_Pending] = deque()
        self._closing = False
        self._deadline = float("inf")
        self._disabled = False
        self._not_before = 0.0          # pacing, RetryAfter and backoff: no request before this
        self._breaker_until = 0.0
        self._failures = 0              # consecutive network failures
        self._inflight: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bot: Any = None
        self._warned: set[str] = set()
        self._listen = listen
        self._listening: asyncio.Task | None = None
        self._waiter: LoopWaiter | None = None
        self.stats = {"sent": 0, "coalesced": 0, "dropped_full": 0, "dropped_breaker": 0,
                      "dropped_close": 0, "failed": 0, "retries": 0}

        silence_url_loggers(config.token)
        # PTB 22's own RetryAfter constructor reads its deprecated int `retry_after` and warns;
        # the user can do nothing about it, so it is kept out of the training log.
        from telegram.warnings import PTBDeprecationWarning
        warnings.filterwarnings("ignore", message=r".*attribute `retry_after`",
                                category=PTBDeprecationWarning)
        self._thread = threading.Thread(target=self._run, name="imet-telegram", daemon=True)
        self._thread.start()
        # A crash that skips close() still gets its last messages out, within the bound.
        atexit.register(self.close)

    def __repr__(self) -> str:
        return f"TelegramSender(chat_id={self._chat_id!r}, queued={len(self._queue)})"

    @property
    def enabled(self) -> bool:
        return not self._disabled

    # training thread
    def submit(self, item: Outgoing) -> bool:
        """Queue `item`; never blocks on the network. False when it was dropped. A queued
        message of a COALESCED kind is replaced by `item` of the same kind, in its place in
        line: news that changes every step still goes out in its turn, never starved."""
        with self._wake:
            if self._closing or self._disabled:
                return False
            if item.priority < CRITICAL and time.monotonic() < self._breaker_until:
                self.stats["dropped_breaker"] += 1
                return False
            if item.kind in COALESCED and (queued := next(
                    (p for p in self._queue if p.item.kind == item.kind), None)):
                queued.item, queued.attempts = item, 0
                self.stats["coalesced"] += 1
                return True
            if len(self._queue) >= self._max_queue and not self._make_room(item):
                self.stats["dropped_full"] += 1
                return False
            self._queue.append(_Pending(item))
            self._wake.notify()
        self._kick_loop()
        return True

    def _make_room(self, item: Outgoing) -> bool:
        """Drop the oldest queued item of the lowest priority (progress first); False when
        `item` itself is the least important. CRITICAL items are never dropped: the queue
        grows past its bound for them instead (there are only a few per run)."""
        lowest = min(pending.item.priority for pending in self._queue)
        if lowest >= CRITICAL:
            return True
        if item.priority < lowest:
            return False
        del self._queue[next(i for i, p in enumerate(self._queue) if p.item.priority == lowest)]
        self.stats["dropped_full"] += 1
        return True

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued (progress dropped) and stop, within `timeout` seconds
        (default `close_timeout_s`, at most 10 s) whatever the network does."""
        atexit.unregister(self.close)
        budget = self.close_timeout_s if timeout is None else min(float(timeout), 10.0)
        start = time.monotonic()
        with self._wake:
            if not self._closing:
                self._closing = True
                self._deadline = start + max(0.0, budget - 0.2)
                kept = deque(p for p in self._queue if p.item.priority > LOW)
                self.stats["dropped_close"] += len(self._queue) - len(kept)
                self._queue = kept
            self._wake.notify_all()
        self._kick_loop()
        self._thread.join(max(0.0, self._deadline - time.monotonic()))
        loop, task = self._loop, self._inflight
        if self._thread.is_alive() and loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop closed in between: nothing left to cancel
                pass
        if self._thread.is_alive():
            self._thread.join(max(0.0, start + budget - time.monotonic()))
        if self._thread.is_alive():
            log.debug("Telegram sender still busy after %.1f s; left behind", budget)

    # worker thread
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            if self._listen is not None:
                self._waiter = LoopWaiter(loop)
                # the listener says hello itself
                self._listening = loop.create_task(self._listen(self._made_bot(), self.submit))
            while (pending := self._take()) is not None:
                self._deliver(loop, pending)
        except BaseException as err:  # the worker must end quietly, whatever happened
            self._warn_once("worker", "Telegram notifications stopped: %s",
                            self._config.describe(err))
        finally:
            self._shutdown(loop)

    def _take(self) -> _Pending | None:
        """The next item once pacing, RetryAfter, backoff and the breaker allow; None when
        closed and drained, disabled, or past the close deadline."""
        with self._wake:
            while True:
                now = time.monotonic()
                if self._disabled or now >= self._deadline:
                    return None
                if not self._queue:
                    if self._closing:
                        return None
                    self._wait(None)
                    continue
                ready_at = self._not_before
                if now < self._breaker_until and not self._closing:
                    ready_at = max(ready_at, self._breaker_until)
                if ready_at > now:
                    if self._closing and ready_at >= self._deadline:
                        return None
                    self._wait(min(ready_at, self._deadline) - now)
                    continue
                return self._queue.popleft()

    def _wait(self, timeout: float | None) -> None:
        """Wait on the Condition (held); while listening, the loop runs meanwhile."""
        waiter, task = self._waiter, self._listening
        if waiter is None or task is None or task.done():
            self._wake.wait(timeout)
        else:
            waiter.wait(self._wake, timeout)

    def _kick_loop(self) -> None:
        if self._waiter is not None:
            self._waiter.wake()

    def _requeue(self, pending: _Pending, delay: float) -> None:
        with self._wake:
            self._not_before = max(self._not_before, time.monotonic() + delay)
            self._queue.appendleft(pending)

    def _deliver(self, loop: asyncio.AbstractEventLoop, pending: _Pending) -> None:
        from telegram.error import (BadRequest, ChatMigrated, Forbidden, InvalidToken,
                                    NetworkError, RetryAfter)
        pending.attempts += 1
        item = pending.item
        try:
            self._run_cancellable(loop, self._send(item))
        except asyncio.CancelledError:
            self.stats["dropped_close"] += 1
        except RetryAfter as err:
            wait = retry_after_s(err)
            self._warn_once("retry_after", "Telegram flood control: waiting %.0f s as asked",
                            wait)
            if wait <= self._max_retry_after:
                self.stats["retries"] += 1
                self._requeue(pending, wait)
            else:
                self.stats["failed"] += 1
        except (Forbidden, InvalidToken) as err:
            self._disable(err)
        except ChatMigrated as err:
            self._chat_id = err.new_chat_id
            self._warn_once("migrated", "Telegram group became a supergroup: set %s=%s",
                            "IMET_TELEGRAM_CHAT_ID", err.new_chat_id)
            self._requeue(pending, 0.0)
        except BadRequest as err:
            if "chat not found" in str(err).lower():
                self._disable(err)
            elif "parse entities" in str(err).lower() and item.html:
                # Our HTML is escaped, so this is a Telegram parser quirk: send it plain.
                pending.item = item.as_plain()
                self._requeue(pending, 0.0)
            else:
                self.stats["failed"] += 1
                self._warn_once("bad_request", "Telegram refused a %s message: %s",
                                item.kind, self._config.describe(err))
        except NetworkError as err:  # TimedOut, connection refused, HTTP 5xx
            self._on_network_failure(pending, err)
        except Exception as err:
            self.stats["failed"] += 1
            self._warn_once("unexpected", "Telegram send failed: %s", self._config.describe(err))
        else:
            self._failures = 0
            self._warned.discard("breaker")
            self.stats["sent"] += 1
            with self._wake:
                self._not_before = max(self._not_before, time.monotonic() + self._min_interval)

    def _on_network_failure(self, pending: _Pending, err: BaseException) -> None:
        self._failures += 1
        log.debug("Telegram send failed (%d in a row): %s", self._failures,
                  self._config.describe(err))
        now = time.monotonic()
        if self._closing and now < self._breaker_until:
            self.stats["failed"] += 1  # the one last try at close, while the breaker is open
        elif self._failures >= self._breaker_threshold:
            self._open_breaker(pending, err)
        elif pending.attempts < self._max_attempts:
            self.stats["retries"] += 1
            self._requeue(pending, self._backoff * pending.attempts)
        else:
            self.stats["failed"] += 1

    def _open_breaker(self, pending: _Pending, err: BaseException) -> None:
        """Stop trying for a cooldown: drop what is queued except the CRITICAL messages (start,
        hand-over, finish, crash, command replies), which wait for the cooldown's end (or get
        one try at close)."""
        with self._wake:
            self._breaker_until = time.monotonic() + self._breaker_cooldown
            kept = deque(p for p in self._queue if p.item.priority >= CRITICAL)
            self.stats["dropped_breaker"] += len(self._queue) - len(kept)
            self._queue = kept
            if pending.item.priority >= CRITICAL:
                self._queue.appendleft(pending)
            else:
                self.stats["dropped_breaker"] += 1
        self._failures = 0
        # One warning per outage: a success in between makes the next outage worth a line.
        self._warn_once("breaker", "Telegram unreachable (%s); notifications paused for "
                        "%.0f s, training goes on", self._config.describe(err),
                        self._breaker_cooldown)

    def _run_cancellable(self, loop: asyncio.AbstractEventLoop, coro: Any) -> None:
        task = loop.create_task(coro)
        with self._wake:
            self._inflight = task
            closing_late = self._closing and time.monotonic() >= self._deadline
        if closing_late:
            task.cancel()
        try:
            loop.run_until_complete(task)
        finally:
            with self._wake:
                self._inflight = None

    async def _send(self, item: Outgoing) -> None:
        from telegram import LinkPreviewOptions
        from telegram.constants import ParseMode
        bot = self._made_bot()
        await bot.initialize()  # getMe once: a wrong token is found before the first message
        mode = ParseMode.HTML if item.html else None
        if item.photo is not None:
            await bot.send_photo(self._chat_id, photo=item.photo, caption=item.text or None,
                                 parse_mode=mode)
        else:
            await bot.send_message(self._chat_id, item.text, parse_mode=mode,
                                   link_preview_options=LinkPreviewOptions(is_disabled=True))

    def _made_bot(self) -> Any:
        if self._bot is None:
            self._bot = make_bot(self._config, self._connect_timeout, self._read_timeout)
        return self._bot

    def _shutdown(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            if self._listening is not None:
                self._listening.cancel()
                wait = min(max(0.05, self._deadline - time.monotonic()), 2.0)
                loop.run_until_complete(asyncio.wait([self._listening], timeout=wait))
            left = self._deadline - time.monotonic()
            if self._bot is not None and left > 0.05:
                loop.run_until_complete(asyncio.wait_for(self._bot.shutdown(), min(left, 2.0)))
        except BaseException as err:
            log.debug("Telegram shutdown: %s", self._config.describe(err))
        finally:
            loop.close()

    def _disable(self, err: BaseException) -> None:
        with self._wake:
            self._disabled = True
            self._queue.clear()
        log.warning("Telegram notifications disabled for this run: %s",
                    explain(err, self._config.custom_api))

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        log.log(logging.DEBUG if key in self._warned else logging.WARNING, message, *args)
        self._warned.add(key)


def retry_after_s(err: Any) -> float:
    """RetryAfter's wait: PTB 22 stores a timedelta; its public attribute is an int or a
    timedelta depending on PTB_TIMEDELTA (and warns when int), so read the stored value."""
    value = getattr(err, "_retry_after", None)
    value = err.retry_after if value is None else value
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


# The listener: long-polling getUpdates as a task on the sender's loop. Only the configured chat
# is answered; other chats get no reply and their text is never logged (only counted). Each
# update is acknowledged by the next call's offset, and what was sent before this session began
# is skipped, so an old /stop is never replayed. Replies go through the sender's queue. 429
# waits as asked; 5xx, timeouts and refused connections back off and retry; a rejected token,
# or a first contact that never succeeds (offline), turns the commands off with one line. A
# 409 (another poller of this bot) turns this run to reading a campaign's relay (below).

# How a run hears the commands: "chat" polls; "relay" reads the pinned message every
# RELAY_POLL_S (a read, not a send: a few kernels at this pace stay far below Telegram's limits).
COMMANDS_VAR = "IMET_TELEGRAM_COMMANDS"
COMMAND_MODES = ("chat", "relay")
RELAY_POLL_S = 15.0


def _backoff_s(base_s: float, most_s: float, failures: int) -> float:
    """The wait after `failures` failures in a row: doubling from `base_s`, at most `most_s`."""
    return min(most_s, base_s * 2 ** (failures - 1))


def _bots_own(pinned: Any, bot: Any) -> bool:
    """Whether the chat's pinned message is this bot's own (only that one relays commands)."""
    return pinned is not None and pinned.from_user is not None and pinned.from_user.id == bot.id


async def _quietly(work: Awaitable[None], config: TelegramConfig) -> None:
    """Await a command reader (the poller or the relay reader): whatever ends it short of a
    cancellation ends it with one warning, never in the training."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception as err:
        log.warning("Telegram commands stopped: %s", config.describe(err))


class _HideUpdates(logging.Filter):
    """python-telegram-bot logs the raw updates when it cannot parse them (any chat's text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "Received data was" in str(record.msg):
            record.msg, record.args = "Error while parsing updates (data not shown)", None
        return True


class UpdateListener:
    """Polls for updates and answers the owner's commands through `submit`."""

    def __init__(self, config: TelegramConfig, commands: Any, *,
                 poll_timeout_s: float = 30.0, backoff_s: float = 2.0,
                 max_backoff_s: float = 60.0, start_attempts: int = 3,
                 started: float | None = None, member: str | None = None,
                 relay_poll_s: float | None = None):
        self._config = config
        self.commands = commands
        self.member = member
        self._relay_poll = RELAY_POLL_S if relay_poll_s is None else float(relay_poll_s)
        self._poll_timeout = max(0, int(poll_timeout_s))
        self._backoff = float(backoff_s)
        self._max_backoff = float(max_backoff_s)
        self._start_attempts = int(start_attempts)
        # Telegram dates are whole seconds: a message of this session's first second counts.
        self._started = int(time.time() if started is None else started)
        self._offset: int | None = None
        self.stats = {"answered": 0, "ignored_chats": 0, "skipped_old": 0, "failures": 0,
                      "conflicts": 0}
        ptb = logging.getLogger("telegram.Bot")
        if not any(isinstance(f, _HideUpdates) for f in ptb.filters):
            ptb.addFilter(_HideUpdates())

    async def __call__(self, bot: Any, submit: Callable[[Outgoing], bool]) -> None:
        try:
            await _quietly(self._poll(bot, submit), self._config)
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
                await asyncio.sleep(retry_after_s(err))
                continue
            except (InvalidToken, Forbidden) as err:
                log.warning("Telegram commands off: %s", explain(err, self._config.custom_api))
                return
            except Conflict as err:  # another process polls this bot: never a storm of 409s
                self.stats["conflicts"] += 1
                if await self._conflict(bot, submit, err):
                    return
                continue
            except NetworkError as err:
                failures += 1
                self.stats["failures"] += 1
                if not contacted and failures >= self._start_attempts:
                    log.info("Telegram commands off: %s", explain(err, self._config.custom_api))
                    return
                log.debug("Telegram getUpdates failed (%d in a row): %s", failures,
                          self._config.describe(err))
                await asyncio.sleep(_backoff_s(self._backoff, self._max_backoff, failures))
                continue
            if not contacted:
                contacted = True
                log.info("Telegram commands on: /status, /plot, /stop, /help from chat %s",
                         self._config.chat_id)
                await self._contacted(bot)
            failures = 0
            for update in updates:
                self._offset = update.update_id + 1  # the next call acknowledges it
                self._handle(update, submit)
            await self._after_updates(bot)

    async def _conflict(self, bot: Any, submit: Callable[[Outgoing], bool],
                        err: BaseException) -> bool:
        """A 409: another process polls this bot (a campaign's driver, another run on this
        token). This run stops polling for good and reads what a driver relays instead."""
        where = f" as member {self.member}" if self.member else ""
        log.info("Telegram: another process polls this bot (409 Conflict), so this run stops "
                 "polling and reads the commands a campaign relays through the chat's pinned "
                 "message%s (README: Telegram)", where)
        await RelayReader(self._config, self.commands, self.member, poll_s=self._relay_poll,
                          backoff_s=self._backoff, max_backoff_s=self._max_backoff,
                          started=self._started).read(bot, submit)
        return True

    async def _contacted(self, bot: Any) -> None:
        """Once, after the first getUpdates answered, before its updates are handled."""

    async def _after_updates(self, bot: Any) -> None:
        """After each batch of updates (the campaign's relay writes its message here)."""

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
        replies = self._answer(message)
        if replies or self.commands.plot_wanted:
            self.stats["answered"] += 1
        for text in replies:
            submit(Outgoing("command", text, CRITICAL))

    def _answer(self, message: Any) -> list[str]:
        return self.commands.answer(message.text or "")


# Commands in a campaign, one bot (messages.py: the relayed lines). A kernel told to read the
# relay (COMMANDS_VAR=relay: the campaign renders its trainers so), or one whose getUpdates got
# a 409, never polls: it reads the chat's pinned message every RELAY_POLL_S with getChat and
# acts on the lines for it. The driver's CommandRelay is the bot's one poller.


class RelayReader:
    """Reads the commands a campaign's driver relays through the chat's pinned message and
    answers those for `member` (the plan's member name; None outside a campaign's kernel: only
    the lines for all) through `submit`."""

    def __init__(self, config: TelegramConfig, commands: RunCommands, member: str | None, *,
                 poll_s: float | None = None, backoff_s: float = 2.0,
                 max_backoff_s: float = 60.0, started: float | None = None):
        self._config = config
        self.commands = commands
        self.member = member
        self._poll = RELAY_POLL_S if poll_s is None else float(poll_s)
        self._backoff = float(backoff_s)
        self._max_backoff = float(max_backoff_s)
        self._started = int(time.time() if started is None else started)
        self._seen: set[int] = set()

    async def __call__(self, bot: Any, submit: Callable[[Outgoing], bool]) -> None:
        log.info("Telegram commands: reading what the campaign relays through the chat's "
                 "pinned message%s", f" (member {self.member})" if self.member else "")
        await _quietly(self.read(bot, submit), self._config)

    async def read(self, bot: Any, submit: Callable[[Outgoing], bool]) -> None:
        from telegram.error import Forbidden, InvalidToken, RetryAfter, TelegramError
        failures = 0
        while True:
            try:
                await bot.initialize()
                chat = await bot.get_chat(self._config.chat_id)
            except RetryAfter as err:
                await asyncio.sleep(retry_after_s(err))
                continue
            except (InvalidToken, Forbidden) as err:
                log.warning("Telegram commands off: %s", explain(err, self._config.custom_api))
                return
            except TelegramError as err:  # network, 5xx, a chat that went away: try later
                failures += 1
                log.debug("Telegram getChat failed (%d in a row): %s", failures,
                          self._config.describe(err))
                await asyncio.sleep(_backoff_s(self._backoff, self._max_backoff, failures))
                continue
            failures = 0
            pinned = chat.pinned_message
            if _bots_own(pinned, bot):
                for text in self._act(pinned.text):
                    submit(Outgoing("command", text, CRITICAL))
            await asyncio.sleep(self._poll)

    def _act(self, text: str | None) -> list[str]:
        """Replies to the lines not seen yet that are for this run."""
        replies: list[str] = []
        label = f"<b>{esc(self.member)}</b>" if self.member else "<b>imet run</b>"
        for line in relay_lines(text):
            if line.number in self._seen or line.target not in (ALL, self.member):
                continue
            self._seen.add(line.number)
            if line.command == "stop" and line.target == self.member:
                replies.append(f"{label}: {self.commands.stop_now()}")
            elif line.command == "status" and line.time >= self._started:
                texts = self.commands.status()
                replies += pack([f"{label} · {texts[0]}", *texts[1:]])
        return replies


class CommandRelay(UpdateListener):
    """A campaign driver's listener: the bot's one getUpdates poller. It answers the owner
    (CampaignCommands) and relays each command as a new message it pins (Telegram's getChat
    shows the most recent pinned message by sending date, so a new one always wins), then
    unpins the one before; a line that only went is edited out. A 409 here (a run polling this
    bot by itself) is waited out: that run turns to the relay at its own 409."""

    def __init__(self, config: TelegramConfig, commands: CampaignCommands | None = None,
                 **options: Any):
        super().__init__(config, commands or CampaignCommands(), **options)
        self._pinned: int | None = None
        self._pin_warned = False

    async def _conflict(self, bot: Any, submit: Callable[[Outgoing], bool],
                        err: BaseException) -> bool:
        conflicts = self.stats["conflicts"]
        log.log(logging.INFO if conflicts == 1 else logging.DEBUG,
                "Telegram: another process polls this bot (409 Conflict); the campaign keeps "
                "polling: a kernel that polls turns to the relayed commands at its own 409")
        await asyncio.sleep(_backoff_s(self._backoff, self._max_backoff, min(conflicts, 9)))
        return False

    def _answer(self, message: Any) -> list[str]:
        sent = message.date.timestamp() if message.date is not None else None
        return self.commands.answer(message.text or "", sent)

    async def _contacted(self, bot: Any) -> None:
        """A former driver's pinned message (a campaign run again): its numbering goes on, or
        a kernel that saw its numbers would ignore the new ones; without it, numbers start
        from the clock, above any former driver's."""
        from telegram.error import TelegramError
        try:
            pinned = (await bot.get_chat(self._config.chat_id)).pinned_message
        except TelegramError as err:
            log.debug("Telegram: the pinned message could not be read: %s",
                      self._config.describe(err))
            self.commands.resume([], int(time.time()))
            return
        if _bots_own(pinned, bot) and (pinned.text or "").startswith(RELAY_HEADER):
            self.commands.resume(relay_lines(pinned.text))
            self._pinned = pinned.message_id

    async def _after_updates(self, bot: Any) -> None:
        from telegram.error import BadRequest, Forbidden, TelegramError
        commands = self.commands
        try:
            if commands.fresh:
                commands.fresh = commands.changed = False
                text = commands.text()
                sent = await bot.send_message(self._config.chat_id, text)
                await bot.pin_chat_message(self._config.chat_id, sent.message_id,
                                           disable_notification=True)
                before, self._pinned = self._pinned, sent.message_id
                if before is not None:
                    try:
                        await bot.unpin_chat_message(self._config.chat_id, before)
                    except TelegramError as err:
                        log.debug("Telegram: the former relay message stays pinned: %s",
                                  self._config.describe(err))
            elif commands.changed and self._pinned is not None:
                commands.changed = False
                await bot.edit_message_text(commands.text(), self._config.chat_id,
                                            self._pinned)
        except (BadRequest, Forbidden) as err:
            if "not modified" in str(err):
                return
            if not self._pin_warned:
                self._pin_warned = True
                log.warning("Telegram: the campaign cannot pin its relay message (%s): its "
                            "kernels hear no commands; in a group, make the bot an admin that "
                            "may pin messages", self._config.describe(err))
        except TelegramError as err:  # network: the next batch tries again
            commands.fresh = True
            log.debug("Telegram relay message not written: %s", self._config.describe(err))


def commands_mode(env: Mapping[str, str]) -> str:
    """How this run hears the chat's commands (COMMANDS_VAR): by polling ("chat"), or by
    reading a campaign's relay ("relay")."""
    mode = (env.get(COMMANDS_VAR) or "chat").strip().lower()
    if mode not in COMMAND_MODES:
        raise UserError(f"{COMMANDS_VAR}={env[COMMANDS_VAR]!r} is not a commands mode; use "
                        f"{' or '.join(COMMAND_MODES)}")
    return mode


MODES = ("auto", "on", "off")
EVERY_MIN_VAR = "IMET_TELEGRAM_EVERY_MIN"
_SENDER_OPTIONS = ("min_interval_s", "connect_timeout_s", "read_timeout_s", "max_queue",
                   "max_attempts", "backoff_s", "breaker_threshold", "breaker_cooldown_s",
                   "max_retry_after_s", "close_timeout_s")
_LISTENER_OPTIONS = ("poll_timeout_s", "start_attempts", "started", "relay_poll_s")


@dataclass(frozen=True)
class TelegramStatus:
    """Whether this process sends, and where its token came from or why it does not: said in
    a session's first lines, recorded in run.json, shown by `imet doctor` (never the token)."""
    config: TelegramConfig | None
    why_off: str = ""

    @property
    def on(self) -> bool:
        return self.config is not None

    def line(self) -> str:
        if self.config is None:
            return f"off: {self.why_off}"
        return f"on: token from {self.config.source}, chat {self.config.chat_id}"

    def record(self) -> dict[str, Any]:
        """For run.json: the token's source, or why notifications are off."""
        if self.config is None:
            return {"on": False, "why": self.why_off}
        return {"on": True, "source": self.config.source}


def telegram_status(mode: str = "auto", rank: int = 0, env: Mapping[str, str] | None = None,
                    input_roots: Iterable[str | os.PathLike] = ()) -> TelegramStatus:
    """The settings found for `mode` (see build_notifier), or why notifications are off."""
    if mode not in MODES:
        raise UserError(f"--notify {mode!r} is not a notify mode; use one of {', '.join(MODES)}")
    if mode == "off":
        return TelegramStatus(None, "--notify off")
    if int(rank) != 0:
        return TelegramStatus(None, f"rank {rank} (only rank 0 sends)")
    try:
        config = load_config(env, input_roots=input_roots)
    except ConfigProblem as problem:
        return TelegramStatus(None, str(problem))
    try:
        importlib.import_module("telegram")  # a bundled wheel; its absence must not stop training
    except ImportError:
        return TelegramStatus(None, "python-telegram-bot is not installed "
                                    "(pip install 'python-telegram-bot>=22,<23')")
    return TelegramStatus(config)


def build_notifier(mode: str = "auto", rank: int = 0, env: Mapping[str, str] | None = None,
                   request_stop: Callable[[str], None] | None = None,
                   status: TelegramStatus | None = None,
                   input_roots: Iterable[str | os.PathLike] = (), member: str | None = None,
                   **options: Any):
    """A TelegramNotifier, or None.

    mode: "auto"/"on" send when IMET_TELEGRAM_TOKEN and IMET_TELEGRAM_CHAT_ID are found
    (environment, then Kaggle Secrets, then a DATASET under `input_roots`); "off" never
    sends. rank: only rank 0 sends.
    request_stop: the engine's StopRequest.request; when given, the chat's /status, /plot,
    /stop are answered too: by polling, or (COMMANDS_VAR=relay, a campaign's kernel) by
    reading what the campaign relays, as `member` (the plan's member name). status:
    `telegram_status(mode, rank, env)` when the caller has
    it (and has said it); otherwise it is found here and logged. options: TelegramSender
    (`_SENDER_OPTIONS`), UpdateListener (`_LISTENER_OPTIONS`; backoff_s shared) and
    TelegramNotifier settings."""
    env = os.environ if env is None else env
    if status is None:
        status = telegram_status(mode, rank, env, input_roots)
        if status.on or int(rank) == 0 and mode != "off":
            log.info("Telegram notifications %s", status.line())
    config = status.config
    if config is None:
        return None
    sender_kw = {k: options.pop(k) for k in _SENDER_OPTIONS if k in options}
    if "progress_every_s" not in options and env.get(EVERY_MIN_VAR):
        try:
            options["progress_every_s"] = 60.0 * float(env[EVERY_MIN_VAR])
        except ValueError:
            raise UserError(f"{EVERY_MIN_VAR}={env[EVERY_MIN_VAR]!r} is not a number of "
                            "minutes; set e.g. 15") from None
    listener: UpdateListener | RelayReader | None = None
    if request_stop is not None:
        listen_kw = {k: options.pop(k) for k in _LISTENER_OPTIONS if k in options}
        if "backoff_s" in sender_kw:
            listen_kw["backoff_s"] = sender_kw["backoff_s"]
        commands = RunCommands(request_stop)
        if commands_mode(env) == "relay":
            relay_kw = {k: listen_kw[k] for k in ("backoff_s", "started") if k in listen_kw}
            listener = RelayReader(config, commands, member,
                                   poll_s=listen_kw.get("relay_poll_s"), **relay_kw)
        else:
            listener = UpdateListener(config, commands, member=member, **listen_kw)
    sender = TelegramSender(config, listen=listener, **sender_kw)
    return TelegramNotifier(sender, commands=listener.commands if listener else None, **options)


def _redacted(event: Event) -> Event:
    """The event with every field but the history through the secret filter (a crash text or a
    config can quote a token or Kaggle key, and a chat may be forwarded); the history only feeds
    the plot, and walking its rows would cost the training thread seconds. No secret: the event
    itself, not a copy."""
    values = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)
              if f.name not in ("history", "time")}
    scrubbed = redact(values)
    return event if scrubbed == values else dataclasses.replace(event, **scrubbed)


class TelegramNotifier(RankZeroSubscriber):
    """EventBus subscriber; runs on the training thread, so it only formats and enqueues, except
    the plot, rendered here on purpose (matplotlib is not thread-safe; the worker stays free of
    it), throttled to `plot_every_s`. `sender`: anything with `submit(Outgoing)` and
    `close(timeout)`; `commands`: the RunCommands fed every event here. Checkpoints are silent
    by default: the handover and finish messages say where the state is."""

    def __init__(self, sender: Any, *, progress_every_s: float = 900.0,
                 plot_every_s: float = 3600.0, send_plots: bool = True,
                 send_checkpoints: bool = False, plot_renderer: Callable | None = None,
                 clock: Callable[[], float] = time.monotonic, commands: Any = None):
        self.sender = sender
        self.progress_every_s = float(progress_every_s)
        self.plot_every_s = float(plot_every_s)
        self.send_plots = send_plots
        self.send_checkpoints = send_checkpoints
        self._renderer = plot_renderer
        self._renderer_resolved = plot_renderer is not None
        self._clock = clock
        self._run_name: str | None = None
        self._last_progress = clock()
        self._last_plot = float("-inf")
        self._failed_once = False
        self.commands = commands

    def __repr__(self) -> str:
        return f"TelegramNotifier(run={self._run_name!r})"

    def __call__(self, event: Event) -> None:
        try:
            if self.commands is not None:
                self.commands(event)
                asked = self.commands.take_plot()
                if asked is not None:  # /plot: rendered here, matplotlib stays off the worker
                    self._send_plot(asked, CRITICAL, forced=True, kind="command_plot")
            super().__call__(event)
        except Exception as err:  # a notification must never stop training
            if not self._failed_once:
                self._failed_once = True
                log.warning("Telegram notifier skipped a %s event: %s: %s", event.kind,
                            type(err).__name__, err)

    def _send(self, event: Event, texts: Callable[[Event, str | None], list[str]],
              priority: int) -> Event:
        """Queue the event's message; returns the event as it was sent (redacted)."""
        event = _redacted(event)
        for text in texts(event, self._run_name):
            self.sender.submit(Outgoing(event.kind, text, priority))
        return event

    def _on_run_start(self, event: RunStart) -> None:
        self._run_name = event.run_name or self._run_name
        self._last_progress = self._clock()
        self._send(event, messages.run_start, CRITICAL)

    def _on_progress(self, event: Progress) -> None:
        now = self._clock()
        if now - self._last_progress < self.progress_every_s:
            return
        self._last_progress = now
        self._send(event, messages.progress, LOW)

    def _on_evaluation(self, event: Evaluation) -> None:
        sent = self._send(event, messages.evaluation, NORMAL)
        if self._clock() - self._last_plot >= self.plot_every_s:
            self._send_plot(sent, LOW)

    def _on_checkpoint(self, event: Checkpoint) -> None:
        if self.send_checkpoints:
            self._send(event, messages.checkpoint, LOW)

    def _on_handover(self, event: Handover) -> None:
        self._send(event, messages.handover, CRITICAL)

    def _on_finish(self, event: Finish) -> None:
        self._send_plot(self._send(event, messages.finish, CRITICAL), CRITICAL)

    def _on_failure(self, event: Failure) -> None:
        self._send(event, messages.failure, CRITICAL)

    def _send_plot(self, event: Evaluation | Finish, priority: int, forced: bool = False,
                   kind: str | None = None) -> None:
        history = event.history or []
        renderer = self._plot_renderer() if (self.send_plots or forced) and history else None
        if renderer is None:
            return
        self._last_plot = self._clock()
        try:
            png = renderer(history)
        except Exception as err:
            log.warning("Telegram notifier could not render the plot: %s: %s",
                        type(err).__name__, err)
            return
        if png:
            caption = messages.plot_caption(event, self._run_name)
            self.sender.submit(Outgoing(kind or f"{event.kind}_plot", caption, priority,
                                        photo=bytes(png)))

    def _plot_renderer(self) -> Callable[[list[dict]], bytes] | None:
        if not self._renderer_resolved:
            self._renderer_resolved = True
            try:
                importlib.import_module("matplotlib")  # files.py imports it only when it draws
                from imet.observe.files import render_history_png
                self._renderer = render_history_png
            except ImportError:
                log.debug("matplotlib is not available: Telegram messages go without plots")
        return self._renderer

    def close(self, timeout: float | None = None) -> None:
        self.sender.close(timeout)
