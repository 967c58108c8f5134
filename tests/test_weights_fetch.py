"""`imet weights fetch` against a stand-in Hugging Face hub and file host on 127.0.0.1, driven by
the real huggingface_hub client: interrupted mid-file it resumes, its folder is what the offline
resolver finds, and the real kaggle client uploads it (`kaggle datasets create`)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hub_standin import COMMIT, HubStandin
from kaggle_standin import KaggleStandin

from imet.cli import main
from imet.commands.misc import kernel_archs
from imet.kaggle.render import read_setting
from imet.models import build_model
from imet.models.weights import resolve_weights

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")
pytest.importorskip("huggingface_hub")

REPO = Path(__file__).resolve().parents[1]
HF_REPO = "timm/resnet18.a1_in1k"
TIMM_FILE = "resnet18.a1_in1k.safetensors"
SE_FILE = "se_resnext50_32x4d-a260b3a4.pth"  # pretrainedmodels' host has no hash convention


@pytest.fixture(scope="module")
def resnet18_bytes():
    torch.manual_seed(3)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    return safetensors_torch.save({k: v.contiguous() for k, v in state.items()}), state


def fetch_env(hub, tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(PYTHONPATH=str(REPO), HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_DISABLE_TELEMETRY="1", IMET_WEIGHTS_URL_BASE=hub.url + "/files",
               TORCH_HOME=str(tmp_path / "torch-home"), NO_PROXY="127.0.0.1")
    return env


def fetch_argv(out, *archs):
    return [sys.executable, "-m", "imet", "weights", "fetch", *archs, "--out", str(out),
            "--owner", "tester"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_interrupted_fetch_resumes_and_kaggle_accepts_the_folder(tmp_path, resnet18_bytes):
    data, state = resnet18_bytes
    se_data = os.urandom(300_000)
    out = tmp_path / "imet-weights"
    with HubStandin() as hub:
        hub.repos[HF_REPO] = {"model.safetensors": data}
        hub.files[SE_FILE] = se_data
        hub.stall["/files/" + SE_FILE] = 100_000
        env = fetch_env(hub, tmp_path)
        argv = fetch_argv(out, "timm:resnet18", "se_resnext50_32x4d")
        child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        part = out / ".download" / (SE_FILE + ".part")
        deadline = time.monotonic() + 120
        while not (hub.stalled.is_set() and part.is_file() and part.stat().st_size == 100_000):
            assert child.poll() is None and time.monotonic() < deadline, child.stdout.read()
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)  # a lost session: no chance to clean up
        child.wait(timeout=30)
        manifest = json.loads((out / "weights-manifest.json").read_text())
        assert set(manifest["files"]) == {TIMM_FILE}  # the first file was recorded when whole

        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "timm:resnet18: resnet18.a1_in1k.safetensors already fetched" in proc.stdout
        hf_path = f"/{HF_REPO}/resolve/main/model.safetensors"
        assert hub.gets(hf_path) == [None]  # not downloaded again
        assert hub.gets("/files/" + SE_FILE) == [None, "bytes=100000-"]  # continued

    manifest = json.loads((out / "weights-manifest.json").read_text())
    files = manifest["files"]
    assert files[TIMM_FILE]["sha256"] == sha(data) and files[SE_FILE]["sha256"] == sha(se_data)
    assert files[TIMM_FILE]["source"] == f"{hub.url}/{HF_REPO}/resolve/{COMMIT}/model.safetensors"
    assert files[SE_FILE]["source"] == f"{hub.url}/files/{SE_FILE}"
    assert files[SE_FILE]["arch"] == "se_resnext50_32x4d"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["dataset-metadata.json", "weights-manifest.json", TIMM_FILE, SE_FILE])
    assert json.loads((out / "dataset-metadata.json").read_text())["id"] == "tester/imet-weights"

    # Attached as an input, the folder is what the offline resolver looks for.
    model = build_model("timm:resnet18", 3, pretrained=True, search_roots=[tmp_path],
                        allow_download=False)
    assert torch.equal(model.body.conv1.weight, state["conv1.weight"])
    assert resolve_weights("se_resnext50_32x4d", search_roots=[tmp_path],
                           allow_download=False) == out / SE_FILE

    kaggle_cli = Path(sys.executable).parent / "kaggle"
    with KaggleStandin() as kaggle:
        env = {**os.environ, **kaggle.client_env(tmp_path / "kaggle-home")}
        proc = subprocess.run([str(kaggle_cli), "datasets", "create", "-p", str(out), "-q"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "error" not in proc.stdout.lower(), \
            proc.stdout + proc.stderr
    uploaded = kaggle.datasets["tester/imet-weights"]["versions"][0]["files"]
    assert {f["name"]: sha(f["data"]) for f in uploaded} == {
        TIMM_FILE: sha(data), SE_FILE: sha(se_data),
        "weights-manifest.json": sha((out / "weights-manifest.json").read_bytes())}


def test_a_mirror_file_that_fails_its_hash_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "w"
    with HubStandin() as hub:
        hub.files["resnet18-f37072fd.pth"] = b"not the official resnet18 file"
        code = main(["weights", "fetch", "resnet18", "--out", str(out), "--owner", "tester",
                     "--url-base", hub.url + "/files"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "sha256 does not start with f37072fd" in lines[0], lines
    assert not (out / "resnet18-f37072fd.pth").exists()
    assert not (out / "weights-manifest.json").exists()


def test_an_unknown_arch_is_refused_before_any_download(tmp_path, capsys):
    with HubStandin() as hub:
        code = main(["weights", "fetch", "resnet18", "timm:resnt18", "--out", str(tmp_path / "w"),
                     "--owner", "tester", "--url-base", hub.url + "/files"])
        assert hub.requests == []
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "close matches: resnet18" in err[0]
    assert not (tmp_path / "w").exists()


def template_arch() -> str:
    args = read_setting((REPO / "kernels" / "trainer" / "trainer.py").read_text(),
                        "DEFAULT_TRAIN_ARGS", "trainer.py")
    return args[args.index("--arch") + 1]


def test_with_no_arch_the_templates_default_comes_from_the_hub(tmp_path):
    """The trainer template trains a timm arch whose weights live on the Hugging Face hub (not
    pretrainedmodels' data.lip6.fr), and a bare `weights fetch` gets exactly its file."""
    arch = template_arch()
    assert arch == "timm:seresnext50_32x4d.racm_in1k"
    data = safetensors_torch.save({"stand-in": torch.zeros(4)})
    out = tmp_path / "imet-weights"
    with HubStandin() as hub:
        hub.repos["timm/seresnext50_32x4d.racm_in1k"] = {"model.safetensors": data}
        proc = subprocess.run(fetch_argv(out), env=fetch_env(hub, tmp_path), cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not [r for r in hub.requests if r[1].startswith("/files/")]  # no other host
    (entry,) = json.loads((out / "weights-manifest.json").read_text())["files"].values()
    assert entry["arch"] == arch and entry["name"] == "seresnext50_32x4d.racm_in1k.safetensors"
    assert entry["source"] == (f"{hub.url}/timm/seresnext50_32x4d.racm_in1k/resolve/{COMMIT}/"
                               "model.safetensors")
    assert entry["sha256"] == sha(data)


def test_with_a_config_the_members_archs_are_fetched(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('train_args = ["--image-size", "320"]\n'
                      '[[member]]\nfold = 0\n'
                      '[[member]]\nname = "b3-f1"\nfold = 1\narch = "timm:efficientnet_b3.ra2_in1k"\n'
                      '[[member]]\nname = "cnn"\nfold = 2\narch = "resnet18"\n'
                      'args = ["--no-pretrained"]\n')
    # Members without --arch train TrainConfig's; --no-pretrained ones need no weights.
    assert kernel_archs(REPO / "kernels", config) == ["se_resnext50_32x4d",
                                                       "timm:efficientnet_b3.ra2_in1k"]
    assert kernel_archs(REPO / "kernels", None) == [template_arch()]
    code = main(["weights", "fetch", "resnet18", "--config", str(config), "--out",
                 str(tmp_path / "w"), "--owner", "tester"])
    assert code == 2 and "give ARCH names or --config, not both" in capsys.readouterr().err
    code = main(["weights", "fetch", "--kernels", str(tmp_path), "--out", str(tmp_path / "w"),
                 "--owner", "tester"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "holds no trainer template" in err[0]
    assert not (tmp_path / "w").exists()
