"""Events the training loop emits, the subscribers that listen (report, Telegram, registry),
and the StopRequest that signals (and Telegram's /stop) set. Free of torch, so `imet train`
installs its signal handlers before torch loads.

Each event is a frozen dataclass, so a field the loop renames breaks its readers at once
instead of reading as None. A subscriber is any callable taking an event, maybe with `close()`;
one that raises is logged once and never breaks training."""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Event:
    kind: ClassVar[str]
    time: float = field(default_factory=time.time)


@dataclass(frozen=True, kw_only=True)
class RunStart(Event):
    """A session begins. On a resume, the best F2 (with its step and threshold) and the
    evaluation history are the checkpoint's: the run's so far."""
    kind: ClassVar[str] = "run_start"
    run_name: str
    arch: str
    fold: int
    image_size: int
    session: int
    resumed_from: int | None  # the step this session resumed at; None: a fresh start
    device: str
    total_steps: int
    config: dict[str, Any]
    kernel: str | None  # the Kaggle kernel's id (owner/slug) it runs in; None outside one
    rank: int = 0
    stage1_end_step: int | None = None
    config_fingerprint: str | None = None
    versions: dict[str, Any] | None = None
    version_change: str | None = None  # the checkpoint's torch/CUDA -> this session's
    init_f2: float | None = None
    best_f2: float | None = None  # None: no evaluation yet
    best_step: int | None = None
    threshold: float | None = None  # the best evaluation's
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class InitEvaluation(Event):
    """--init: the model as it came, scored before the first step."""
    kind: ClassVar[str] = "init_evaluation"
    step: int
    f2: float
    threshold: float
    val_loss: float
    init: str | None


@dataclass(frozen=True, kw_only=True)
class Progress(Event):
    kind: ClassVar[str] = "progress"
    stage: int
    epoch: int
    step: int
    total_steps: int
    epoch_step: int
    steps_per_epoch: int
    loss: float
    lr: float
    img_per_s: float
    eta_run_s: float | None
    session_left_s: float | None
    stage1_end_step: int | None = None
    config_fingerprint: str | None = None


@dataclass(frozen=True, kw_only=True)
class Evaluation(Event):
    kind: ClassVar[str] = "evaluation"
    step: int
    epoch: int
    f2: float
    threshold: float
    best_f2: float
    best_step: int | None
    val_loss: float
    is_best: bool
    history: list[dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class Checkpoint(Event):
    kind: ClassVar[str] = "checkpoint"
    step: int
    path: str


@dataclass(frozen=True, kw_only=True)
class Handover(Event):
    kind: ClassVar[str] = "handover"
    step: int
    checkpoint: str
    reason: str
    next: str
    exit_code: int


@dataclass(frozen=True, kw_only=True)
class Finish(Event):
    kind: ClassVar[str] = "finish"
    best_f2: float
    best_step: int | None
    duration_s: float
    sessions: int
    artifacts: list[str]
    history: list[dict[str, Any]]
    init_f2: float | None = None


@dataclass(frozen=True, kw_only=True)
class Failure(Event):
    kind: ClassVar[str] = "failure"
    error: str
    traceback: str = ""
    user_error: bool = False
    exit_code: int = 1
    run_name: str | None = None  # for a failure before any run_start (the kernel's doctor)


Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self, subscribers: list[Subscriber] | None = None):
        self._subscribers: list[Subscriber] = list(subscribers or [])
        self._failed: set[int] = set()

    def emit(self, event: Event) -> None:
        if not isinstance(event, Event):
            raise TypeError(f"emit takes an event (RunStart, Progress, ...), not {event!r}")
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception as err:  # a listener must never stop training
                if id(subscriber) not in self._failed:
                    self._failed.add(id(subscriber))
                    log.warning("event subscriber %r failed on %s: %s: %s",
                                subscriber, event.kind, type(err).__name__, err)

    def close(self) -> None:
        for subscriber in self._subscribers:
            try:
                getattr(subscriber, "close", lambda: None)()
            except Exception as err:
                log.warning("closing subscriber %r failed: %s: %s",
                            subscriber, type(err).__name__, err)


class RankZeroSubscriber:
    """The one dispatch of every subscriber: an event goes to its `_on_<kind>(event)`, if any,
    on rank 0 only (learnt from run_start), so each file, line and message is written once."""
    _active = True

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStart):
            self._active = event.rank == 0
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is not None and self._active:
            handler(event)


class StopRequest:
    """SIGTERM / SIGINT set a flag; the loop saves at the next boundary and exits 75.

    A further signal while stopping (a second Ctrl-C) is noted on stderr and changes nothing:
    the save finishes, so exit code, checkpoint and HANDOVER.json agree (kill -9 skips it; the
    atomic writes survive). `imet train` installs the handlers before importing torch, so a stop
    during start-up is honoured at the first boundary. Nested `with` blocks install them once,
    in the main thread only (Python allows no other), and the outermost restores them, except
    with `process_exits` (the CLI) once a stop was asked: a Ctrl-C after the save but before
    the exit must not turn the hand-over's exit code into a death by SIGINT."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, process_exits: bool = False):
        self.process_exits = process_exits
        self.reason: str | None = None
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._depth = 0

    def __bool__(self) -> bool:
        return self.reason is not None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None:
            # os.write: a handler may run inside a print or a logging call of the main thread.
            os.write(2, f"imet: {name} again: already stopping, finishing the save first "
                        "(kill -9 aborts without it)\n".encode())
            return
        self.signal_name = name
        self.request("signal")

    def __enter__(self) -> "StopRequest":
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth or (self.process_exits and self.reason is not None):
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
