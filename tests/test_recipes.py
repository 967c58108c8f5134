"""The write-ups' training recipes (issue 18): each trains on CPU and, stopped by a SIGTERM in
the middle of an epoch, resumes to the same final state as a run never stopped."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from imet.engine.events import EventBus
from imet.engine.loop import train
from imet.models.modelfile import read_model_file
from test_resume import SignalAt, assert_same_end, final_payload, make_config, resume_to_end

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPES = {
    "ema": dict(ema=0.9),
    "sgd": dict(optimizer="sgd", nesterov=True, momentum=0.9, lr=0.02, head_lr=0.05),
}


def assert_same_tensors(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), f"{what}.{key} differs"


class KeepCheckpoints:
    """Copies every checkpoint as it is written (the run itself keeps two generations)."""

    def __init__(self, folder):
        self.folder = folder
        folder.mkdir()

    def __call__(self, event):
        if event.kind == "checkpoint":
            shutil.copy(event.data["path"], self.folder / f"{event.data['step']}.pt")

    def payload(self, step: int) -> dict:
        return torch.load(self.folder / f"{step}.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def finished(mini_data, tmp_path_factory):
    """name -> (run folder, every checkpoint, final payload) of each recipe's uninterrupted
    run."""
    runs = {}

    def get(name):
        if name not in runs:
            out = tmp_path_factory.mktemp(name)
            kept = KeepCheckpoints(out.parent / f"{out.name}-kept")
            result = train(make_config(mini_data, out, **RECIPES[name]), EventBus([kept]))
            assert result.status == "finished", result
            runs[name] = out, kept, final_payload(out)
        return runs[name]
    return get


def without_prefix(ema_state: dict) -> dict:
    """The averaged model's weights under the model's own names."""
    return {k.removeprefix("module."): v for k, v in ema_state.items() if k != "n_averaged"}


@pytest.mark.parametrize("name", RECIPES)
def test_sigterm_mid_epoch_resumes_bit_identically(name, mini_data, tmp_path, finished):
    # Step 7 is inside epoch 1 (steps 5-8), in stage 2, away from any evaluation.
    result = train(make_config(mini_data, tmp_path, **RECIPES[name]),
                   EventBus([SignalAt("progress", 7)]))
    assert (result.status, result.step, result.reason) == ("handover", 7, "signal")
    end = resume_to_end(mini_data, tmp_path, **RECIPES[name])
    *_, reference = finished(name)
    assert_same_end(end, reference)
    if reference["ema"] is not None:
        assert_same_tensors(end["ema"], reference["ema"], "ema")


def test_ema_weights_differ_from_raw_and_model_file_holds_them(finished):
    out, kept, payload = finished("ema")
    ema, raw = without_prefix(payload["ema"]), payload["model"]
    assert int(payload["ema"]["n_averaged"]) == payload["counters"]["step"]
    weights = [k for k in raw if k.endswith("weight")]
    assert weights and all(not torch.equal(ema[k], raw[k]) for k in weights)
    # model.pt is written at the best evaluation: the EMA weights of that step's checkpoint.
    model_file = read_model_file(out / "model.pt")
    at_best = kept.payload(model_file["extra"]["step"])
    assert_same_tensors(model_file["state_dict"], without_prefix(at_best["ema"]), "model.pt")
    assert any(not torch.equal(model_file["state_dict"][k], at_best["model"][k])
               for k in weights)


def test_sgd_keeps_momentum_buffers_per_group(finished):
    *_, payload = finished("sgd")
    groups = payload["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["early", "late", "head"]
    assert all(g["nesterov"] and "betas" not in g for g in groups)
    assert all("momentum_buffer" in s for s in payload["optimizer"]["state"].values())


@pytest.mark.parametrize("flag, value, names", [
    ("--optimizer", "rmsprop", "choose one of adamw, sgd"),
])
def test_unknown_choice_is_one_line_with_the_valid_names(mini_data, tmp_path, flag, value,
                                                        names):
    argv = [sys.executable, "-m", "imet", "train", "--data", str(mini_data), "--out",
            str(tmp_path / "run"), "--arch", "tiny_cnn", "--no-pretrained", "--image-size", "32",
            "--batch-size", "8", "--notify", "off", "--device", "cpu", flag, value]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imet train: error: "), result.stderr
    assert repr(value) in lines[0] and names in lines[0]
