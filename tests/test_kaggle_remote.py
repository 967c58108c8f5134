"""Kernels on real Kaggle, through the real kaggle client, against the stand-in API server:
`kaggle kernels push` of the rendered kernels, and `imet kaggle chain` (push, wait, fetch the
small outputs, push again while the run hands over)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kaggle_standin import USER, KaggleStandin

REPO = Path(__file__).resolve().parents[1]
KAGGLE = str(Path(sys.executable).parent / "kaggle")
TRAINER = f"{USER}/imet-trainer-f0"
FOLDS = [f"{USER}/imet-trainer-f{k}" for k in range(5)]


def render(out, *extra):
    return subprocess.run([sys.executable, "-m", "imet", "kaggle", "render", "--owner", USER,
                           "--kernels", str(REPO / "kernels"), "--out", str(out), *extra],
                          capture_output=True, text=True, cwd=REPO)


@pytest.fixture
def rendered(tmp_path):
    out = tmp_path / "dist" / "kernels"
    proc = render(out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def standin():
    with KaggleStandin() as server:
        yield server


def client(standin, tmp_path, *args, cwd=None):
    env = {**os.environ, **standin.client_env(tmp_path / "home")}
    return subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=120,
                          cwd=cwd)


SOURCES = {"trainer-f3": [f"{USER}/imet-trainer-f3"], "validation": FOLDS,
           "inference": FOLDS + [f"{USER}/imet-validation"]}


@pytest.mark.parametrize("kernel", ["trainer-f3", "validation", "inference"])
def test_real_client_pushes_the_rendered_kernels(standin, rendered, tmp_path, kernel):
    proc = client(standin, tmp_path, KAGGLE, "kernels", "push", "-p", str(rendered / kernel))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (body,) = standin.kernels[f"{USER}/imet-{kernel}"]
    script = kernel.split("-")[0]
    assert body["language"] == "python" and body["kernelType"] == "script"
    assert body["isPrivate"] is True and body["enableGpu"] is True
    assert body["machineShape"] == "NvidiaTeslaT4"
    assert body["enableInternet"] is (kernel != "inference")
    assert body["datasetDataSources"] == [f"{USER}/imet-src", f"{USER}/imet-weights"]
    assert body["competitionDataSources"] == ["imet-2019-fgvc6"]
    assert body["kernelDataSources"] == SOURCES[kernel]
    assert body["text"] == (rendered / kernel / f"{script}.py").read_text()
    assert "ACCELERATOR = 'NvidiaTeslaT4'" in body["text"]
    # Every session of a training run gets its first session's image (the client accepts
    # "original" or "latest"); the evaluation kernels take the image of the day.
    pinned = body.get("dockerImagePinningType")
    assert pinned == ("original" if kernel.startswith("trainer") else None), pinned


def test_render_accelerator_for_all_and_per_kernel(standin, tmp_path):
    out = tmp_path / "k"
    proc = render(out, "--accelerator", "nvidial4", "--accelerator", "inference=none")
    assert proc.returncode == 0, proc.stderr
    for kernel in ("trainer-f0", "inference"):
        pushed = client(standin, tmp_path, KAGGLE, "kernels", "push", "-p", str(out / kernel))
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    (trainer,) = standin.kernels[TRAINER]
    assert trainer["machineShape"] == "NvidiaL4" and trainer["enableGpu"] is True
    assert "ACCELERATOR = 'NvidiaL4'" in trainer["text"]
    (inference,) = standin.kernels[f"{USER}/imet-inference"]
    assert not inference.get("machineShape") and not inference.get("enableGpu")
    assert "ACCELERATOR = 'none'" in inference["text"]


def test_render_warns_of_a_retired_shape_and_refuses_an_unknown_one(tmp_path):
    proc = render(tmp_path / "k", "--accelerator", "NvidiaTeslaP100")
    assert proc.returncode == 0, proc.stderr
    (warning,) = proc.stderr.strip().splitlines()
    assert "NvidiaTeslaP100 is retired" in warning and "NvidiaTeslaT4" in warning
    meta = json.loads((tmp_path / "k" / "trainer-f0" / "kernel-metadata.json").read_text())
    assert meta["machine_shape"] == "NvidiaTeslaP100"  # pushed as asked, as the client does
    for bad in ("K80", "trainer=", "predictor=NvidiaL4"):
        proc = render(tmp_path / "bad", "--accelerator", bad)
        (line,) = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and line.startswith("imet kaggle: error: --accelerator")
    assert "NvidiaTeslaT4" in render(tmp_path / "bad", "--accelerator", "K80").stderr


def chain(standin, tmp_path, rendered, *extra):
    return client(standin, tmp_path, sys.executable, "-m", "imet", "kaggle", "chain",
                  str(rendered / "trainer-f0"), "--poll", "0.05", "--out", str(tmp_path / "chain"),
                  *extra)


HANDOVER = json.dumps({"status": "handover", "step": 100}).encode()
CHECKPOINT = b"\0" * 4096


def test_chain_pushes_again_while_the_run_hands_over(standin, rendered, tmp_path):
    standin.sessions[TRAINER] = [
        {"files": {"HANDOVER.json": HANDOVER, "run.json": b'{"status": "handover"}',
                   "checkpoints/state-100.pt": CHECKPOINT}},
        {"files": {"HANDOVER.json": HANDOVER, "run.json": b'{"status": "handover"}'}},
        {"files": {"run.json": b'{"status": "finished"}', "metrics.csv": b"step,f2\n",
                   "imet-runs.jsonl": b'{"run_id": "r"}\n'}},
    ]
    proc = chain(standin, tmp_path, rendered, "--max-sessions", "5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(standin.kernels[TRAINER]) == 3
    metadata = json.loads((rendered / "trainer-f0" / "kernel-metadata.json").read_text())
    script = (rendered / "trainer-f0" / "trainer.py").read_text()
    for body in standin.kernels[TRAINER]:  # exactly what render wrote, every session
        assert body["machineShape"] == metadata["machine_shape"] == "NvidiaTeslaT4"
        assert body["text"] == script and body["enableGpu"] is metadata["enable_gpu"]
    out = tmp_path / "chain"
    assert (out / "v1" / "HANDOVER.json").is_file() and not (out / "v3" / "HANDOVER.json").exists()
    assert json.loads((out / "v3" / "run.json").read_text())["status"] == "finished"
    assert (out / "v3" / "imet-runs.jsonl").is_file(), "the run registry comes back"
    assert not (out / "v1" / "checkpoints").exists(), "checkpoints stay on Kaggle"
    assert "the run finished" in proc.stdout


def test_chain_stops_on_a_failed_session(standin, rendered, tmp_path):
    standin.sessions[TRAINER] = [{"status": "ERROR", "failure": "CUDA out of memory"}]
    proc = chain(standin, tmp_path, rendered)
    assert proc.returncode == 1
    assert "error: CUDA out of memory" in proc.stdout
    assert len(standin.kernels[TRAINER]) == 1


def test_chain_gives_up_after_max_sessions(standin, rendered, tmp_path):
    standin.sessions[TRAINER] = [{"files": {"HANDOVER.json": HANDOVER}}] * 2
    proc = chain(standin, tmp_path, rendered, "--max-sessions", "2")
    assert proc.returncode == 75 and "still hands over after 2 sessions" in proc.stdout


def test_chain_refuses_an_unrendered_template(standin, tmp_path):
    proc = client(standin, tmp_path, sys.executable, "-m", "imet", "kaggle", "chain",
                  str(REPO / "kernels" / "trainer"))
    assert proc.returncode == 2 and "render" in proc.stderr and "Traceback" not in proc.stderr
    assert standin.kernels == {}


def test_a_chain_reads_only_its_own_sessions_outputs(standin, rendered, tmp_path):
    """Each kernel's chain has its own folder by default (dist/chain/<slug>), and a version's
    folder is emptied before its output is fetched: neither another kernel's chain nor an
    earlier chain of the same kernel leaves a HANDOVER.json that pushes a session nobody
    needs."""
    other = f"{USER}/imet-trainer-f1"
    standin.sessions[other] = [{"files": {"HANDOVER.json": HANDOVER}},
                               {"files": {"run.json": b'{"status": "finished"}'}}]
    standin.sessions[TRAINER] = [{"files": {"run.json": b'{"status": "finished"}'}}] * 2
    for kernel in ("trainer-f1", "trainer-f0", "trainer-f0"):
        proc = client(standin, tmp_path, sys.executable, "-m", "imet", "kaggle", "chain",
                      str(rendered / kernel), "--poll", "0.05", cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(standin.kernels[other]) == 2 and len(standin.kernels[TRAINER]) == 2
    out = tmp_path / "dist" / "chain"
    assert sorted(p.name for p in out.iterdir()) == ["imet-trainer-f0", "imet-trainer-f1"]
    assert (out / "imet-trainer-f1" / "v1" / "HANDOVER.json").is_file()
    assert not (out / "imet-trainer-f0" / "v1" / "HANDOVER.json").exists()
    # The same folder for two chains: the second's v1 holds only its own session's files.
    standin.sessions[TRAINER].append({"files": {"run.json": b'{"status": "finished"}'}})
    proc = client(standin, tmp_path, sys.executable, "-m", "imet", "kaggle", "chain",
                  str(rendered / "trainer-f0"), "--poll", "0.05", "--out",
                  str(out / "imet-trainer-f1"), cwd=tmp_path)
    assert proc.returncode == 0 and len(standin.kernels[TRAINER]) == 3, proc.stdout
    assert sorted(p.name for p in (out / "imet-trainer-f1" / "v1").iterdir()) == ["run.json"]


def test_a_trainers_first_push_leaves_its_own_output_out(standin, rendered, tmp_path):
    """A kernel that does not exist yet has no output to attach: chain's first push leaves its
    own slug out of kernel_sources; once it exists, the folder as render wrote it goes, by
    chain or by hand, exactly as render's output and the README say."""
    standin.sessions[TRAINER] = [{"files": {"HANDOVER.json": HANDOVER}}] * 3
    proc = chain(standin, tmp_path, rendered, "--max-sessions", "1")
    assert proc.returncode == 75, proc.stdout + proc.stderr
    assert "has no version yet" in proc.stdout
    by_hand = client(standin, tmp_path, KAGGLE, "kernels", "push", "-p",
                     str(rendered / "trainer-f0"))
    assert by_hand.returncode == 0 and "not valid kernel sources" not in by_hand.stdout
    assert chain(standin, tmp_path, rendered, "--max-sessions", "1").returncode == 75
    sources = [body.get("kernelDataSources", []) for body in standin.kernels[TRAINER]]
    assert sources == [[], [TRAINER], [TRAINER]]
    scripts = {body["text"] for body in standin.kernels[TRAINER]}
    assert scripts == {(rendered / "trainer-f0" / "trainer.py").read_text()}
    # Pushed by hand the very first time, Kaggle attaches no output and says so.
    first = client(standin, tmp_path, KAGGLE, "kernels", "push", "-p",
                   str(rendered / "trainer-f1"))
    assert first.returncode == 0 and "not valid kernel sources" in first.stdout


TELEGRAM = f"{USER}/imet-telegram"


def telegram_dataset(standin, private=True, files=("imet-telegram.json",)):
    standin.datasets[TELEGRAM] = {"private": private, "versions": [
        {"notes": "imet notify-setup", "files": [{"name": name, "data": b"{}"} for name in files]}]}


def test_chain_pushes_a_telegram_kernel_only_once_kaggle_says_its_dataset_is_private(
        standin, tmp_path):
    """Rendered with `telegram = true`, the trainer attaches <owner>/imet-telegram; before any
    push chain asks Kaggle (the real client: GetDataset, ListDatasetFiles) that it exists, is
    private and holds the file. A missing, public or empty one is one line naming it and the
    command that writes it; nothing is pushed or written."""
    config = tmp_path / "run.toml"
    config.write_text("telegram = true\n[[member]]\nfold = 0\n")
    rendered = tmp_path / "dist" / "kernels"
    assert render(rendered, "--config", str(config)).returncode == 0
    fix = f"`python -m imet notify-setup --owner {USER}`"
    for setup, said in ((lambda: None, "Kaggle has no such dataset"),
                        (lambda: telegram_dataset(standin, private=False), "is public"),
                        (lambda: telegram_dataset(standin, files=("notes.txt",)),
                         "has no imet-telegram.json")):
        setup()
        proc = chain(standin, tmp_path, rendered)
        (line,) = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and said in line and TELEGRAM in line and fix in line, line
        assert standin.kernels == {} and not (tmp_path / "chain").exists()
    telegram_dataset(standin)
    standin.sessions[TRAINER] = [{"files": {"run.json": b'{"status": "finished"}'}}]
    proc = chain(standin, tmp_path, rendered)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (body,) = standin.kernels[TRAINER]
    assert body["datasetDataSources"] == [f"{USER}/imet-src", f"{USER}/imet-weights", TELEGRAM]
