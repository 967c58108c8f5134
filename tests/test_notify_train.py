"""A real tiny training run (tiny_cnn on mini-iMet, CPU) with the Telegram notifier on the
engine's EventBus next to the report subscribers: with a working Bot API stand-in the
messages arrive in order; with a hanging one training ends with bit-identical weights and
close() keeps its bound. No file the run writes, and nothing it prints or logs, holds the
token."""
from __future__ import annotations

import logging
import os
import re
import time

import pytest
import torch
from telegram_standin import TelegramStandin

from imet.config import TrainConfig
from imet.observe.console import ConsoleProgress
from imet.observe.files import ArtifactWriter, MetricsWriter
from imet.observe.telegram import build_notifier
from imet.train.checkpoint import checkpoint_dir, list_generations
from imet.train.events import EventBus
from imet.train.loop import train

TOKEN = "555666777:AAEtrainRunTokenMustNeverLeak_0123456789"
SECRET = TOKEN.split(":")[1]
CLOSE_S = 2.0
RUN = dict(fold=0, arch="tiny_cnn", pretrained=False, image_size=32, batch_size=8, epochs=2,
           head_epochs=1, num_workers=0, notify="on", save_every_min=1e9, patience=0,
           device="cpu", seed=3)


def run_training(mini_data, out, *subscribers):
    config = TrainConfig(**RUN, data=str(mini_data), folds=str(mini_data / "folds.csv"),
                         out=str(out)).validated()
    bus = EventBus(list(subscribers))
    result = train(config, bus)
    start = time.monotonic()
    bus.close()
    (step, path), *_ = list_generations(checkpoint_dir(out))
    return result, torch.load(path, map_location="cpu", weights_only=True), \
        time.monotonic() - start


def notifier_for(url, send_plots):
    env = {"IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": "99",
           "IMET_TELEGRAM_API_URL": url}
    return build_notifier("on", rank=0, env=env, min_interval_s=0.02, connect_timeout_s=0.5,
                          read_timeout_s=0.5, backoff_s=0.05, close_timeout_s=CLOSE_S,
                          progress_every_s=0.0, plot_every_s=3600.0,
                          send_plots=send_plots)


@pytest.fixture(scope="module")
def baseline(mini_data, tmp_path_factory):
    return run_training(mini_data, tmp_path_factory.mktemp("off") / "run")


def assert_no_token_anywhere(out, caplog, capfd):
    for folder, _, files in os.walk(out):
        for name in files:
            data = open(os.path.join(folder, name), "rb").read()
            assert SECRET.encode() not in data, os.path.join(folder, name)
    printed = "".join(capfd.readouterr())
    assert SECRET not in printed and SECRET not in caplog.text


@pytest.mark.parametrize("scenario", ["ok", "hang"])
def test_training_with_notifier_is_unchanged_and_reports(scenario, baseline, mini_data,
                                                          tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "run"
    with TelegramStandin(scenario=scenario) as server:
        # Plots are covered in test_notify_sender; here they would only cost render time.
        notifier = notifier_for(server.api_url, send_plots=False)
        # The train command's report subscribers too, so that their files are scanned; their
        # plots cost seconds on a loaded machine, so only once.
        report = [ConsoleProgress(0.0), MetricsWriter(out), ArtifactWriter(out)]
        result, payload, closing = run_training(mini_data, out, notifier,
                                                *(report if scenario == "ok" else []))
        sent = server.sent()
    base_result, base_payload, _ = baseline
    assert (result.status, result.step, result.best_f2) == \
        (base_result.status, base_result.step, base_result.best_f2)
    for key, value in base_payload["model"].items():
        assert torch.equal(payload["model"][key], value), key
    assert closing <= CLOSE_S + 1.0
    if scenario == "ok":
        texts = [r.params.get("text", r.params.get("caption", "")) for r in sent]
        heads = [text[:1] for text in texts]
        assert heads[0] == "🚀" and heads[-1] == "✅" and "⏳" in heads
        # evaluations queued behind one another coalesce: how many go out depends on the
        # pace, but the last one sent is the run's last evaluation
        evaluations = [text for text in texts if text.startswith("📊")]
        assert evaluations and re.search(rf"step {result.step}\b", evaluations[-1])
    else:
        assert sent == []
    assert_no_token_anywhere(out, caplog, capfd)
