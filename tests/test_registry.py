"""The run registry across chained Kaggle sessions and kernels: merge, de-duplication, table,
comparison PNG, set-lb, and no secrets in records. Events go through the real EventBus."""
from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from report_sim import CONFIG, emit_session, f2_at

from imet.cli import main
from imet.observe.registry import (
    REGISTRY_NAME,
    append_record,
    format_csv,
    format_markdown,
    format_table,
    make_record,
    merge_records,
    read_registry,
    record_train_subscriber,
    sort_rows,
    summarize,
)
from imet.train.events import EventBus

PNG = b"\x89PNG\r\n\x1a\n"


def _session(tmp_path, name, run_name="r18-f0", inputs=(), **kw):
    """One kernel session: attach `inputs` (earlier outputs) under its input root, train."""
    input_root, out = tmp_path / name / "input", tmp_path / name / "working"
    input_root.mkdir(parents=True)
    for source in inputs:
        shutil.copytree(source, input_root / f"{source.parent.parent.name}-output")
    emit_session(EventBus([record_train_subscriber(out, [input_root])]), run_name=run_name, **kw)
    return out


def _keys(records):
    return [(r["run_id"], r["kind"], r["session"]) for r in records]


@pytest.fixture
def chain(tmp_path):
    """Kernel 1 trains fold 0 over three chained sessions; kernel 2 trains fold 1 in one session
    with the (stale) output of kernel 1's second session attached."""
    s1 = _session(tmp_path, "k1v1", stop=20, end="handover")
    s2 = _session(tmp_path, "k1v2", inputs=[s1], session=2, resumed_from=20, stop=40,
                  end="handover")
    s3 = _session(tmp_path, "k1v3", inputs=[s2], session=3, resumed_from=40)
    k2 = _session(tmp_path, "k2v1", run_name="r18-f1", inputs=[s2], fold=1,
                  kernel="me/imet-train-f1")
    return s1, s2, s3, k2


def test_chained_sessions_carry_the_history_forward(chain):
    s1, s2, s3, _ = chain
    records = read_registry(s3 / REGISTRY_NAME)
    assert _keys(records) == [("r18-f0", "train", 1), ("r18-f0", "train", 2),
                              ("r18-f0", "train", 3)]
    assert [r["status"] for r in records] == ["handover", "handover", "finished"]
    assert [r["resumed_from"] for r in records] == [None, 20, 40]
    assert all(r["wall_s"] >= 0 and r["kernel"] == "me/imet-train" for r in records)
    final = records[-1]
    assert final["best_f2"] == f2_at(60) and final["best_step"] == 60
    assert [p[0] for p in final["f2_history"]] == [10, 20, 30, 40, 50, 60]
    assert final["code_version"]["imet"] and final["config_hash"]
    assert final["config"]["notify"] == "telegram" and final["fold"] == 0


def test_second_kernel_and_validation_merge_without_duplicates(chain, tmp_path):
    s1, s2, s3, k2 = chain
    # The validation kernel attaches everything, including stale copies of older sessions.
    inputs = tmp_path / "validate" / "input"
    for i, source in enumerate((s1, s2, s3, k2)):
        shutil.copytree(source, inputs / f"out{i}")
    out = tmp_path / "validate" / "working"
    record = make_record("validate", "r18-f0", best_f2=0.71, threshold=0.22, tta="hflip",
                         fold=0, arch="resnet18", image_size=64, config={"tta": "hflip"},
                         wall_s=33.0)
    append_record(out, record, input_roots=[inputs])
    records = read_registry(out / REGISTRY_NAME)
    assert sorted(_keys(records)) == [("r18-f0", "train", 1), ("r18-f0", "train", 2),
                                      ("r18-f0", "train", 3), ("r18-f0", "validate", 1),
                                      ("r18-f1", "train", 1)]
    by_key = {(r["run_id"], r["kind"], r["session"]): r for r in records}
    assert by_key[("r18-f0", "train", 3)]["status"] == "finished"
    assert by_key[("r18-f1", "train", 1)]["fold"] == 1

    rows = sort_rows(summarize(records))
    assert [(r["run"], r["kind"]) for r in rows] == [("r18-f0", "validate"),
                                                     ("r18-f0", "train"), ("r18-f1", "train")]
    train = rows[1]
    assert train["sessions"] == [1, 2, 3] and len(train["session_wall_s"]) == 3
    assert train["status"] == "finished" and train["cv_f2"] == f2_at(60)

    text = format_table(rows)
    header, rule, first = text.splitlines()[:3]
    assert header.split()[:3] == ["run", "kind", "status"] and set(rule) <= {"-", " "}
    assert first.split()[:2] == ["r18-f0", "validate"] and "0.7100" in first and "hflip" in first
    assert "3 (" in text.splitlines()[3]  # three sessions, each with its wall time

    parsed = list(csv.DictReader(io.StringIO(format_csv(rows))))
    assert parsed[1]["sessions"] == "1 2 3" and float(parsed[1]["cv_f2"]) == f2_at(60)
    markdown = format_markdown(rows).splitlines()
    assert markdown[0].startswith("| run | kind |") and markdown[1].startswith("|---|")
    assert len(markdown) == 2 + len(rows)


def test_most_complete_copy_wins():
    running = make_record("train", "a", 2, status="running", best_f2=None, wall_s=1.0)
    handover = make_record("train", "a", 2, status="handover", best_f2=0.5, wall_s=100.0,
                           f2_history=[[10, 0.5]])
    assert merge_records([running], [handover]) == [handover]
    assert merge_records([handover], [running]) == [handover]
    assert merge_records([handover], [handover, running]) == [handover]


def test_runs_command_prints_writes_png_and_set_lb_survives_merges(chain, tmp_path, capsys):
    s1, s2, s3, k2 = chain
    home = tmp_path / "home"
    for i, source in enumerate((s3, k2)):
        shutil.copytree(source, home / f"download{i}")
    png = tmp_path / "runs.png"
    assert main(["runs", str(home), "--plot", str(png)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].split()[:2] == ["r18-f0", "train"] and out[3].split()[:2] == ["r18-f1", "train"]
    assert png.read_bytes().startswith(PNG)

    assert main(["runs", "set-lb", "r18-f1", "0.612", str(home)]) == 0
    assert main(["runs", "set-lb", "r18-f0", "0.645", str(home)]) == 0
    capsys.readouterr()
    assert main(["runs", str(home), "--format", "csv", "--sort", "lb"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["run"], r["lb"]) for r in rows] == [("r18-f0", "0.645"), ("r18-f1", "0.612")]

    # A later kernel attaches the scored registry and a stale unscored copy: the score stays.
    later = tmp_path / "later"
    shutil.copytree(home / "download0", later / "input" / "a")
    shutil.copytree(s2, later / "input" / "stale")
    emit_session(EventBus([record_train_subscriber(later / "out", [later / "input"])]),
                 run_name="r18-f0-b", stop=10)
    merged = read_registry(later / "out" / REGISTRY_NAME)
    assert {r["lb_score"] for r in merged if r["run_id"] == "r18-f0"} == {0.645}
    assert {r["run_id"] for r in merged} == {"r18-f0", "r18-f0-b"}


def test_set_lb_errors_are_one_line(tmp_path, capsys):
    assert main(["runs", "set-lb", "nope", "0.5", str(tmp_path)]) == 2
    assert "no imet-runs.jsonl under" in capsys.readouterr().err
    append_record(tmp_path, make_record("predict", "sub-1", ensemble=["a", "b"]))
    assert main(["runs", "set-lb", "sub-1", "abc", str(tmp_path)]) == 2
    assert "is not a number" in capsys.readouterr().err
    assert main(["runs", "set-lb", "zzz", "0.5", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'zzz' is not a run" in err and "sub-1" in err
    assert main(["runs", "set-lb", "sub", "0.5", str(tmp_path)]) == 0  # unique prefix
    assert read_registry(tmp_path / REGISTRY_NAME)[0]["lb_score"] == 0.5


def test_records_never_store_secrets(tmp_path, monkeypatch):
    token = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
    monkeypatch.setenv("IMET_TELEGRAM_TOKEN", token)
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef0123456789abcdef")
    config = {**CONFIG, "notify": "telegram", "telegram_token": token,
              "notify_url": f"https://api.telegram.org/bot{token}/sendMessage",
              "extra": {"kaggle_key": "0123456789abcdef0123456789abcdef", "chat": "42"}}
    emit_session(EventBus([record_train_subscriber(tmp_path)]), config=config, stop=10)
    append_record(tmp_path, make_record("predict", "sub", config=config))
    text = (tmp_path / REGISTRY_NAME).read_text()
    assert token not in text and "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw" not in text
    assert "0123456789abcdef0123456789abcdef" not in text
    record = json.loads(text.splitlines()[0])
    assert record["config"]["notify"] == "telegram" and record["config"]["extra"]["chat"] == "42"


def test_token_shapes_are_redacted_inside_urls_without_the_environment():
    from imet.observe.console import redact
    token = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
    assert redact(f"POST https://api.telegram.org/bot{token}/sendMessage", environ={}) == \
        "POST https://api.telegram.org/bot<redacted>/sendMessage"
    assert redact("KAGGLE_KEY=0123456789abcdef0123456789abcdef", environ={}) == \
        "KAGGLE_KEY=<redacted>"
    sha256 = "ab" * 32  # a code hash is not a key
    assert redact(sha256, environ={}) == sha256


def test_validate_and_predict_summaries_become_records(chain, tmp_path):
    """The summaries `imet validate` / `imet predict` return (their shape, as they pass it)."""
    s1, s2, s3, k2 = chain
    # validate names a run after its folder ("working" on Kaggle); the run.json there has its id
    (s3 / "run.json").write_text(json.dumps({"format": "imet-run", "run_name": "r18-f0"}))
    validate = {"kind": "validate", "out": str(tmp_path), "images": 64, "folds": [0],
                "tta": ["none", "hflip"], "ensemble": None, "mode": "group", "f2": 0.7012,
                "f2_in_sample": 0.71, "threshold_global": 0.23, "seconds": 41.5,
                "runs": [{"name": "working", "model": str(s3 / "model.pt"), "arch": "resnet18",
                          "image_size": 64, "fold": 0}]}
    predict = {"kind": "predict", "submission": "submission.csv", "ensemble": "mean",
               "tta": ["hflip"], "seconds": 12.0,
               "runs": [{"name": "r18-f0", "arch": "resnet18", "image_size": 64, "fold": 0},
                        {"name": "r18-f1", "arch": "resnet18", "image_size": 64, "fold": 1}]}
    append_record(tmp_path / "v", validate, input_roots=[k2])  # s3: found beside its model
    append_record(tmp_path / "v", predict)
    records = {(r["run_id"], r["kind"]): r for r in read_registry(tmp_path / "v" / REGISTRY_NAME)}
    v = records[("r18-f0", "validate")]
    assert (v["best_f2"], v["threshold"], v["tta"], v["wall_s"], v["fold"]) == \
        (0.7012, 0.23, "none+hflip", 41.5, 0)
    [p] = [r for (run, kind), r in records.items() if kind == "predict"]
    assert p["run_id"].startswith("ens-") and p["ensemble"] == ["r18-f0", "r18-f1"]
    assert p["fold"] is None and p["arch"] == "resnet18" and p["details"]["ensemble"] == "mean"
    assert len(read_registry(tmp_path / "v" / REGISTRY_NAME)) == 6  # 3 + 1 train, 1 + 1 added
    rows = summarize(read_registry(tmp_path / "v" / REGISTRY_NAME))
    assert "r18-f0 r18-f1" in format_table(sort_rows(rows))


def test_code_version_prefers_the_dataset_manifest(tmp_path):
    from imet.observe.files import code_version, short_code_version
    manifest = tmp_path / "input" / "imet-code" / "MANIFEST.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"files": {"imet/cli.py": "abc"}}')
    import hashlib
    version = code_version([tmp_path / "input"])
    assert version["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert version["git_commit"] is None
    assert short_code_version(version) == f"{version['imet']}@m:{version['manifest_sha256'][:8]}"
    record = make_record("predict", "sub", input_roots=[tmp_path / "input"])
    assert record["code_version"] == version


def test_unreadable_lines_are_skipped_not_fatal(tmp_path, caplog):
    good = make_record("train", "a", best_f2=0.5)
    (tmp_path / REGISTRY_NAME).write_text(json.dumps(good) + "\n{not json\n" +
                                          json.dumps({"no": "run id"}) + "\n\n")
    assert read_registry(tmp_path / REGISTRY_NAME) == [good]
    assert "line 2: not a run record" in caplog.text and "line 3" in caplog.text
    append_record(tmp_path, make_record("predict", "b"))
    assert _keys(read_registry(tmp_path / REGISTRY_NAME)) == [("a", "train", 1),
                                                              ("b", "predict", 1)]


def test_unwritable_plot_path_is_a_one_line_error(tmp_path, capsys):
    append_record(tmp_path, make_record("train", "a", best_f2=0.5))
    assert main(["runs", str(tmp_path), "--plot", str(tmp_path / "no" / "such" / "x.png")]) == 0
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["runs", str(tmp_path), "--plot", str(blocker / "x.png")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_set_lb_has_its_own_help_and_runs_writes_no_png_unasked(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as stop:
        main(["runs", "set-lb", "--help"])
    assert stop.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: imet runs set-lb") and "RUN SCORE" in shown
    assert "--format" not in shown
    append_record(tmp_path, make_record("train", "a", best_f2=0.5))
    monkeypatch.chdir(tmp_path)
    assert main(["runs", str(tmp_path)]) == 0
    assert not list(tmp_path.glob("*.png"))


def test_the_same_code_shows_the_same_code_cell(tmp_path):
    """A train session finds the dataset's MANIFEST.json among its inputs, a validation in the
    same checkout does not: both ran the same commit, so the table says the same."""
    from imet.observe.files import code_version, git_commit, short_code_version
    commit = git_commit()
    if commit is None:
        pytest.skip("not a git checkout")
    manifest = tmp_path / "input" / "imet-src" / "MANIFEST.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"source": {"git_commit": commit.removesuffix("+dirty"),
                                               "dirty": commit.endswith("+dirty")}}))
    from_dataset = code_version([tmp_path / "input"])
    assert from_dataset["manifest_sha256"] and from_dataset["git_commit"] == commit
    assert short_code_version(from_dataset) == short_code_version(code_version([]))
    train = make_record("train", "r", code_version=from_dataset)
    validate = make_record("validate", "r", code_version=code_version([]))
    cells = {row["kind"]: row["code"] for row in summarize([train, validate])}
    assert cells["train"] == cells["validate"] and "@g:" + commit[:8] in cells["train"]


def test_the_table_shows_a_run_that_moved_to_another_torch():
    sessions = [make_record("train", "r", session, versions={"torch": torch, "cuda": cuda})
                for session, torch, cuda in [(1, "2.10.0+cu128", "12.8"),
                                             (2, "2.10.0+cu128", "12.8"),
                                             (3, "2.14.1+cu130", "13.0")]]
    [row] = summarize(sessions)
    assert row["torch"] == ["2.10.0+cu128/CUDA 12.8", "2.14.1+cu130/CUDA 13.0"]
    assert "2.10.0+cu128/CUDA 12.8 -> 2.14.1+cu130/CUDA 13.0" in format_table([row])
    [same] = summarize([make_record("train", "s", versions={"torch": "2.14.1", "cuda": "none"})])
    assert same["torch"] == ["2.14.1"]
