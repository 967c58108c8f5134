"""The trainer kernel in the local Kaggle emulator, with the notifier on against the stand-in
Bot API server: the owner's `/stop now`, sent on the first evaluation, ends the session
cleanly (the kernel exits 0, so Kaggle would keep the output, with HANDOVER.json saying why),
the next session resumes from that output and runs to the end without replaying the
acknowledged /stop, and the token is in no session log or output. Both sessions send their
start and an evaluation, the first its hand-over, the second its finish. The Telegram settings
are in the environment the chain starts from, as a kernel's Kaggle Secrets, and each pushed
version runs without them, as on Kaggle: the token and chat id come from the attached
`imet-telegram` dataset, and each session says so first and records it in run.json. (Without
the dataset the pushed sessions say that notifications are off and why:
test_kaggle_e2e.py's trainer chain.)"""
import json
import os
import threading
from pathlib import Path

import pytest
from telegram_standin import TelegramStandin

from imet.kaggle.campaign.emulated import run_chain

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0, reason="the emulator's isolation needs root")]

KERNELS = Path(__file__).resolve().parents[1] / "kernels"
TOKEN = "111222333:AAEkaggleStopTokenMustNeverLeak_01234567"
CHAT = 99
TRAIN_ARGS = ("--arch tiny_cnn --no-pretrained --image-size 128 --batch-size 4 --epochs 40 "
              "--head-epochs 1 --preset seed --patience 1000 --num-workers 0 --margin 20s "
              "--progress-every-s 5 --notify on")


def test_stop_from_the_chat_hands_over_and_the_next_session_resumes(mini_data, local_dataset,
                                                                      tmp_path):
    with TelegramStandin() as server:
        env = {"IMET_KERNEL_ARGS": TRAIN_ARGS, "IMET_TELEGRAM_API_URL": server.api_url,
               "IMET_TELEGRAM_EVERY_MIN": "0.0001",
               # bound at home; a pushed version has none (else: "token from environment")
               "IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": str(CHAT)}
        dataset = tmp_path / "imet-telegram"
        dataset.mkdir()
        (dataset / "imet-telegram.json").write_text(json.dumps(
            {"IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": CHAT}))

        def owner():  # reads the first evaluation, then stops the run
            if server.wait_for(lambda: any(t.startswith("📊") for t in server.replies(CHAT)),
                               timeout=500):
                server.push("/stop now", chat_id=CHAT)

        thread = threading.Thread(target=owner, daemon=True)
        thread.start()
        sessions = run_chain(KERNELS / "trainer", {"imet-2019-fgvc6": mini_data,
                                                   "imet-src": local_dataset,
                                                   "imet-telegram": dataset},
                             tmp_path / "trainer", 600, 3, env, accelerator="none")
        thread.join(5)
        replies = server.replies(CHAT)
    first, *rest = sessions
    assert first.ok and first.handover["reason"] == "telegram", first.log.read_text()[-3000:]
    assert len(rest) == 1 and rest[0].ok and rest[0].handover is None, \
        rest[-1].log.read_text()[-3000:]
    assert "resuming from the attached output" in rest[0].log.read_text()
    assert sum("Stopping" in text for text in replies) == 1  # never replayed
    starts = [i for i, text in enumerate(replies) if text.startswith("🚀")]
    assert len(starts) == 2, replies
    for said, kinds in zip((replies[:starts[1]], replies[starts[1]:]),
                           (("🚀", "📊", "⏸"), ("🚀", "📊", "✅"))):
        for kind in kinds:
            assert any(text.startswith(kind) for text in said), (kind, said)
    assert "resumed from step" in replies[starts[1]] and "⏸" not in "".join(replies[starts[1]:])
    for number, session in enumerate(sessions, 1):
        assert "imet: Telegram on: token from dataset, chat 99" in session.log.read_text()
        run = json.loads(next(session.output.rglob("run.json")).read_text())
        assert run["sessions"][number - 1]["telegram"] == {"on": True, "source": "dataset"}
    secret = TOKEN.split(":")[1].encode()
    for session in sessions:
        for folder, _, files in os.walk(session.log.parent):  # log.txt, the kernel root
            for name in files:
                with open(os.path.join(folder, name), "rb") as handle:
                    assert secret not in handle.read(), os.path.join(folder, name)
