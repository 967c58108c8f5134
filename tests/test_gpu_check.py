"""benchmarks/gpu_check.py on this CPU machine: its refusal without CUDA, and each of its
measurements run on the CPU device with tiny sizes, so its first GPU run is not its first run."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402
import gpu_steps  # noqa: E402

CPU = torch.device("cpu")
TINY = ["--arch", "tiny_cnn", "--no-pretrained", "--image-size", "32", "--batch-size", "4",
        "--epochs", "2", "--head-epochs", "1", "--patience", "0", "--num-workers", "0",
        "--device", "cpu", "--lr", "3e-3"]


def test_refuses_without_cuda_in_one_line():
    readme = (REPO / "benchmarks" / "README.md").read_text()
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("gpu_check: error: no CUDA GPU visible")
    assert (REPO / "benchmarks" / "README.md").read_text() == readme


def test_training_speed_and_memory_on_the_cpu():
    step = gpu_steps.make_step("tiny_cnn", 18, CPU, amp=True, channels_last=True)
    ips, peak = gpu_steps.throughput(step, 4, 32, 18, CPU, steps=2, warmup=1)
    assert ips > 0 and peak == 0.0
    fits = gpu_steps.fits_on_gpu(lambda: gpu_steps.make_step("tiny_cnn", 18, CPU, True, True),
                                 32, 18, CPU)
    assert fits(2)


@pytest.mark.parametrize("limit", [1, 5, 16, 100, 700, 5000])
def test_largest_fitting_batch_search(limit):
    tried = []

    def fits(batch):
        tried.append(batch)
        return batch <= limit
    found = gpu_steps.largest_fitting(fits, start=16, limit=1024)
    assert found <= min(limit, 1024) and found >= min(limit, 1024) * 15 / 16 - 1
    assert len(tried) < 20


def test_busy_share_with_the_real_loader_on_the_cpu(tmp_path):
    loader = gpu_steps.real_loader(tmp_path, 6, 32, 2, 0, 4, classes=18)
    step = gpu_steps.make_step("tiny_cnn", 18, CPU, amp=False, channels_last=False)
    share, ips = gpu_steps.busy_share(loader, step, gpu_steps.device_prepare(CPU), CPU, 3)
    assert 0 < share <= 1 and ips > 0


def test_augment_difference_of_a_device_with_itself_is_zero():
    assert gpu_steps.augment_difference(CPU, batch=2, size=32) == 0.0


def test_resume_check_on_the_cpu(mini_data, tmp_path):
    assert gpu_steps.resume_difference(mini_data, tmp_path, TINY, 5) == 0.0
    with pytest.raises(RuntimeError, match="uninterrupted run failed"):
        gpu_steps.resume_difference(tmp_path / "no-data", tmp_path / "x", TINY, 5)


def test_figures_are_appended_as_table_rows(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("| figure | value | command | machine | date |\n|---|---|---|---|---|\n")
    check = gpu_check.Check()
    check.record("train_img_s_amp", "123 img/s", "batch 16")
    check.run("broken", lambda: 1 / 0)
    check.append_to_readme("1x Tesla T4", readme)
    rows = readme.read_text().splitlines()[2:]
    assert len(rows) == 2 and all(r.startswith("| [gpu_check ") and r.count(" | ") == 4
                                  for r in rows)
    assert "train_img_s_amp: batch 16 | 123 img/s | `make gpu-check` | 1x Tesla T4" in rows[0]
    assert "FAILED" in rows[1] and "ZeroDivisionError" in rows[1]
    assert "train_img_s_amp: 123 img/s" in capsys.readouterr().out
