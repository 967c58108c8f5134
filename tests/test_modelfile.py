import functools

import numpy as np
import pytest
import torch

from imet.data.labels import LabelSpace
from imet.errors import CheckpointError
from imet.models import build_model
from imet.models.modelfile import load_model_file, save_model_file

LABELS = LabelSpace((3, 7, 11, 20), ("culture::a", "culture::b", "tag::x", "tag::y"))
CONFIG = {"arch": "mobilenet_v3_small", "image_size": 32, "dropout": 0.2, "lr": 1e-3}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model("mobilenet_v3_small", LABELS.num_classes, dropout=0.2)
    with torch.no_grad():  # BatchNorm statistics must travel too
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
    return net.eval()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "model.pt"
    save_model_file(path, model, "mobilenet_v3_small", CONFIG, LABELS, {"best_f2": 0.5, "step": 40})
    return path


def test_roundtrip_same_predictions_and_info(model, saved):
    loaded, info = load_model_file(saved)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not loaded.training
    assert info["arch"] == "mobilenet_v3_small" and info["config"] == CONFIG
    assert info["labels"] == LABELS and info["extra"] == {"best_f2": 0.5, "step": 40}
    assert info["mean"] == [0.485, 0.456, 0.406] and info["path"] == str(saved)
    assert loaded.head.dropout.p == 0.2


def test_file_is_plain_data_loadable_with_weights_only(saved):
    payload = torch.load(saved, weights_only=True)
    assert payload["format"] == "imet-model" and payload["version"] == 1
    assert payload["labels"] == LABELS.to_dict()
    assert set(payload) == {"format", "version", "arch", "config", "labels", "state_dict", "extra"}
    assert all(t.device.type == "cpu" for t in payload["state_dict"].values())
    assert [p.name for p in saved.parent.iterdir()] == ["model.pt"]  # no temp files left


def test_wrappers_are_unwrapped(model, tmp_path):
    path = save_model_file(tmp_path / "m.pt", torch.nn.DataParallel(model), "mobilenet_v3_small",
                           CONFIG, LABELS)
    keys = torch.load(path, weights_only=True)["state_dict"]
    assert not any(k.startswith("module.") for k in keys)
    load_model_file(path)


def test_failed_save_keeps_the_previous_file(model, saved, tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(saved.read_bytes())
    before = target.read_bytes()
    with pytest.raises(TypeError, match=r"config.opt\[1\] holds a function"):
        save_model_file(target, model, "mobilenet_v3_small", {"opt": [1, lambda: 0]}, LABELS)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_config_values_are_stored_as_plain_data(model, tmp_path):
    config = {"data": tmp_path / "data", "sizes": (32, 64), "lr": np.float64(0.5),
              "steps": torch.tensor(3)}
    path = save_model_file(tmp_path / "m.pt", model, "mobilenet_v3_small", config, LABELS)
    _, info = load_model_file(path)
    assert info["config"] == {"data": str(tmp_path / "data"), "sizes": [32, 64], "lr": 0.5,
                              "steps": 3}


def test_label_count_mismatch_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="4 outputs"):
        save_model_file(tmp_path / "m.pt", model, "mobilenet_v3_small", CONFIG,
                        LabelSpace((1, 2), ("tag::a", "tag::b")))


def _assert_one_line(err, path, text):
    message = str(err.value)
    assert "\n" not in message and str(path) in message and text in message


def test_foreign_torch_file(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}, "epoch": 3}, path)
    with pytest.raises(CheckpointError) as err:
        load_model_file(path)
    _assert_one_line(err, path, "not an imet model file")


@pytest.mark.parametrize("content", [b"", b"garbage bytes", None])
def test_corrupt_files(saved, tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(saved.read_bytes()[:5000] if content is None else content)
    with pytest.raises(CheckpointError) as err:
        load_model_file(path)
    _assert_one_line(err, path, "not an imet model file or corrupt")


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "imet-model", "hook": functools.partial(print, "pwned")}, path)
    with pytest.raises(CheckpointError) as err:
        load_model_file(path)
    _assert_one_line(err, path, "refused for safety")


def test_missing_file_version_and_arch(saved, tmp_path):
    with pytest.raises(CheckpointError, match="model file not found"):
        load_model_file(tmp_path / "none.pt")
    payload = torch.load(saved, weights_only=True)
    for change, text in [({"version": 9}, "version 9"), ({"arch": "resnet9000"}, "'resnet9000'"),
                         ({"state_dict": {}}, "do not fit")]:
        path = tmp_path / "changed.pt"
        torch.save({**payload, **change}, path)
        with pytest.raises(CheckpointError) as err:
            load_model_file(path)
        _assert_one_line(err, path, text)
