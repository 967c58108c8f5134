"""The dispatch every report/registry subscriber shares: `event.kind` goes to `_on_<kind>(event)`
when the subscriber defines it. On a multi-process run only rank 0 (learnt from run_start)
writes, so each file and line is written once."""
from __future__ import annotations


class RankZeroSubscriber:
    _active = True

    def __call__(self, event) -> None:
        if event.kind == "run_start":
            self._active = int(event.data.get("rank") or 0) == 0
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is not None and self._active:
            handler(event)
