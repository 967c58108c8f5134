"""Fine-tuning saved pretrained weights (not a fresh init: every tensor, BatchNorm statistics
included, moved off timm's init), found offline in the hub-cache layout under an input root:
stage 1 trains the head only and leaves every body tensor and BatchNorm statistic bit-identical;
stage 2 gives the body groups the declared fractions of the head's LR; a run interrupted in
stage 1 or in stage 2 resumes bit-identically."""
from __future__ import annotations

import pytest
import torch
from test_resume import SignalAt, assert_same_end, final_payload, make_config
from test_timm import write_hub_cache

from imet.config import WRITEUP_DEFAULTS, TrainConfig
from imet.train.checkpoint import checkpoint_dir, list_generations
from imet.train.events import EventBus
from imet.train.loop import train

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = "test_resnet.r160_in1k"
# mini_data: 32 training images / 8 = 4 steps per epoch; stage 1 is steps 1-4, stage 2 5-12.
# Discriminative LRs as the write-ups' recipe sets them (the defaults train every group at one).
PRETRAINED = dict(arch="timm:test_resnet", pretrained=True, image_size=32, preset="resize",
                  mixup_alpha=0.0, lr_early_mult=0.1, lr_late_mult=0.3)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """(input root, the file's tensors): a test_resnet whose weights, BatchNorm affine and
    running statistics all differ from any fresh init."""
    torch.manual_seed(3)
    state = timm.create_model("test_resnet", num_classes=10).state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            state[key] = torch.rand_like(value) + 0.5
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        else:
            state[key] = value + 0.05 * torch.randn_like(value)
    state = {k: v.contiguous() for k, v in state.items()}
    root = tmp_path_factory.mktemp("pretrained")
    write_hub_cache(root / "datasets" / "me" / "hub", state, MODEL)
    with pytest.MonkeyPatch.context() as patch:  # no cache of this machine found by accident
        patch.setenv("HF_HOME", str(root / "hf-home"))
        patch.setenv("TORCH_HOME", str(root / "torch-home"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.delenv("HF_HUB_CACHE", raising=False)
        yield root, state


def config(mini_data, out, weights, **overrides) -> TrainConfig:
    return make_config(mini_data, out, **PRETRAINED, input_root=[str(weights[0])], **overrides)


@pytest.fixture(scope="module")
def reference(mini_data, tmp_path_factory, weights):
    out = tmp_path_factory.mktemp("transfer-reference")
    result = train(config(mini_data, out, weights), EventBus())
    assert result.status == "finished" and result.step == 12
    return final_payload(out)


def body_after_stage_1(mini_data, out, weights, **overrides) -> dict:
    result = train(config(mini_data, out, weights, session_steps=4, **overrides), EventBus())
    assert (result.status, result.step) == ("handover", 4)
    (step, path), *_ = list_generations(checkpoint_dir(out))
    model = torch.load(path, map_location="cpu", weights_only=True)["model"]
    return {k[len("body."):]: v for k, v in model.items() if k.startswith("body.")}, model


def test_stage_1_leaves_every_body_tensor_and_batchnorm_statistic_as_loaded(mini_data, tmp_path,
                                                                           weights):
    body, model = body_after_stage_1(mini_data, tmp_path / "run", weights)
    state = weights[1]
    expected = {k: v for k, v in state.items() if not k.startswith("fc.")}
    assert set(body) == set(expected)
    assert any(k.endswith("running_mean") for k in body)
    for key, value in expected.items():
        assert torch.equal(body[key], value), key
    head = [v for k, v in model.items() if k.startswith("head.")]
    assert head and all(torch.isfinite(v).all() for v in head)
    # The statistics are kept by --frozen-bn stage1, not by chance: with it off they follow the
    # target's batches while the parameters stay frozen.
    body_off, _ = body_after_stage_1(mini_data, tmp_path / "off", weights, frozen_bn="off")
    moved = [k for k in expected if not torch.equal(body_off[k], expected[k])]
    assert moved and all(k.rsplit(".", 1)[1] in ("running_mean", "running_var",
                                                 "num_batches_tracked") for k in moved)


def test_stage_2_body_rates_are_the_declared_fractions_of_the_heads(reference, mini_data,
                                                                     tmp_path, weights):
    declared = config(mini_data, tmp_path, weights)
    groups = {g["name"]: g for g in reference["optimizer"]["param_groups"]}
    assert list(groups) == ["early", "late", "head"]
    head = groups["head"]["max_lr"]
    assert head == pytest.approx(declared.lr)
    assert groups["late"]["max_lr"] == pytest.approx(declared.lr_late_mult * head)
    assert groups["early"]["max_lr"] == pytest.approx(declared.lr_early_mult * head)
    assert declared.lr_early_mult < declared.lr_late_mult < 1
    # --frozen-bn all keeps the pretrained statistics through stage 2 as well.
    out = tmp_path / "all"
    assert train(config(mini_data, out, weights, frozen_bn="all", epochs=2), EventBus()).status \
        == "finished"
    body = {k[len("body."):]: v for k, v in final_payload(out)["model"].items()
            if k.startswith("body.")}
    stats = [k for k in body if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(body[k], weights[1][k]) for k in stats)
    assert not torch.equal(body["conv1.0.weight"], weights[1]["conv1.0.weight"])  # trained


@pytest.mark.parametrize("stop_at", [2, 7], ids=["mid-stage-1", "mid-stage-2"])
def test_resume_in_either_stage_is_bit_identical(mini_data, tmp_path, weights, reference,
                                                 stop_at):
    result = train(config(mini_data, tmp_path, weights),
                   EventBus([SignalAt("progress", stop_at)]))
    assert (result.status, result.step) == ("handover", stop_at)
    assert train(config(mini_data, tmp_path, weights), EventBus()).status == "finished"
    assert_same_end(final_payload(tmp_path), reference)


@pytest.mark.parametrize("overrides", [{"frozen_bn": "all"},
                                       {**WRITEUP_DEFAULTS, "recipe": "writeup"}],
                         ids=["frozen-bn-all", "recipe-writeup"])
def test_resume_with_frozen_bn_all_or_the_writeup_recipe_is_bit_identical(mini_data, tmp_path,
                                                                          weights, overrides):
    """--frozen-bn all (eval-mode BatchNorm in stage 2 too) and --recipe writeup (its LR,
    multipliers, preset seed and no prior bias) stopped mid-stage-2 and resumed end as the
    uninterrupted run does."""
    def run(out, bus):
        settings = {**PRETRAINED, "input_root": [str(weights[0])], **overrides}
        return train(make_config(mini_data, out, **settings), bus)

    assert run(tmp_path / "whole", EventBus()).status == "finished"
    result = run(tmp_path / "run", EventBus([SignalAt("progress", 7)]))
    assert (result.status, result.step) == ("handover", 7)
    assert run(tmp_path / "run", EventBus()).status == "finished"
    assert_same_end(final_payload(tmp_path / "run"), final_payload(tmp_path / "whole"))


def test_writeup_recipe_restores_the_write_ups_defaults_and_flags_win():
    from imet.config import WRITEUP_DEFAULTS

    assert WRITEUP_DEFAULTS  # the measured defaults differ from the write-ups' somewhere
    imet = TrainConfig.from_dict({})
    writeup = TrainConfig.from_dict({"recipe": "writeup"})
    for name, value in WRITEUP_DEFAULTS.items():
        assert getattr(writeup, name) == value != getattr(imet, name), name
    told = TrainConfig.from_dict({"recipe": "writeup", "lr": 1e-4})
    assert told.lr == 1e-4
    with pytest.raises(Exception, match="--recipe must be one of imet, writeup"):
        TrainConfig.from_dict({"recipe": "kaggle"})
