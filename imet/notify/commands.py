"""What the run answers to its owner's Telegram commands: /status, /plot, /stop, /help.

Two threads meet here. The training thread hands over each event (`observe`: it keeps a
reference to the latest data of each kind, nothing more, since progress comes at every step);
the sender's worker thread turns a command's text into reply texts (`answer`). The stop goes
through the engine's own stop request (StopRequest.request), so a /stop ends the
session exactly as a SIGTERM does: saved, HANDOVER.json written, exit 75. Plots are rendered
by the subscriber on the training thread (matplotlib stays off the worker), so /plot only
raises a flag here."""
from __future__ import annotations

import re
import time
from typing import Callable

from imet.duration import format_duration
from imet.notify.messages import esc, fmt_float, fmt_lr, pack

CONFIRM_S = 60.0
STOP_REASON = "telegram"

HELP = ("<b>imet run commands</b>\n"
        "/status: step, epoch, stage, F2, loss, speed, ETA and the session time left\n"
        "/plot: the loss and F2 curves so far\n"
        "/stop: save now and hand over (exit 75; push the kernel again to resume); asks "
        "for a confirmation: <code>/stop now</code>, or a second /stop within 60 s\n"
        "/help: this list")

_COMMAND = re.compile(r"^/([A-Za-z_]+)(?:@\S+)?(?:\s+(.*))?$", re.DOTALL)


def parse(text: str) -> tuple[str, str] | None:
    """("stop", "now") for "/stop now" or "/stop@my_bot now"; None for a text that is no
    command."""
    match = _COMMAND.match(text.strip())
    if match is None:
        return None
    return match.group(1).lower(), (match.group(2) or "").strip().lower()


class RunCommands:
    """The run's state as the events tell it, and the answers to the owner's commands."""

    def __init__(self, request_stop: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic):
        self._request_stop = request_stop
        self._clock = clock
        self._start: dict = {}
        self._progress: dict = {}
        self._evaluation: dict = {}
        self._ended: str | None = None
        self._stop_asked_at: float | None = None
        self.stop_sent = False
        self.plot_wanted = False

    # ---- training thread -------------------------------------------------------------
    def observe(self, kind: str, data: dict) -> None:
        """Keep what /status and /plot need from an event (references only: cheap)."""
        if kind == "progress":
            self._progress = data
        elif kind == "evaluation":
            self._evaluation = data
        elif kind == "run_start":
            self._start, self._ended = data, None
        elif kind in ("handover", "finish", "failure"):
            self._ended = {"handover": "handed over", "finish": "finished",
                           "failure": "crashed"}[kind]

    def take_plot(self) -> dict | None:
        """The last evaluation's data when /plot asked for it (once), else None."""
        if not self.plot_wanted:
            return None
        self.plot_wanted = False
        return self._evaluation or None

    # ---- worker thread ---------------------------------------------------------------
    def answer(self, text: str) -> list[str]:
        """HTML reply texts to one message of the owner's chat (none for a non-command)."""
        command = parse(text)
        if command is None:
            return []
        name, argument = command
        if name == "status":
            return self.status()
        if name == "plot":
            if not self._evaluation.get("history"):
                return ["No evaluation yet: the curves start at the first evaluation."]
            self.plot_wanted = True
            return []
        if name == "stop":
            return [self._confirm_stop(argument)]
        if name in ("help", "start"):
            return [HELP]
        return [f"Unknown command /{esc(name, 40)}; /help lists the commands."]

    def status(self) -> list[str]:
        start, progress, evaluation = self._start, self._progress, self._evaluation
        name = esc(start.get("run_name") or "imet run")
        if not start:
            return [f"<b>{name}</b>: starting (loading data and model)."]
        state = self._ended or ("stopping at the next step" if self.stop_sent else "running")
        step, total = progress.get("step", start.get("resumed_from") or 0), \
            start.get("total_steps")
        lines = [f"<b>{name}</b> · {state} · session {esc(start.get('session'))}",
                 f"step {esc(step)}/{esc(total)} · epoch {esc(progress.get('epoch', '?'))} · "
                 f"stage {esc(progress.get('stage', '?'))}"]
        if evaluation:
            lines.append(f"F2 last {fmt_float(evaluation.get('f2'))} (step "
                         f"{esc(evaluation.get('step'))}) · best "
                         f"{fmt_float(evaluation.get('best_f2'))} (step "
                         f"{esc(evaluation.get('best_step'))})")
        else:
            lines.append("F2: no evaluation yet")
        if progress:
            lines.append(f"loss {fmt_float(progress.get('loss'))} · lr "
                         f"{fmt_lr(progress.get('lr'))} · "
                         f"{fmt_float(progress.get('img_per_s'), 1)} img/s")
            lines.append(f"ETA run {format_duration(progress.get('eta_run_s'), ' ')} · session "
                         f"left {format_duration(progress.get('session_left_s'), ' ')}")
        return pack(lines)

    def _confirm_stop(self, argument: str) -> str:
        if self._ended:
            return f"The run has already {self._ended}."
        if self.stop_sent:
            return "Already stopping: the state is saved at the next step."
        now = self._clock()
        asked = self._stop_asked_at
        if argument != "now" and (asked is None or now - asked > CONFIRM_S):
            self._stop_asked_at = now
            return ("Stop this session? It saves, writes HANDOVER.json and exits 75; the next "
                    "push resumes. Confirm with <code>/stop now</code>, or send /stop again "
                    "within 60 s.")
        self.stop_sent = True
        self._request_stop(STOP_REASON)  # before a run_start too: it stops at its first step
        return ("Stopping: the state is saved at the next step and the session hands over "
                "(exit 75). Push the kernel again to resume.")
