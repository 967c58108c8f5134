"""/stop from Telegram ends a real training run (tiny_cnn on mini-iMet, CPU) the way a SIGTERM
does: saved, HANDOVER.json, exit 75, and the resumed run ends bit-identical to one never
stopped. A hanging getUpdates changes nothing in training and costs the exit no more than
the notifier's close bound; the token is in no file, log or output."""
from __future__ import annotations

import json
import logging
import os
import threading
import time

import pytest
from telegram_standin import TelegramStandin
from test_resume import assert_same_end, final_payload, make_config

from imet.errors import HANDED_OVER_EXIT_CODE as EXIT_HANDOVER
from imet.observe.telegram import build_notifier
from imet.train.events import EventBus, StopRequest
from imet.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")

TOKEN = "333444555:AAEstopRunTokenMustNeverLeak_0123456789"
SECRET = TOKEN.split(":")[1]
CHAT = 99
CLOSE_S = 2.0


def env_for(url):
    return {"IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": str(CHAT),
            "IMET_TELEGRAM_API_URL": url}


def notifier_for(url, stop):
    return build_notifier("on", rank=0, env=env_for(url), request_stop=stop.request,
                          min_interval_s=0.02, connect_timeout_s=0.5, read_timeout_s=0.5,
                          backoff_s=0.05, close_timeout_s=CLOSE_S, progress_every_s=3600.0,
                          poll_timeout_s=1, send_plots=False)


@pytest.fixture(scope="module")
def reference(mini_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    result = train(make_config(mini_data, out, notify="on"), EventBus())
    assert result.status == "finished" and result.step == 12
    return final_payload(out)


class StopFromChatAt:
    """At progress step `step`, the owner sends `/stop now`; the training thread waits (at
    most 10 s) until the notifier has passed it on, so the stop lands before the next step."""

    def __init__(self, server, stop, step):
        self.server, self.stop, self.step = server, stop, step
        self.sent_at = None

    def __call__(self, event):
        if event.kind == "progress" and event.step == self.step:
            self.server.push("/stop now", chat_id=CHAT)
            self.sent_at = time.monotonic()
            assert self.server.wait_for(lambda: bool(self.stop), timeout=10.0)


def assert_no_token_anywhere(folders, caplog, capfd):
    for root in folders:
        for folder, _, files in os.walk(root):
            for name in files:
                with open(os.path.join(folder, name), "rb") as handle:
                    assert SECRET.encode() not in handle.read(), os.path.join(folder, name)
    printed = "".join(capfd.readouterr())
    assert SECRET not in printed and SECRET not in caplog.text


def test_stop_now_saves_exits_75_and_the_resumed_run_is_bit_identical(
        mini_data, tmp_path, reference, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    stop = StopRequest()
    with TelegramStandin() as server:
        notifier = notifier_for(server.api_url, stop)
        sender = StopFromChatAt(server, stop, step=6)
        bus = EventBus([sender, notifier])
        result = train(make_config(mini_data, tmp_path, notify="on"), bus, stop=stop)
        stopped_in = time.monotonic() - sender.sent_at
        assert server.wait_for(lambda: any("handing over" in t for t in server.replies(CHAT)))
        bus.close()
    assert (result.status, result.exit_code, result.step, result.reason) == \
        ("handover", EXIT_HANDOVER, 6, "telegram")
    handover = json.loads((tmp_path / "HANDOVER.json").read_text())
    assert handover["step"] == 6 and handover["exit_code"] == 75
    assert "/stop from Telegram" in handover["what_happened"]
    assert stopped_in < 10.0
    assert any("Stopping" in t for t in server.replies(CHAT))
    assert server.pending() == []  # acknowledged: a later session never sees it again
    resumed = train(make_config(mini_data, tmp_path, notify="on"), EventBus())
    assert resumed.status == "finished"
    assert final_payload(tmp_path)["counters"]["session"] == 2  # resumed, not started over
    assert_same_end(final_payload(tmp_path), reference)
    assert_no_token_anywhere([tmp_path], caplog, capfd)


def test_a_hanging_get_updates_changes_nothing_and_keeps_the_close_bound(
        mini_data, tmp_path, reference, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    stop = StopRequest()
    with TelegramStandin(scenario="hang", only=("getUpdates",)) as server:
        bus = EventBus([notifier_for(server.api_url, stop)])
        result = train(make_config(mini_data, tmp_path, notify="on"), bus, stop=stop)
        started = time.monotonic()
        bus.close()
        closing = time.monotonic() - started
        texts = server.replies(CHAT)
    assert result.status == "finished" and not stop
    assert closing <= CLOSE_S + 0.5
    assert texts[0].startswith("🚀") and texts[-1].startswith("✅")  # sending went on
    assert_same_end(final_payload(tmp_path), reference)
    assert_no_token_anywhere([tmp_path], caplog, capfd)


def test_the_train_command_stops_on_stop_now_with_exit_75(mini_data, tmp_path, reference,
                                                          monkeypatch, caplog, capfd):
    """`imet train` wires it: the owner sends /stop now once the run polls."""
    from imet.cli import main
    out = tmp_path / "run"
    with TelegramStandin() as server:
        for name, value in env_for(server.api_url).items():
            monkeypatch.setenv(name, value)

        def owner():
            if server.wait_for(lambda: "getUpdates" in server.methods(), timeout=60):
                server.push("/stop now", chat_id=CHAT)

        thread = threading.Thread(target=owner, daemon=True)
        thread.start()
        code = main(["train", "--data", str(mini_data), "--folds",
                     str(mini_data / "folds.csv"), "--out", str(out), "--fold", "0",
                     "--arch", "tiny_cnn", "--no-pretrained", "--image-size", "32",
                     "--batch-size", "8", "--epochs", "3", "--head-epochs", "1",
                     "--preset", "seed", "--eval-every", "3", "--dropout", "0.3", "--mixup-alpha", "0.4",
                     "--num-workers", "0", "--device", "cpu", "--notify", "on",
                     "--save-every-min", "1e9", "--patience", "0"])
        thread.join(5)
    assert code == EXIT_HANDOVER
    handover = json.loads((out / "HANDOVER.json").read_text())
    assert handover["reason"] == "telegram" and handover["step"] < 12
    resumed = train(make_config(mini_data, out, notify="on"), EventBus())
    assert resumed.status == "finished"
    assert final_payload(out)["counters"]["session"] == 2
    assert_same_end(final_payload(out), reference)
    assert_no_token_anywhere([out], caplog, capfd)
