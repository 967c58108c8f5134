"""The write-ups' training recipes (issue 18): each trains on CPU and, stopped by a SIGTERM in
the middle of an epoch, resumes to the same final state as a run never stopped."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_resume import SignalAt, assert_same_end, final_payload, make_config, resume_to_end

from imet.data.transforms import (
    ERASE_FILL,
    ERASE_H,
    IDENTITY,
    augment_batch,
    build_batch_augment,
    build_eval_transform,
    build_train_transform,
)
from imet.models import build_model
from imet.models.modelfile import read_model_file
from imet.train.data import EpochBatchSampler
from imet.train.events import EventBus
from imet.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPES = {
    "ema": dict(ema=0.9),
    "sgd": dict(optimizer="sgd", nesterov=True, momentum=0.9, lr=0.02, head_lr=0.05),
    "train_groups": dict(train_groups="late,head"),
    "pad": dict(preset="pad"),
    "erasing": dict(erasing=0.5, preset="resize"),
    # 32 training images + 8 repeats = 5 steps per epoch: step 7 is inside epoch 1
    "hard_negatives": dict(hard_negatives=0.25),
}


def assert_same_tensors(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):  # bit for bit; an unseen sample's NaN equals NaN
            torch.testing.assert_close(actual[key], value, rtol=0, atol=0, equal_nan=True,
                                       msg=f"{what}.{key} differs")
        else:
            assert actual[key] == value, f"{what}.{key} differs"


class KeepCheckpoints:
    """Copies every checkpoint as it is written (the run itself keeps two generations)."""

    def __init__(self, folder):
        self.folder = folder
        folder.mkdir()

    def __call__(self, event):
        if event.kind == "checkpoint":
            shutil.copy(event.path, self.folder / f"{event.step}.pt")

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
    for part in ("ema", "hard_negatives"):
        if reference[part] is not None:
            assert_same_tensors(end[part], reference[part], part)


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


def test_train_groups_late_head_leaves_the_early_group_as_built(finished):
    *_, payload = finished("train_groups")
    torch.manual_seed(payload["config"]["seed"])  # what a fresh run seeds before building
    initial = build_model("tiny_cnn", len(payload["labels"]["attribute_ids"]), dropout=0.3)
    params = dict(initial.named_parameters())
    early = [k for k in params if k.startswith("early.")]
    assert early and all(torch.equal(payload["model"][k], params[k]) for k in early)
    late = [k for k in params if k.startswith("late.")]
    assert late and all(not torch.equal(payload["model"][k], params[k]) for k in late)
    groups = payload["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["late", "head"]  # stage 2's optimizer, no early


@pytest.mark.parametrize("flag, value, bad, names", [
    ("--optimizer", "rmsprop", "'rmsprop'", "choose one of adamw, sgd"),
    ("--train-groups", "late,body", "'body'", "the groups are early, late, head"),
    ("--preset", "squash", "'squash'", "choose one of pad, resize, seed"),
])
def test_unknown_choice_is_one_line_with_the_valid_names(mini_data, tmp_path, flag, value,
                                                        bad, names):
    argv = [sys.executable, "-m", "imet", "train", "--data", str(mini_data), "--out",
            str(tmp_path / "run"), "--arch", "tiny_cnn", "--no-pretrained", "--image-size", "32",
            "--batch-size", "8", "--notify", "off", "--device", "cpu", flag, value]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imet train: error: "), result.stderr
    assert bad in lines[0] and names in lines[0]


def test_pad_preset_keeps_the_whole_image_between_black_bars():
    wide = np.full((40, 80, 3), 200, np.uint8)
    for out in (build_train_transform("pad", 32)(wide, np.random.default_rng(0)),
                build_eval_transform(32, "pad")(image=wide)["image"]):
        assert out.shape == (32, 32, 3)
        assert (out[:8] == 0).all() and (out[-8:] == 0).all() and (out[8:24] == 200).all()


def test_erasing_fills_one_rectangle_per_erased_sample_on_the_device():
    spec = build_batch_augment("resize", 32, erasing=1.0)
    assert spec is not None and spec.p_flip == 0 and build_batch_augment("resize", 32) is None
    rows = [spec.draw(np.random.default_rng(seed), (3, 32, 32)) for seed in range(20)]
    assert all(row[ERASE_H] > 0 for row in rows)  # p = 1: every sample
    assert all(np.array_equal(np.delete(row, range(11, 16)), IDENTITY[:11]) for row in rows)
    images = torch.full((2, 3, 32, 32), 7, dtype=torch.uint8)
    out = augment_batch(images, torch.from_numpy(np.stack([rows[0], IDENTITY])))
    erased = out[0] != 7
    area = int(rows[0][ERASE_H] * rows[0][11 + 3])
    assert int(erased[0].sum()) == area and torch.equal(out[1], images[1].float())
    assert torch.allclose(out[0][erased], torch.tensor(rows[0][ERASE_FILL], dtype=torch.float32))
    # the seed preset's draws are unchanged by erasing being available but off
    seed_spec = build_batch_augment("seed", 32)
    with_erasing = build_batch_augment("seed", 32, erasing=1.0)
    plain = seed_spec.draw(np.random.default_rng(3), (3, 32, 32))
    erasing = with_erasing.draw(np.random.default_rng(3), (3, 32, 32))
    assert np.array_equal(plain[:11], erasing[:11]) and plain[ERASE_H] == 0 < erasing[ERASE_H]


def test_hard_negatives_repeat_the_largest_losses_of_the_epoch_before(finished):
    _, kept, payload = finished("hard_negatives")
    assert payload["counters"]["step"] == 15  # 3 epochs of (32 + 8) / 8 steps
    end_of_epoch_1 = kept.payload(10)["hard_negatives"]
    assert end_of_epoch_1["epoch"] == 1 and not end_of_epoch_1["losses"].isnan().any()
    top = torch.argsort(end_of_epoch_1["losses"], descending=True, stable=True)[:8]
    assert torch.equal(payload["hard_negatives"]["repeats"], top)
    assert payload["hard_negatives"]["epoch"] == 2


def test_an_epoch_with_repeats_sees_them_twice_in_a_seeded_order():
    def epoch(seed):
        sampler = EpochBatchSampler(32, 8, seed, repeat_count=8)
        sampler.set_position(1, 0, torch.tensor(REPEATS))
        return [i for batch in sampler for i in batch]
    REPEATS = [3, 9, 30, 31, 0, 1, 2, 4]
    order = epoch(5)
    assert len(order) == 40 and sorted(order) == sorted(list(range(32)) + REPEATS)
    assert epoch(5) == order != epoch(6)
    plain = EpochBatchSampler(32, 8, 5)
    with_none = EpochBatchSampler(32, 8, 5, repeat_count=0)
    assert list(plain) == list(with_none)
