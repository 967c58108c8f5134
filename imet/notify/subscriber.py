"""The event subscriber: turns engine events into queued Telegram messages.

Runs in the training thread, so it only formats short strings and enqueues; the one heavy
step, rendering the loss/F2 plot, happens here too on purpose (matplotlib is not
thread-safe and the worker thread must stay free of it), throttled to `plot_every_s`."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from imet.notify import messages
from imet.notify.messages import CRITICAL, LOW, NORMAL, Outgoing
from imet.report.redact import redact

log = logging.getLogger(__name__)

# What a full queue may drop first. Checkpoints are silent by default: the handover and
# finish messages say where the state is.
PRIORITY = {"run_start": NORMAL, "progress": LOW, "evaluation": NORMAL, "checkpoint": LOW,
            "handover": CRITICAL, "finish": CRITICAL, "failure": CRITICAL}


def default_plot_renderer() -> Callable[[list[dict]], bytes] | None:
    """imet.report.plots.render_history_png when the report layer provides it."""
    try:
        from imet.report.plots import render_history_png
    except ImportError:
        return None
    return render_history_png


class TelegramNotifier:
    """EventBus subscriber. `sender` is anything with `submit(Outgoing)` and
    `close(timeout)` (a TelegramSender in practice); `commands`: the RunCommands the chat's
    commands are answered from, fed every event here."""

    def __init__(self, sender: Any, *, kernel: str | None = None,
                 progress_every_s: float = 900.0, plot_every_s: float = 3600.0,
                 send_plots: bool = True, send_checkpoints: bool = False,
                 plot_renderer: Callable[[list[dict]], bytes] | None = None,
                 clock: Callable[[], float] = time.monotonic, commands: Any = None):
        self.sender = sender
        self.kernel = kernel
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

    def __call__(self, event: Any) -> None:
        try:
            self._handle(event.kind, dict(event.data))
        except Exception as err:  # a notification must never stop training
            if not self._failed_once:
                self._failed_once = True
                log.warning("Telegram notifier skipped a %s event: %s: %s", event.kind,
                            type(err).__name__, err)

    def _handle(self, kind: str, data: dict) -> None:
        if self.commands is not None:
            self.commands.observe(kind, data)
            asked = self.commands.take_plot()
            if asked is not None:  # /plot: rendered here, matplotlib stays off the worker
                self._send_plot("evaluation", asked, NORMAL, forced=True)
        if kind == "run_start":
            self._run_name = data.get("run_name") or self._run_name
            if not data.get("kernel") and self.kernel:
                data["kernel"] = self.kernel
            self._last_progress = self._clock()
        elif kind == "progress":
            now = self._clock()
            if now - self._last_progress < self.progress_every_s:
                return
            self._last_progress = now
        elif kind == "checkpoint" and not self.send_checkpoints:
            return
        formatter = messages.FORMATTERS.get(kind)
        if formatter is None:
            return
        # A crash text can quote a request URL or an env dump (bot token, Kaggle key), and a
        # config a pasted secret: a chat message is a log the user may forward or screenshot.
        # The history only feeds the plot's numbers, and walking its tens of thousands of rows
        # would cost the training thread seconds per evaluation.
        data = {**redact({k: v for k, v in data.items() if k != "history"}),
                "history": data.get("history")}
        priority = PRIORITY.get(kind, NORMAL)
        for text in formatter(data, self._run_name):
            self.sender.submit(Outgoing(kind, text, priority))
        if kind == "evaluation" and self._clock() - self._last_plot >= self.plot_every_s:
            self._send_plot(kind, data, LOW)
        elif kind == "finish":
            self._send_plot(kind, data, CRITICAL)

    def _send_plot(self, kind: str, data: dict, priority: int, forced: bool = False) -> None:
        history = data.get("history") or []
        if not (self.send_plots or forced) or len(history) < 1:
            return
        renderer = self._plot_renderer()
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
            caption = messages.plot_caption(kind, data, self._run_name)
            self.sender.submit(Outgoing(f"{kind}_plot", caption, priority, photo=bytes(png)))

    def _plot_renderer(self) -> Callable[[list[dict]], bytes] | None:
        if not self._renderer_resolved:
            self._renderer = default_plot_renderer()
            self._renderer_resolved = True
            if self._renderer is None:
                log.debug("imet.report.plots is not available: Telegram messages go "
                          "without plots")
        return self._renderer

    def close(self, timeout: float | None = None) -> None:
        self.sender.close(timeout)
