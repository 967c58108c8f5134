"""metrics.csv, run.json and plots written by the report subscribers from real bus events."""
from __future__ import annotations

import json

import pytest
from report_sim import TOTAL_STEPS, emit_session, f2_at

from imet.observe.files import COLUMNS, ArtifactWriter, MetricsWriter, read_metrics
from imet.train.events import EventBus

PNG = b"\x89PNG\r\n\x1a\n"


def _keys(rows):
    return [(row["kind"], row["step"]) for row in rows]


def test_uninterrupted_run_writes_all_rows(tmp_path):
    emit_session(EventBus([MetricsWriter(tmp_path)]))
    rows = read_metrics(tmp_path / "metrics.csv")
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    assert [r["step"] for r in rows if r["kind"] == "progress"] == list(range(1, TOTAL_STEPS + 1))
    evals = [r for r in rows if r["kind"] == "evaluation"]
    assert [r["step"] for r in evals] == [10, 20, 30, 40, 50, 60]
    assert evals[0]["is_best"] is True and evals[0]["threshold"] == pytest.approx(0.21)
    assert rows[0]["lr"] == pytest.approx(2e-4) and rows[0]["run"] == "r18-f0"
    assert len(set(_keys(rows))) == len(rows)


def test_resume_drops_rows_beyond_checkpoint_and_continues(tmp_path):
    reference = tmp_path / "reference"
    emit_session(EventBus([MetricsWriter(reference)]))
    run = tmp_path / "run"
    # Session 1 got to step 37 (rows written) but its last checkpoint is at step 30.
    emit_session(EventBus([MetricsWriter(run)]), stop=37, end=None)
    emit_session(EventBus([MetricsWriter(run)]), session=2, resumed_from=30)
    resumed = read_metrics(run / "metrics.csv")
    uninterrupted = read_metrics(reference / "metrics.csv")
    assert _keys(resumed) == _keys(uninterrupted)
    assert [r["session"] for r in resumed if r["step"] in (30, 31)] == [1, 1, 2]


def test_resume_from_previous_session_output_in_input_root(tmp_path):
    previous, out = tmp_path / "input" / "prev-kernel-output", tmp_path / "working"
    emit_session(EventBus([MetricsWriter(previous)]), stop=40, end="handover")
    # Another run's file in the inputs must not be picked up.
    emit_session(EventBus([MetricsWriter(tmp_path / "input" / "other")]), run_name="other",
                 stop=50, end="handover")
    emit_session(EventBus([MetricsWriter(out, input_roots=[tmp_path / "input"])]), session=2,
                 resumed_from=40)
    rows = read_metrics(out / "metrics.csv")
    assert {r["run"] for r in rows} == {"r18-f0"}
    assert [r["step"] for r in rows if r["kind"] == "progress"] == list(range(1, TOTAL_STEPS + 1))


def test_same_step_evaluated_again_after_resume_replaces_row(tmp_path):
    emit_session(EventBus([MetricsWriter(tmp_path)]), stop=30, end="handover")
    emit_session(EventBus([MetricsWriter(tmp_path)]), session=2, resumed_from=30,
                 evaluate_at_resume=True)
    rows = read_metrics(tmp_path / "metrics.csv")
    at_30 = [r for r in rows if r["kind"] == "evaluation" and r["step"] == 30]
    assert len(at_30) == 1 and at_30[0]["session"] == 2
    assert len(set(_keys(rows))) == len(rows)


def test_torn_last_line_is_dropped_and_file_stays_valid(tmp_path):
    emit_session(EventBus([MetricsWriter(tmp_path)]), stop=20, end="handover")
    path = tmp_path / "metrics.csv"
    with open(path, "a") as handle:  # what a kill in the middle of a write leaves behind
        handle.write("r18-f0,progress,1,17000.0,2,2,21,1,0.04")
    assert read_metrics(path)[-1]["step"] == 20
    emit_session(EventBus([MetricsWriter(tmp_path)]), session=2, resumed_from=20)
    rows = read_metrics(path)
    assert [r["step"] for r in rows if r["kind"] == "progress"] == list(range(1, TOTAL_STEPS + 1))
    assert path.read_text().endswith("\n")


def test_fresh_run_replaces_stale_file(tmp_path):
    emit_session(EventBus([MetricsWriter(tmp_path)]), run_name="old")
    emit_session(EventBus([MetricsWriter(tmp_path)]), stop=5, end=None)
    rows = read_metrics(tmp_path / "metrics.csv")
    assert {r["run"] for r in rows} == {"r18-f0"} and len(rows) == 5


def test_artifacts_across_handover_and_finish(tmp_path):
    previous, out = tmp_path / "input" / "s1", tmp_path / "s2"
    emit_session(EventBus([MetricsWriter(previous), ArtifactWriter(previous)]), stop=30,
                 end="handover")
    first = json.loads((previous / "run.json").read_text())
    assert first["status"] == "handover" and first["best_step"] == 30
    assert first["next"] == "push the trainer kernel again"
    assert (previous / "plots" / "history.png").read_bytes().startswith(PNG)

    roots = [tmp_path / "input"]
    emit_session(EventBus([MetricsWriter(out, roots), ArtifactWriter(out, roots)]), session=2,
                 resumed_from=30)
    summary = json.loads((out / "run.json").read_text())
    assert summary["status"] == "finished" and summary["best_f2"] == f2_at(60)
    assert [s["session"] for s in summary["sessions"]] == [1, 2]
    assert [s["ended"] for s in summary["sessions"]] == ["handover", "finished"]
    assert summary["total_wall_s"] >= 0 and summary["config"]["notify"] == "telegram"
    assert summary["code_version"]["imet"]
    for name in ("history", "loss", "f2", "lr"):
        assert (out / "plots" / f"{name}.png").read_bytes().startswith(PNG)
    assert "model.pt" in summary["artifacts"] and "plots/f2.png" in summary["artifacts"]


def test_failure_writes_run_json(tmp_path):
    emit_session(EventBus([ArtifactWriter(tmp_path)]), stop=12, end="failure")
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: boom"


def test_history_marks_stage_switches_and_session_handovers():
    from imet.observe.files import history_figure

    rows = [{"kind": "progress", "step": step, "loss": 1.0 / step, "lr": 1e-3,
             "stage": 1 if step < 4 else 2, "session": 1 if step < 7 else 2}
            for step in range(1, 10)]
    figure = history_figure(rows, ["loss"])
    verticals = {line.get_label(): line.get_xdata()[0] for line in figure.axes[0].lines
                 if list(line.get_xdata()) == [line.get_xdata()[0]] * 2}
    assert verticals == {"stage switch": 4, "session handover": 7}
    assert {t.get_text() for t in figure.axes[0].get_legend().get_texts()} >= {
        "train loss", "stage switch", "session handover"}


def test_panel_plots_are_the_bands_of_the_history_plot(tmp_path):
    # One drawing: loss.png, f2.png and lr.png are history.png cut into its three panels.
    import io

    from PIL import Image

    from imet.observe.files import write_plots

    rows = [{"kind": "progress", "step": s, "loss": 1.0 / s, "lr": 1e-3} for s in range(1, 30)]
    rows += [{"kind": "evaluation", "step": s, "f2": s / 40, "val_loss": 0.5} for s in (10, 20)]
    write_plots(tmp_path, rows, title="run")
    images = {name: Image.open(io.BytesIO((tmp_path / "plots" / f"{name}.png").read_bytes()))
              for name in ("history", "loss", "f2", "lr")}
    whole = images.pop("history")
    assert all(image.width == whole.width for image in images.values())
    assert sum(image.height for image in images.values()) == whole.height
    top = 0
    for image in images.values():  # each band is history.png's pixels, top to bottom
        band = whole.crop((0, top, whole.width, top + image.height))
        assert band.convert("RGBA").tobytes() == image.convert("RGBA").tobytes()
        top += image.height
