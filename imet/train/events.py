"""Events the engine emits and the subscribers that listen (report, Telegram, registry).

The engine knows nothing of its listeners: it calls `bus.emit(kind, **data)`. A subscriber is
any callable taking an `Event`; it may also have `close()`. A subscriber that raises is
logged once and never breaks training.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

KINDS = ("run_start", "init_evaluation", "progress", "evaluation", "checkpoint", "handover",
         "finish", "failure")


@dataclass(frozen=True)
class Event:
    kind: str
    data: dict[str, Any]
    time: float = field(default_factory=time.time)


Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self, subscribers: list[Subscriber] | None = None):
        self._subscribers: list[Subscriber] = list(subscribers or [])
        self._failed: set[int] = set()

    def emit(self, kind: str, **data: Any) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}; expected one of {KINDS}")
        event = Event(kind, data)
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception as err:  # a listener must never stop training
                if id(subscriber) not in self._failed:
                    self._failed.add(id(subscriber))
                    log.warning("event subscriber %r failed on %s: %s: %s",
                                subscriber, kind, type(err).__name__, err)

    def close(self) -> None:
        for subscriber in self._subscribers:
            close = getattr(subscriber, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception as err:
                log.warning("closing subscriber %r failed: %s: %s",
                            subscriber, type(err).__name__, err)


class RankZeroSubscriber:
    """The dispatch every file-writing subscriber shares: `event.kind` goes to
    `_on_<kind>(event)` when the subscriber defines it. On a multi-process run only rank 0
    (learnt from run_start) writes, so each file and line is written once."""
    _active = True

    def __call__(self, event) -> None:
        if event.kind == "run_start":
            self._active = int(event.data.get("rank") or 0) == 0
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is not None and self._active:
            handler(event)
