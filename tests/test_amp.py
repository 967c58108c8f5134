"""One mixed-precision path on every device: `--amp-dtype auto|fp16|bf16`.

The runs here are CPU runs with an explicit dtype, so they go through the lines a GPU runs: the
autocast context, the GradScaler's scale/unscale/step/update (fp16, enabled on CPU), a step
skipped on a non-finite gradient, and the precision and scaler state through a checkpoint and
its resume. What `auto` picks on a GPU is shown with compute capabilities (T4: 7.5)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from test_resume import (
    SignalAt,
    assert_same_end,
    cli_command,
    final_payload,
    make_config,
    resume_to_end,
)

from imet.data.labels import CompetitionLayout, read_labels
from imet.device import choose_precision, device_precision
from imet.errors import CheckpointError, UserError
from imet.models.net import ImetNet
from imet.predict.pipeline import InferenceOptions, load_run, predict_run
from imet.train.events import EventBus
from imet.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("capability, amp_dtype, expected, scaled", [
    ((7, 5), "auto", "fp16", True),    # T4: no fast bf16
    ((7, 0), "auto", "fp16", True),    # V100
    ((8, 0), "auto", "bf16", False),   # A100
    ((8, 9), "auto", "bf16", False),   # L4
    ((9, 0), "auto", "bf16", False),   # H100
    ((7, 5), "fp16", "fp16", True),
    ((9, 0), "fp16", "fp16", True),
    ((8, 0), "bf16", "bf16", False),
])
def test_auto_is_fp16_with_a_scaler_before_ampere_and_bf16_from_ampere_on(capability, amp_dtype,
                                                                          expected, scaled):
    precision = choose_precision(True, amp_dtype, "cuda", capability)
    assert (precision.name, precision.scaled) == (expected, scaled)
    assert choose_precision(False, amp_dtype, "cuda", capability).name == "fp32"


def test_on_cpu_auto_is_off_and_an_explicit_dtype_runs_cpu_autocast():
    cpu = torch.device("cpu")
    assert device_precision(cpu, True, "auto").name == "fp32"
    assert device_precision(cpu, False, "bf16").name == "fp32"
    layer, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        precision = device_precision(cpu, True, name)
        with precision.autocast("cpu"):
            assert layer(x).dtype == dtype
        assert precision.scaler("cpu").is_enabled() == (name == "fp16")


def test_bf16_on_a_gpu_without_fast_bf16_and_an_unknown_dtype_are_refused():
    with pytest.raises(UserError) as err:
        choose_precision(True, "bf16", "cuda", (7, 5), "Tesla T4")
    assert str(err.value) == ("--amp-dtype bf16: Tesla T4 (compute capability 7.5) has no fast "
                              "bf16 (needs 8.0, Ampere or newer); use --amp-dtype fp16 or auto")
    with pytest.raises(UserError, match="--amp-dtype: unknown dtype 'fp8'; choose auto, fp16, "
                                        "bf16"):
        choose_precision(True, "fp8", "cpu")


def one_error_line(result, command: str) -> str:
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"imet {command}: error: ")
    return lines[0]


def test_an_unknown_dtype_is_one_line_in_train_and_predict(mini_data, tmp_path):
    for command, extra in (("train", ["--data", mini_data, "--out", tmp_path / "run"]),
                           ("predict", ["--data", mini_data, "--runs", tmp_path / "run"])):
        result = subprocess.run([sys.executable, "-m", "imet", command, *map(str, extra),
                                 "--amp-dtype", "fp8"], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2
        assert "--amp-dtype: unknown dtype 'fp8'; choose auto, fp16, bf16" in \
            one_error_line(result, command)


@pytest.fixture(scope="module")
def bf16_reference(mini_data, tmp_path_factory):
    """The uninterrupted CPU bf16 run (test_resume's run, with --amp-dtype bf16)."""
    out = tmp_path_factory.mktemp("bf16")
    result = train(make_config(mini_data, out, amp_dtype="bf16"), EventBus())
    assert result.status == "finished" and result.step == 12
    return out, final_payload(out)


def test_a_bf16_run_interrupted_by_sigterm_resumes_to_the_same_tensors(mini_data, tmp_path,
                                                                        bf16_reference):
    result = train(make_config(mini_data, tmp_path, amp_dtype="bf16"),
                   EventBus([SignalAt("progress", 6)]))
    assert (result.status, result.step, result.reason) == ("handover", 6, "signal")
    assert final_payload(tmp_path)["meta"]["precision"] == "bf16"
    end = resume_to_end(mini_data, tmp_path, amp_dtype="bf16")
    assert_same_end(end, bf16_reference[1])
    assert end["meta"]["precision"] == "bf16" and end["scaler"] == {}  # bf16: no scaler


def test_the_bf16_run_differs_from_the_fp32_run(mini_data, tmp_path, bf16_reference):
    fp32 = resume_to_end(mini_data, tmp_path)  # auto on CPU: fp32
    bf16 = bf16_reference[1]
    assert fp32["meta"]["precision"] == "fp32"
    assert any(not torch.equal(fp32["model"][key], bf16["model"][key]) for key in bf16["model"])
    assert fp32["counters"]["history"] != bf16["counters"]["history"]


def test_predict_and_validate_follow_the_run_s_precision(mini_data, bf16_reference):
    layout = CompetitionLayout(mini_data)
    ids = [path.stem for path in sorted(layout.test_dir.iterdir())][:8]
    paths = layout.image_paths("test", ids)
    run = load_run(bf16_reference[0], expected=read_labels(layout.labels_csv))
    assert run.config["amp_dtype"] == "bf16"
    options = InferenceOptions(num_workers=0, log_every_s=600)
    lines: list[str] = []
    own = predict_run(run, paths, ids, options, log=lines.append).probs
    assert lines[0].endswith(", cpu, bf16")  # the header line, before the progress lines
    options.amp_dtype, lines = "auto", []  # --amp-dtype auto: fp32 on CPU
    fp32 = predict_run(run, paths, ids, options, log=lines.append).probs
    assert lines[0].endswith(", cpu, fp32")
    assert np.abs(own - fp32).max() > 0


class PlantNonFiniteGradient:
    """A NaN gradient on the logits of the next training forward pass, through torch's global
    module hook: the model's code is not touched."""

    def __enter__(self):
        self.planted = 0
        self.handle = torch.nn.modules.module.register_module_forward_hook(self.hook)
        return self

    def hook(self, module, inputs, output):
        if isinstance(module, ImetNet) and output.requires_grad and not self.planted:
            self.planted += 1
            output.register_hook(lambda grad: torch.full_like(grad, float("nan")))

    def __exit__(self, *exc):
        self.handle.remove()


def parameters(payload) -> dict[str, torch.Tensor]:
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return {k: v for k, v in payload["model"].items() if not k.endswith(buffers)}


def test_an_enabled_scaler_skips_a_step_with_a_non_finite_gradient_and_the_run_goes_on(
        mini_data, tmp_path):
    fp16 = dict(amp_dtype="fp16")
    train(make_config(mini_data, tmp_path, session_steps=5, **fp16), EventBus())
    before = final_payload(tmp_path)  # step 5: the first of stage 2
    assert before["meta"]["precision"] == "fp16" and before["scaler"]["scale"] == 65536.0
    with PlantNonFiniteGradient() as plant:  # step 6
        result = train(make_config(mini_data, tmp_path, session_steps=1, **fp16), EventBus())
    assert plant.planted == 1 and (result.status, result.step) == ("handover", 6)
    skipped = final_payload(tmp_path)
    assert skipped["scaler"]["scale"] == 32768.0 and skipped["scaler"]["_growth_tracker"] == 0
    for key, value in parameters(before).items():
        assert torch.equal(parameters(skipped)[key], value), f"{key} moved on a skipped step"
    assert all(torch.equal(skipped["optimizer"]["state"][i]["step"], state["step"])
               for i, state in before["optimizer"]["state"].items())
    end = resume_to_end(mini_data, tmp_path, **fp16)
    assert end["counters"]["step"] == 12 and end["counters"]["finished"]
    assert end["scaler"]["scale"] == 32768.0  # the backed-off scale came through the resume
    assert end["scaler"]["_growth_tracker"] == 6
    assert all(torch.isfinite(value).all() for value in parameters(end).values())
    assert any(not torch.equal(parameters(end)[key], value)
               for key, value in parameters(skipped).items())


def test_resuming_with_another_amp_dtype_is_refused_in_one_line(mini_data, tmp_path):
    train(make_config(mini_data, tmp_path, amp_dtype="bf16", session_steps=2), EventBus())
    checkpoint = tmp_path / "checkpoints" / "state-2.pt"
    with pytest.raises(CheckpointError) as err:
        train(make_config(mini_data, tmp_path), EventBus())
    assert str(err.value) == (
        f"{checkpoint}: the run trained in bf16 (--amp-dtype bf16) and this session would train "
        "in fp32 (--amp-dtype auto on cpu); resume with --amp-dtype bf16, or start over with "
        "--resume off")
    result = subprocess.run([*cli_command(mini_data, tmp_path), "--amp-dtype", "fp16"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "the run trained in bf16 (--amp-dtype bf16) and this session would train in fp16 " \
           "(--amp-dtype fp16 on cpu); resume with --amp-dtype bf16" in \
        one_error_line(result, "train")
