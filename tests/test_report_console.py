"""Console progress: plain lines for Kaggle logs (throttled), a tqdm bar on a terminal."""
from __future__ import annotations

import io
import re
from dataclasses import replace

from report_sim import StepClock, emit_session

from imet.config import format_duration
from imet.observe.console import ConsoleProgress
from imet.train.events import EventBus, Failure, Progress, RunStart


def test_plain_lines_are_throttled_and_complete():
    stream = io.StringIO()
    progress = ConsoleProgress(every_s=20, stream=stream, clock=StepClock())
    assert not progress.tty  # StringIO is not a terminal: Kaggle's log case
    emit_session(EventBus([progress]), stop=60)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("imet: run r18-f0 (fold 0, resnet18, 64 px) session 1 on cpu")
    step_lines = [line for line in lines if "| step " in line]
    # two clock readings per progress event (rate + throttle): one line every ~10 events
    assert 4 <= len(step_lines) <= 8
    line = step_lines[-1]
    for part in ("stage 2", "epoch ", "/6", "/60 (", "loss ", "lr ", "img/s", "ETA stage",
                 ", run ", "session left 16m40s"):
        assert part in line, (part, line)
    assert re.search(r"ETA stage \d+s, run \d+s", line)
    evals = [line for line in lines if " eval step " in line]
    assert len(evals) == 6 and "*new best*" in evals[0] and "F2 0." in evals[0]
    assert lines[-1].startswith("imet: finished: best F2 0.")


def test_stage_eta_uses_stage_end_and_measured_rate():
    progress = ConsoleProgress(every_s=1e9, stream=io.StringIO(), clock=StepClock())
    progress(_start())
    data = Progress(stage=1, epoch=0, step=4, total_steps=60, epoch_step=4, steps_per_epoch=10,
                    stage1_end_step=10, loss=0.5, lr=1e-3, img_per_s=10.0, eta_run_s=100.0,
                    session_left_s=None)
    # No rate measured yet: stage 1 ETA is the run ETA scaled to the stage's remaining steps.
    assert progress.stage_eta(data) == 100.0 * 6 / 56
    progress._update_rate(replace(data, step=4))
    progress._update_rate(replace(data, step=6))  # 2 steps in 1 s of the fake clock
    assert progress.stage_eta(replace(data, step=6)) == 2.0
    assert progress.stage_eta(replace(data, stage=2, step=30, eta_run_s=77.0)) == 77.0


def test_handover_and_failure_lines():
    stream = io.StringIO()
    emit_session(EventBus([ConsoleProgress(every_s=60, stream=stream)]), stop=20,
                 end="handover")
    assert "imet: stopping at step 20 (budget)" in stream.getvalue()
    assert "next: push the trainer kernel again (exit code 75)" in stream.getvalue()
    stream = io.StringIO()
    emit_session(EventBus([ConsoleProgress(every_s=60, stream=stream)]), stop=3, end="failure")
    assert stream.getvalue().splitlines()[-1] == "imet: training failed: RuntimeError: boom"


def test_tty_uses_a_tqdm_bar():
    stream = io.StringIO()
    emit_session(EventBus([ConsoleProgress(every_s=60, stream=stream, tty=True)]), stop=60)
    text = stream.getvalue()
    assert "60/60" in text and ("step/s" in text or "s/step" in text)
    assert "| step " not in text  # no plain lines when the bar is on
    assert " eval step 10: F2 " in text and "imet: finished" in text


def test_format_duration():
    assert [format_duration(s) for s in (5, 65, 3725, None, -1)] == \
        ["5s", "1m05s", "1h02m", "?", "?"]


def _start():
    return RunStart(run_name="r", arch="resnet18", fold=0, image_size=64, session=1,
                    resumed_from=None, device="cpu", config={"epochs": 6, "head_epochs": 1},
                    total_steps=60, stage1_end_step=10, kernel=None, rank=0)


def test_a_real_terminal_gets_the_bar():
    import fcntl
    import os
    import struct
    import termios
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # 160 columns
    output = b""
    with os.fdopen(slave, "w") as terminal:
        progress = ConsoleProgress(every_s=60, stream=terminal)
        assert progress.tty
        emit_session(EventBus([progress]), stop=20, end="handover")  # a few hundred bytes
        os.set_blocking(master, False)
        try:
            while chunk := os.read(master, 65536):
                output += chunk
        except BlockingIOError:  # drained
            pass
    os.close(master)
    assert b"20/60" in output and b"| step " not in output


def test_user_errors_are_left_to_the_command_s_one_line():
    stream = io.StringIO()
    bus = EventBus([ConsoleProgress(every_s=60, stream=stream)])
    bus.emit(Failure(error="DataError: labels.csv: not found", traceback="", user_error=True))
    assert stream.getvalue() == ""
    bus.emit(Failure(error="RuntimeError: boom", traceback="", user_error=False))
    assert stream.getvalue() == "imet: training failed: RuntimeError: boom\n"
