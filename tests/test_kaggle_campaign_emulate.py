"""`imet kaggle campaign PLAN --out DIR --emulate --input NAME=PATH ...`: the campaign's kernels
in the local emulator. The cheap tests use kernel templates of their own (a kernel-metadata.json
and a script that sleeps, then writes what a trainer, validation or inference kernel writes);
the e2e one runs the real kernels on mini-iMet and checks the submission against a local
`imet predict` of the same members."""
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OWNER = "tester"

FAKE = """
import json, os, time
from pathlib import Path
DEFAULT_TRAIN_ARGS = []
N_FOLDS = 3
ROOT = Path(os.environ["IMET_KAGGLE_ROOT"])
OWNER = "%s"
SLUG, VERSION = ROOT.parents[1].name, ROOT.parent.name
def note(what):
    with open(os.environ["FAKE_RUNS"], "a") as runs:
        runs.write(f"{SLUG} {VERSION} {what} {time.time()}\\n")
note("start")
time.sleep(json.loads(os.environ.get("FAKE_SLEEP", "{}")).get(SLUG, 1.0))
# Each input where it is mounted, nested as today's Kaggle does.
mounts = [p for pattern in ("competitions/*", "datasets/*/*", "notebooks/*/*")
          for p in (ROOT / "input").glob(pattern)]
Path("attached.txt").write_text(" ".join(sorted(str(p.relative_to(ROOT / "input"))
                                                for p in mounts)))
KIND = %r
if KIND == "trainer":
    previous = ROOT / "input" / "notebooks" / OWNER / SLUG / "count.txt"
    count = int(previous.read_text()) + 1 if previous.exists() else 1
    Path("count.txt").write_text(str(count))
    sessions = [{"session": k, "wall_s": 360.0} for k in range(1, count + 1)]
    Path("run.json").write_text(json.dumps({"format": "imet-run", "run_name": SLUG,
        "status": "finished", "best_f2": 0.25 * count, "sessions": sessions}))
    if count < 2:
        Path("HANDOVER.json").write_text("{}")
elif KIND == "validation":
    Path("thresholds.json").write_text("{}")
else:
    Path("submission.csv").write_text("id,attribute_ids\\na,1\\n")
note("end")
"""


def fake_kernels(folder: Path) -> Path:
    sources = {"trainer": ["{owner}/imet-trainer"], "validation": ["{owner}/imet-trainer"],
               "inference": ["{owner}/imet-trainer", "{owner}/imet-validation"]}
    for kind, kernel_sources in sources.items():
        (folder / kind).mkdir(parents=True)
        (folder / kind / f"{kind}.py").write_text(textwrap.dedent(FAKE % (OWNER, kind)))
        meta = {"id": f"{{owner}}/imet-{kind}", "title": f"imet-{kind}",
                "code_file": f"{kind}.py", "language": "python", "kernel_type": "script",
                "is_private": True, "enable_gpu": False, "enable_internet": True,
                "dataset_sources": ["{owner}/imet-src"], "competition_sources": ["imet-2019-fgvc6"],
                "kernel_sources": kernel_sources}
        (folder / kind / "kernel-metadata.json").write_text(json.dumps(meta))
    return folder


def write_plan(path: Path, members, lines=()) -> Path:
    text = [f'owner = "{OWNER}"', *lines]
    for name, fold in members:
        text += ["[[member]]", f'name = "{name}"', f"fold = {fold}"]
    path.write_text("\n".join(text) + "\n")
    return path


@pytest.fixture
def fake(tmp_path):
    """(the command's start, its environment, the sessions' notes file)."""
    data = tmp_path / "in"
    data.mkdir()
    kernels = fake_kernels(tmp_path / "kernels")
    runs = tmp_path / "runs.txt"
    env = {**os.environ, "FAKE_RUNS": str(runs), "IMET_TELEGRAM_TOKEN": ""}

    def command(plan, *extra):
        return [sys.executable, "-m", "imet", "kaggle", "campaign", str(plan), "--out",
                str(tmp_path / "camp"), "--kernels", str(kernels), "--emulate", "--poll", "0.2",
                "--input", f"imet-2019-fgvc6={data}", "--input", f"imet-src={data}", *extra]
    return command, env, runs


def notes(runs: Path) -> dict[tuple[str, str], list[str]]:
    seen: dict[tuple[str, str], list[str]] = {}
    for line in runs.read_text().splitlines():
        slug, version, what, _ = line.split()
        seen.setdefault((slug, version), []).append(what)
    return seen


def records(camp: Path, slug: str) -> list[dict]:
    found = sorted((camp / "emulator" / slug / "pushed").glob("v*/session.json"),
                   key=lambda p: int(p.parent.name[1:]))
    return [json.loads(p.read_text()) for p in found]


def table(camp: Path) -> dict[str, dict]:
    with open(camp / "status.csv", newline="") as handle:
        return {row["member"]: row for row in csv.DictReader(handle)}


def test_members_run_in_parallel_within_the_limit_and_chain_their_outputs(fake, tmp_path):
    command, env, runs = fake
    plan = write_plan(tmp_path / "plan.toml", [("f0", 0), ("f1", 1), ("f2", 2)],
                      ["parallel = 2", "session_hours = 1", "gpu_hours = 10"])
    proc = subprocess.run(command(plan), capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    camp = tmp_path / "camp"
    trainers = [r for m in ("f0", "f1", "f2") for r in records(camp, f"imet-trainer-{m}")]
    assert len(trainers) == 6 and all(r["status"] == "COMPLETE" for r in trainers)
    assert all(r["time_limit"] == 3600 for r in trainers), "the plan's session_hours"
    moments = sorted([(r["started_at"], 1) for r in trainers] +
                     [(r["ended_at"], -1) for r in trainers])
    running = [sum(step for _, step in moments[:k + 1]) for k in range(len(moments))]
    assert max(running) == 2, "two at once, never three"
    (validation,) = records(camp, "imet-validation")
    assert validation["started_at"] > max(r["ended_at"] for r in trainers)
    out = camp / "emulator"
    attached = {p.parts[-5] + "/" + p.parts[-4]: p.read_text()
                for p in out.glob("*/v*/kaggle/working/attached.txt")}
    base = f"competitions/imet-2019-fgvc6 datasets/{OWNER}/imet-src"
    outputs = " ".join(f"notebooks/{OWNER}/imet-trainer-f{k}" for k in range(3))
    assert attached["imet-trainer-f0/v1"] == base
    assert attached["imet-trainer-f0/v2"] == f"{base} notebooks/{OWNER}/imet-trainer-f0"
    assert attached["imet-validation/v1"] == f"{base} {outputs}"
    assert attached["imet-inference/v1"] == f"{base} {outputs} notebooks/{OWNER}/imet-validation"
    assert (camp / "submission.csv").read_text() == "id,attribute_ids\na,1\n"
    rows = table(camp)
    assert rows["f0"]["sessions"] == "2" and rows["f0"]["state"] == "finished"
    assert rows["f0"]["GPU-hours"] == "0.20" and rows["f0"]["best F2"] == "0.5000"
    assert "no --input imet-weights=PATH" in proc.stdout
    assert "session 1 handed over" in proc.stdout and "emulator:" not in proc.stdout, \
        "the console shows the campaign's events; the sessions' lines are in their logs"
    assert (out / "imet-trainer-f0" / "v1" / "log.txt").read_text().startswith("emulator: ")
    on_kaggle = [a for a in command(plan) if a != "--emulate"][:command(plan).index("--emulate")]
    refused = subprocess.run(on_kaggle, capture_output=True, text=True, env=env, timeout=60)
    (line,) = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and "in the emulator (--emulate) is under way here" in line


def test_a_session_past_the_limit_is_killed_retried_then_dropped(fake, tmp_path):
    command, env, runs = fake
    plan = write_plan(tmp_path / "plan.toml", [("f0", 0), ("f1", 1)], ["retries = 1"])
    env["FAKE_SLEEP"] = json.dumps({"imet-trainer-f1": 60})
    proc = subprocess.run(command(plan, "--session-limit", "3s"), capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    f1 = records(tmp_path / "camp", "imet-trainer-f1")
    assert len(f1) == 2 and all(r["timed_out"] and r["status"] == "ERROR" for r in f1)
    assert all(r["ended_at"] - r["started_at"] < 30 for r in f1)
    rows = table(tmp_path / "camp")
    assert rows["f1"]["state"] == "dropped" and "killed at the session limit" in \
        rows["f1"]["last message"]
    assert "without f1" in proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("kill_when", ["imet-trainer-f0 v1 start", "imet-trainer-f1 v2 start",
                                       "imet-validation v1 start"])
def test_a_killed_campaign_runs_no_session_twice(fake, tmp_path, kill_when):
    command, env, runs = fake
    plan = write_plan(tmp_path / "plan.toml", [("f0", 0), ("f1", 1)])
    env["FAKE_SLEEP"] = json.dumps({"imet-trainer-f0": 2.0, "imet-trainer-f1": 2.0,
                                    "imet-validation": 2.0})
    proc = subprocess.Popen(command(plan), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while not (runs.exists() and kill_when in runs.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "it never got there"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = subprocess.run(command(plan), capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    seen = notes(runs)
    assert sorted(seen) == [("imet-inference", "v1"), ("imet-trainer-f0", "v1"),
                            ("imet-trainer-f0", "v2"), ("imet-trainer-f1", "v1"),
                            ("imet-trainer-f1", "v2"), ("imet-validation", "v1")]
    assert all(what == ["start", "end"] for what in seen.values()), seen
    assert (tmp_path / "camp" / "submission.csv").is_file()


def test_a_session_whose_runner_died_counts_as_failed_and_is_pushed_again(fake, tmp_path):
    command, env, runs = fake
    plan = write_plan(tmp_path / "plan.toml", [("f0", 0)], ["retries = 1"])
    env["FAKE_SLEEP"] = json.dumps({"imet-trainer-f0": 3.0})
    proc = subprocess.Popen(command(plan), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    camp = tmp_path / "camp"
    deadline = time.monotonic() + 120
    while not (runs.exists() and "imet-trainer-f0 v1 start" in runs.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "it never got there"
        time.sleep(0.05)
    (first,) = records(camp, "imet-trainer-f0")
    os.kill(first["runner_pid"], signal.SIGKILL)  # the session's kernel lives on, its end unseen
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    first, second, third = records(camp, "imet-trainer-f0")
    assert "status" not in first and second["status"] == third["status"] == "COMPLETE"
    assert "ended without recording an end" in output and "pushing it again" in output
    assert table(camp)["f0"]["state"] == "finished"


def test_a_source_no_input_gives_is_refused_before_anything_runs(tmp_path):
    plan = write_plan(tmp_path / "plan.toml", [("f0", 0)])
    out = tmp_path / "camp"
    proc = subprocess.run([sys.executable, "-m", "imet", "kaggle", "campaign", str(plan),
                           "--out", str(out), "--kernels", str(REPO / "kernels"), "--emulate",
                           "--input", f"imet-2019-fgvc6={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "imet-src" in line and "--input imet-src=PATH" in line, line
    assert not out.exists(), "nothing ran, nothing was written"


def test_a_telegram_dataset_input_without_its_file_is_refused_before_anything_runs(tmp_path):
    """`telegram = true`: the kernels attach imet-telegram, which an --input must give, holding
    imet-telegram.json."""
    plan = write_plan(tmp_path / "plan.toml", [("f0", 0)], ["telegram = true"])
    out, empty = tmp_path / "camp", tmp_path / "imet-telegram"
    empty.mkdir()

    def run(*inputs):
        proc = subprocess.run([sys.executable, "-m", "imet", "kaggle", "campaign", str(plan),
                               "--out", str(out), "--kernels", str(REPO / "kernels"),
                               "--emulate", "--input", f"imet-2019-fgvc6={tmp_path}",
                               "--input", f"imet-src={tmp_path}", *inputs],
                              capture_output=True, text=True, timeout=120)
        (line,) = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and not out.exists(), line
        return line
    assert "--input imet-telegram=PATH" in run()
    assert f"--input imet-telegram={empty}: no imet-telegram.json in it" in run(
        "--input", f"imet-telegram={empty}")


E2E_TRAIN = ["--arch", "tiny_cnn", "--no-pretrained", "--image-size", "32", "--batch-size", "4",
             "--epochs", "4", "--head-epochs", "1", "--patience", "1000", "--lr", "3e-3",
             "--head-lr", "3e-3", "--num-workers", "0", "--progress-every-s", "5",
             "--notify", "off"]
E2E_EVAL = ["--tta", "none,hflip", "--batch-size", "16", "--num-workers", "0"]
E2E_PREDICT = E2E_EVAL + ["--ensemble", "mean"]


def f2_of(mini_data: Path, submission: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "imet", "score", "--truth",
                           str(mini_data / "test_labels.csv"), "--pred", str(submission)],
                          capture_output=True, text=True, check=True)
    return proc.stdout.strip()


@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() != 0, reason="the emulator's isolation needs root")
def test_an_emulated_campaign_submits_what_its_members_and_thresholds_predict(
        mini_data, local_dataset, tmp_path):
    """Two members on the real kernels, in parallel, f0 handing over once (--session-steps):
    the campaign's submission is what `imet predict` makes here of the same two models with
    the validation's thresholds, and so is its F2."""
    plan = write_plan(tmp_path / "plan.toml", [("f0", 0), ("f1", 1)], [
        'accelerator = "none"', "n_folds = 2", "parallel = 2", "max_sessions = 4",
        "retries = 0", "session_hours = 0.25", "gpu_hours = 5",
        f"train_args = {json.dumps(E2E_TRAIN)}", f"validate_args = {json.dumps(E2E_EVAL)}",
        f"predict_args = {json.dumps(E2E_PREDICT)}"])
    text = plan.read_text().replace('fold = 0\n', 'fold = 0\nargs = ["--session-steps", "20"]\n')
    plan.write_text(text)
    camp = tmp_path / "camp"
    proc = subprocess.run([sys.executable, "-m", "imet", "kaggle", "campaign", str(plan),
                           "--out", str(camp), "--kernels", str(REPO / "kernels"), "--emulate",
                           "--input", f"imet-2019-fgvc6={mini_data}",
                           "--input", f"imet-src={local_dataset}"],
                          capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "IMET_TELEGRAM_TOKEN": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = table(camp)
    assert rows["f0"]["sessions"] == "2" and rows["f1"]["sessions"] == "1", rows
    assert rows["f0"]["state"] == rows["f1"]["state"] == "finished"
    f0, f1 = records(camp, "imet-trainer-f0"), records(camp, "imet-trainer-f1")
    assert f1[0]["started_at"] < f0[0]["ended_at"], "the two members ran at once"
    assert float(rows["f0"]["GPU-hours"]) * 3600 == pytest.approx(
        sum(s["wall_s"] for s in json.loads(
            (camp / "outputs" / "trainer-f0" / "v2" / "run.json").read_text())["sessions"]),
        abs=18), "the table counts the sessions' own timings"
    local = tmp_path / "local.csv"
    subprocess.run([sys.executable, "-m", "imet", "predict", "--data", str(mini_data),
                    "--runs", str(camp / "emulator" / "imet-trainer-f0" / "output"),
                    str(camp / "emulator" / "imet-trainer-f1" / "output"),
                    "--thresholds", str(camp / "outputs" / "validation" / "v1" / "thresholds.json"),
                    "--out", str(local), *E2E_PREDICT], check=True, capture_output=True)
    assert f2_of(mini_data, camp / "submission.csv") == f2_of(mini_data, local)
    assert (camp / "submission.csv").read_text() == local.read_text()


@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() != 0, reason="the emulator's isolation needs root")
def test_a_campaign_on_the_later_competitions_attaches_and_finds_their_files(
        local_dataset, tmp_path):
    """The three kernels on mini-iMet in 2021's shape (five groups, `tags::`, 2021's file names
    and nested image folders), mounted at input/competitions/imet-2021-fgvc8: one member, one
    session each. The plan names no competition: the data's own files decide it. 2020 has
    2019's files and folders with 2021's groups, so this covers it but for the slug (its
    train/validate/predict flow runs in test_mini_imet; a campaign costs ~2 minutes)."""
    year = "2021"
    from imet.data.labels import COMPETITIONS, find_layout, read_sample_submission
    data, slug = tmp_path / "data", COMPETITIONS[year]
    subprocess.run([sys.executable, "-m", "imet", "mini-imet", "--out", str(data), "--layout",
                    year, "--n-train", "32", "--n-test", "8", "--size", "24"], check=True,
                   capture_output=True)
    plan = write_plan(tmp_path / "plan.toml", [("f0", 0)], [
        'accelerator = "none"', "n_folds = 2", "parallel = 1", "max_sessions = 1",
        "retries = 0", "session_hours = 0.25", "gpu_hours = 5",
        f"train_args = {json.dumps(E2E_TRAIN + ['--epochs', '1', '--head-epochs', '0'])}",
        f"validate_args = {json.dumps(E2E_EVAL[2:] + ['--tta', 'none'])}",
        f"predict_args = {json.dumps(E2E_EVAL[2:] + ['--tta', 'none'])}"])
    camp = tmp_path / "camp"
    proc = subprocess.run([sys.executable, "-m", "imet", "kaggle", "campaign", str(plan),
                           "--out", str(camp), "--kernels", str(REPO / "kernels"), "--emulate",
                           "--input", f"{slug}={data}", "--input", f"imet-src={local_dataset}"],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "IMET_TELEGRAM_TOKEN": ""})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert proc.stdout.startswith(f"competition: {slug} (the files of {data}: "), proc.stdout
    assert table(camp)["f0"]["state"] == "finished"
    for kernel in ("imet-trainer-f0", "imet-validation", "imet-inference"):
        log = (camp / "emulator" / kernel / "v1" / "log.txt").read_text()
        assert f"competitions/{slug}" in log.splitlines()[0], log[:500]
    with open(camp / "submission.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == read_sample_submission(
        find_layout(data).sample_submission_csv)
    assert f2_of(data, camp / "submission.csv")
