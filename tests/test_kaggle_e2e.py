"""The Kaggle flow end to end in the local emulator: the real kernel scripts, the real
bootstrap from a built source dataset, the real commands.

Trainer sessions hand over (`--session-steps`, which stops a session exactly as a spent time
budget does, but at a step this test can rely on whatever the machine's speed); each next
session, with the previous output attached as Kaggle's kernel_sources would, resumes, and the
chain ends with a model equal, tensor for tensor, to an uninterrupted run. The time limit
itself is tested in test_emulator.py and the budget in test_resume.py. The inference kernel runs
with no network. The inputs are mounted nested, as today's Kaggle does; the last trainer
session, validation and inference (once more), and two of the missing-input sessions, run in
the flat layout of older sessions."""
import csv
import getpass
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from telegram_standin import TelegramStandin

from imet.kaggle.campaign.emulated import run_chain
from imet.kaggle.emulator import run_session

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0, reason="the emulator's isolation needs root")]

REPO = Path(__file__).resolve().parents[1]
KERNELS = REPO / "kernels"
TRAIN_ARGS = ("--arch tiny_cnn --no-pretrained --image-size 32 --batch-size 4 --epochs 10 "
              "--head-epochs 1 --patience 1000 --lr 3e-3 --head-lr 3e-3 --num-workers 0 --margin 20s "
              "--progress-every-s 5 --notify off")
EVAL_ARGS = "--tta none,hflip --batch-size 16 --num-workers 0"


def env(args):
    return {"IMET_KERNEL_ARGS": args, "IMET_TELEGRAM_TOKEN": ""}


def state_dict(run_dir: Path) -> dict:
    return torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)["state_dict"]


# The Telegram settings the two chained sessions are pushed with, as a kernel's Kaggle Secrets.
SECRETS = {"IMET_TELEGRAM_TOKEN": "444555666:AAEpushedVersionsHaveNoSecrets_0123",
           "IMET_TELEGRAM_CHAT_ID": "5"}


@pytest.fixture(scope="module")
def trained(mini_data, local_dataset, tmp_path_factory):
    """The trainer over sessions of 50 steps each (120 steps in all): two chained with their
    inputs nested as today's Kaggle mounts them, then the third, with the second's output
    attached, in the flat layout of older sessions (both layouts, no extra session). The
    chained ones ask for Telegram (--notify auto) with SECRETS bound; pushed, they have none."""
    out = tmp_path_factory.mktemp("kaggle") / "trainer"
    inputs = {"imet-2019-fgvc6": mini_data, "imet-src": local_dataset}
    args = env(TRAIN_ARGS + " --session-steps 50")
    pushed = {"IMET_KERNEL_ARGS": args["IMET_KERNEL_ARGS"] + " --notify auto", **SECRETS}
    chained = run_chain(KERNELS / "trainer", inputs, out, 600, 2, pushed, accelerator="none")
    last = run_session(KERNELS / "trainer", {**inputs, "imet-trainer": chained[-1].output}, out,
                       3, 600, args, accelerator="none", layout="flat")
    return [*chained, last]


def test_trainer_sessions_chain_to_the_uninterrupted_model(trained, mini_data, tmp_path):
    assert [r.version for r in trained] == [1, 2, 3]
    for session in trained[:-1]:
        assert session.ok and session.handover["reason"] == "session-steps", \
            session.log.read_text()[-3000:]
    last = trained[-1]
    assert last.ok and last.handover is None, last.log.read_text()[-3000:]
    # Ten epochs pay back the image cache: every session built it in its scratch folder and
    # read it (the same JPEG bytes the reference run's own cache holds), none carried it.
    for session in trained:
        log = session.log.read_text()
        assert "image cache: building one" in log or "chose in its first session to build" in log
        assert f"reading images from ImageCache('{session.output.parent / 'temp' / 'imet-cache-32'}'" in log
        assert not list(session.output.rglob("imet-cache.json"))
    cache = tmp_path / "cache"
    subprocess.run([sys.executable, "-m", "imet", "cache", "--data", str(mini_data), "--size",
                    "32", "--split", "train", "--out", str(cache), "--no-progress"], check=True,
                   capture_output=True)
    reference = tmp_path / "reference"
    proc = subprocess.run([sys.executable, "-m", "imet", "train", "--data", str(mini_data),
                           "--folds", str(last.output / "folds.csv"), "--out", str(reference),
                           *TRAIN_ARGS.split()], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "IMET_CACHE_DIR": str(cache)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed, single = state_dict(last.output), state_dict(reference)
    assert resumed.keys() == single.keys()
    assert all(torch.equal(resumed[k], single[k]) for k in single)
    ours = json.loads((last.output / "run.json").read_text())
    theirs = json.loads((reference / "run.json").read_text())
    assert ours["best_f2"] == theirs["best_f2"] and ours["best_step"] == theirs["best_step"]
    assert len(ours["sessions"]) == 3


def test_pushed_sessions_have_no_secrets_and_say_first_that_telegram_is_off_and_why(trained):
    """As on Kaggle, where a push drops the kernel's secret bindings: each pushed session's
    doctor and its training's first line say that notifications are off and why (no token,
    and where it goes: a secret, or the imet-telegram dataset), run.json records it, and the
    token is in no file."""
    why = "IMET_TELEGRAM_TOKEN is not set: "
    summary = json.loads((trained[-1].output / "run.json").read_text())
    for number, session in enumerate(trained[:2], 1):
        log = session.log.read_text()
        train = log[log.index("-m imet train "):]
        assert f"{'telegram:':<18}off: {why}" in log[:log.index("-m imet train ")], log[:5000]
        line = next(line for line in train.splitlines() if line.startswith("imet: Telegram"))
        assert line.startswith(f"imet: Telegram off: {why}") and "imet-telegram" in line, line
        assert train.index(line) < train.index("imet: run "), "said before the run starts"
        assert summary["sessions"][number - 1]["telegram"]["on"] is False
        assert summary["sessions"][number - 1]["telegram"]["why"].startswith(why)
        secret = SECRETS["IMET_TELEGRAM_TOKEN"].split(":")[1].encode()
        root = session.log.parent
        for path in [session.log, *(root / "kaggle").rglob("*"),
                     *(root.parent / "pushed" / f"v{number}").rglob("*")]:
            assert not path.is_file() or secret not in path.read_bytes(), path


def test_run_json_and_the_registry_name_the_kernel(trained):
    """The trainer session tells `imet train` its kernel's id, from the KERNEL line the
    emulator (as render) writes into the script: every session of run.json and every train
    record of the registry name it."""
    import getpass

    from imet.observe.registry import read_registry, registry_path
    kernel = f"{getpass.getuser()}/imet-trainer"
    output = trained[-1].output
    summary = json.loads((output / "run.json").read_text())
    assert [s["kernel"] for s in summary["sessions"]] == [kernel] * 3
    records = [r for r in read_registry(registry_path(output)) if r["kind"] == "train"]
    assert sorted(r["session"] for r in records) == [1, 2, 3]
    assert {r["kernel"] for r in records} == {kernel}


def test_the_sessions_ran_the_datasets_wheel(trained, local_dataset):
    """Each session's bootstrap installed imet and the pinned wheels from the attached dataset
    into the session's own environment: the rehearsal ran the artefact, not the repository."""
    packages = json.loads((local_dataset / "MANIFEST.json").read_text())["packages"]
    packages = [p for p in packages if not p.get("fallback")]  # the image's timm stack fits
    for session in trained:
        log = session.log.read_text()
        assert f"installed {len(packages)} packages from" in log, log[:3000]
        assert "editable" not in log
        env_python = session.output.parents[1] / "env" / "bin" / "python"
        where = subprocess.run([str(env_python), "-c", "import imet; print(imet.__file__)"],
                               capture_output=True, text=True, env={}, cwd=session.output,
                               check=True).stdout
        assert Path(where.strip()).is_relative_to(env_python.parents[1]), where
        assert not Path(where.strip()).is_relative_to(REPO), where


def test_the_inputs_were_found_where_todays_kaggle_mounts_them(trained, mini_data):
    root = trained[1].output.parent
    log = trained[1].log.read_text()
    assert "in the nested layout (competitions/imet-2019-fgvc6, datasets/" in log.splitlines()[0]
    # The bootstrap ran from datasets/<owner>/imet-src/; doctor named each input's folder.
    mounts = {"competition data": "competitions/imet-2019-fgvc6",
              "source dataset": f"datasets/{getpass.getuser()}/imet-src",
              "previous output": f"notebooks/{getpass.getuser()}/imet-trainer"}
    for kind, mount in mounts.items():
        assert f"{kind + ':':<18}{root / 'input' / mount}" in log, (kind, log[:5000])
    assert f"resuming from the attached output {root / 'input' / mounts['previous output']}" in log
    # The fingerprint doctor names this run by (refusing another kernel's) is the engine's, its
    # --metric auto resolved from the competition data as training resolves it.
    from imet.commands.kaggle import _fingerprint
    summary = json.loads((trained[1].output / "run.json").read_text())
    assert summary["config_hash"] == _fingerprint(TRAIN_ARGS + " --session-steps 50",
                                                      mini_data)


def test_the_last_session_resumed_in_the_flat_layout(trained):
    """The second session's hand-over attached at input/imet-trainer, as older sessions mount
    it: found, carried and resumed (--resume auto) there."""
    log = trained[2].log.read_text()
    assert "in the flat layout (imet-2019-fgvc6, imet-src, imet-trainer)" in log.splitlines()[0]
    root = trained[2].output.parent / "input"
    assert f"resuming from the attached output {root / 'imet-trainer'}" in log
    assert f"{'source dataset:':<18}{root / 'imet-src'}" in log
    assert f"{'previous output:':<18}{root / 'imet-trainer'}" in log


@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_validation_then_offline_inference(layout, trained, mini_data, local_dataset, tmp_path):
    trainer_out = trained[-1].output
    base = {"imet-2019-fgvc6": mini_data, "imet-src": local_dataset,
            "imet-trainer": trainer_out}
    validation = run_session(KERNELS / "validation", base, tmp_path / "v", 1, 600,
                             env(EVAL_ARGS), accelerator="none", layout=layout)
    assert validation.ok, validation.log.read_text()[-3000:]
    assert f"in the {layout} layout" in validation.log.read_text().splitlines()[0]
    assert (validation.output / "thresholds.json").is_file()
    inference = run_session(KERNELS / "inference",
                            {**base, "imet-validation": validation.output}, tmp_path / "i", 1,
                            600, env(EVAL_ARGS), accelerator="none", layout=layout)
    log = inference.log.read_text()
    assert inference.ok, log[-3000:]
    assert "internet off (unshare -n)" in log.splitlines()[0]
    assert f"in the {layout} layout" in log.splitlines()[0]
    # predict plans into what is left of the session (shorter here than 2019's 9 h limit)
    assert "inference: predicting within" in log and "the session's limit" in log
    assert "predict: plan for a" in log and "nothing left out" in log
    with open(inference.output / "submission.csv") as f:
        rows = list(csv.DictReader(f))
    with open(mini_data / "sample_submission.csv") as f:
        expected = [r["id"] for r in csv.DictReader(f)]
    assert [r["id"] for r in rows] == expected
    assert all(r["attribute_ids"].strip() for r in rows)
    # Every kernel's registry record names the code it ran: the dataset's source commit, known
    # to the trainer from the manifest and to validate and predict from the installed wheel.
    from imet.observe.registry import read_registry, registry_path
    records = read_registry(registry_path(inference.output))
    commit = json.loads((local_dataset / "MANIFEST.json").read_text())["source"]["git_commit"]
    codes = {r["kind"]: r["code_version"]["git_commit"] for r in records}
    assert set(codes) >= {"train", "validate", "predict"}, codes
    assert all(c and commit.startswith(c.removesuffix("+dirty")) for c in codes.values()), codes


def test_missing_inputs_are_named(mini_data, local_dataset, tmp_path):
    """One line naming the input and where it was searched; the last two in the flat layout of
    older sessions (no more sessions for it)."""
    no_data = run_session(KERNELS / "trainer", {"imet-src": local_dataset}, tmp_path / "t", 1,
                          600, env(TRAIN_ARGS), accelerator="none")
    text = no_data.log.read_text()
    assert no_data.exit_code == 2 and "imet-2019-fgvc6" in text and "Traceback" not in text
    assert f"9 folders deep: datasets/{getpass.getuser()}/imet-src)" in text
    no_runs = run_session(KERNELS / "inference", {"imet-2019-fgvc6": mini_data,
                                                  "imet-src": local_dataset},
                          tmp_path / "i", 1, 600, env(EVAL_ARGS), accelerator="none",
                          layout="flat")
    text = no_runs.log.read_text()
    assert no_runs.exit_code == 2 and "model.pt" in text and "Traceback" not in text
    no_source = run_session(KERNELS / "trainer", {"imet-2019-fgvc6": mini_data}, tmp_path / "n",
                            1, 600, env(TRAIN_ARGS), accelerator="none", layout="flat")
    assert no_source.exit_code != 0 and "imet-src" in no_source.log.read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without GPU")
def test_trainer_that_asked_for_a_gpu_and_got_none_stops_at_once(mini_data, local_dataset,
                                                                 tmp_path):
    """The template asks for GPU T4 x2; on this CPU machine its doctor stops the session in its
    first minute, before the folds and any data loading, and tells Telegram."""
    token = "555666777:AAEkernelDoctorTokenNeverPrinted_0123"
    with TelegramStandin() as server:
        session = run_session(KERNELS / "trainer", {"imet-2019-fgvc6": mini_data,
                                                    "imet-src": local_dataset},
                              tmp_path / "t", 1, 600,
                              {"IMET_KERNEL_ARGS": TRAIN_ARGS.replace("--notify off", ""),
                               "IMET_TELEGRAM_TOKEN": token, "IMET_TELEGRAM_CHAT_ID": "5",
                               "IMET_TELEGRAM_API_URL": server.api_url})
        sent = server.sent()
    log = session.log.read_text()
    assert "accelerator NvidiaTeslaT4" in log.splitlines()[0]
    assert session.exit_code == 2 and session.seconds < 60, log[-3000:]
    assert "imet doctor: error: asked for a GPU (NvidiaTeslaT4) but this session has none" in log
    assert "Traceback" not in log and token.split(":")[1] not in log
    assert not (session.output / "folds.csv").exists() and "imet folds" not in log
    assert "imet train" not in log
    (message,) = sent
    assert message.params["text"].startswith("❌") and "has none" in message.params["text"]
