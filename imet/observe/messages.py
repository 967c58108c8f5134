"""What a run says on Telegram: a message for each engine event, and the answers to the
owner's commands (/status, /plot, /stop, /help). Texts are HTML built with `html.escape`.

Telegram refuses a text over 4,096 characters and a caption over 1,024 (UTF-16 units, counted
after parsing). We count the HTML source, never shorter, and split between lines (never inside
a tag), so each piece is valid HTML; a long traceback is split into <pre> blocks by lines."""
from __future__ import annotations

import html
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from imet.config import format_duration
from imet.train.events import (Checkpoint, Evaluation, Failure, Finish, Handover, Progress,
                               RankZeroSubscriber, RunStart)

TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
TRACEBACK_LINES = 30
FIELD_CHARS = 300  # a run name or path longer than this is clipped, so one line always fits

# Priorities decide what a full queue, an open breaker and a close drop first; CRITICAL is
# never dropped: the start, hand-over, finish and crash messages and the replies to commands.
LOW, NORMAL, CRITICAL = 0, 1, 2
# News that only matters while it is the newest: a queued message of one of these kinds is
# replaced by the next of its kind (each is one message per event: its fields are clipped), so
# a backlog behind the flood limit never sends stale steps and the final message is not held.
COALESCED = frozenset({"progress", "evaluation", "evaluation_plot", "checkpoint"})


@dataclass(frozen=True)
class Outgoing:
    """One Telegram request: a text message, or a photo with `text` as its caption."""
    kind: str
    text: str
    priority: int = NORMAL
    photo: bytes | None = None
    html: bool = True

    def as_plain(self) -> "Outgoing":
        """The same message without markup, for a text Telegram's HTML parser refused."""
        plain = html.unescape(re.sub(r"<[^>]*>", "", self.text))
        return Outgoing(self.kind, plain, self.priority, self.photo, html=False)

    def __repr__(self) -> str:
        photo = f", photo={len(self.photo)} bytes" if self.photo else ""
        return f"Outgoing({self.kind}, {len(self.text)} chars{photo})"


def tg_len(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units (an emoji counts 2)."""
    return len(text.encode("utf-16-le")) // 2


def esc(value: Any, limit: int = FIELD_CHARS) -> str:
    text = "?" if value is None else str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return html.escape(text, quote=False)


def fmt_float(value: Any, digits: int = 4) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "?"
    if not math.isfinite(number):
        return str(number)
    if number != 0 and (abs(number) < 1e-3 or abs(number) >= 1e5):
        return f"{number:.2e}"
    return f"{number:.{digits}f}"


def fmt_lr(value: Any) -> str:
    """Learning rates span decades within a run: always in scientific notation."""
    try:
        return f"{float(value):.2e}"
    except (TypeError, ValueError):
        return "?"


def pack(lines: Iterable[str], limit: int = TEXT_LIMIT) -> list[str]:
    """Join HTML lines with newlines into as few texts as fit in `limit` each."""
    lines = list(lines)
    # Fast path for the usual few short lines (this runs in the training thread): a character
    # is at most 2 UTF-16 units, so twice the length bounds what Telegram counts.
    if 2 * (sum(map(len, lines)) + len(lines)) <= limit:
        return ["\n".join(lines)] if lines else []
    texts, current, size = [], [], 0
    for line in lines:
        length = tg_len(line)
        if current and size + 1 + length > limit:
            texts.append("\n".join(current))
            current, size = [], 0
        current.append(line)
        size += length + (1 if len(current) > 1 else 0)
    if current:
        texts.append("\n".join(current))
    return texts


def pre_blocks(raw: str, limit: int = TEXT_LIMIT) -> list[str]:
    """`raw` as <pre> blocks, each within `limit` once escaped; split between lines where it
    can, inside an over-long line where it must."""
    budget = limit - len("<pre></pre>")
    # Escaping grows a character to at most 5 ("&amp;") and UTF-16 to 2 units: a chunk of
    # budget // 10 characters always fits.
    step = max(1, budget // 10)
    pieces = [[line] if tg_len(html.escape(line, quote=False)) <= budget
              else [line[i:i + step] for i in range(0, len(line), step)]
              for line in raw.splitlines() or [""]]
    blocks, current = [], ""
    for line in (piece for group in pieces for piece in group):
        candidate = line if not current else current + "\n" + line
        if current and tg_len(html.escape(candidate, quote=False)) > budget:
            blocks.append(current)
            current = line
        else:
            current = candidate
    blocks.append(current)
    return [f"<pre>{html.escape(block, quote=False)}</pre>" for block in blocks]


def caption(lines: list[str]) -> str:
    """Lines joined into a photo caption, dropping trailing lines until it fits 1,024."""
    while lines:
        text = "\n".join(lines)
        if tg_len(text) <= CAPTION_LIMIT:
            return text
        lines = lines[:-1]
    return ""


def _run_label(run_name: str | None) -> str:
    return f"<b>{esc(run_name or 'imet run')}</b>"


# Config fields worth seeing on a phone; others are in run.json.
_CONFIG_SHOWN = ("loss", "epochs", "batch_size", "lr", "schedule", "preset", "amp", "seed")


def run_start(event: RunStart, run_name: str | None = None) -> list[str]:
    resumed = event.resumed_from
    verb = f"resumed from step {esc(resumed)}" if resumed is not None else "started"
    kernel = f"kernel <code>{esc(event.kernel)}</code> · " if event.kernel else ""
    lines = [f"🚀 {_run_label(event.run_name or run_name)} {verb}",
             f"{kernel}session {esc(event.session)}", f"device: {esc(event.device)}",
             f"{esc(event.arch)} · fold {esc(event.fold)} · "
             f"{esc(event.image_size)} px · {esc(event.total_steps)} steps"]
    config = event.config or {}
    shown = [f"{key} {esc(config[key], 40)}" for key in _CONFIG_SHOWN if key in config]
    if shown:
        lines.append(" · ".join(shown))
    return pack(lines)


def progress(event: Progress, run_name: str | None = None) -> list[str]:
    step, total = event.step, event.total_steps
    percent = ""
    if isinstance(step, (int, float)) and isinstance(total, (int, float)) and total:
        percent = f" ({100.0 * step / total:.0f}%)"
    lines = [f"⏳ {_run_label(run_name)} · stage {esc(event.stage)} · "
             f"epoch {esc(event.epoch)} · step {esc(step)}/{esc(total)}{percent}",
             f"loss {fmt_float(event.loss)} · lr {fmt_lr(event.lr)} · "
             f"{fmt_float(event.img_per_s, 1)} img/s",
             f"ETA run {format_duration(event.eta_run_s, ' ')}"]
    if event.session_left_s is not None:
        lines[-1] += f" · session left {format_duration(event.session_left_s, ' ')}"
    return pack(lines)


def evaluation(event: Evaluation, run_name: str | None = None) -> list[str]:
    best = " ★ new best" if event.is_best else (
        f" · best {fmt_float(event.best_f2)} at step {esc(event.best_step)}")
    return pack([f"📊 {_run_label(run_name)} · step {esc(event.step)} · epoch {esc(event.epoch)}",
                 f"F2 <b>{fmt_float(event.f2)}</b> at threshold "
                 f"{fmt_float(event.threshold, 3)}{best}",
                 f"val loss {fmt_float(event.val_loss)}"])


def checkpoint(event: Checkpoint, run_name: str | None = None) -> list[str]:
    return pack([f"💾 {_run_label(run_name)} checkpoint at step {esc(event.step)}",
                 f"<code>{esc(event.path)}</code>"])


def handover(event: Handover, run_name: str | None = None) -> list[str]:
    reason = {"budget": "the session time budget is spent",
              "signal": "the kernel was asked to stop",
              "telegram": "/stop from this chat"}.get(event.reason, esc(event.reason))
    return pack([f"⏸ {_run_label(run_name)} handing over: {reason}",
                 f"state saved at step {esc(event.step)}: <code>{esc(event.checkpoint)}</code>",
                 f"next: {esc(event.next, 1000)}", f"exit code {esc(event.exit_code)}"])


def finish(event: Finish, run_name: str | None = None) -> list[str]:
    lines = [f"✅ {_run_label(run_name)} finished",
             f"best F2 <b>{fmt_float(event.best_f2)}</b> at step {esc(event.best_step)}",
             f"duration {format_duration(event.duration_s, ' ')} · "
             f"sessions {esc(event.sessions)}"]
    if event.artifacts:
        lines += ["artifacts:"] + [f"• <code>{esc(path)}</code>" for path in event.artifacts]
    return pack(lines)


def failure(event: Failure, run_name: str | None = None) -> list[str]:
    head = pack([f"❌ {_run_label(event.run_name or run_name)} crashed",
                 f"<b>{esc(event.error, 1000)}</b>"])
    trace = str(event.traceback or "").rstrip("\n").splitlines()[-TRACEBACK_LINES:]
    if not trace:
        return head
    blocks = pre_blocks("\n".join(trace))
    # The head and the first block share one message when they fit together.
    joined = head[-1] + "\n" + blocks[0]
    if tg_len(joined) <= TEXT_LIMIT:
        return head[:-1] + [joined] + blocks[1:]
    return head + blocks


def plot_caption(event: Evaluation | Finish, run_name: str | None = None) -> str:
    if isinstance(event, Finish):
        line = f"best F2 {fmt_float(event.best_f2)} at step {esc(event.best_step)}"
    else:
        line = f"step {esc(event.step)} · F2 {fmt_float(event.f2)}"
    return caption([f"📈 {_run_label(run_name)}", line])


# Commands. The training thread hands over each event (only the latest of each kind is kept);
# the sender's worker thread turns a command into reply texts (`answer`). /stop goes through the
# engine's own stop request, so it ends the session exactly as a SIGTERM does (saved,
# HANDOVER.json, exit 75). Plots are rendered on the training thread, so /plot only sets a flag.
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
    """("stop", "now") for "/stop now" or "/stop@my_bot now"; None for no command."""
    match = _COMMAND.match(text.strip())
    return match and (match.group(1).lower(), (match.group(2) or "").strip().lower())


class RunCommands(RankZeroSubscriber):
    """The run's state as the events tell it, and the answers to the owner's commands."""

    def __init__(self, request_stop: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic):
        self._request_stop = request_stop
        self._clock = clock
        self._start: RunStart | None = None
        self._progress: Progress | None = None
        self._evaluation: Evaluation | None = None
        self._ended: str | None = None
        self._stop_asked_at: float | None = None
        self.stop_sent = False
        self.plot_wanted = False

    # training thread
    def _on_progress(self, event: Progress) -> None:
        self._progress = event

    def _on_evaluation(self, event: Evaluation) -> None:
        self._evaluation = event

    def _on_run_start(self, event: RunStart) -> None:
        self._start, self._ended = event, None

    def _on_handover(self, event: Handover | Finish | Failure) -> None:
        self._ended = {"handover": "handed over", "finish": "finished"}.get(event.kind, "crashed")

    _on_finish = _on_failure = _on_handover

    def take_plot(self) -> Evaluation | None:
        """The last evaluation when /plot asked for it (once), else None."""
        if not self.plot_wanted:
            return None
        self.plot_wanted = False
        return self._evaluation

    # the sender's worker thread
    def answer(self, text: str) -> list[str]:
        """HTML reply texts to one message of the owner's chat (none for a non-command)."""
        command = parse(text)
        if command is None:
            return []
        name, argument = command
        if name == "status":
            return self.status()
        if name == "plot":
            if self._evaluation is None or not self._evaluation.history:
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
        if start is None:
            return ["<b>imet run</b>: starting (loading data and model)."]
        name = esc(start.run_name or "imet run")
        state = self._ended or ("stopping at the next step" if self.stop_sent else "running")
        step = progress.step if progress else start.resumed_from or 0
        lines = [f"<b>{name}</b> · {state} · session {esc(start.session)}",
                 f"step {esc(step)}/{esc(start.total_steps)} · epoch "
                 f"{esc(progress.epoch if progress else '?')} · "
                 f"stage {esc(progress.stage if progress else '?')}"]
        lines.append(f"F2 last {fmt_float(evaluation.f2)} (step {esc(evaluation.step)}) · best "
                     f"{fmt_float(evaluation.best_f2)} (step {esc(evaluation.best_step)})"
                     if evaluation else "F2: no evaluation yet")
        if progress:
            lines += [f"loss {fmt_float(progress.loss)} · lr {fmt_lr(progress.lr)} · "
                      f"{fmt_float(progress.img_per_s, 1)} img/s",
                      f"ETA run {format_duration(progress.eta_run_s, ' ')} · session "
                      f"left {format_duration(progress.session_left_s, ' ')}"]
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
        return self.stop_now()

    def stop_now(self) -> str:
        """Ask the engine to stop (no confirmation: a campaign's /stop names its member)."""
        if self._ended:
            return f"The run has already {self._ended}."
        if self.stop_sent:
            return "Already stopping: the state is saved at the next step."
        self.stop_sent = True
        self._request_stop(STOP_REASON)  # before a run_start too: it stops at its first step
        return ("Stopping: the state is saved at the next step and the session hands over "
                "(exit 75). Push the kernel again to resume.")


# A campaign's commands. Telegram lets one process per bot call getUpdates (a second gets 409
# Conflict), so in a campaign the local driver alone polls (CampaignCommands answers what it
# reads), and relays each command to its kernels as a numbered line of one message it pins in
# the chat, which every kernel reads with getChat (no getUpdates):
#     imet-cmd <number> <unix time the owner sent it> <status|stop> <member|all>
# `status all` is news: a member answers it once when the owner sent it after the member's
# session started. `stop <member>` is an order: the member obeys it whenever it sees it (a
# session queued when the owner asked stops at its first step), and the driver takes the line
# out once that member's session has ended. A stop for all is one line per running member.
RELAY_HEADER = "imet campaign: commands relayed to its kernels (keep this message pinned)"
RELAY_KEPT = 10  # the newest status lines the message keeps beside the stop orders
ALL = "all"
_RELAY_LINE = re.compile(r"^imet-cmd (\d+) (\d+) (status|stop) ([a-z0-9][a-z0-9-]*)$")


@dataclass(frozen=True)
class RelayLine:
    number: int
    time: int
    command: str  # "status" or "stop"
    target: str   # a member's name (the plan's), or ALL

    def __str__(self) -> str:
        return f"imet-cmd {self.number} {self.time} {self.command} {self.target}"


def relay_lines(text: str | None) -> list[RelayLine]:
    """The relayed commands in a pinned message's text (other lines are not commands)."""
    found = (_RELAY_LINE.match(line.strip()) for line in (text or "").splitlines())
    return [RelayLine(int(m[1]), int(m[2]), m[3], m[4]) for m in found if m]


CAMPAIGN_HELP = ("<b>imet campaign commands</b>\n"
                 "/status: every running member answers with its own status; this table "
                 "says where the others are\n"
                 "/stop MEMBER: that member saves at its next step, hands over (exit 75) and "
                 "is not pushed again; /stop all: every member\n"
                 "/help: this list")


class CampaignCommands:
    """The driver's side: what it says to the owner's commands, the lines it relays (`text`,
    `fresh`) and the members asked to stop (`take_stops`). The driver thread `publish`es the
    members' states; the listener's thread answers; a lock keeps them apart."""

    RUNNING = ("running", "pushing")  # a member whose kernel may be reading the relay

    def __init__(self, clock: Callable[[], float] = time.time):
        self._lock = threading.Lock()
        self._clock = clock
        self._members: dict[str, str] = {}
        self._stops: list[str] = []
        self.lines: list[RelayLine] = []
        self.number = 0
        self.fresh = False    # a new line: the relay sends a new message (pinned) for it
        self.changed = False  # a line went: the pinned message is edited
        self.plot_wanted = False

    # the driver's thread
    def publish(self, members: dict[str, str]) -> None:
        """Every member's state now; the stop orders of members no longer running go."""
        with self._lock:
            self._members = dict(members)
            kept = [line for line in self.lines if line.command != "stop"
                    or self._members.get(line.target) in self.RUNNING]
            if len(kept) != len(self.lines):
                self.lines, self.changed = kept, True

    def take_stops(self) -> list[str]:
        """The members the owner asked to stop since the last call."""
        with self._lock:
            stops, self._stops = self._stops, []
            return stops

    # the listener's thread
    def resume(self, lines: list[RelayLine], number: int = 0) -> None:
        """Continue the numbering (at least `number`) and keep the orders of the message a
        former driver pinned: a kernel that saw its numbers must see greater ones."""
        with self._lock:
            self.number = max([self.number, number, *(line.number for line in lines)])
            self.lines = [line for line in lines if line.command == "stop"] + self.lines

    def text(self) -> str:
        with self._lock:
            return "\n".join([RELAY_HEADER, *map(str, self.lines)])

    def _relay(self, sent: float, command: str, target: str) -> None:
        self.number += 1
        self.lines.append(RelayLine(self.number, int(sent), command, target))
        status = [line for line in self.lines if line.command == "status"]
        self.lines = [line for line in self.lines
                      if line.command == "stop" or line in status[-RELAY_KEPT:]]
        self.fresh = True

    def answer(self, text: str, sent: float | None = None) -> list[str]:
        """HTML replies to one message of the owner's chat, sent at `sent` (unix time)."""
        command = parse(text)
        if command is None:
            return []
        name, argument = command
        sent = self._clock() if sent is None else sent
        with self._lock:
            running = [n for n, state in self._members.items() if state in self.RUNNING]
            if name == "status":
                if running:
                    self._relay(sent, "status", ALL)
                table = " · ".join(f"{esc(n, 40)} {esc(s, 40)}" for n, s in self._members.items())
                tail = (f"; {', '.join(running)} answer{'s' * (len(running) == 1)} for "
                        "themselves" if running else "; none is running")
                return [f"<b>imet campaign</b>: {table or 'no member yet'}{esc(tail)}"]
            if name == "stop":
                return [self._stop(argument, running, sent)]
            if name == "plot":
                return ["In a campaign each member sends its plot with its evaluations; "
                        "/status shows where each one is."]
            if name in ("help", "start"):
                return [CAMPAIGN_HELP]
        return [f"Unknown command /{esc(name, 40)}; /help lists the commands."]

    def _stop(self, argument: str, running: list[str], sent: float) -> str:
        """(the lock held)"""
        members = list(self._members)
        if argument not in (*members, ALL):
            what = f"No member {esc(argument, 40)}" if argument not in ("", "now") else \
                "Name the member"
            return (f"{what}: /stop MEMBER or /stop all (members: "
                    f"{esc(', '.join(members) or 'none yet')}).")
        names = [argument] if argument != ALL else members
        asked = [n for n in names if n in running or self._members[n] == "waiting"]
        if not asked:
            return (f"{esc(argument)} is not running ({esc(self._members[argument])})."
                    if argument != ALL else "No member is running or waiting.")
        for member in asked:
            if member in running and not any(
                    line.command == "stop" and line.target == member for line in self.lines):
                self._relay(sent, "stop", member)
        self._stops += asked
        return (f"Stopping {esc(', '.join(asked))}: a running member saves at its next step "
                "and hands over (exit 75); the campaign pushes none of them again.")
