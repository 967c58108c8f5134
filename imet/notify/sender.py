"""Delivery of notifications on a background thread that can never slow or break training.

python-telegram-bot 22 is asyncio-based and not thread-safe, so one daemon thread owns one
event loop and one `telegram.Bot`; the training thread only appends to a deque under a lock
(`submit`, microseconds). The worker does all waiting — pacing between messages, Telegram's
`RetryAfter`, backoff after a failure, the circuit breaker's cooldown — in one place
(`_take`), on a Condition, so `close()` can cut any wait short and the deadline it sets
bounds everything, an in-flight request included (it is cancelled).

No library does this part: PTB's own rate limiter and retry logic live in telegram.ext's
Application, which wants to own the process's event loop and polling.

`listen` (an UpdateListener, for the train command) runs as a task on the same loop: while an
item is being sent the loop runs anyway, and while the worker would wait the loop runs a nap
that `submit` and `close` cut short, so the long poll always progresses and never delays a
message or the close bound."""
from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
from collections import deque
from datetime import timedelta
from typing import Any, Awaitable, Callable

from imet.notify.bot import quiet_retry_after_deprecation, explain, make_bot
from imet.notify.config import DEFAULT_API_URL, TelegramConfig, silence_url_loggers
from imet.notify.loop_wait import LoopWaiter
from imet.notify.messages import CRITICAL, LOW, Outgoing

log = logging.getLogger(__name__)


class _Pending:
    __slots__ = ("item", "attempts")

    def __init__(self, item: Outgoing):
        self.item = item
        self.attempts = 0


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
        self.stats = {"sent": 0, "dropped_full": 0, "dropped_breaker": 0, "dropped_close": 0,
                      "failed": 0, "retries": 0}

        silence_url_loggers(config.token)
        quiet_retry_after_deprecation()
        self._thread = threading.Thread(target=self._run, name="imet-telegram", daemon=True)
        self._thread.start()
        # A crash that skips close() still gets its last messages out, within the bound.
        atexit.register(self.close)

    def __repr__(self) -> str:
        return f"TelegramSender(chat_id={self._chat_id!r}, queued={len(self._queue)})"

    @property
    def enabled(self) -> bool:
        return not self._disabled

    # ---- training thread -------------------------------------------------------------
    def submit(self, item: Outgoing) -> bool:
        """Queue `item`; never blocks on the network. False when it was dropped."""
        with self._wake:
            if self._closing or self._disabled:
                return False
            if item.priority < CRITICAL and time.monotonic() < self._breaker_until:
                self.stats["dropped_breaker"] += 1
                return False
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
        for index, pending in enumerate(self._queue):
            if pending.item.priority == lowest:
                del self._queue[index]
                self.stats["dropped_full"] += 1
                return True
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
                stale = [p for p in self._queue if p.item.priority <= LOW]
                for pending in stale:
                    self._queue.remove(pending)
                self.stats["dropped_close"] += len(stale)
            self._wake.notify_all()
        self._kick_loop()
        self._thread.join(max(0.0, self._deadline - time.monotonic()))
        if self._thread.is_alive():
            self._cancel_inflight()
            self._thread.join(max(0.0, start + budget - time.monotonic()))
        if self._thread.is_alive():
            log.debug("Telegram sender still busy after %.1f s; left behind", budget)

    def _cancel_inflight(self) -> None:
        loop, task = self._loop, self._inflight
        if loop is None or task is None:
            return
        try:
            loop.call_soon_threadsafe(task.cancel)
        except RuntimeError:  # the loop closed in between: nothing left to cancel
            pass

    # ---- worker thread ---------------------------------------------------------------
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            if self._listen is not None:
                self._waiter = LoopWaiter(loop)
                self._listening = loop.create_task(self._poll())
            while True:
                pending = self._take()
                if pending is None:
                    break
                self._deliver(loop, pending)
        except BaseException as err:  # the worker must end quietly, whatever happened
            self._warn_once("worker", "Telegram notifications stopped: %s",
                            self._describe(err))
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
        waiter = self._waiter
        if waiter is not None:
            waiter.wake()

    async def _poll(self) -> None:
        await self._listen(self._made_bot(), self.submit)  # the listener says hello itself

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
            wait = _seconds(err)
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
                                item.kind, self._describe(err))
        except NetworkError as err:  # TimedOut, connection refused, HTTP 5xx
            self._on_network_failure(pending, err)
        except Exception as err:
            self.stats["failed"] += 1
            self._warn_once("unexpected", "Telegram send failed: %s", self._describe(err))
        else:
            self._failures = 0
            self._warned.discard("breaker")
            self.stats["sent"] += 1
            with self._wake:
                self._not_before = max(self._not_before, time.monotonic() + self._min_interval)

    def _on_network_failure(self, pending: _Pending, err: BaseException) -> None:
        self._failures += 1
        log.debug("Telegram send failed (%d in a row): %s", self._failures, self._describe(err))
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
        """Stop trying for a cooldown: drop what is queued except the final and crash
        messages, which wait for the cooldown's end (or get one try at close)."""
        with self._wake:
            self._breaker_until = time.monotonic() + self._breaker_cooldown
            dropped = [p for p in self._queue if p.item.priority < CRITICAL]
            for stale in dropped:
                self._queue.remove(stale)
            self.stats["dropped_breaker"] += len(dropped)
            if pending.item.priority >= CRITICAL:
                self._queue.appendleft(pending)
            else:
                self.stats["dropped_breaker"] += 1
        self._failures = 0
        # One warning per outage: a success in between makes the next outage worth a line.
        self._warn_once("breaker", "Telegram unreachable (%s); notifications paused for "
                        "%.0f s, training goes on", self._describe(err),
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
        bot = await self._ready_bot()
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

    async def _ready_bot(self) -> Any:
        # getMe once: a wrong token is found before the first real message.
        await self._made_bot().initialize()
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
            log.debug("Telegram shutdown: %s", self._describe(err))
        finally:
            loop.close()

    def _disable(self, err: BaseException) -> None:
        with self._wake:
            self._disabled = True
            self._queue.clear()
        custom = self._config.api_url != DEFAULT_API_URL
        log.warning("Telegram notifications disabled for this run: %s", explain(err, custom))

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)
        else:
            log.debug(message, *args)

    def _describe(self, err: BaseException) -> str:
        return self._config.scrub(f"{type(err).__name__}: {err}")


def _seconds(err: Any) -> float:
    """RetryAfter's wait: PTB 22 stores a timedelta; its public attribute is an int or a
    timedelta depending on PTB_TIMEDELTA (and warns when int), so read the stored value."""
    value = getattr(err, "_retry_after", None)
    if value is None:
        value = err.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)
