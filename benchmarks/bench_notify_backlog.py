"""The Telegram backlog at the end of a run: how stale the queue is, how long the finish message
waits, and how long the process waits for the notifier after training ended.

A short run that evaluates often, against the stand-in Bot API (tests/telegram_standin.py, the
real python-telegram-bot over HTTP) with the sender's default pacing (one message per 1.1 s, the
flood limit) and its default close bound (10 s): for `--train-s` seconds the run emits a progress
event every 0.05 s (unthrottled) and an evaluation every 0.4 s, then a Finish, then closes the
notifier as `imet train` does. Then the same run against a Bot API that never answers.

    python benchmarks/bench_notify_backlog.py [--train-s 4]
Prints, per case: the messages delivered after training ended and how many of them were stale
(a progress or evaluation older than the newest of its kind), the seconds from the end of
training to the finish message, and the close time. Last line:
`notify_backlog_close_s: <close time with the backlog, s>`."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from telegram_standin import TelegramStandin  # noqa: E402

from imet.observe.telegram import build_notifier  # noqa: E402
from imet.train.events import EventBus, Evaluation, Finish, Progress, RunStart  # noqa: E402

TOKEN = "123456789:AAHbenchmarkTokenNotReal_abcdefghijklmnop"


def run(server: TelegramStandin, train_s: float) -> dict:
    env = {"IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": "4242",
           "IMET_TELEGRAM_API_URL": server.api_url}
    notifier = build_notifier("auto", env=env, progress_every_s=0.0, send_plots=False)
    bus = EventBus([notifier])
    bus.emit(RunStart(run_name="bench", arch="resnet18", fold=0, image_size=64, session=1,
                      device="cpu", total_steps=10 ** 6, rank=0, resumed_from=None,
                      config={}, kernel=None))
    start, step, evaluations = time.monotonic(), 0, 0
    while (now := time.monotonic()) - start < train_s:
        step += 1
        bus.emit(Progress(stage=2, epoch=0, step=step, total_steps=10 ** 6, epoch_step=step,
                          steps_per_epoch=10 ** 6, loss=0.1, lr=1e-4, img_per_s=300.0,
                          eta_run_s=100.0, session_left_s=1000.0))
        if now - start >= 0.4 * (evaluations + 1):
            evaluations += 1
            bus.emit(Evaluation(step=step, epoch=0, f2=0.5, threshold=0.2, best_f2=0.5,
                                best_step=step, val_loss=0.3, is_best=True, history=[]))
        time.sleep(0.05)
    ended = time.monotonic()
    bus.emit(Finish(best_f2=0.5, best_step=step, duration_s=train_s, sessions=1,
                      artifacts=[], history=[]))
    bus.close()
    closed = time.monotonic()
    after = [r for r in server.sent() if r.time >= ended]
    texts = [r.params.get("text", "") for r in after]
    newest = {}
    for text in texts:
        newest[text[:1]] = text
    stale = sum(1 for text in texts if text[:1] in "⏳📊" and text != newest[text[:1]])
    finish = [r.time for r in after if r.params.get("text", "").startswith("✅")]
    return {"events": step + evaluations + 2, "sent_after_end": len(after), "stale": stale,
            "finish_after_s": finish[0] - ended if finish else None,
            "close_s": closed - ended}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-s", type=float, default=4.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with TelegramStandin() as server:
        backlog = run(server, args.train_s)
    with TelegramStandin(scenario="hang") as server:
        hanging = run(server, args.train_s)
    for name, result in (("backlog", backlog), ("hanging API", hanging)):
        finish = result["finish_after_s"]
        print(f"{name}: {result['events']} events; after training: "
              f"{result['sent_after_end']} messages sent ({result['stale']} stale), finish "
              f"message {'not sent' if finish is None else f'{finish:.1f} s'} after the end, "
              f"close {result['close_s']:.1f} s")
    print(f"notify_backlog_close_s: {backlog['close_s']:.2f}")


if __name__ == "__main__":
    main()
