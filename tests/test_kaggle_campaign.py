"""`imet kaggle campaign PLAN --out DIR` through the real kaggle client against the stand-in
Kaggle: members in parallel up to the limit, handovers, retries, the budget, a killed campaign
resumed without a double push, then the validation and inference over every output."""
import csv
import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from kaggle_standin import USER, KaggleStandin
from telegram_standin import TelegramStandin

REPO = Path(__file__).resolve().parents[1]
VALIDATION, INFERENCE = f"{USER}/imet-validation", f"{USER}/imet-inference"
SUBMISSION = b"id,attribute_ids\nabc,1 2\n"


def trainer(member):
    return f"{USER}/imet-trainer-{member}"


def run_json(session, wall_s, best_f2, status):
    """As a trainer writes it; Telegram on (the kernel's secret) in the first session only,
    as after a push that dropped the secret's binding."""
    sessions = [{"session": k, "wall_s": wall_s,
                 "telegram": {"on": True, "source": "Kaggle Secrets"} if k == 1 else
                 {"on": False, "why": "IMET_TELEGRAM_TOKEN is not set"}}
                for k in range(1, session + 1)]
    return json.dumps({"format": "imet-run", "run_name": "r", "status": status,
                       "best_f2": best_f2, "sessions": sessions}).encode()


def handover(session, wall_s=1800.0, best_f2=0.3):
    return {"files": {"HANDOVER.json": b'{"status": "handover"}',
                      "run.json": run_json(session, wall_s, best_f2, "handover")}}


def finish(session, wall_s=1800.0, best_f2=0.5):
    return {"files": {"run.json": run_json(session, wall_s, best_f2, "finished"),
                      "metrics.csv": b"step,f2\n"}}


FAIL = {"status": "ERROR", "failure": "CUDA out of memory"}
FINALS = {VALIDATION: [{"files": {"thresholds.json": b"{}"}}],
          INFERENCE: [{"files": {"submission.csv": SUBMISSION}}]}


def plan_file(tmp_path, members=("f0", "f1"), **keys):
    values = {"parallel": 2, "max_sessions": 3, "retries": 1, "gpu_hours": 10,
              "session_hours": 1, **keys}
    lines = [f'owner = "{USER}"', 'train_args = ["--batch-size", "8"]']
    lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    for name in members:
        lines += ["[[member]]", f'name = "{name}"', f"fold = {int(name[-1])}"]
    path = tmp_path / "plan.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def standin():
    with KaggleStandin() as server:
        server.sessions.update(FINALS)
        yield server


def command(plan, out):
    return [sys.executable, "-m", "imet", "kaggle", "campaign", str(plan), "--out", str(out),
            "--kernels", str(REPO / "kernels"), "--poll", "0.02"]


def env_for(standin, tmp_path, **extra):
    return {**os.environ, **standin.client_env(tmp_path / "home"), "IMET_TELEGRAM_TOKEN": "",
            **extra}


def campaign(standin, tmp_path, plan, **extra):
    return subprocess.run(command(plan, tmp_path / "camp"), capture_output=True, text=True,
                          env=env_for(standin, tmp_path, **extra), timeout=120)


def table(tmp_path):
    with open(tmp_path / "camp" / "status.csv", newline="") as handle:
        return {row["member"]: row for row in csv.DictReader(handle)}


@pytest.mark.parametrize("parallel", [1, 2])
def test_two_members_within_the_parallel_limit_then_validation_and_inference(
        standin, tmp_path, parallel):
    standin.sessions[trainer("f0")] = [handover(1), finish(2, best_f2=0.61)]
    standin.sessions[trainer("f1")] = [finish(1, best_f2=0.58)]
    proc = campaign(standin, tmp_path, plan_file(tmp_path, parallel=parallel))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert standin.max_in_flight == parallel
    assert {slug: len(v) for slug, v in standin.kernels.items()} == {
        trainer("f0"): 2, trainer("f1"): 1, VALIDATION: 1, INFERENCE: 1}
    first, second = standin.kernels[trainer("f0")]
    assert not first.get("kernelDataSources"), "a kernel that never ran has no output to attach"
    assert second["kernelDataSources"] == [trainer("f0")]
    (validation,) = standin.kernels[VALIDATION]
    assert validation["kernelDataSources"] == [trainer("f0"), trainer("f1")]
    (inference,) = standin.kernels[INFERENCE]
    assert inference["kernelDataSources"] == [trainer("f0"), trainer("f1"), VALIDATION]
    assert "'--batch-size', '8'" in first["text"] and "'--fold', '0'" in first["text"]
    assert (tmp_path / "camp" / "submission.csv").read_bytes() == SUBMISSION
    rows = table(tmp_path)
    assert rows["f0"]["sessions"] == "2" and rows["f0"]["state"] == "finished"
    assert rows["f0"]["best F2"] == "0.6100" and rows["f0"]["GPU-hours"] == "1.00"
    assert rows["f1"]["GPU-hours"] == "0.50" and rows["inference"]["state"] == "finished"
    assert rows["f0"]["telegram"] == "off" and rows["f1"]["telegram"] == "Kaggle Secrets"
    assert proc.stdout.count("ran without Telegram") == 1
    assert "f0: warning: session 2 ran without Telegram (IMET_TELEGRAM_TOKEN is not set)" \
        in proc.stdout
    assert rows["inference"]["telegram"] == ""
    assert "GPU-hours used: 1.50 of 10" in proc.stdout
    assert ("| member | sessions | state | best F2 | GPU-hours | telegram | last message |"
            in proc.stdout)
    assert "GPU-hours used" in (tmp_path / "camp" / "status.md").read_text()


def test_a_failing_member_is_retried_then_dropped(standin, tmp_path):
    standin.sessions[trainer("f0")] = [finish(1)]
    standin.sessions[trainer("f1")] = [FAIL, FAIL]
    proc = campaign(standin, tmp_path, plan_file(tmp_path, retries=1))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(standin.kernels[trainer("f1")]) == 2
    (validation,) = standin.kernels[VALIDATION]
    assert validation["kernelDataSources"] == [trainer("f0")]
    rows = table(tmp_path)
    assert rows["f1"]["state"] == "dropped" and "CUDA out of memory" in rows["f1"]["last message"]
    assert "without f1" in proc.stdout.strip().splitlines()[-1]


def test_no_push_once_the_budget_would_be_exceeded(standin, tmp_path):
    # 1.6 GPU-hours, 1 h a session: f0 may start (1 h), f1 not beside it (2 h); after f0's
    # first half-hour session another fits (0.5 + 1), after its second not (1 + 1).
    standin.sessions[trainer("f0")] = [handover(1), handover(2), finish(3)]
    proc = campaign(standin, tmp_path, plan_file(tmp_path, gpu_hours=1.6))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(standin.kernels[trainer("f0")]) == 2 and trainer("f1") not in standin.kernels
    rows = table(tmp_path)
    assert rows["f0"]["state"] == rows["f1"]["state"] == "budget"
    assert "budget of 1.6 GPU-hours" in rows["f1"]["last message"]
    (validation,) = standin.kernels[VALIDATION]
    assert validation["kernelDataSources"] == [trainer("f0")], "its best model so far counts"


@pytest.mark.parametrize("method,nth", [("GetKernel", 2), ("SaveKernel", 1), ("SaveKernel", 3),
                                        ("SaveKernel", 4),
                                        ("GetKernelSessionStatus", 4),
                                        ("ListKernelSessionOutput", 1),
                                        ("ListKernelSessionOutput", 3)])
def test_a_killed_campaign_resumes_without_pushing_twice(standin, tmp_path, method, nth):
    standin.sessions[trainer("f0")] = [handover(1), finish(2)]
    standin.sessions[trainer("f1")] = [finish(1)]
    plan = plan_file(tmp_path)
    proc = subprocess.Popen(command(plan, tmp_path / "camp"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env_for(standin, tmp_path))
    standin.kill_at = (method, nth, proc.pid)
    assert proc.wait(timeout=120) == -signal.SIGKILL
    again = campaign(standin, tmp_path, plan)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {slug: standin.pushes(slug) for slug in standin.kernels} == {
        trainer("f0"): 2, trainer("f1"): 1, VALIDATION: 1, INFERENCE: 1}
    assert (tmp_path / "camp" / "submission.csv").read_bytes() == SUBMISSION


MEMBER_X = 'name = "x"\nfold = 0'


@pytest.mark.parametrize("top,second,expected", [
    ("", MEMBER_X + '\nargs = ["--learning-rate", "1"]',
     "imet train has no flag '--learning-rate'"),
    ("", MEMBER_X + '\nargs = ["--epochs", "many"]', "invalid int value: 'many'"),
    ("", MEMBER_X + '\nargs = ["--out", "x"]', "--out is set by the trainer itself"),
    ("", 'name = "x"\nfold = 3', "fold 3 is not in"),
    ("", 'name = "f1"\nfold = 0', "two members are named 'f1'"),
    ('validate_args = ["--no-such-flag"]', MEMBER_X, "imet validate has no flag '--no-such-flag'"),
    ('predict_args = ["--ensemble", "vote"]', MEMBER_X, "imet predict: argument --ensemble"),
    ('predict_args = ["--runs", "a"]', MEMBER_X, "--runs is set by the inference kernel"),
    ('predict_args = ["--time-budget", "20h"]', MEMBER_X,
     "--time-budget is set by the inference kernel"),
    ('pseudo_label_args = ["--min-prob", "high"]', MEMBER_X,
     "imet pseudo-label: argument --min-prob"),
    ('pseudo_label_args = ["--out", "x"]', MEMBER_X, "--out is set by the inference kernel"),
])
def test_a_bad_plan_is_refused_before_anything_is_pushed(standin, tmp_path, top, second,
                                                         expected):
    (tmp_path / "folds.csv").write_text("id,fold\na,0\nb,1\n")
    plan = tmp_path / "plan.toml"
    plan.write_text(f'owner = "{USER}"\nfolds = "folds.csv"\n{top}\n[[member]]\nname = "f1"\n'
                    f"fold = 1\n[[member]]\n{second}\n")
    proc = campaign(standin, tmp_path, plan)
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and expected in line and str(plan) in line, line
    assert standin.calls == [], "nothing was asked of Kaggle"


def test_telegram_gets_each_member_event_and_the_end(standin, tmp_path):
    standin.sessions[trainer("f0")] = [finish(1)]
    with TelegramStandin() as telegram:
        proc = campaign(standin, tmp_path, plan_file(tmp_path, members=("f0",)),
                        IMET_TELEGRAM_TOKEN="123456789:AAHcampaignStandinToken_abcdefghijk",
                        IMET_TELEGRAM_CHAT_ID="99", IMET_TELEGRAM_API_URL=telegram.api_url,
                        # The client's proxy is the Kaggle stand-in; Telegram is reached directly.
                        NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        replies = telegram.replies()
    assert [r.split(":")[1].strip() for r in replies[:-1]] == [
        "f0", "f0", "validation", "validation", "inference", "inference"]
    assert "session 1 pushed" in replies[0] and "the run finished" in replies[1]
    assert replies[-1].startswith("imet campaign finished") and "GPU-hours used" in replies[-1]
    assert "| f0 | 1 | finished |" in replies[-1]


def test_a_plan_asking_for_telegram_checks_its_dataset_then_warns_at_the_first_session_without(
        standin, tmp_path):
    """`telegram = true`: before anything is written or pushed, Kaggle is asked whether
    <owner>/imet-telegram is private (a public one is one line); the trainers and the
    validation attach it; a member whose first session comes back without Telegram is warned
    of at once."""
    plan = plan_file(tmp_path, members=("f0",), telegram=True)
    ref = f"{USER}/imet-telegram"
    standin.datasets[ref] = {"private": False, "versions": [
        {"files": [{"name": "imet-telegram.json", "data": b"{}"}]}]}
    proc = campaign(standin, tmp_path, plan)
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and f"the dataset {ref} is public" in line, line
    assert "SaveKernel" not in standin.methods() and not (tmp_path / "camp").exists()
    standin.datasets[ref]["private"] = True
    off = {"on": False, "why": "the imet-telegram dataset at /kaggle/input/x has no "
                               "imet-telegram.json"}
    run = {"format": "imet-run", "status": "finished", "best_f2": 0.5,
           "sessions": [{"session": 1, "wall_s": 60.0, "telegram": off}]}
    standin.sessions[trainer("f0")] = [{"files": {"run.json": json.dumps(run).encode()}}]
    proc = campaign(standin, tmp_path, plan)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sources = {slug: versions[0]["datasetDataSources"] for slug, versions in standin.kernels.items()}
    assert ref in sources[trainer("f0")] and ref in sources[VALIDATION]
    assert ref not in sources[INFERENCE]  # internet off: it cannot send
    assert (f"f0: warning: session 1 ran without Telegram ({off['why']}); the plan asks for it "
            "(telegram = true)") in proc.stdout
    assert table(tmp_path)["f0"]["telegram"] == "off"


def test_a_refused_self_source_hands_over_through_a_private_dataset(standin, tmp_path):
    standin.refuse_self_source = True
    first = handover(1)
    first["files"]["checkpoints/state-100.pt"] = b"\0" * 2048
    second = handover(2)
    second["files"]["checkpoints/state-200.pt"] = b"\1" * 2048
    standin.sessions[trainer("f0")] = [first, second, finish(3)]
    proc = campaign(standin, tmp_path, plan_file(tmp_path, members=("f0",)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dataset = f"{USER}/imet-handover-f0"
    v1, v2, v3 = standin.kernels[trainer("f0")]
    assert standin.pushes(trainer("f0")) == 4, "one refused push, then through the dataset"
    for body in (v2, v3):
        assert not body.get("kernelDataSources") and dataset in body["datasetDataSources"]
    versions = standin.datasets[dataset]["versions"]
    assert len(versions) == 2 and standin.datasets[dataset]["private"] is True
    for version, step in zip(versions, (100, 200)):
        files = {f["name"]: f["data"] for f in version["files"]}
        assert "HANDOVER.json" in files and "run.json" in files
        with zipfile.ZipFile(io.BytesIO(files["checkpoints.zip"])) as archive:
            assert f"state-{step}.pt" in " ".join(archive.namelist())
    assert f"refused its own output as a source" in proc.stdout and dataset in proc.stdout
    assert (tmp_path / "camp" / "submission.csv").read_bytes() == SUBMISSION


@pytest.mark.parametrize("method", ["CreateDataset", "CreateDatasetVersion"])
def test_a_campaign_killed_while_versioning_the_dataset_versions_it_once(standin, tmp_path,
                                                                          method):
    standin.refuse_self_source = True
    standin.sessions[trainer("f0")] = [handover(1), handover(2), finish(3)]
    plan = plan_file(tmp_path, members=("f0",))
    proc = subprocess.Popen(command(plan, tmp_path / "camp"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env_for(standin, tmp_path))
    standin.kill_at = (method, 1, proc.pid)
    assert proc.wait(timeout=120) == -signal.SIGKILL
    again = campaign(standin, tmp_path, plan)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(standin.datasets[f"{USER}/imet-handover-f0"]["versions"]) == 2
    assert len(standin.kernels[trainer("f0")]) == 3


def test_an_inference_without_a_submission_fails_the_campaign(standin, tmp_path):
    standin.sessions[trainer("f0")] = [finish(1)]
    standin.sessions[INFERENCE] = [{"files": {"probs.npy": b"0"}}] * 2
    proc = campaign(standin, tmp_path, plan_file(tmp_path, members=("f0",), retries=1))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert len(standin.kernels[INFERENCE]) == 2, "retried once"
    assert "has no submission.csv" in table(tmp_path)["inference"]["last message"]
    assert "the inference kernel failed" in proc.stdout.strip().splitlines()[-1]
    assert not (tmp_path / "camp" / "submission.csv").exists()
