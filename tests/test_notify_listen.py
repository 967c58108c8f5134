"""The notifier listens: the real python-telegram-bot long-polls getUpdates on the stand-in
Bot API server and answers the configured chat's /status, /plot, /stop and /help; any other
chat is ignored unlogged, old updates are skipped and acknowledged, a hanging or failing
getUpdates costs neither the messages nor the close bound, and without a token or with
--notify off nothing polls."""
from __future__ import annotations

import logging
import time

import pytest
from telegram_standin import TelegramStandin, refused_url

from imet.config import TrainConfig
from imet.observe.telegram import build_notifier
from imet.train.events import (Evaluation, EventBus, Handover, Progress, RunStart,
                               StopRequest)

TOKEN = "444555666:AAElistenTokenMustNeverLeak_0123456789"
SECRET = TOKEN.split(":")[1]
CHAT = 99
CLOSE_S = 2.0


def notifier_for(url, stop, **options):
    env = {"IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": str(CHAT),
           "IMET_TELEGRAM_API_URL": url}
    settings = dict(min_interval_s=0.02, connect_timeout_s=0.5, read_timeout_s=0.5,
                    backoff_s=0.05, close_timeout_s=CLOSE_S, progress_every_s=3600.0,
                    poll_timeout_s=1, send_plots=False)
    settings.update(options)
    return build_notifier("on", rank=0, env=env, request_stop=stop.request, **settings)


def emit_run(bus, server, step=7):
    """A run's start and one progress event; returns once the start message is delivered."""
    bus.emit(RunStart(run_name="r18-f0", arch="resnet18", fold=0, image_size=64,
                      session=2, resumed_from=4, device="cpu", total_steps=40, config={},
                      kernel=None, rank=0))
    bus.emit(Progress(stage=2, epoch=1, step=step, total_steps=40, epoch_step=3,
                      steps_per_epoch=4, loss=0.25, lr=1e-3, img_per_s=123.0, eta_run_s=600.0,
                      session_left_s=7200.0))
    assert server.wait_for(lambda: any(t.startswith("🚀") for t in server.replies()))


def replies_after(server, before):
    return server.replies(CHAT)[before:]


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_no_token(server, logs, capfd):
    printed = "".join(capfd.readouterr())
    assert SECRET not in printed and SECRET not in logs.text
    assert all(SECRET not in text for text in server.replies())


def test_status_names_the_current_step_and_help_lists_the_commands(logs, capfd):
    stop = StopRequest()
    with TelegramStandin() as server:
        notifier = notifier_for(server.api_url, stop)
        bus = EventBus([notifier])
        emit_run(bus, server, step=7)
        before = len(server.replies(CHAT))
        server.push("/status")
        assert server.wait_for(lambda: len(replies_after(server, before)) >= 1)
        status = replies_after(server, before)[0]
        server.push("/help@imet_standin_bot")
        assert server.wait_for(lambda: len(replies_after(server, before)) >= 2)
        bus.close()
    assert "step 7/40" in status and "epoch 1" in status and "stage 2" in status
    assert "123.0 img/s" in status and "session left 2h 00m" in status
    assert "/stop" in replies_after(server, before)[1]
    assert not stop
    assert_no_token(server, logs, capfd)


def test_another_chat_is_ignored_and_its_text_never_logged(logs, capfd):
    stop = StopRequest()
    with TelegramStandin() as server:
        notifier = notifier_for(server.api_url, stop)
        listener_stats = notifier.sender._listen.stats
        bus = EventBus([notifier])
        emit_run(bus, server)
        server.push("/stop now SECRET-PLAN-4711", chat_id=12345)
        assert server.wait_for(lambda: listener_stats["ignored_chats"] == 1)
        assert server.wait_for(lambda: server.pending() == [])  # acknowledged all the same
        bus.close()
    assert not stop
    assert server.replies(12345) == [] and all("Stop" not in t for t in server.replies())
    assert "SECRET-PLAN-4711" not in logs.text
    assert_no_token(server, logs, capfd)


def test_a_single_stop_asks_and_a_second_within_60_s_stops():
    stop = StopRequest()
    with TelegramStandin() as server:
        notifier = notifier_for(server.api_url, stop)
        bus = EventBus([notifier])
        emit_run(bus, server)
        before = len(server.replies(CHAT))
        server.push("/stop")
        assert server.wait_for(lambda: len(replies_after(server, before)) >= 1)
        assert not stop and "/stop now" in replies_after(server, before)[0]
        server.push("/stop")
        assert server.wait_for(lambda: bool(stop))
        assert server.wait_for(lambda: len(replies_after(server, before)) >= 2)
        bus.close()
    assert stop.reason == "telegram"
    assert "Stopping" in replies_after(server, before)[1]


def test_a_stop_after_the_confirmation_window_asks_again():
    from imet.observe.messages import CONFIRM_S, RunCommands
    now = [0.0]
    asked = []
    commands = RunCommands(asked.append, clock=lambda: now[0])
    assert "/stop now" in commands.answer("/stop")[0]
    now[0] += CONFIRM_S + 1
    assert "/stop now" in commands.answer("/stop")[0] and asked == []
    now[0] += 1
    assert "Stopping" in commands.answer("/stop")[0] and asked == ["telegram"]


def test_plot_sends_the_curves_when_an_evaluation_exists():
    stop = StopRequest()
    history = [{"step": 4, "epoch": 1, "stage": 1, "train_loss": 0.5, "val_loss": 0.4,
                "f2": 0.3, "threshold": 0.2, "lr": 1e-3}]
    with TelegramStandin() as server:
        notifier = notifier_for(server.api_url, stop)
        bus = EventBus([notifier])
        emit_run(bus, server)
        before = len(server.replies(CHAT))
        server.push("/plot")
        assert server.wait_for(lambda: len(replies_after(server, before)) >= 1)
        assert "No evaluation yet" in replies_after(server, before)[0]
        bus.emit(Evaluation(step=8, epoch=2, f2=0.3, threshold=0.2, best_f2=0.3,
                            best_step=8, val_loss=0.4, is_best=True, history=history))
        server.push("/plot")
        assert server.wait_for(lambda: notifier.commands.plot_wanted)
        emit_run(bus, server, step=9)  # the next event renders it, on the training thread
        assert server.wait_for(lambda: "sendPhoto" in server.methods())
        bus.close()
    photo = [r for r in server.sent() if r.method == "sendPhoto"][-1]
    assert photo.files["photo"][:4] == b"\x89PNG" and "step 8" in photo.params["caption"]


def test_updates_from_before_the_session_are_skipped_and_acknowledged():
    stop = StopRequest()
    with TelegramStandin() as server:
        old = server.push("/stop now", date=time.time() - 3600)
        server.push("/stop", date=time.time() - 60)
        notifier = notifier_for(server.api_url, stop)
        stats = notifier.sender._listen.stats
        assert server.wait_for(lambda: stats["skipped_old"] == 2)
        assert server.wait_for(lambda: server.confirmed > old + 1)
        server.push("/status")
        assert server.wait_for(lambda: len(server.replies(CHAT)) >= 1)
        notifier.close()
    assert not stop and server.pending() == []
    assert "Stop" not in " ".join(server.replies(CHAT))


@pytest.mark.parametrize("scenario", ["hang", "500", "429"])
def test_a_failing_get_updates_costs_neither_messages_nor_the_close_bound(scenario):
    stop = StopRequest()
    with TelegramStandin(scenario=scenario, only=("getUpdates",), retry_after=1,
                         count=None if scenario == "hang" else 2) as server:
        notifier = notifier_for(server.api_url, stop, start_attempts=5)
        bus = EventBus([notifier])
        emit_run(bus, server)
        if scenario != "hang":  # it recovers and answers
            server.push("/status")
            assert server.wait_for(lambda: any("step 7/40" in t for t in server.replies()))
        started = time.monotonic()
        bus.close()
        closing = time.monotonic() - started
    assert closing <= CLOSE_S + 0.5
    assert not stop


def test_starting_offline_turns_the_commands_off_with_one_line(logs):
    stop = StopRequest()
    notifier = notifier_for(refused_url(), stop, start_attempts=2)
    stats = notifier.sender._listen.stats
    deadline = time.monotonic() + 10
    while "Telegram commands off" not in logs.text and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    notifier.close()
    assert time.monotonic() - started <= CLOSE_S + 0.5
    off = [r for r in logs.records if "Telegram commands off" in r.getMessage()]
    assert len(off) == 1 and "cannot reach" in off[0].getMessage()
    assert stats["failures"] == 2 and SECRET not in logs.text


@pytest.mark.parametrize("mode, env", [("off", {"IMET_TELEGRAM_TOKEN": TOKEN}), ("on", {})])
def test_notify_off_or_no_token_polls_nothing(mode, env, monkeypatch, tmp_path):
    from imet.commands.train import build_bus
    with TelegramStandin() as server:
        monkeypatch.delenv("IMET_TELEGRAM_TOKEN", raising=False)
        monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
        for name, value in {**env, "IMET_TELEGRAM_CHAT_ID": str(CHAT),
                            "IMET_TELEGRAM_API_URL": server.api_url}.items():
            monkeypatch.setenv(name, value)
        config = TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), notify=mode)
        bus = build_bus(config, StopRequest().request)
        time.sleep(0.3)
        bus.close()
        assert server.requests == []


def test_a_backlog_behind_the_flood_limit_sends_only_the_newest_progress_and_evaluation(logs):
    """Telegram's flood control holds the start message for 2 s while the run reports 5
    progress steps and 3 evaluations and the chat asks /status twice: the queue sends the
    newest progress and evaluation only, and every reply, the start and the hand-over."""
    stop = StopRequest()
    with TelegramStandin(scenario="429", count=1, retry_after=2,
                         only=("sendMessage",)) as server:
        notifier = notifier_for(server.api_url, stop, progress_every_s=0.0)
        bus = EventBus([notifier])
        bus.emit(RunStart(run_name="r18-f0", arch="resnet18", fold=0, image_size=64,
                          session=1, resumed_from=None, device="cpu", total_steps=40,
                          config={}, kernel=None, rank=0))
        assert server.wait_for(lambda: 429 in [r.status for r in server.requests])
        for step in range(1, 6):
            bus.emit(Progress(stage=2, epoch=0, step=step, total_steps=40, epoch_step=step,
                              steps_per_epoch=40, loss=0.25, lr=1e-3, img_per_s=123.0,
                              eta_run_s=600.0, session_left_s=7200.0))
            if step <= 3:
                bus.emit(Evaluation(step=step, epoch=0, f2=0.5 + step / 100, threshold=0.2,
                                    best_f2=0.5 + step / 100, best_step=step, val_loss=0.3,
                                    is_best=True, history=[]))
        server.push("/status")
        server.push("/status")
        assert server.wait_for(lambda: not server.pending() and server.confirmed > 0)
        bus.emit(Handover(step=5, checkpoint="checkpoints/state-5.pt", reason="budget",
                          next="push again", exit_code=75))
        assert server.wait_for(lambda: len(server.replies(CHAT)) >= 6)
        bus.close()
        texts = server.replies(CHAT)
    # the newest of each kind, sent in the place in line its kind's first message took
    assert [t[:1] for t in texts] == ["🚀", "⏳", "📊", "<", "<", "⏸"]
    assert "step 5/40" in texts[1] and "step 3" in texts[2]
    assert all("step 5/40" in t for t in texts[3:5])
    assert notifier.sender.stats["coalesced"] == 6
