"""HANDOVER.json: what a session that stopped early leaves for the next one (and its user)."""
from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from imet.errors import CheckpointError
from imet.fileio import atomic_write_text

NAME = "HANDOVER.json"
# EX_TEMPFAIL: "temporary failure, try again" -> push the kernel again. The exit code of a
# session that handed over, for the command and for whoever launched it (kaggle/*).
EXIT_CODE = 75
# The run's best model, which the next session takes along with the checkpoint it resumes from
# (imet/engine/resume.py). Named here, in a module free of torch, for kaggle/* too.
MODEL_FILE = "model.pt"


def model_file_of(run: Path) -> Path:
    """RUN_DIR/model.pt, or the file itself when given a file (predict, validate, --init)."""
    run = Path(run)
    if run.is_dir():
        candidate = run / MODEL_FILE
        if not candidate.is_file():
            raise CheckpointError(f"{candidate}: model file not found; train the run to its end "
                                  "(`imet train`) or pass the model file's path")
        return candidate
    if not run.exists():
        raise CheckpointError(f"{run}: run folder or model file not found; fix the path")
    return run


def next_step_text(command: str | None) -> str:
    """What to run next: `command` with its --resume set to auto (said once, wherever the
    command had it)."""
    rerun = (f"`{resuming(command)}` again" if command
             else "the same `imet train` command again with --resume auto")
    return (f"run {rerun} (locally: in the same --out folder; on Kaggle: push the trainer "
            "kernel again with this kernel's output attached as an input, found through "
            "--input-root)")


def resuming(command: str) -> str:
    """`command` with `--resume auto` in place of any --resume it had, or added at its end."""
    words, found = shlex.split(command), False
    for index, word in enumerate(words):
        if word == "--resume" and index + 1 < len(words):
            words[index + 1], found = "auto", True
        elif word.startswith("--resume="):
            words[index], found = "--resume=auto", True
    return shlex.join(words if found else [*words, "--resume", "auto"])


def write(out: Path, *, reason: str, step: int, epoch: int, stage: int, checkpoint: str,
          next_text: str, exit_code: int, signal: str | None, session: int,
          total_steps: int, steps_taken: int) -> Path:
    """`steps_taken`: this session's steps (0: it stopped during start-up, nothing changed)."""
    what = {"budget": "the session's time budget would not fit the next unit of work plus a "
                      "save",
            "session-steps": "the session ran its --session-steps",
            "telegram": "its owner sent /stop from Telegram"}.get(
        reason, f"a stop signal ({signal or 'SIGTERM/SIGINT'}) arrived")
    taken = "no step was taken in this session; " if steps_taken == 0 else ""
    data = {"status": "handover", "reason": reason, "what_happened": f"stopped at step {step} "
            f"of {total_steps} (epoch {epoch}, stage {stage}, session {session}): {what}; "
            f"{taken}the full training state was saved", "step": step, "epoch": epoch,
            "stage": stage, "session": session, "total_steps": total_steps,
            "steps_this_session": steps_taken,
            "checkpoint": checkpoint, "next": next_text, "exit_code": exit_code,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return atomic_write_text(Path(out) / NAME, json.dumps(data, indent=2) + "\n")


def remove(out: Path) -> None:
    """A session that runs on makes an earlier handover note stale."""
    (Path(out) / NAME).unlink(missing_ok=True)
