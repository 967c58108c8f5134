"""Start-to-first-step after a resume: `python -m imet train --resume auto` launched on a run
folder holding a full se_resnext50_32x4d TrainState (~320 MiB: weights + AdamW moments), timed
from the launch to the first training step's progress line. Side by side in the same run: the
same command starting fresh (no checkpoint). Both include Python and torch start-up, reading
the data, building the model; the resume adds finding, verifying and restoring the checkpoint.

Last line: the resumed start-to-first-step time in seconds (the ratio to a fresh start above)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imet.data.folds import make_folds, write_folds
from imet.data.labels import read_labels, read_train
from imet.data.labels import CompetitionLayout
from imet.data.mini_imet import generate

MARKER = "| step "  # ConsoleProgress's progress line


def command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "imet", "train", "--data", str(data), "--out", str(out),
            "--arch", "se_resnext50_32x4d", "--no-pretrained", "--image-size", "64",
            "--batch-size", "8", "--epochs", "2", "--head-epochs", "0", "--num-workers", "0",
            "--notify", "off", "--device", "cpu", "--progress-every-s", "0"]


def start_to_first_step(argv: list[str]) -> float:
    """Seconds from launch to the first progress line; then SIGTERM: the child saves, exits 75."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"),
                             cwd=Path(__file__).resolve().parents[1])
    seconds = None
    lines = []
    for line in child.stdout:
        lines.append(line)
        if MARKER in line and seconds is None:
            seconds = time.perf_counter() - started
            child.send_signal(signal.SIGTERM)
    code = child.wait()
    if seconds is None or code != 75:
        raise SystemExit(f"child exited {code} without the expected handover:\n{''.join(lines)}")
    return seconds


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "mini"
        generate(data, n_train=64, n_test=8, size=64, seed=0)
        layout = CompetitionLayout(data)
        ids, targets = read_train(layout.train_csv, read_labels(layout.labels_csv))
        write_folds(layout.folds_csv, ids, make_folds(targets, 2, seed=0))
        out = Path(tmp) / "run"
        fresh = start_to_first_step(command(data, out))  # also leaves the checkpoint
        size = sum(p.stat().st_size for p in (out / "checkpoints").glob("*.pt")) / 2 ** 20
        resumed = start_to_first_step(command(data, out) + ["--resume", "auto"])
    print(f"checkpoint in the run folder: {size:.0f} MiB")
    print(f"fresh start to first step: {fresh:.2f} s; resumed: {resumed:.2f} s "
          f"(ratio {resumed / fresh:.2f})")
    print(f"resume_start_to_first_step_s: {resumed:.2f}")


if __name__ == "__main__":
    main()
