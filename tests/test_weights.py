import functools
import http.server
import socket
import threading

import pytest
import torch
import torchvision

from imet.errors import CheckpointError, UserError
from imet.models import ImetNet, build_model
from imet.models.registry import ARCHS
from imet.models.weights import load_body_weights, read_state_dict, resolve_weights

R18 = "resnet18-f37072fd.pth"


@pytest.fixture(autouse=True)
def empty_torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def resnet18_body():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None)


@pytest.fixture(scope="module")
def base_state(resnet18_body):
    return {k: v.clone() for k, v in resnet18_body.state_dict().items()}


@pytest.fixture
def r18_state(base_state):
    """r18_state(k): a resnet18 state dict told apart from the others by k (building a fresh
    network per variant would cost seconds each)."""
    def make(k):
        return {key: (v + k if v.is_floating_point() else v.clone())
                for key, v in base_state.items()}
    return make


def _save(state, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_found_recursively_under_input_root_and_loaded(tmp_path, r18_state):
    state = r18_state(1)
    _save(state, tmp_path / "input" / "datasets" / "me" / "weights" / R18)
    model = build_model("resnet18", num_classes=5, pretrained=True,
                        search_roots=[tmp_path / "input"], allow_download=False)
    assert torch.equal(model.early[0].weight, state["conv1.weight"])  # conv1
    assert torch.equal(model.late[1][1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert model.head.linear.out_features == 5  # the 1000-class fc was dropped
    assert model.info["weights"].endswith(R18)


def test_search_order_explicit_then_hub_then_roots(tmp_path, empty_torch_home, r18_state):
    explicit = _save(r18_state(1), tmp_path / "mine" / "r18.pth")
    hub = _save(r18_state(2), empty_torch_home / "hub" / "checkpoints" / R18)
    root = _save(r18_state(3), tmp_path / "input" / R18)
    roots = [tmp_path / "input"]
    assert resolve_weights("resnet18", explicit=explicit, search_roots=roots) == explicit
    assert resolve_weights("resnet18", explicit=tmp_path / "mine", search_roots=roots) == hub
    assert resolve_weights("resnet18", search_roots=roots) == hub
    hub.unlink()
    assert resolve_weights("resnet18", search_roots=roots, allow_download=False) == root


def test_nothing_found_lists_every_place_searched(tmp_path, empty_torch_home):
    roots = [tmp_path / "a", tmp_path / "b"]
    roots[0].mkdir()
    with pytest.raises(UserError) as err:
        resolve_weights("resnet18", search_roots=roots, allow_download=False)
    message = str(err.value)
    assert "\n" not in message and R18 in message
    for place in [str(empty_torch_home / "hub" / "checkpoints"), f"{roots[0]} (recursive)",
                  f"{roots[1]} (does not exist)", "download disabled"]:
        assert place in message


def test_arch_without_pretrained_weights():
    with pytest.raises(UserError, match="tiny_cnn has no pretrained weights"):
        resolve_weights("tiny_cnn")


def test_missing_explicit_file_is_named(tmp_path):
    with pytest.raises(UserError, match="nowhere.pth: no such file"):
        resolve_weights("resnet18", explicit=tmp_path / "nowhere.pth")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mirror(tmp_path):
    """A stand-in download server on 127.0.0.1 serving tmp_path/"mirror"."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


def test_downloads_when_network_is_up(mirror, empty_torch_home):
    folder, url = mirror
    name = "se_resnext50_32x4d-a260b3a4.pth"
    (folder / name).write_bytes(b"weights" * 1000)
    path = resolve_weights("se_resnext50_32x4d", mirror=url)
    assert path == empty_torch_home / "hub" / "checkpoints" / name
    assert path.read_bytes() == (folder / name).read_bytes()


def test_download_with_wrong_hash_is_not_cached(mirror, empty_torch_home, r18_state):
    # download.pytorch.org names carry the file's sha256 prefix: a file that does not match
    # it is discarded instead of poisoning the cache.
    folder, url = mirror
    _save(r18_state(0), folder / R18)
    with pytest.raises(UserError, match=r"download from .* failed.*hash"):
        resolve_weights("resnet18", mirror=url)
    assert not any((empty_torch_home / "hub" / "checkpoints").glob("*.pth"))


def test_no_network_is_reported(tmp_path):
    mirror = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(UserError, match="no network to download"):
        resolve_weights("resnet18", mirror=mirror)


@pytest.fixture
def resnet18_load(resnet18_body, base_state):
    return lambda path: load_body_weights(resnet18_body, ARCHS["resnet18"], path)


def test_wrong_architecture_file_is_a_clear_error(tmp_path, resnet18_load):
    torch.manual_seed(0)
    other = torchvision.models.mobilenet_v3_small(weights=None).state_dict()
    path = _save(other, tmp_path / R18)
    with pytest.raises(CheckpointError, match=rf"{R18}: does not fit resnet18: .*missing"):
        resnet18_load(path)


def test_mismatched_shape_is_a_clear_error(tmp_path, r18_state, resnet18_load):
    state = r18_state(0)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = _save(state, tmp_path / R18)
    with pytest.raises(CheckpointError, match=r"layer1.0.conv1.weight: file \(64, 64, 1, 1\)"):
        resnet18_load(path)


def test_corrupt_and_unsafe_files_are_refused(tmp_path):
    corrupt = tmp_path / "corrupt" / R18
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=rf"{corrupt}: cannot read weights"):
        read_state_dict(corrupt)
    unsafe = _save({"conv1.weight": functools.partial(print, "pwned")}, tmp_path / "unsafe" / R18)
    with pytest.raises(CheckpointError, match="cannot read weights.*refused for safety"):
        read_state_dict(unsafe)


def test_nested_and_dataparallel_files_are_accepted(tmp_path, r18_state, resnet18_load,
                                                    resnet18_body):
    state = {"module." + k: v for k, v in r18_state(5).items()}
    path = _save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    resnet18_load(path)
    assert torch.equal(resnet18_body.conv1.weight, state["module.conv1.weight"])


def test_symlink_loop_in_input_root_does_not_hang(tmp_path, r18_state):
    root = tmp_path / "input"
    (root / "a").mkdir(parents=True)
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    _save(r18_state(0), root / "z" / R18)
    assert resolve_weights("resnet18", search_roots=[root], allow_download=False).name == R18


def test_densenet_file_with_legacy_key_names(tmp_path):
    # A DenseNet as small as possible: the key fixing and the split do not depend on depth.
    spec = ARCHS["densenet121"]
    torch.manual_seed(0)
    body = torchvision.models.DenseNet(growth_rate=4, block_config=(1, 1, 1, 1),
                                       num_init_features=8, bn_size=2)
    legacy = {}
    for key, value in body.state_dict().items():
        for part in ("norm1", "norm2", "conv1", "conv2", "relu1", "relu2"):
            key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        if not key.endswith("num_batches_tracked"):  # pre-0.4.1 files lack these buffers
            legacy[key] = value.clone()
    assert any(".norm.1." in k for k in legacy)
    path = _save(legacy, tmp_path / spec.filenames()[0])
    layer = body.features.denseblock3.denselayer1
    with torch.no_grad():
        layer.norm1.weight.zero_()
    load_body_weights(body, spec, path)
    assert torch.equal(layer.norm1.weight, legacy["features.denseblock3.denselayer1.norm.1.weight"])
    split = spec.split(body)
    model = ImetNet("densenet121", split.early, split.late, split.num_features, 3).eval()
    with torch.no_grad():  # the late group ends with DenseNet's final ReLU; any aspect works
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 3)
        assert (model.features(torch.randn(1, 3, 64, 64)) >= 0).all()


def test_se_resnext50_official_file_found_and_loaded(tmp_path):
    spec = ARCHS["se_resnext50_32x4d"]
    torch.manual_seed(0)
    body = spec.construct()  # the real architecture, built once (seconds)
    official = {k: v.clone() for k, v in body.state_dict().items()}
    _save(official, tmp_path / "input" / "pretrained" / "se_resnext50_32x4d-a260b3a4.pth")
    path = resolve_weights("se_resnext50_32x4d", search_roots=[tmp_path / "input"],
                           allow_download=False)
    assert path.name == "se_resnext50_32x4d-a260b3a4.pth"
    with torch.no_grad():
        for p in body.parameters():
            p.zero_()
    load_body_weights(body, spec, path)
    for key, value in body.state_dict().items():
        # the 1000-class classifier is not loaded: imet replaces it
        assert torch.equal(value, official[key]) != key.startswith("last_linear."), key
    split = spec.split(body)
    assert split.num_features == 2048
    assert [type(m).__name__ for m in split.late] == ["Sequential", "Sequential"]  # layer3, 4
