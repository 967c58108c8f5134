"""`imet lr-find`: an exponential LR sweep with the train flags, a plot with the suggestion, and
nothing written into any run folder."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from test_resume import make_config

from imet.train.lr_find import lr_find

pytestmark = pytest.mark.usefixtures("one_thread")


def test_plot_exists_and_the_suggestion_lies_in_the_swept_range(mini_data, tmp_path):
    run_folder = tmp_path / "run"
    argv = [sys.executable, "-m", "imet", "lr-find", "--data", str(mini_data), "--out",
            str(run_folder), "--arch", "tiny_cnn", "--no-pretrained", "--image-size", "32",
            "--batch-size", "8", "--num-workers", "0", "--device", "cpu", "--notify", "off",
            "--steps", "12", "--start-lr", "1e-4", "--end-lr", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env=env)
    assert result.returncode == 0, result.stderr
    suggested = float(re.search(r"suggested --lr (\S+)", result.stdout).group(1))
    swept = re.search(r"swept (\S+) \.\. (\S+) over (\d+) steps", result.stdout)
    assert 1e-4 <= float(swept.group(1)) <= suggested <= float(swept.group(2)) <= 1.0
    plot = tmp_path / "lr-find.png"
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert not run_folder.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr-find.png"]


def test_the_sweep_stops_early_when_the_loss_diverges(mini_data, tmp_path):
    config = make_config(mini_data, tmp_path / "never", mixup_alpha=0.0, dropout=0.0)
    sweep = lr_find(config, steps=40, start_lr=1e-2, end_lr=1e6)
    assert sweep.diverged and len(sweep.lrs) < 40
    assert sweep.lrs == sorted(sweep.lrs) and sweep.lrs[0] == pytest.approx(1e-2)
    assert sweep.lrs[0] <= sweep.suggestion() <= sweep.lrs[-1]
    assert not (tmp_path / "never").exists()
