"""The session's time budget and the stop signals.

A Kaggle session is cut hard when its time is up, so the loop asks before every unit of work
(a step, an evaluation) whether that unit plus a checkpoint save still fits; if not it saves and
hands over. Durations are estimated from what this session measured: the max of the recent
samples times a safety factor, since one slow step (a GC pause, a cold cache) is what would
overrun the budget."""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from typing import Callable


class DurationEstimate:
    """A pessimistic estimate of how long the next unit of some kind of work takes."""

    def __init__(self, window: int = 20, safety: float = 1.25, prior_s: float = 0.0):
        self._samples: deque[float] = deque(maxlen=window)
        self.safety = safety
        self.prior_s = prior_s

    def add(self, seconds: float) -> None:
        self._samples.append(max(0.0, float(seconds)))

    @property
    def count(self) -> int:
        return len(self._samples)

    def mean(self) -> float:
        return sum(self._samples) / len(self._samples) if self._samples else self.prior_s

    def next(self) -> float:
        if not self._samples:
            return self.prior_s
        return max(self._samples) * self.safety


class SessionBudget:
    """`total_s` seconds from `start` (the moment the session began); `margin_s` is kept free.

    `clock` is injectable so a test can run a day-long budget in a second of real time."""

    def __init__(self, total_s: float, margin_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, start: float | None = None):
        self.total_s = float(total_s)
        self.margin_s = float(margin_s)
        self.clock = clock
        self.start = clock() if start is None else start
        self.step = DurationEstimate(prior_s=0.0)
        self.eval = DurationEstimate(window=5, prior_s=0.0)
        self.save = DurationEstimate(window=5, prior_s=0.0)

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        """Seconds of budget left before the margin."""
        return self.total_s - self.margin_s - self.elapsed()

    def fits(self, *work_s: float) -> bool:
        """Whether the given work plus a final checkpoint save still fits in the budget."""
        return sum(work_s) + self.save.next() <= self.left()

    def fits_step(self) -> bool:
        return self.fits(self.step.next())

    def fits_eval(self) -> bool:
        return self.fits(self.eval.next())

    def no_step_text(self, budget_text: str, margin_text: str) -> str:
        """Why a session ends without a step: a handover then would only repeat forever."""
        return (f"no training step fitted in this session: of --time-budget {budget_text} "
                f"({self.total_s:g}s), {self.elapsed():.1f}s were used before the first step "
                f"and --margin {margin_text} keeps {self.margin_s:g}s free; give a longer "
                "--time-budget or a smaller --margin")


class StopRequest:
    """SIGTERM / SIGINT set a flag; the loop saves at the next boundary and exits 75.

    Every further signal while stopping (a second Ctrl-C 0.3 s later, a SIGTERM after a
    SIGINT) is noted on stderr and changes nothing: the save in progress finishes, so the exit
    code, the checkpoint and HANDOVER.json always agree. A user who will not wait for the save
    uses SIGKILL (kill -9), which the atomic writes survive.

    `imet train` installs the handlers first thing, before torch is imported, so a stop during
    start-up is honoured too (at the loop's first boundary). Nested `with` blocks install them
    once. Handlers are installed only in the main thread (Python allows no other) and
    restored when the outermost block ends."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
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
        if self._depth:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
