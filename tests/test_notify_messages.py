"""Telegram message texts: every event kind, HTML escaping, the 4,096 / 1,024 limits."""
from __future__ import annotations

from dataclasses import replace
from html.parser import HTMLParser

import pytest

from imet.config import format_duration
from imet.observe import messages
from imet.observe.messages import CAPTION_LIMIT, TEXT_LIMIT, tg_len
from imet.train.events import Checkpoint, Evaluation, Failure, Finish, Handover, Progress, RunStart

ALLOWED_TAGS = {"b", "i", "code", "pre"}


class _TagChecker(HTMLParser):
    """Telegram accepts only a few tags and wants them balanced."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.text = [], []

    def handle_starttag(self, tag, attrs):
        assert tag in ALLOWED_TAGS, tag
        self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, tag

    def handle_data(self, data):
        self.text.append(data)


def visible(html_text: str) -> str:
    checker = _TagChecker()
    checker.feed(html_text)
    checker.close()
    assert not checker.stack, f"unclosed tags {checker.stack}"
    return "".join(checker.text)


EVENTS = {
    "run_start": RunStart(run_name="se50-f0 <x&y>", arch="se_resnext50_32x4d", fold=0,
                      image_size=320, session=2, resumed_from=5400, device="cuda:Tesla P100",
                      total_steps=30000, config={"lr": 4e-4, "batch_size": 64, "loss": "bce"},
                      kernel="me/imet-train", rank=0),
    "progress": Progress(stage=2, epoch=7, step=12000, total_steps=30000, epoch_step=300,
                     steps_per_epoch=1500, loss=0.01234, lr=2.5e-5, img_per_s=311.7,
                     eta_run_s=5 * 3600 + 7 * 60, session_left_s=2 * 3600),
    "evaluation": Evaluation(step=12000, epoch=7, f2=0.61234, threshold=0.27, best_f2=0.62,
                       best_step=10500, val_loss=0.0123, is_best=False, history=[]),
    "checkpoint": Checkpoint(step=12000, path="/kaggle/working/run/checkpoints/state-12000.pt"),
    "handover": Handover(step=16000, checkpoint="checkpoints/state-16000.pt", reason="budget",
                     next="push the trainer kernel again with this output attached",
                     exit_code=75),
    "finish": Finish(best_f2=0.634, best_step=28000, duration_s=11 * 3600 + 5,
                   sessions=2, artifacts=["model.pt", "metrics.csv", "plots/history.png"],
                   history=[]),
    "failure": Failure(error="RuntimeError: CUDA out of memory <GPU 0>", traceback="Traceback"),
}

EXPECTED = {
    "run_start": ["se50-f0 <x&y>", "resumed from step 5400", "me/imet-train", "session 2",
                  "cuda:Tesla P100", "se_resnext50_32x4d", "fold 0", "320 px", "lr 0.0004"],
    "progress": ["stage 2", "epoch 7", "12000/30000 (40%)", "loss 0.0123", "lr 2.50e-05",
                 "311.7 img/s", "ETA run 5h 07m", "session left 2h 00m"],
    "evaluation": ["F2 0.6123", "threshold 0.270", "best 0.6200 at step 10500",
                   "val loss 0.0123"],
    "checkpoint": ["step 12000", "state-12000.pt"],
    "handover": ["session time budget", "step 16000", "state-16000.pt", "push the trainer",
                 "exit code 75"],
    "finish": ["best F2 0.6340 at step 28000", "duration 11h 00m", "sessions 2",
               "plots/history.png"],
    "failure": ["crashed", "RuntimeError: CUDA out of memory <GPU 0>", "Traceback"],
}


@pytest.mark.parametrize("kind", sorted(EVENTS))
def test_every_kind_renders_escaped_html_within_limits(kind):
    texts = getattr(messages, kind)(EVENTS[kind], "fallback-name")
    assert texts and all(tg_len(text) <= TEXT_LIMIT for text in texts)
    shown = "\n".join(visible(text) for text in texts)
    for fragment in EXPECTED[kind]:
        assert fragment in shown, (fragment, shown)
    assert "<x&y>" not in "".join(texts)  # escaped in the HTML source


def test_new_best_and_fresh_start_wording():
    start = replace(EVENTS["run_start"], resumed_from=None, kernel=None)
    assert "started" in visible(messages.run_start(start)[0])
    best = replace(EVENTS["evaluation"], is_best=True)
    assert "new best" in visible(messages.evaluation(best)[0])


def test_long_traceback_is_split_and_keeps_its_last_lines():
    frames = [f'  File "/kaggle/src/imet/engine/module_{i}.py", line {i}, in f_{i}\n'
              f"    x = compute(<tensor {'#' * 300}>) & more" for i in range(60)]
    trace = "Traceback (most recent call last):\n" + "\n".join(frames) + "\nValueError: bad"
    texts = messages.failure(Failure(run_name="r", error="ValueError: bad", traceback=trace))
    assert len(texts) >= 2
    assert all(tg_len(text) <= TEXT_LIMIT for text in texts)
    shown = "\n".join(visible(text) for text in texts)
    kept = trace.splitlines()[-messages.TRACEBACK_LINES:]
    for line in kept:
        assert line in shown
    assert trace.splitlines()[0] not in shown  # only the last 30 lines travel


def test_one_enormous_line_is_cut_into_valid_blocks():
    blocks = messages.pre_blocks("<&>" * 10000 + "🙂" * 3000)
    assert len(blocks) > 3
    assert all(tg_len(block) <= TEXT_LIMIT for block in blocks)
    shown = "".join(visible(block) for block in blocks).replace("\n", "")
    assert shown == "<&>" * 10000 + "🙂" * 3000


def test_many_artifacts_pack_into_several_messages():
    data = replace(EVENTS["finish"], artifacts=[f"out/fold{i}/model-{i}.pt" for i in range(400)])
    texts = messages.finish(data, "r")
    assert len(texts) > 1 and all(tg_len(text) <= TEXT_LIMIT for text in texts)
    shown = "\n".join(visible(text) for text in texts)
    assert all(f"out/fold{i}/model-{i}.pt" in shown for i in range(400))


def test_caption_fits_1024_and_emoji_count_double():
    assert tg_len("🙂") == 2 and tg_len("abc") == 3
    evaluation = replace(EVENTS["evaluation"], step=3, f2=0.5)
    assert tg_len(messages.plot_caption(evaluation, "n" * 5000)) <= CAPTION_LIMIT
    caption = messages.plot_caption(replace(EVENTS["finish"], best_f2=0.6, best_step=9), "run")
    assert "best F2 0.6000 at step 9" in visible(caption)


def test_durations_and_numbers():
    assert format_duration(None, " ") == "?" == format_duration("soon", " ")
    assert format_duration(59, " ") == "59s"
    assert format_duration(61, " ") == "1m 01s"
    assert format_duration(3 * 86400 + 7200, " ") == "3d 2h"
    assert messages.fmt_float(float("nan")) == "nan"
    assert messages.fmt_float("x") == "?"
