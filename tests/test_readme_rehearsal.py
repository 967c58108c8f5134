"""The README's "Rehearse at home first" commands, run as printed (relative paths and all) from a
folder laid out like the repository (kernels/, packaging/), on a machine with no Kaggle account:
the build as well as the kernels. Only DATA is filled in, and each kernel's settings are made
small through IMET_KERNEL_ARGS, as the README says a rehearsal may."""
import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0, reason="the emulator's isolation needs root")]

REPO = Path(__file__).resolve().parents[1]
KERNEL_ARGS = {
    "kernels/trainer": "--arch tiny_cnn --image-size 32 --batch-size 8 --epochs 2 --patience 0 "
                       "--num-workers 0 --notify off",
    "kernels/validation": "--tta none --batch-size 16 --num-workers 0",
    "kernels/inference": "--tta none --batch-size 16 --num-workers 0",
}


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### Rehearse at home first", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    joined = block.replace("\\\n", " ")
    return [line.split("  #", 1)[0].strip() for line in joined.splitlines() if line.strip()]


def test_the_readme_rehearsal_runs_as_printed(mini_data, tmp_path):
    build, *runs = readme_commands()
    assert build.startswith("python packaging/build_dataset.py") and \
        "--out dist/local-dataset" in build and "--owner" not in build
    assert [shlex.split(c)[5] for c in runs] == list(KERNEL_ARGS)
    for folder in ("kernels", "packaging"):
        (tmp_path / folder).symlink_to(REPO / folder)
    no_account = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    no_account["KAGGLE_CONFIG_DIR"] = str(tmp_path / "no-kaggle-config")
    for command in [build] + runs:
        argv = [sys.executable if a == "python" else a.replace("DATA", str(mini_data))
                for a in shlex.split(command)]
        env = {**no_account, "IMET_TELEGRAM_TOKEN": ""}
        if command != build:
            env["IMET_KERNEL_ARGS"] = KERNEL_ARGS[argv[5]]
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, (command, proc.stdout[-3000:], proc.stderr[-2000:])
    assert not (tmp_path / "dist" / "local-dataset" / "dataset-metadata.json").exists()
    submission = tmp_path / "emu" / "inference" / "output" / "submission.csv"
    with open(mini_data / "sample_submission.csv") as f:
        expected = {row["id"] for row in csv.DictReader(f)}
    with open(submission) as f:
        assert {row["id"] for row in csv.DictReader(f)} == expected
