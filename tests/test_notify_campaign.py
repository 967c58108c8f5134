"""Commands in a campaign, one bot: three real `imet train` processes (tiny_cnn on mini-iMet,
CPU) share one token and chat with the campaign driver's CommandRelay, against the stand-in
Bot API, which answers a second concurrent getUpdates with 409 Conflict as Telegram does.
Two members read the relayed commands as a campaign renders them (IMET_TELEGRAM_COMMANDS=
relay); the third polls by itself, meets the relay's poll, and turns to the relay after one
409. /status gets one answer per member; /stop m2 stops exactly m2 (exit 75, saved, resumable)
while the others go on; /stop all stops the rest; no 409 storm."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from telegram_standin import TelegramStandin

from imet.commands.train import config_from_args
from imet.config import train_parser
from imet.errors import HANDED_OVER_EXIT_CODE as EXIT_HANDOVER
from imet.observe.messages import CampaignCommands, relay_lines
from imet.observe.telegram import CommandRelay, TelegramSender, load_config
from imet.train.events import EventBus, StopRequest
from imet.train.loop import train

TOKEN = "333444555:AAEcampaignRelayTokenNeverLeaks_012345"
CHAT = 99
FALLBACK = "another process polls this bot (409 Conflict)"
# The relay is read every 15 s on Kaggle; here every 0.2 s (the module's constant, set in the
# member processes before `imet` runs).
MEMBER = ("import runpy, sys; import imet.observe.telegram as t; t.RELAY_POLL_S = 0.2; "
          "sys.argv[0] = 'imet'; runpy.run_module('imet', run_name='__main__')")


def env_for(url, **extra):
    return {**os.environ, "IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": str(CHAT),
            "IMET_TELEGRAM_API_URL": url, "OMP_NUM_THREADS": "1", **extra}


def train_args(mini_data, out, budget="600"):
    return ["train", "--data", str(mini_data), "--folds", str(mini_data / "folds.csv"),
            "--out", str(out), "--fold", "0", "--arch", "tiny_cnn", "--no-pretrained",
            "--image-size", "32", "--batch-size", "8", "--epochs", "2000", "--head-epochs", "1",
            "--eval-every", "100000", "--num-workers", "0", "--device", "cpu",
            "--notify", "on", "--save-every-min", "1e9", "--patience", "0",
            "--time-budget", budget]


def start_member(name, mini_data, tmp_path, url, relay):
    out = tmp_path / name
    extra = {"IMET_KERNEL": f"tester/imet-trainer-{name}"}
    if relay:
        extra["IMET_TELEGRAM_COMMANDS"] = "relay"
    log = open(tmp_path / f"{name}.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", MEMBER, *train_args(mini_data, out)],
                            stdout=log, stderr=subprocess.STDOUT, env=env_for(url, **extra))
    log.close()
    return proc


def wait(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def member_replies(server, name, kind):
    start = f"<b>{name}</b> · " if kind == "status" else f"<b>{name}</b>: "
    return [t for t in server.replies(CHAT) if t.startswith(start)]


def test_one_bot_answers_status_per_member_and_stops_exactly_the_named_ones(
        mini_data, tmp_path):
    with TelegramStandin() as server:
        config = load_config(env_for(server.api_url), use_kaggle_secrets=False)
        commands = CampaignCommands()
        names = ("m1", "m2", "m3")
        commands.publish(dict.fromkeys(names, "running"))
        relay = CommandRelay(config, commands, poll_timeout_s=2, backoff_s=0.5)
        sender = TelegramSender(config, listen=relay, min_interval_s=0.01, close_timeout_s=2)
        procs = {}
        try:
            assert wait(lambda: "getUpdates" in server.methods(), 10)
            procs = {name: start_member(name, mini_data, tmp_path, server.api_url,
                                        relay=name != "m3") for name in names}
            logs = {name: tmp_path / f"{name}.log" for name in names}
            # every member started training; m3 met the relay's poll and turned to the relay
            assert wait(lambda: sum(t.startswith("🚀") for t in server.replies(CHAT)) == 3,
                        90), server.replies(CHAT)
            assert wait(lambda: FALLBACK in logs["m3"].read_text(), 30), logs["m3"].read_text()
            assert all(p.poll() is None for p in procs.values())

            server.push("/status", chat_id=CHAT)
            assert wait(lambda: all(member_replies(server, n, "status") for n in names), 20)
            time.sleep(0.6)  # three more reads of the relay: nobody answers twice
            assert [len(member_replies(server, n, "status")) for n in names] == [1, 1, 1]
            table = [t for t in server.replies(CHAT) if t.startswith("<b>imet campaign</b>")]
            assert len(table) == 1 and "m1 running" in table[0]

            server.push("/stop m2", chat_id=CHAT)
            assert procs["m2"].wait(90) == EXIT_HANDOVER
            assert commands.take_stops() == ["m2"]
            time.sleep(1.0)  # the others go on
            assert procs["m1"].poll() is None and procs["m3"].poll() is None
            handover = json.loads((tmp_path / "m2" / "HANDOVER.json").read_text())
            assert handover["reason"] == "telegram" and handover["exit_code"] == 75
            assert list((tmp_path / "m2" / "checkpoints").glob("*"))
            assert len(member_replies(server, "m2", "stop")) == 1
            # m2's session ended: the driver says so, and its order leaves the pinned message
            commands.publish({"m1": "running", "m2": "stopped", "m3": "running"})
            server.push("/help", chat_id=CHAT)  # any update: the relay writes after a batch
            assert wait(lambda: "stop m2" not in server.pinned_text(CHAT), 10)

            server.push("/stop all", chat_id=CHAT)
            assert procs["m1"].wait(90) == EXIT_HANDOVER
            assert procs["m3"].wait(90) == EXIT_HANDOVER
            assert sorted(commands.take_stops()) == ["m1", "m3"]
            assert {line.target for line in relay_lines(server.pinned_text(CHAT))
                    if line.command == "stop"} == {"m1", "m3"}
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            sender.close()
        # No storm: one 409 for m3 (it turns to the relay) and at most one for the relay.
        assert server.conflicts <= 2, server.conflicts
        assert server.methods(status=409).count("getUpdates") == server.conflicts
        texts = {name: logs[name].read_text() for name in names}
        assert texts["m3"].count(FALLBACK) == 1
        assert FALLBACK not in texts["m1"] and FALLBACK not in texts["m2"]
        assert all(TOKEN.split(":")[1] not in text for text in texts.values())

    # m2 is resumable: its next session resumes where /stop saved it (asked to stop before
    # it starts, it hands over again at its first step).
    config = config_from_args(train_parser().parse_args(
        [*train_args(mini_data, tmp_path / "m2")[1:], "--notify", "off"]))
    stop = StopRequest()
    stop.request("signal")
    result = train(config, EventBus(), stop=stop)
    assert (result.status, result.step) == ("handover", handover["step"])  # not step 0


@pytest.mark.parametrize("text, reply, stops", [
    ("/stop", "Name the member", []),
    ("/stop now", "Name the member", []),
    ("/stop m9", "No member m9", []),
    ("/stop m3", "m3 is not running (finished)", []),
    ("/stop m2", "Stopping m2", ["m2"]),
])
def test_campaign_stop_names_a_member(text, reply, stops):
    commands = CampaignCommands(clock=lambda: 1000.0)
    commands.publish({"m1": "running", "m2": "waiting", "m3": "finished"})
    assert reply in commands.answer(text)[0]
    assert commands.take_stops() == stops
    assert not any(line.command == "stop" for line in commands.lines)  # none is running


def test_the_campaign_relays_stop_and_pushes_that_member_no_more(tmp_path):
    """`imet kaggle campaign` (the real driver, the Kaggle stand-in): its trainers are rendered
    to read the relay; /stop f0 reaches the pinned message; f0's session then hands over and
    f0 is not pushed again (stopped, its model used by the finals); f1 goes on to its end."""
    from kaggle_standin import KaggleStandin
    from test_kaggle_campaign import (FINALS, command, env_for, finish, handover, plan_file,
                                      table, trainer)
    with KaggleStandin() as kaggle, TelegramStandin() as server:
        kaggle.sessions.update(FINALS)
        kaggle.sessions[trainer("f0")] = [handover(1), handover(2), finish(3)]
        kaggle.sessions[trainer("f1")] = [finish(1)]
        status = kaggle.handlers["GetKernelSessionStatus"]

        def f0_runs_until_told(standin, body):
            """f0's session, as a member reading the relay: running until its order is there."""
            if f"{body.get('userName')}/{body.get('kernelSlug')}" == trainer("f0") and \
                    "stop f0" not in (server.pinned_text(CHAT) or ""):
                return 200, {"status": "RUNNING", "failureMessage": ""}
            return status(standin, body)
        kaggle.handlers["GetKernelSessionStatus"] = f0_runs_until_told
        env = env_for(kaggle, tmp_path, IMET_TELEGRAM_TOKEN=TOKEN,
                      IMET_TELEGRAM_CHAT_ID=str(CHAT), IMET_TELEGRAM_API_URL=server.api_url,
                      NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
        proc = subprocess.Popen(command(plan_file(tmp_path), tmp_path / "camp"), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            assert wait(lambda: any("f0: session 1 pushed" in t
                                    for t in server.replies(CHAT)), 60), server.replies(CHAT)
            time.sleep(0.3)  # a few rounds: the driver has told the relay f0 runs
            server.push("/stop f0", chat_id=CHAT)
            output, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        replies = server.replies(CHAT)
    assert proc.returncode == 0, output
    (pushed,) = kaggle.kernels[trainer("f0")]  # not pushed again
    assert "TELEGRAM_COMMANDS = 'relay'" in pushed["text"]
    assert any(t.startswith("Stopping f0") for t in replies)
    rows = table(tmp_path)
    assert rows["f0"]["state"] == "stopped" and "stopped from Telegram" in rows["f0"]["last message"]
    assert rows["f1"]["state"] == "finished" and rows["inference"]["state"] == "finished"
    (validation,) = kaggle.kernels[f"{trainer('f0').split('/')[0]}/imet-validation"]
    assert trainer("f0") in validation["kernelDataSources"]  # its model so far is used
    assert server.conflicts == 0


def relay_status_once(server, members):
    """A driver's relay that hears one /status from the owner, then closes."""
    config = load_config(env_for(server.api_url), use_kaggle_secrets=False)
    commands = CampaignCommands()
    commands.publish(members)
    sender = TelegramSender(config, listen=CommandRelay(config, commands, poll_timeout_s=1),
                            min_interval_s=0.01, close_timeout_s=2)
    try:
        assert wait(lambda: "getUpdates" in server.methods(), 10)
        before = server.pinned_text(CHAT)
        server.push("/status", chat_id=CHAT)
        assert wait(lambda: server.pinned_text(CHAT) != before, 10)
        assert wait(lambda: not server.pending(), 10)  # acknowledged by the next poll
    finally:
        sender.close()
    return relay_lines(server.pinned_text(CHAT))


def test_a_driver_run_again_numbers_on_and_keeps_one_message_pinned():
    """A campaign run again goes on from the numbers its former driver pinned (a kernel that
    saw them ignores smaller ones) and unpins that message."""
    with TelegramStandin() as server:
        first = relay_status_once(server, {"m1": "running"})
        second = relay_status_once(server, {"m1": "running"})
        assert [line.number for line in first] == [1]
        assert [(line.number, line.command, line.target) for line in second] == \
            [(2, "status", "all")]
        assert len(server.pinned[str(CHAT)]) == 1
