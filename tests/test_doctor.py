"""`imet doctor` and the device checks on this CPU-only machine: "no GPU" said correctly, the
GPU probe's own code run on the CPU device, the checkpoint estimate, the inputs found, Telegram
configured without its token, and the one-line refusals of doctor and `imet train --device`."""
import json
import shlex
import shutil
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from telegram_standin import TelegramStandin

from imet.kaggle import session as gpu
from imet.kaggle.session import Settings, checkpoint_bytes, diagnose, disk_need, doctor_flags

TOKEN = "555666777:AAEdoctorTokenMustNeverLeak_0123456789"
CPU_ONLY = not torch.cuda.is_available()
needs_cpu_only = pytest.mark.skipif(not CPU_ONLY, reason="asserts what a machine without GPU says")
# CUDA 12.8 wheels (the default Kaggle image's torch 2.10+cu128) and a P100 / a T4 / an A100.
CU128 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


def imet(*args, env=None, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "imet", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "IMET_TELEGRAM_TOKEN": "", **(env or {})})
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def errors(proc, command="doctor"):
    lines = proc.stderr.strip().splitlines()
    assert all(line.startswith(f"imet {command}: error: ") for line in lines), proc.stderr
    return lines


def test_kernels_of_a_build_for_each_capability():
    assert not gpu.has_kernels((6, 0), CU128)  # P100: the first CUDA op would fail
    assert gpu.has_kernels((7, 5), CU128) and gpu.has_kernels((8, 9), CU128)  # T4, L4 (sm_86)
    assert gpu.has_kernels((12, 1), CU128)  # newer than every sm_: the PTX is compiled
    assert not gpu.has_kernels((7, 0), ["sm_75", "sm_80"])  # V100 on a cu13-like build
    assert gpu.has_kernels((6, 0), ["sm_50", "compute_50"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_gpu_probe_runs_on_the_cpu_device(dtype):
    gpu.probe(torch.device("cpu"), dtype)
    assert gpu.try_probe(torch.device("cpu"), dtype) == "ok"


@pytest.mark.filterwarnings("ignore:In CPU autocast")
def test_a_probe_whose_autocast_is_off_fails():
    # float64 is no autocast dtype: autocast turns itself off, and the probe must notice
    result = gpu.try_probe(torch.device("cpu"), torch.float64)
    assert result.startswith("failed: ")


@needs_cpu_only
def test_device_checks_on_a_machine_without_gpu():
    assert gpu.device_problem("cpu") is None and gpu.device_problem("auto") is None
    assert "no CUDA GPU is visible" in gpu.device_problem("cuda:3")
    assert "(NvidiaTeslaT4)" in gpu.no_gpu_line("NvidiaTeslaT4")


def test_a_driver_older_than_the_build_is_said_with_torchs_warning(monkeypatch):
    def is_available():
        import warnings
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old\n"
                      "(found version 11040).")
        return False
    monkeypatch.setattr(gpu.torch.cuda, "is_available", is_available)
    monkeypatch.setattr(gpu.torch.version, "cuda", "12.8")
    monkeypatch.setattr(gpu, "nvidia_device_nodes", lambda: True)
    available, why = gpu.cuda_available()
    assert not available
    assert "cannot use: CUDA initialization: The NVIDIA driver on your system is too old " \
           "(found version 11040)." in why


def test_checkpoint_estimate_from_the_architecture():
    params, state = checkpoint_bytes("se_resnext50_32x4d", 1103)
    assert 27e6 < params < 28.5e6  # 25.5M body + a 2048x1103 head
    assert 3 * 4 * params <= state < 3 * 4 * params * 1.01
    tiny_params, _ = checkpoint_bytes("tiny_cnn", 18)
    _, need = disk_need("se_resnext50_32x4d", 1103)
    assert need > 3 * state and tiny_params < params / 100


def test_doctor_flags_from_kernel_arguments():
    args = ["--fold", "0", "--arch", "se_resnext50_32x4d", "--no-pretrained", "--device", "cuda"]
    assert doctor_flags(args) == ["--notify=auto", "--arch=se_resnext50_32x4d",
                                  "--no-pretrained", "--device=cuda"]
    assert doctor_flags(["--tta", "none", "--notify", "off"]) == ["--notify=off"]


def test_report_lists_inputs_and_estimates(mini_data, tmp_path):
    earlier = tmp_path / "input" / "imet-trainer"
    earlier.mkdir(parents=True)
    (earlier / "HANDOVER.json").write_text("{}")
    report = diagnose(Settings(data=mini_data, input_roots=[tmp_path / "input"], out=tmp_path,
                               arch="tiny_cnn", pretrained=False, device="cpu"))
    text = "\n".join(report.lines)
    assert report.problems == [], report.problems
    for name in ("python:", "torch:", "cuda build:", "arch list:", "GPU", "competition data:",
                 "source dataset:", "previous output:", "disk:", "telegram:"):
        assert name in text, name
    assert str(mini_data) in text and str(earlier) in text
    if CPU_ONLY:
        assert "no GPU" in text


def test_doctor_passes_a_cpu_session(mini_data, tmp_path):
    proc = imet("doctor", "--data", mini_data, "--out", tmp_path, "--arch", "tiny_cnn",
                "--no-pretrained", "--accelerator", "none")
    assert proc.returncode == 0, proc.stderr
    assert "nothing blocks this session; it can train tiny_cnn as configured" in proc.stdout


def test_doctor_without_competition_data_is_one_line(tmp_path):
    proc = imet("doctor", "--data", tmp_path / "nowhere", "--out", tmp_path)
    assert proc.returncode == 2
    (line,) = errors(proc)
    assert "no competition data under" in line and "nowhere" in line


def test_unknown_accelerator_is_refused_with_the_known_names(tmp_path):
    proc = imet("doctor", "--accelerator", "NvidiaTeslaK80")
    assert proc.returncode == 2 and "NvidiaTeslaK80" in proc.stderr
    assert "NvidiaTeslaT4" in proc.stderr and "none" in proc.stderr


@needs_cpu_only
def test_asked_for_a_gpu_got_none_stops_and_tells_telegram(mini_data, tmp_path):
    with TelegramStandin() as server:
        started = time.monotonic()
        proc = imet("doctor", "--data", mini_data, "--out", tmp_path, "--arch", "tiny_cnn",
                    "--no-pretrained", "--accelerator", "NvidiaTeslaT4", "--notify", "auto",
                    "--kernel", "trainer",
                    env={"IMET_TELEGRAM_TOKEN": TOKEN, "IMET_TELEGRAM_CHAT_ID": "7",
                         "IMET_TELEGRAM_API_URL": server.api_url})
        seconds = time.monotonic() - started
        sent = server.sent()
    assert proc.returncode == 2 and seconds < 60
    (line,) = errors(proc)
    assert "asked for a GPU (NvidiaTeslaT4) but this session has none" in line
    assert "telegram:         on: token from environment, chat 7" in proc.stdout
    assert TOKEN.split(":")[1] not in proc.stdout + proc.stderr
    (message,) = sent
    assert message.params["text"].startswith("❌") and "has none" in message.params["text"]


@needs_cpu_only
def test_train_refuses_a_cuda_device_it_cannot_use(mini_data, tmp_path):
    for device in ("cuda", "cuda:3"):
        proc = imet("train", "--data", mini_data, "--out", tmp_path / "run", "--arch",
                    "tiny_cnn", "--no-pretrained", "--device", device)
        assert proc.returncode == 2
        (line,) = errors(proc, "train")
        assert f"--device {device}: no CUDA GPU is visible" in line
        assert not (tmp_path / "run" / "checkpoints").exists()


def test_templates_ask_for_t4_and_the_script_says_so():
    kernels = Path(__file__).resolve().parents[1] / "kernels"
    for name in ("trainer", "validation", "inference"):
        meta = json.loads((kernels / name / "kernel-metadata.json").read_text())
        assert meta["machine_shape"] == "NvidiaTeslaT4" and meta["enable_gpu"] is True
        assert "ACCELERATOR = 'NvidiaTeslaT4'" in (kernels / name / f"{name}.py").read_text()


def test_an_arch_without_weights_is_not_asked_for_them(tmp_path, mini_data):
    """As `imet train`: tiny_cnn trains from random init by default, so doctor does not stop a
    kernel for the weights it has none of; an explicit --pretrained still asks for them."""
    from imet.kaggle.session import Settings, diagnose

    plain = diagnose(Settings(data=mini_data, out=tmp_path, arch="tiny_cnn", device="cpu"))
    assert not [p for p in plain.problems if "pretrained" in p], plain.problems
    asked = diagnose(Settings(data=mini_data, out=tmp_path, arch="tiny_cnn", device="cpu",
                              pretrained=True))
    assert [p for p in asked.problems if "no pretrained weights" in p]


# A trainer session's inputs where each layout mounts them below /kaggle/input: today's Kaggle
# (nested) and older sessions (flat).
MOUNTS = {"nested": {"data": "competitions/imet-2019-fgvc6", "src": "datasets/me/imet-src",
                     "own": "notebooks/me/imet-trainer", "other": "notebooks/me/imet-trainer-f1"},
          "flat": {"data": "imet-2019-fgvc6", "src": "imet-src", "own": "imet-trainer",
                   "other": "imet-trainer-f1"}}
KERNEL = "me/imet-trainer"
TRAIN_ARGS = ["--arch", "tiny_cnn", "--no-pretrained", "--image-size", "32"]


def source_dataset(folder: Path, commit: str = "0123456789abcdef") -> Path:
    folder.mkdir(parents=True)
    (folder / "MANIFEST.json").write_text(json.dumps(
        {"format": "imet-dataset", "packages": [{"name": "imet", "version": "0.3.0"}],
         "source": {"git_commit": commit}}))
    (folder / "imet_bootstrap.py").write_text("")
    return folder


def run_output(folder: Path, kernel: str, fingerprint: str, handover: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"config_hash": fingerprint,
                                                 "sessions": [{"kernel": kernel}]}))
    if handover:
        (folder / "HANDOVER.json").write_text("{}")
    return folder


def kaggle_input(tmp_path: Path, layout: str, mini_data: Path) -> Path:
    """An input root holding the competition and imet-src, mounted as `layout` does."""
    root = tmp_path / "kaggle" / "input"
    data = root / MOUNTS[layout]["data"]
    data.parent.mkdir(parents=True, exist_ok=True)
    data.symlink_to(mini_data, target_is_directory=True)
    source_dataset(root / MOUNTS[layout]["src"])
    return root


def report_of(root: Path, tmp_path: Path) -> dict[str, str]:
    report = diagnose(Settings(input_roots=[root], out=tmp_path / "kaggle" / "working",
                               kernel_id=KERNEL))
    assert report.problems == [], report.problems
    return {line[:18].strip(" :"): line[18:] for line in report.lines}


@pytest.mark.parametrize("layout", MOUNTS)
def test_doctor_names_the_folder_found_for_each_input_under_either_layout(mini_data, tmp_path,
                                                                          layout):
    """And when one is missing, which attached inputs it searched and how deep. Another
    kernel's finished run (an --init model, say) is not this run's previous output."""
    root = kaggle_input(tmp_path, layout, mini_data)
    mounts = MOUNTS[layout]
    run_output(root / mounts["own"], KERNEL, "aaaa", handover=True)
    run_output(root / mounts["other"], "me/imet-trainer-f1", "bbbb", handover=False)
    found = report_of(root, tmp_path)
    assert found["competition data"] == str(root / mounts["data"])
    assert found["source dataset"] == str(root / mounts["src"])
    assert found["previous output"] == str(root / mounts["own"])
    shutil.rmtree(root / mounts["src"])
    shutil.rmtree(root / mounts["own"])
    missing = report_of(root, tmp_path)
    attached = ", ".join(mounts[k] for k in ("data", "other"))
    assert missing["source dataset"] == f"not attached (searched {root}, 9 folders deep: " \
                                        f"{attached})"
    assert missing["previous output"] == f"none, a new run (searched {root}, 9 folders deep: " \
                                         f"{attached})"


def refused(tmp_path, capsys, monkeypatch) -> tuple[int, str]:
    """A trainer session's exit code and output on the inputs under tmp_path/kaggle/input."""
    monkeypatch.setenv(gpu.ROOT_ENV, str(tmp_path / "kaggle"))
    monkeypatch.setenv("IMET_TELEGRAM_TOKEN", "")
    code = gpu.main("trainer", gpu.trainer, time.time(), "1h", TRAIN_ARGS, 5, "none", KERNEL)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert not (tmp_path / "kaggle" / "working").exists() or \
        not any((tmp_path / "kaggle" / "working").iterdir())  # nothing written
    return code, captured


def test_two_inputs_holding_the_competition_data_are_refused(mini_data, tmp_path, capsys,
                                                              monkeypatch):
    root = kaggle_input(tmp_path, "nested", mini_data)
    copy = root / "datasets" / "me" / "imet-copy"
    copy.mkdir(parents=True)
    for name in ("labels.csv", "sample_submission.csv"):
        shutil.copy(mini_data / name, copy / name)
    code, captured = refused(tmp_path, capsys, monkeypatch)
    (line,) = captured.err.strip().splitlines()
    assert code == 2 and line.startswith("imet trainer kernel: error: competition data")
    assert "in 2 inputs, competitions/imet-2019-fgvc6 and datasets/me/imet-copy" in line
    assert f"searched {root}, 9 folders deep" in line


def test_a_source_dataset_attached_in_two_versions_is_refused(mini_data, tmp_path, capsys,
                                                               monkeypatch):
    root = kaggle_input(tmp_path, "nested", mini_data)
    source_dataset(root / "datasets" / "me" / "imet-src-old", commit="fedcba9876543210")
    code, captured = refused(tmp_path, capsys, monkeypatch)
    (line,) = captured.err.strip().splitlines()
    assert code == 2 and "imet source dataset is attached in 2 versions" in line
    assert "datasets/me/imet-src (imet 0.3.0 of 0123456789ab)" in line
    assert "datasets/me/imet-src-old (imet 0.3.0 of fedcba987654)" in line
    assert f"searched {root}, 9 folders deep" in line


def test_another_kernels_run_handing_over_is_refused_naming_both_runs(mini_data, tmp_path,
                                                                       capsys, monkeypatch):
    from imet.commands.kaggle import _fingerprint
    root = kaggle_input(tmp_path, "nested", mini_data)
    run_output(root / "notebooks" / "me" / "imet-trainer-f1", "me/imet-trainer-f1", "ffff0000")
    code, captured = refused(tmp_path, capsys, monkeypatch)
    (line,) = [line for line in captured.out.splitlines() if "error" in line]
    assert code == 2 and line.startswith("imet doctor: error: notebooks/me/imet-trainer-f1 holds")
    ours = _fingerprint(shlex.join(TRAIN_ARGS), mini_data)
    assert "(me/imet-trainer-f1: run ffff0000)" in line and f"{KERNEL} (run {ours})" in line
    assert f"searched {root}, 9 folders deep" in line
