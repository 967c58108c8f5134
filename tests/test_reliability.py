"""What a fault campaign found (issue 21): leftovers of killed saves, a full disk, a second
Ctrl-C, resume refusals that do not say what differs, a signal during start-up. Real kills,
real signals, a real full filesystem (a small tmpfs, when this runs as root)."""
from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

# `reference`: the module-scoped fixture of the uninterrupted run, used here too.
from test_resume import (  # noqa: F401
    SignalAt,
    assert_same_end,
    cli_command,
    make_config,
    reference,
    resume_to_end,
)

from imet.cli import main
from imet.errors import DISK_FULL_EXIT_CODE as DISK_FULL, HANDED_OVER_EXIT_CODE as HANDED_OVER
from imet.train.checkpoint import (
    DiskFullError,
    checkpoint_dir,
    list_generations,
    load_checkpoint,
    save_checkpoint,
)
from imet.train.events import EventBus, StopRequest
from imet.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--arch", "tiny_cnn", "--no-pretrained", "--image-size", "32", "--batch-size", "8",
        "--num-workers", "0", "--notify", "off", "--device", "cpu", "--epochs", "3",
        "--eval-every", "0", "--save-every-min", "1e9"]


def train_args(mini_data, out, *extra):
    return ["train", "--data", str(mini_data), "--folds", str(mini_data / "folds.csv"),
            "--out", str(out), *FAST, *extra]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --- 1. leftovers ----------------------------------------------------------------------------
def test_leftovers_of_killed_saves_go_at_start_up_and_before_each_save(mini_data, tmp_path,
                                                                       caplog):
    config = make_config(mini_data, tmp_path, session_steps=2, eval_every=0)
    assert train(config, EventBus()).step == 2
    folder = checkpoint_dir(tmp_path)
    dead = dead_pid()
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live = f".state-7.pt.{helper.pid}.k3j2h1gf.tmp"  # another rank's save in progress
        leftovers = [f".state-3.pt.{dead}.a8sd7f6g.tmp", f".state-3.json.{dead}.x1y2z3w4.tmp",
                     "state-1.json"]
        # The helper's PID, on a file last written before it started: a dead writer's PID
        # given out again.
        reused = f".state-5.pt.{helper.pid}.r3u5e6d7.tmp"
        leftovers.append(reused)
        for name in leftovers + [live, "notes.txt"]:
            (folder / name).write_bytes(b"x" * 1000)
        an_hour_ago = time.time() - 3600
        os.utime(folder / reused, (an_hour_ago, an_hour_ago))
        late = f".state-4.pt.{dead}.late0000.tmp"

        def kill_leftover_before_the_save(event):  # a dead writer's file after start-up
            if event.kind == "progress" and event.step == 3:
                (folder / late).write_bytes(b"x" * 1000)
                assert "state-1.json" not in names(folder)  # gone at start-up already

        with caplog.at_level(logging.INFO, logger="imet.train.checkpoint"):
            result = train(config, EventBus([kill_leftover_before_the_save]))
        assert result.step == 4
        assert names(folder) == {"state-2.pt", "state-2.json", "state-4.pt", "state-4.json",
                                 live, "notes.txt"}
        lines = [r.getMessage() for r in caplog.records if "leftover" in r.getMessage()]
        assert len(lines) == 2, lines
        assert lines[0].startswith("removed 4 leftover file(s)") and \
            all(name in lines[0] for name in leftovers)
        assert lines[1].startswith("removed 1 leftover file(s)") and late in lines[1]
    finally:
        helper.kill()
        helper.wait()


def test_a_new_save_outranks_the_generations_of_a_timeline_left_behind(tmp_path):
    # state-10 was damaged, so the run resumed from state-5: its next save is the newest one,
    # even with --keep 1 (else the damaged file would outrank it, and the save be pruned).
    from test_checkpoint import payload
    for step in (5, 10):
        save_checkpoint(payload(step), tmp_path, step, keep=2)
    save_checkpoint(payload(6), tmp_path, 6, keep=1)
    assert [step for step, _ in list_generations(checkpoint_dir(tmp_path))] == [6]


# --- 2. a full disk, --keep ------------------------------------------------------------------
@contextmanager
def mounted_tmpfs(folder: Path, options: str):
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        gc.collect()  # a resumed run's checkpoint stays mapped until its tensors are freed
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """A file that takes all of `disk` but `leave` bytes."""
    filler = disk / "filler"
    with open(filler, "wb") as handle:
        handle.truncate(0)
        handle.write(b"\0" * max(0, shutil.disk_usage(disk).free - leave))
    return filler


def test_a_full_disk_refuses_the_save_in_one_line_and_the_run_resumes(mini_data, tmp_path,
                                                                      capsys):
    with mounted_tmpfs(tmp_path / "disk", "size=12m") as disk:
        out = disk / "run"
        assert main(train_args(mini_data, out, "--session-steps", "2")) == HANDED_OVER
        capsys.readouterr()
        filler = fill(disk, leave=300_000)
        assert main(train_args(mini_data, out, "--session-steps", "1")) == DISK_FULL
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"imet train: error: no space left on {out} writing "
                              "checkpoints/state-3.pt (needs ~1."), err
        assert err.endswith("free): free space, or keep one generation with --keep 1"), err
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        run = json.loads((out / "run.json").read_text())
        assert run["status"] == "failed" and "no space left" in run["error"]
        assert [step for step, _ in list_generations(checkpoint_dir(out))] == [2]
        load_checkpoint(checkpoint_dir(out) / "state-2.pt")  # the previous generation is intact
        filler.unlink()
        assert main(train_args(mini_data, out)) == 0


def test_no_room_for_model_pt_is_the_same_one_line(mini_data, tmp_path):
    events = []
    with mounted_tmpfs(tmp_path / "disk", "size=12m") as disk:
        fill(disk, leave=300_000)
        config = make_config(mini_data, disk / "run", keep=1)
        with pytest.raises(DiskFullError, match=r"writing model\.pt \(needs ~1\.\d MB, "
                                                r"0\.\d MB free\): free space$"):
            train(config, EventBus([events.append]))
    failure = [e for e in events if e.kind == "failure"]
    assert failure[0].exit_code == DISK_FULL and "no space left" in failure[0].error


def test_a_disk_that_fills_during_the_write_ends_the_same_way(mini_data, tmp_path, capsys):
    # Out of inodes: the free bytes pass the check, and the temp file's creation meets a real
    # ENOSPC from the kernel.
    with mounted_tmpfs(tmp_path / "disk", "size=12m,nr_inodes=64") as disk:
        out = disk / "run"
        assert main(train_args(mini_data, out, "--session-steps", "2")) == HANDED_OVER
        capsys.readouterr()
        (out / "HANDOVER.json").unlink()  # removing it at start-up would free an inode
        stuffing = disk / "stuffing"
        stuffing.mkdir()
        with pytest.raises(OSError):
            for index in range(1000):
                (stuffing / str(index)).touch()
        assert main(train_args(mini_data, out, "--session-steps", "1")) == DISK_FULL
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert f"imet train: error: no space left on {out} writing checkpoints/state-3.pt" \
            in err.splitlines()[-1]
        shutil.rmtree(stuffing)
        assert main(train_args(mini_data, out)) == 0


def test_keep_1_holds_one_generation_and_resumes_bit_identically(mini_data, tmp_path,
                                                                  reference):
    result = train(make_config(mini_data, tmp_path, keep=1), EventBus([SignalAt("progress", 6)]))
    assert (result.status, result.step) == ("handover", 6)
    assert names(checkpoint_dir(tmp_path)) == {"state-6.pt", "state-6.json"}
    # --keep is no part of the run's identity: the next session may keep two again.
    assert_same_end(resume_to_end(mini_data, tmp_path, keep=2), reference)


# --- 4. a second Ctrl-C ------------------------------------------------------------------------
def test_a_second_sigint_lets_the_save_finish_and_exits_75(mini_data, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    child = subprocess.Popen(cli_command(mini_data, tmp_path), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
    for line in child.stdout:
        if "| step " in line:
            break
    child.send_signal(signal.SIGINT)
    time.sleep(0.3)
    child.send_signal(signal.SIGINT)
    output = child.stdout.read()
    assert child.wait(timeout=120) == HANDED_OVER, output
    assert "interrupted" not in output and "Traceback" not in output
    handover = json.loads((tmp_path / "HANDOVER.json").read_text())
    assert handover["exit_code"] == HANDED_OVER and handover["reason"] == "signal"
    saved = load_checkpoint(handover["checkpoint"])
    assert saved["counters"]["step"] == handover["step"]


# --- 5. what differs ---------------------------------------------------------------------------
def test_a_refused_resume_names_each_setting_that_differs(mini_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(mini_data, out, "--session-steps", "1")) == HANDED_OVER
    capsys.readouterr()
    changed = ["--image-size", "48", "--lr", "0.001"]
    for extra in ([], ["--resume", str(checkpoint_dir(out) / "state-1.pt")]):
        assert main(train_args(mini_data, out, *changed, *extra)) == 2
        err = capsys.readouterr().err
        assert "(image_size: 32 in the checkpoint, 48 now; lr: 0.003 in the checkpoint, " \
               "0.001 now)" in err, err
        assert len(err.splitlines()) == 1


# --- 6. a signal during start-up ---------------------------------------------------------------
def catches(pid: int, signum: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(line for line in status.splitlines() if line.startswith("SigCgt:"))
               .split()[1], 16)
    return bool(mask & (1 << (signum - 1)))


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc")
def test_sigterm_right_after_start_hands_over_before_any_step(mini_data, tmp_path, reference):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    child = subprocess.Popen(cli_command(mini_data, tmp_path), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
    started = time.monotonic()
    while not catches(child.pid, signal.SIGTERM):
        assert child.poll() is None and time.monotonic() - started < 60
        time.sleep(0.001)
    # The handler is there before torch is even loaded, let alone the data or the model.
    assert "libtorch" not in Path(f"/proc/{child.pid}/maps").read_text()
    child.send_signal(signal.SIGTERM)
    output = child.stdout.read()
    assert child.wait(timeout=120) == HANDED_OVER, output
    handover = json.loads((tmp_path / "HANDOVER.json").read_text())
    assert (handover["reason"], handover["step"], handover["steps_this_session"]) == \
        ("signal", 0, 0)
    assert "no step was taken" in handover["what_happened"]
    assert [step for step, _ in list_generations(checkpoint_dir(tmp_path))] == [0]
    assert_same_end(resume_to_end(mini_data, tmp_path), reference)  # as if never stopped


def test_a_signal_anywhere_in_start_up_reaches_the_loop(mini_data, tmp_path):
    # As `imet train` does: the handlers installed before start-up are the loop's too; a
    # signal at the run's start (the model built, the checkpoint loaded, nothing trained) ends
    # the session at the first boundary.
    def signal_at_the_start(event):
        if event.kind == "run_start":
            os.kill(os.getpid(), signal.SIGTERM)

    with StopRequest() as stop:
        result = train(make_config(mini_data, tmp_path), EventBus([signal_at_the_start]),
                       stop=stop)
    assert (result.status, result.step, result.exit_code) == ("handover", 0, HANDED_OVER)
