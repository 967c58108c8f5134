"""Waiting on a threading.Condition while an asyncio loop keeps running, for the sender's
worker once it also listens: its loop must go on serving the long poll while the worker
waits for the next message, and `submit` (the training thread) must never wait for it."""
from __future__ import annotations

import asyncio
import threading


class LoopWaiter:
    """`wait` runs `loop` instead of sleeping on the Condition; `wake` (any thread) cuts it
    short, as `Condition.notify` would."""

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
