"""The real python-telegram-bot against a stand-in Bot API server on 127.0.0.1: a normal run
and every failure a Kaggle kernel meets (flood control, 5xx, a hanging server, no server, a
blocked bot). In each the emitting side only enqueues, close() keeps its bound, and no
captured output holds the token."""
from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time

import pytest
from telegram_standin import TelegramStandin, refused_url

from imet.observe.messages import CRITICAL, LOW, Outgoing
from imet.observe.telegram import build_notifier
from imet.train.events import (
    Checkpoint,
    Evaluation,
    EventBus,
    Failure,
    Finish,
    Handover,
    Progress,
    RunStart,
)

TOKEN = "123456789:AAHfakeTokenForTests_abcdefghijklmnopq"
SECRET = TOKEN.split(":")[1]
FAST = dict(min_interval_s=0.02, connect_timeout_s=0.5, read_timeout_s=0.5, backoff_s=0.05,
            breaker_threshold=4, breaker_cooldown_s=30.0, close_timeout_s=2.0,
            progress_every_s=0.0, plot_every_s=0.0, send_plots=False)
# Plots cost a matplotlib render each (seconds on a loaded 2-core box): only the normal run
# draws them.
SLACK_S = 1.0  # scheduling slack on a shared 2-core machine, on top of the close bound


@pytest.fixture
def no_token_leak(caplog, capfd):
    """Every log record (all levels) and everything written to stdout/stderr, checked for
    the token after the test."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    out, err = capfd.readouterr()
    for text in (caplog.text, out, err, "\n".join(r.getMessage() for r in caplog.records)):
        assert TOKEN not in text and SECRET not in text


def notifier_for(api_url: str, **overrides):
    env = {"IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": "4242",
           "IMET_TELEGRAM_API_URL": api_url}
    notifier = build_notifier("auto", rank=0, env=env, **{**FAST, **overrides})
    assert notifier is not None
    return notifier


def history(steps):
    rows = []
    for step in steps:
        rows.append({"step": step, "kind": "progress", "stage": 1, "loss": 1.0 / step,
                     "lr": 1e-4})
        if step % 20 == 0:
            rows.append({"step": step, "kind": "evaluation", "f2": 0.3 + step / 1000,
                         "val_loss": 0.5})
    return rows


def emit_session(bus, session, wait=lambda n: None, end="finish", plots=False):
    """One training session's events as the engine emits them; `wait(n)` stands for the
    training time between events (the stand-in has received n messages by then)."""
    resumed = None if session == 1 else 40
    bus.emit(RunStart(run_name="r18-f0", arch="resnet18", fold=0, image_size=64,
                      session=session, resumed_from=resumed, device="cpu", total_steps=80,
                      config={"lr": 3e-4, "batch_size": 8}, kernel="me/imet-train", rank=0))
    first = 1 if resumed is None else 41
    bus.emit(Progress(stage=1, epoch=first // 10, step=first + 9, total_steps=80,
                      epoch_step=10, steps_per_epoch=10, loss=0.5, lr=3e-4, img_per_s=150.0,
                      eta_run_s=60.0, session_left_s=3000.0))
    wait(2)
    step = first + 19
    bus.emit(Evaluation(step=step, epoch=step // 10, f2=0.3 + step / 1000, threshold=0.25,
                        best_f2=0.3 + step / 1000, best_step=step, val_loss=0.4, is_best=True,
                        history=history(range(1, step + 1))))
    bus.emit(Checkpoint(step=step, path=f"checkpoints/state-{step}.pt"))
    wait(4 if plots else 3)
    if end == "handover":
        bus.emit(Handover(step=40, checkpoint="checkpoints/state-40.pt", reason="budget",
                          next="push the trainer kernel again", exit_code=75))
    elif end == "finish":
        bus.emit(Finish(best_f2=0.38, best_step=80, duration_s=95.0, sessions=session,
                        artifacts=["model.pt", "metrics.csv"], history=history(range(1, 81))))


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def timed_close(bus):
    start = time.monotonic()
    bus.close()
    return time.monotonic() - start


def test_normal_run_every_kind_arrives_in_order(no_token_leak):
    with TelegramStandin() as server:
        for session, end in ((1, "handover"), (2, "finish")):
            bus = EventBus([notifier_for(server.api_url, send_plots=session == 2,
                                         plot_every_s=3600)])
            before = len(server.sent())
            emit_session(bus, session, lambda n: wait_until(
                lambda: len(server.sent()) >= before + n), end=end, plots=session == 2)
            assert timed_close(bus) <= FAST["close_timeout_s"] + SLACK_S
        sent = server.sent()
    kinds = [(r.method, r.params.get("text", r.params.get("caption", "")).split(" ")[0])
             for r in sent]
    assert kinds == [("sendMessage", "🚀"), ("sendMessage", "⏳"), ("sendMessage", "📊"),
                     ("sendMessage", "⏸"),
                     ("sendMessage", "🚀"), ("sendMessage", "⏳"), ("sendMessage", "📊"),
                     ("sendPhoto", "📈"), ("sendMessage", "✅"), ("sendPhoto", "📈")]
    assert all(r.params["chat_id"] == "4242" and r.token == TOKEN for r in sent)
    assert all(r.params.get("parse_mode") == "HTML" for r in sent)
    assert "resumed from step 40" in sent[4].params["text"]
    assert "kernel <code>me/imet-train</code>" in sent[0].params["text"]
    photos = [r for r in sent if r.method == "sendPhoto"]
    assert all(r.files["photo"].startswith(b"\x89PNG") for r in photos)
    assert "best F2 0.3800" in photos[-1].params["caption"]


def test_crash_message_carries_the_traceback_and_the_error_still_propagates(no_token_leak):
    with TelegramStandin() as server:
        bus = EventBus([notifier_for(server.api_url)])

        def train():
            try:
                raise RuntimeError("CUDA error: device-side assert <triggered>")
            except Exception as err:
                import traceback
                bus.emit(Failure(error=f"{type(err).__name__}: {err}",
                                 traceback=traceback.format_exc()))
                raise
            finally:
                bus.close()

        with pytest.raises(RuntimeError, match="device-side assert"):
            train()
        texts = [r.params["text"] for r in server.sent()]
    assert len(texts) == 1 and texts[0].startswith("❌")
    assert "RuntimeError: CUDA error: device-side assert &lt;triggered&gt;" in texts[0]
    assert "<pre>Traceback (most recent call last)" in texts[0]
    assert "in train" in texts[0]


def test_crash_message_never_carries_a_secret(no_token_leak):
    kaggle_key = "0123456789abcdef0123456789abcdef"
    other_bot = "987654321:AAHsomeOtherBotsTokenInATraceback_xyz"
    with TelegramStandin() as server:
        bus = EventBus([notifier_for(server.api_url)])
        bus.emit(Failure(error=f"ConnectError: https://api.telegram.org/bot{other_bot}/getMe",
                         traceback=f"Traceback (most recent call last):\n  KAGGLE_KEY="
                                   f"{kaggle_key}\nConnectError: https://api.telegram.org/bot"
                                   f"{TOKEN}/sendMessage"))
        bus.close()
        texts = [r.params["text"] for r in server.sent()]
    assert len(texts) == 1 and "ConnectError" in texts[0] and "KAGGLE_KEY=" in texts[0]
    for secret in (kaggle_key, other_bot, SECRET):
        assert secret not in texts[0]


def test_crash_without_close_still_reports_at_exit():
    """A process that dies of an uncaught exception without closing the bus: the atexit
    hook still delivers the crash message, within the close bound."""
    script = textwrap.dedent("""
        import os, sys
        from imet.train.events import EventBus, Failure
        from imet.observe.telegram import build_notifier
        bus = EventBus([build_notifier("auto", min_interval_s=0.02, close_timeout_s=3.0)])
        bus.emit(Failure(error="ValueError: boom", traceback="Traceback (most recent..."))
        raise ValueError("boom")
    """)
    with TelegramStandin() as server:
        env = {"IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": "4242",
               "IMET_TELEGRAM_API_URL": server.api_url, "PATH": "/usr/bin:/bin"}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, timeout=60)
        texts = [r.params["text"] for r in server.sent()]
    assert done.returncode == 1 and "ValueError: boom" in done.stderr
    assert SECRET not in done.stderr + done.stdout
    assert len(texts) == 1 and texts[0].startswith("❌") and "ValueError: boom" in texts[0]


def test_flood_control_retry_after_is_honoured(no_token_leak):
    with TelegramStandin(scenario="429", count=2, retry_after=1) as server:
        bus = EventBus([notifier_for(server.api_url)])
        emit_session(bus, 1)
        wait_until(lambda: len(server.sent()) >= 4)
        assert timed_close(bus) <= FAST["close_timeout_s"] + SLACK_S
        requests = list(server.requests)
    assert [r.status for r in requests[:2]] == [429, 429]
    assert requests[1].time - requests[0].time >= 0.95  # waited retry_after, not hammering
    assert requests[2].time - requests[1].time >= 0.95
    assert "⏳" in server.sent()[1].params["text"]  # nothing was lost on the way
    assert sum("flood control" in r.getMessage() for r in no_token_leak.records
               if r.levelno >= logging.WARNING) == 1


def test_transient_http_500s_are_retried(no_token_leak):
    with TelegramStandin(scenario="500", count=2) as server:
        notifier = notifier_for(server.api_url)
        bus = EventBus([notifier])
        emit_session(bus, 1)
        wait_until(lambda: len(server.sent()) >= 4)
        assert timed_close(bus) <= FAST["close_timeout_s"] + SLACK_S
        assert [r.status for r in server.requests[:3]] == [500, 500, 200]
        assert notifier.sender.stats["retries"] == 2 and notifier.sender.stats["sent"] == 4


def test_persistent_500s_open_the_breaker_with_one_warning(no_token_leak):
    with TelegramStandin(scenario="500") as server:
        notifier = notifier_for(server.api_url, breaker_threshold=3, max_attempts=5)
        bus = EventBus([notifier])
        bus.emit(Progress(stage=1, epoch=0, step=1, total_steps=9, epoch_step=1,
                          steps_per_epoch=9, loss=1.0, lr=0.1, img_per_s=1.0, eta_run_s=9.0,
                          session_left_s=None))
        wait_until(lambda: notifier.sender.stats["dropped_breaker"] >= 1)
        seen = len(server.requests)
        for _ in range(50):  # while the breaker is open, messages are dropped at once
            emit_session(bus, 1, end="none")
        assert len(server.requests) == seen
        bus.emit(Finish(best_f2=0.4, best_step=9, duration_s=9.0, sessions=1,
                        artifacts=[], history=[]))
        assert timed_close(bus) <= FAST["close_timeout_s"] + SLACK_S
        assert server.requests[-1].method == "getMe"  # the finish was still tried once
    warnings = [r for r in no_token_leak.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "notifications paused" in warnings[0].getMessage()


@pytest.mark.parametrize("where", ["hang", "refused"])
def test_unreachable_server_never_holds_training(where, no_token_leak):
    with TelegramStandin(scenario="hang") as server:
        url = server.api_url if where == "hang" else refused_url()
        notifier = notifier_for(url, breaker_threshold=2)
        bus = EventBus([notifier])
        start = time.monotonic()
        for session in (1, 2):
            emit_session(bus, session)
        emitting = time.monotonic() - start
        closing = timed_close(bus)
    assert emitting < 1.0  # no network wait on the emitting side
    assert closing <= FAST["close_timeout_s"] + SLACK_S
    assert notifier.sender.stats["sent"] == 0


def test_forbidden_disables_with_one_warning(no_token_leak):
    with TelegramStandin(scenario="403") as server:
        notifier = notifier_for(server.api_url)
        bus = EventBus([notifier])
        emit_session(bus, 1)
        wait_until(lambda: not notifier.sender.enabled)
        emit_session(bus, 2)
        assert timed_close(bus) <= FAST["close_timeout_s"] + SLACK_S
        assert [r.status for r in server.requests] == [403]
    warnings = [r.getMessage() for r in no_token_leak.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "disabled" in warnings[0] and "Start" in warnings[0]


def test_full_queue_drops_oldest_low_priority_never_critical(no_token_leak):
    """The queue's bound, for a kind that does not coalesce (one a later message type may
    bring): the oldest low-priority item goes first, a critical one never."""
    with TelegramStandin(scenario="hang", count=1) as server:
        notifier = notifier_for(server.api_url, max_queue=3, read_timeout_s=1.0)
        sender = notifier.sender
        sender.submit(Outgoing("note", "p0", LOW))
        wait_until(lambda: len(server.requests) == 1)  # p0 in flight, the server hangs
        for i in range(1, 10):
            sender.submit(Outgoing("note", f"p{i}", LOW))
        sender.submit(Outgoing("finish", "done", CRITICAL))
        wait_until(lambda: len(server.sent()) == 4)
        notifier.close()
        assert [r.params["text"] for r in server.sent()] == ["p0", "p8", "p9", "done"]
        assert sender.stats["dropped_full"] == 7


def test_a_backlog_with_a_hanging_api_ends_the_process_within_the_close_bound():
    """Training ended with a backlog queued behind a Bot API that never answers: the process
    exits within the close bound (the sender's thread and its in-flight request are cut)."""
    script = textwrap.dedent("""
        import sys
        from imet.train.events import EventBus, Evaluation, Finish, Progress
        from imet.observe.telegram import build_notifier
        bus = EventBus([build_notifier("auto", progress_every_s=0.0, send_plots=False,
                                       close_timeout_s=2.0, read_timeout_s=60.0)])
        for step in range(1, 101):
            bus.emit(Progress(stage=2, epoch=0, step=step, total_steps=100, epoch_step=step,
                              steps_per_epoch=100, loss=0.1, lr=1e-4, img_per_s=300.0,
                              eta_run_s=1.0, session_left_s=100.0))
            if step % 10 == 0:
                bus.emit(Evaluation(step=step, epoch=0, f2=0.5, threshold=0.2, best_f2=0.5,
                                    best_step=step, val_loss=0.3, is_best=True, history=[]))
        bus.emit(Finish(best_f2=0.5, best_step=100, duration_s=1.0, sessions=1, artifacts=[],
                        history=[]))
        print("trained", flush=True)
        bus.close()
    """)
    with TelegramStandin(scenario="hang") as server:
        env = {"IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": "4242",
               "IMET_TELEGRAM_API_URL": server.api_url, "PATH": "/usr/bin:/bin"}
        child = subprocess.Popen([sys.executable, "-c", script], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert child.stdout.readline() == "trained\n"
        trained = time.monotonic()
        out, err = child.communicate(timeout=60)
        ended = time.monotonic() - trained
    assert child.returncode == 0, err
    assert ended <= 2.0 + SLACK_S
    assert SECRET not in out + err


def test_text_refused_by_the_html_parser_goes_again_as_plain_text(no_token_leak):
    with TelegramStandin(scenario="bad_html", count=1, only=("sendMessage",)) as server:
        notifier = notifier_for(server.api_url)
        notifier.sender.submit(Outgoing("evaluation", "<b>F2</b> 0.61 &lt; 0.62"))
        wait_until(lambda: len(server.sent()) == 1)
        notifier.close()
        retried = server.sent()[0].params
    assert retried["text"] == "F2 0.61 < 0.62" and "parse_mode" not in retried


def test_rank_other_than_zero_and_off_send_nothing():
    env = {"IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": "1"}
    assert build_notifier("auto", rank=1, env=env) is None
    assert build_notifier("off", rank=0, env=env) is None
