"""What imet prints and writes for people: secrets scrubbed, and training progress on the console.

Secrets reach imet only through the environment or Kaggle Secrets, but a config dict may still
carry one (a token pasted into a config file); every config and error text that leaves the
process goes through `redact` or `scrub_text` first.

Progress: a tqdm bar on a terminal; on Kaggle (stdout is a log file, not a TTY) one plain line
every `every_s` seconds. Evaluations, checkpoints, handovers, the finish and failures are
always printed."""
from __future__ import annotations

import os
import re
import sys
import time
from typing import Any, Iterable, TextIO

from imet.config import format_duration
from imet.train.events import (Checkpoint, Evaluation, Failure, Finish, Handover, InitEvaluation,
                               Progress, RankZeroSubscriber, RunStart)

REDACTED = "<redacted>"

# Key names whose values are credentials whatever they hold.
_SECRET_KEY = re.compile(r"(token|secret|password|passwd|api[_-]?key|credential|^key$|_key$)",
                         re.IGNORECASE)
# A Telegram bot token, "<bot id>:<secret>" as @BotFather gives it ("123456789:AA…", a
# 35-character secret), with room for older and future bots. The one definition of its shape:
# imet.observe.telegram checks a configured token against it and scrubs texts of TOKEN_IN_TEXT.
TELEGRAM_TOKEN = re.compile(r"\d{5,}:[A-Za-z0-9_-]{20,}")
# A token-shaped substring. Lookarounds, not \b: in a Bot API URL the token follows "bot"
# directly (".../bot123456789:AA…"), where \b finds no boundary.
TOKEN_IN_TEXT = re.compile(r"(?<!\d)" + TELEGRAM_TOKEN.pattern + r"(?![A-Za-z0-9_-])")
# Values that look like credentials wherever they appear: bot tokens and 32-hex Kaggle API keys.
_SECRET_VALUE = re.compile(TOKEN_IN_TEXT.pattern
                           + r"|(?<![0-9A-Za-z])[0-9a-f]{32}(?![0-9A-Za-z])")
# Environment variables whose values must never be written anywhere.
_SECRET_ENV = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|KAGGLE_KEY)", re.IGNORECASE)


def redact(value: Any, environ: dict[str, str] | None = None) -> Any:
    """A copy of `value` (JSON-like) with secret keys dropped to REDACTED and secret-looking
    strings (token patterns, values of secret env vars of 8+ characters) replaced."""
    env_secrets = [text for name, text in (os.environ if environ is None else environ).items()
                   if _SECRET_ENV.search(name) and len(text) >= 8]

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: REDACTED if _SECRET_KEY.search(str(key)) and item not in (None, "", False)
                    else scrub(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [scrub(item) for item in value]
        if isinstance(value, str):
            return scrub_text(value, env_secrets)
        return value
    return scrub(value)


def scrub_text(text: object, secrets: Iterable[str] = (), mark: str = REDACTED,
               shapes: re.Pattern = _SECRET_VALUE) -> str:
    """`text` as a string with what matches `shapes` and each of `secrets` replaced by `mark`."""
    out = shapes.sub(mark, str(text))
    for secret in secrets:
        if secret:
            out = out.replace(secret, mark)
    return out


_EMA = 0.3  # weight of the newest step-rate sample: reacts to a stage switch within a few lines


def _num(value: Any, spec: str, missing: str = "?") -> str:
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return missing


def _epoch_in_progress(event: Progress) -> Any:
    # The engine counts completed epochs; a reader wants the one in progress.
    epoch = event.epoch
    return epoch + 1 if isinstance(epoch, int) and event.epoch_step else epoch


class ConsoleProgress(RankZeroSubscriber):
    """Event subscriber printing progress. `every_s`: seconds between plain progress lines;
    `stream`: where to print (stdout); `tty`: force the bar on/off (default: stream.isatty());
    `preface`: the first line printed when the run starts (Telegram's status: an informational
    line, so on `stream` with the progress, and only then: a session refused before its start
    says one error line and nothing else)."""

    def __init__(self, every_s: float = 60.0, stream: TextIO | None = None,
                 tty: bool | None = None, clock=time.monotonic, preface: str = ""):
        self.every_s = float(every_s)
        self.preface = preface
        self.stream = stream if stream is not None else sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty()) if tty is None else bool(tty)
        self._clock = clock
        self._bar = None
        self._last_line: float | None = None
        self._total_epochs = None
        self._rate: dict[int, float] = {}  # steps per second, per stage
        self._previous: tuple[float, int, int] | None = None  # (clock, step, stage)

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _on_run_start(self, event: RunStart) -> None:
        if self.preface:
            self._print(self.preface)
        self._total_epochs = (event.config or {}).get("epochs")
        resumed = event.resumed_from
        start = f"resuming from step {resumed}" if resumed is not None else "starting"
        self._print(f"imet: run {event.run_name} (fold {event.fold}, {event.arch}, "
                    f"{event.image_size} px) session {event.session} on {event.device}: "
                    f"{start}, {event.total_steps} steps in all")
        if self.tty:
            # A real terminal: the plain bar (tqdm.auto would pick a notebook widget).
            from tqdm import tqdm
            self._bar = tqdm(total=event.total_steps, initial=int(resumed or 0),
                             file=self.stream, unit="step", dynamic_ncols=True,
                             desc=str(event.run_name or "train"))

    def _on_progress(self, event: Progress) -> None:
        self._update_rate(event)
        if self._bar is not None:
            step = int(event.step or 0)
            if step > self._bar.n:
                self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(
                f"stage {event.stage} ep {_epoch_in_progress(event)} loss "
                f"{_num(event.loss, '.4f')} lr {_num(event.lr, '.2e')} "
                f"{_num(event.img_per_s, '.0f')} img/s left "
                f"{format_duration(event.session_left_s)}", refresh=False)
            return
        now = self._clock()
        if self._last_line is not None and now - self._last_line < self.every_s:
            return
        self._last_line = now
        self._print(self.progress_line(event))

    def progress_line(self, event: Progress) -> str:
        """The plain progress line for one progress event."""
        step, total = event.step, event.total_steps
        percent = f" ({100.0 * step / total:.0f}%)" if step is not None and total else ""
        epochs = f"/{self._total_epochs}" if self._total_epochs else ""
        session = (f" | session left {format_duration(event.session_left_s)}"
                   if event.session_left_s is not None else "")
        return (f"[{time.strftime('%H:%M:%S')}] stage {event.stage} | epoch "
                f"{_epoch_in_progress(event)}{epochs} | step {step}/{total}{percent} | loss "
                f"{_num(event.loss, '.4f')} | lr {_num(event.lr, '.2e')} | "
                f"{_num(event.img_per_s, '.1f')} img/s | ETA stage "
                f"{format_duration(self.stage_eta(event))}, run "
                f"{format_duration(event.eta_run_s)}{session}")

    def _update_rate(self, event: Progress) -> None:
        now, step, stage = self._clock(), event.step, event.stage
        if step is None:
            return
        previous = self._previous
        self._previous = (now, int(step), stage)
        if previous is None or previous[2] != stage or now <= previous[0] or step <= previous[1]:
            return
        sample = (step - previous[1]) / (now - previous[0])
        old = self._rate.get(stage)
        self._rate[stage] = sample if old is None else _EMA * sample + (1 - _EMA) * old

    def stage_eta(self, event: Progress) -> float | None:
        """Seconds to the end of the current stage at the stage's measured step rate; the run
        ETA in the last stage; None when unknown (stage 1 of an event without its end step)."""
        step, total, stage = event.step, event.total_steps, event.stage
        if step is None or total is None:
            return None
        end = total
        if stage == 1:
            if event.stage1_end_step is None:
                return None
            end = min(total, int(event.stage1_end_step))
        rate, eta_run = self._rate.get(stage), event.eta_run_s
        if rate:
            return max(0.0, (end - step) / rate)
        if eta_run is None or end == total:
            return eta_run
        return eta_run * (end - step) / (total - step) if total > step else None

    def _on_evaluation(self, event: Evaluation) -> None:
        best = " *new best*" if event.is_best else ""
        self._print(f"[{time.strftime('%H:%M:%S')}] eval step {event.step}: F2 "
                    f"{_num(event.f2, '.4f')} @ threshold {_num(event.threshold, '.3f')}, val "
                    f"loss {_num(event.val_loss, '.4f')} (best {_num(event.best_f2, '.4f')} "
                    f"at step {event.best_step}){best}")

    def _on_init_evaluation(self, event: InitEvaluation) -> None:
        self._print(f"[{time.strftime('%H:%M:%S')}] untuned F2 {_num(event.f2, '.4f')} @ "
                    f"threshold {_num(event.threshold, '.3f')}, val loss "
                    f"{_num(event.val_loss, '.4f')}: the --init model before tuning")

    def _on_checkpoint(self, event: Checkpoint) -> None:
        if not self.tty:
            self._print(f"[{time.strftime('%H:%M:%S')}] checkpoint step {event.step}: "
                        f"{event.path}")

    def _on_handover(self, event: Handover) -> None:
        self.close()
        self._print(f"imet: stopping at step {event.step} ({event.reason}); checkpoint "
                    f"{event.checkpoint}; next: {event.next} (exit code {event.exit_code})")

    def _on_finish(self, event: Finish) -> None:
        self.close()
        untuned = f" (untuned {_num(event.init_f2, '.4f')})" if event.init_f2 is not None else ""
        self._print(f"imet: finished: best F2 {_num(event.best_f2, '.4f')}{untuned} at "
                    f"step {event.best_step}, {event.sessions} session(s), "
                    f"{format_duration(event.duration_s)}")

    def _on_failure(self, event: Failure) -> None:
        self.close()
        if event.user_error:
            return  # the command prints it as its one-line error
        # an error text may quote a URL with a token in it
        self._print(f"imet: training failed: {redact(str(event.error))}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
