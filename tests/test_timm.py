"""`--arch timm:<name>`: a timm body trains on CPU, resumes bit-identically, validates and
predicts; its pretrained weights are found offline in a Hugging Face cache layout under an input
root and loaded exactly; files of another arch, or truncated, are refused in one line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_resume import SignalAt, assert_same_end, final_payload, make_config

from imet.cli import main
from imet.errors import CheckpointError, UserError
from imet.models import build_model
from imet.models.modelfile import load_model_file
from imet.train.events import EventBus
from imet.train.loop import train

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

pytestmark = pytest.mark.usefixtures("one_thread")

ARCH = "timm:resnet18"
MODEL = "resnet18.a1_in1k"  # timm's default tag for resnet18
TIMM = dict(arch=ARCH, image_size=32)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_weight_caches(tmp_path, monkeypatch):
    """Empty torch and Hugging Face caches: nothing found by accident on this machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


@pytest.fixture(scope="module")
def reference(mini_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("timm-reference")
    result = train(make_config(mini_data, out, **TIMM), EventBus())
    assert result.status == "finished" and result.step == 12
    return out, final_payload(out)


def test_interrupted_timm_run_resumes_bit_identically(mini_data, tmp_path, reference):
    result = train(make_config(mini_data, tmp_path, **TIMM), EventBus([SignalAt("progress", 6)]))
    assert (result.status, result.step) == ("handover", 6)
    end = train(make_config(mini_data, tmp_path, **TIMM), EventBus())
    assert end.status == "finished"
    assert_same_end(final_payload(tmp_path), reference[1])


def test_two_stage_split_and_model_file_record_the_timm_body(reference):
    out, payload = reference
    assert [row["stage"] for row in payload["counters"]["history"]][:2] == [1, 1]
    names = [g["name"] for g in payload["optimizer"]["param_groups"]]
    assert names == ["early", "late", "head"]  # stage 2 trains every group at its own LR
    model, info = load_model_file(out / "model.pt")
    assert info["arch"] == ARCH and info["timm"]["model"] == MODEL
    assert info["timm"]["version"] == timm.__version__ and info["interpolation"] == "bicubic"
    groups = model.param_groups()
    assert [len(groups[k]) > 0 for k in ("early", "late", "head")] == [True] * 3
    early = {n for n, p in model.body.named_parameters() if any(p is q for q in groups["early"])}
    assert "conv1.weight" in early and "layer2.1.bn2.bias" in early
    assert not any(n.startswith(("layer3.", "layer4.")) for n in early)


def test_timm_run_validates_and_predicts(mini_data, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference[0], run)
    quiet = ["--num-workers", "0", "--log-every", "600"]
    assert main(["validate", "--data", str(mini_data), "--run", str(run), "--tta", "none",
                 "--min-support", "4", *quiet]) == 0
    assert (run / "thresholds.json").is_file()
    out = tmp_path / "sub" / "submission.csv"
    assert main(["predict", "--data", str(mini_data), "--runs", str(run), "--out", str(out),
                 *quiet]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "id,attribute_ids" and len(lines) == 1 + 24


def test_model_file_of_a_timm_model_this_timm_lacks_is_refused(reference, tmp_path):
    payload = torch.load(reference[0] / "model.pt", weights_only=True)
    payload["timm"] = dict(payload["timm"], model="resnet18.from_the_future", version="9.0")
    torch.save(payload, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"resnet18\.from_the_future.*install timm>=9\.0"):
        load_model_file(tmp_path / "model.pt")


def test_unknown_timm_name_gets_close_matches():
    with pytest.raises(UserError, match=r"no model 'resnt18'; close matches: resnet18"):
        build_model("timm:resnt18", 3)
    with pytest.raises(UserError, match=r"no pretrained tag 'nope'.*resnet18\.a1_in1k"):
        build_model("timm:resnet18.nope", 3)


def write_hub_cache(root: Path, state: dict, model: str = MODEL) -> Path:
    """`state` as the Hugging Face hub cache stores a timm model: blobs + a snapshot link."""
    repo = root / f"models--timm--{model}"
    blob = repo / "blobs" / "0123abcd"
    blob.parent.mkdir(parents=True)
    safetensors_torch.save_file(state, str(blob))
    snapshot = repo / "snapshots" / "fedcba9876543210"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(Path("..", "..", "blobs", blob.name))
    arch, _, tag = model.partition(".")
    (snapshot / "config.json").write_text(json.dumps(
        {"architecture": arch, "num_classes": 1000, "pretrained_cfg": {"tag": tag}}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    return snapshot / "model.safetensors"


def official_like_state(seed: int = 1) -> dict:
    """A resnet18 state dict in timm's layout (1000-class fc included), unlike a fresh init."""
    torch.manual_seed(seed)
    body = timm.create_model("resnet18", pretrained=False)
    return {k: v.contiguous() for k, v in body.state_dict().items()}


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                    reason="needs unshare -n as root to cut the network")
def test_stage_1_offline_keeps_every_body_parameter_of_the_hub_cache_file(mini_data, tmp_path):
    state = official_like_state()
    write_hub_cache(tmp_path / "input" / "models" / "me" / "hub", state)
    out = tmp_path / "run"
    argv = ["unshare", "-n", sys.executable, "-m", "imet", "train", "--data", str(mini_data),
            "--folds", str(mini_data / "folds.csv"), "--out", str(out), "--arch", ARCH,
            "--pretrained", "--input-root", str(tmp_path / "input"), "--image-size", "32",
            "--batch-size", "8", "--epochs", "1", "--head-epochs", "1", "--num-workers", "0",
            "--notify", "off", "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = torch.load(out / "model.pt", weights_only=True)
    body = {k[len("body."):]: v for k, v in saved["state_dict"].items() if k.startswith("body.")}
    params = dict(timm.create_model("resnet18", num_classes=0).named_parameters())
    assert params and set(params) <= set(body)
    for name in params:
        assert torch.equal(body[name], state[name]), name
    assert "fc.weight" not in body  # the 1000-class classifier was dropped for imet's head


def test_another_arch_and_a_truncated_file_are_refused_in_one_line(mini_data, tmp_path, capsys):
    other = tmp_path / "resnet34.safetensors"
    torch.manual_seed(0)
    safetensors_torch.save_file(timm.create_model("resnet34").state_dict(), str(other))
    with pytest.raises(CheckpointError, match=r"does not fit timm:resnet18: 96 unexpected") as err:
        build_model(ARCH, 3, weights=other)
    assert "\n" not in str(err.value)
    whole = tmp_path / "whole.safetensors"
    safetensors_torch.save_file(official_like_state(), str(whole))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: cannot read weights") as err:
        build_model(ARCH, 3, weights=cut)
    assert "\n" not in str(err.value)
    # Through the CLI: exit 2 and one line, no traceback.
    capsys.readouterr()
    assert main(["train", "--data", str(mini_data), "--folds", str(mini_data / "folds.csv"),
                 "--arch", ARCH, "--weights", str(cut), "--out", str(tmp_path / "o"),
                 "--batch-size", "8", "--image-size", "32", "--num-workers", "0", "--device", "cpu",
                 "--notify", "off"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cut.safetensors: cannot read weights" in err[0], err


def test_missing_weights_name_the_files_and_folders_searched(tmp_path):
    with pytest.raises(UserError) as err:
        build_model(ARCH, 3, pretrained=True, search_roots=[tmp_path / "input"],
                    allow_download=False)
    text = str(err.value)
    assert "models--timm--resnet18.a1_in1k/snapshots/*/model.safetensors" in text
    assert "resnet18.a1_in1k.safetensors" in text and str(tmp_path / "input") in text
    assert "hub" in text and "checkpoints" in text


def test_a_folder_holding_model_safetensors_and_its_config_is_found(tmp_path):
    state = official_like_state(2)
    folder = tmp_path / "input" / "datasets" / "me" / "r18"
    folder.mkdir(parents=True)
    safetensors_torch.save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(
        {"architecture": "resnet18", "pretrained_cfg": {"tag": "a1_in1k"}}))
    decoy = tmp_path / "input" / "datasets" / "me" / "a-other"  # sorted first, another model
    decoy.mkdir()
    (decoy / "model.safetensors").write_bytes(b"not this one")
    (decoy / "config.json").write_text(json.dumps({"architecture": "convnext_tiny"}))
    model = build_model(ARCH, 3, pretrained=True, search_roots=[tmp_path / "input"],
                        allow_download=False)
    assert model.info["weights"] == str(folder / "model.safetensors")
    assert torch.equal(model.body.conv1.weight, state["conv1.weight"])


def test_a_fixed_size_vit_takes_imets_image_size_and_splits_its_blocks():
    model = build_model("timm:vit_tiny_patch16_224", 3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 3)
    groups = model.param_groups()
    early = {n for n, p in model.body.named_parameters() if any(p is q for q in groups["early"])}
    assert {"patch_embed.proj.weight", "blocks.5.mlp.fc2.bias"} <= early
    assert not any(n.startswith(("blocks.6.", "blocks.11.", "norm.")) for n in early)
    assert model.info["mean"] == [0.5, 0.5, 0.5]  # its pretrained_cfg, not ImageNet's


# Where the weights dataset is mounted: today's Kaggle (nested), and older sessions (flat).
WEIGHTS_MOUNTS = {"nested": "datasets/me/imet-weights", "flat": "imet-weights"}


@pytest.mark.parametrize("layout", WEIGHTS_MOUNTS)
def test_the_weights_dataset_is_found_under_either_layout(tmp_path, layout):
    """Its timm hub cache (hub/models--timm--<name>/snapshots/<rev>/), and a folder holding
    model.safetensors and its config.json, found from the input root of either layout."""
    from imet.models.weights import resolve_weights
    root = tmp_path / "input"
    dataset = root / WEIGHTS_MOUNTS[layout]
    hub = write_hub_cache(dataset / "hub", official_like_state())
    assert resolve_weights(ARCH, search_roots=[root], allow_download=False) == hub
    shutil.rmtree(dataset / "hub")
    folder = dataset / MODEL
    folder.mkdir()
    safetensors_torch.save_file(official_like_state(2), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(
        {"architecture": "resnet18", "pretrained_cfg": {"tag": "a1_in1k"}}))
    assert resolve_weights(ARCH, search_roots=[root], allow_download=False) == \
        folder / "model.safetensors"
