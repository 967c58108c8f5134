"""Under torch.distributed (gloo on CPU, 2 processes, set up as torchrun sets up its workers)
rank 0 alone polls Telegram; its /stop is decided by both processes at the next step, like a
signal, and the run resumes on one process as after any handover."""
from __future__ import annotations

import json
import os

import pytest
import torch.multiprocessing as mp
from telegram_standin import TelegramStandin
from test_distributed import assert_close_end, config_values, final_payload, free_port

from imet.config import TrainConfig
from imet.errors import HANDED_OVER_EXIT_CODE as EXIT_HANDOVER
from imet.observe.telegram import build_notifier
from imet.train.events import EventBus, StopRequest
from imet.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")

TOKEN = "222333444:AAEdistStopTokenMustNeverLeak_0123456789"
CHAT = 99
STOP_AT = 5


class WaitForStopAt:
    """Holds the training thread at `step` until the chat's /stop has arrived (at most 30 s)."""

    def __init__(self, stop: StopRequest, step: int):
        self.stop, self.step = stop, step

    def __call__(self, event):
        if event.kind == "progress" and event.step == self.step:
            import time
            end = time.monotonic() + 30.0
            while not self.stop and time.monotonic() < end:
                time.sleep(0.01)


def _rank_main(rank, world_size, port, values, url, report_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    torch.set_num_threads(1)
    stop = StopRequest()
    env = {"IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": str(CHAT),
           "IMET_TELEGRAM_API_URL": url}
    notifier = build_notifier("on", rank=rank, env=env, request_stop=stop.request,
                              min_interval_s=0.0, poll_timeout_s=1, progress_every_s=0.0,
                              send_plots=False, close_timeout_s=2.0)
    # Rank 1 simply meets rank 0 in the next collective. The notifier first: step 5's
    # message goes out before the wait.
    bus = EventBus([notifier, WaitForStopAt(stop, STOP_AT)] if notifier is not None else [])
    try:
        result = train(TrainConfig(**values).validated(), bus, stop=stop)
    finally:
        bus.close()
    with open(os.path.join(report_dir, f"rank{rank}.json"), "w") as handle:
        json.dump({"status": result.status, "step": result.step, "reason": result.reason,
                   "exit_code": result.exit_code, "notifier": notifier is not None}, handle)


def test_rank_0_polls_and_both_processes_stop_at_the_next_step(mini_data, tmp_path,
                                                               tmp_path_factory):
    reference_out = tmp_path_factory.mktemp("reference")
    train(TrainConfig(**config_values(mini_data, reference_out, notify="on")).validated(),
          EventBus())
    reports = tmp_path / "reports"
    reports.mkdir()
    run = tmp_path / "run"
    values = config_values(mini_data, run, notify="on")
    with TelegramStandin() as server:
        context = mp.spawn(_rank_main, args=(2, free_port(), values, server.api_url,
                                             str(reports)), nprocs=2, join=False)
        # The owner reads step 5's progress message, then sends /stop now.
        at_step = f"step {STOP_AT}/"
        assert server.wait_for(lambda: any(at_step in t for t in server.replies(CHAT)),
                               timeout=120)
        server.push("/stop now", chat_id=CHAT)
        while not context.join():
            pass
    results = [json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["notifier"] for r in results] == [True, False]
    assert [(r["status"], r["step"], r["exit_code"]) for r in results] == \
        [("handover", STOP_AT, EXIT_HANDOVER)] * 2
    assert results[0]["reason"] == "telegram"
    assert json.loads((run / "HANDOVER.json").read_text())["reason"] == "telegram"
    assert len([r for r in server.requests if r.method == "getMe"]) == 1  # one bot: rank 0's
    resumed = train(TrainConfig(**config_values(mini_data, run, notify="on")).validated(),
                    EventBus())
    assert (resumed.status, resumed.step) == ("finished", 12)
    assert_close_end(final_payload(run), final_payload(reference_out))
