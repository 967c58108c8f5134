"""What the Telegram notifier costs the training thread per event, next to a no-op subscriber
on the same EventBus, measured side by side in one run.

The sender's worker is held on a Bot API "server" that accepts connections and never answers
(the worst case: the network hangs), so every submit takes the queueing path, where the waiting
progress message gives way to the new one (coalescing). Progress events are sent unthrottled
(progress_every_s=0): each one is formatted and enqueued, which never happens more than once
per N minutes in a real run.

    python benchmarks/bench_notify.py [--events 20000]
Last line: `notify_enqueue_us: <microseconds per progress event, formatted and enqueued>`."""
from __future__ import annotations

import argparse
import logging
import socket
import time

from imet.train.events import EventBus, Progress
from imet.observe.telegram import build_notifier

TOKEN = "123456789:AAHbenchmarkTokenNotReal_abcdefghijklmnop"


def progress(bus: EventBus, step: int) -> None:
    bus.emit(Progress(stage=2, epoch=step // 1500, step=step, total_steps=30000,
                      epoch_step=step % 1500, steps_per_epoch=1500, loss=0.0123, lr=2.5e-5,
                      img_per_s=311.7, eta_run_s=18000.0, session_left_s=7200.0))


def per_event_us(bus: EventBus, events: int) -> float:
    """CPU time of this (the training) thread per event: on a shared machine, wall time
    would mostly measure the other processes."""
    start = time.thread_time()
    for step in range(events):
        progress(bus, step)
    return (time.thread_time() - start) / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel accepts; nobody ever answers
    env = {"IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": "1",
           "IMET_TELEGRAM_API_URL": f"http://127.0.0.1:{silent.getsockname()[1]}/bot"}

    noop = EventBus([lambda event: None])
    every = build_notifier("auto", env=env, progress_every_s=0.0, read_timeout_s=60.0,
                           max_queue=10 ** 7, close_timeout_s=0.5)
    throttled = build_notifier("auto", env=env, read_timeout_s=60.0, close_timeout_s=0.5)
    # Listening for the chat's commands too: every event is observed, every submit wakes
    # the loop the long poll runs on.
    listening = build_notifier("auto", env=env, progress_every_s=0.0, read_timeout_s=60.0,
                               max_queue=10 ** 7, close_timeout_s=0.5,
                               request_stop=lambda reason: None)
    listening_throttled = build_notifier("auto", env=env, read_timeout_s=60.0,
                                         close_timeout_s=0.5, request_stop=lambda reason: None)
    buses = {"no-op subscriber": noop, "notifier, every event queued": EventBus([every]),
             "notifier, default 15-min throttle": EventBus([throttled]),
             "listening, every event queued": EventBus([listening]),
             "listening, default 15-min throttle": EventBus([listening_throttled])}
    for bus in buses.values():  # warm-up: imports, first allocations
        per_event_us(bus, 200)
    results = {name: min(per_event_us(bus, args.events) for _ in range(3))
               for name, bus in buses.items()}
    for name, micros in results.items():
        print(f"{name:36s} {micros:8.2f} us/event")
    for notifier in (every, throttled, listening, listening_throttled):
        notifier.close()
    silent.close()
    extra = results["notifier, every event queued"] - results["no-op subscriber"]
    print(f"notifier minus no-op: {extra:.2f} us/event")
    print(f"notify_enqueue_us: {results['notifier, every event queued']:.2f}")


if __name__ == "__main__":
    main()
