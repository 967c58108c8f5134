"""Tiny real training runs (the engine's loop) with the report and registry subscribers on the
bus: two chained sessions the Kaggle way (a budget handover, then a new output folder with the
first one attached as input) leave one continuous metrics.csv, run.json, plots and registry."""
from __future__ import annotations

import io
import json

from report_sim import StepClock

from imet.config import TrainConfig
from imet.observe.files import read_metrics, report_subscribers
from imet.observe.registry import REGISTRY_NAME, read_registry, record_train_subscriber
from imet.train.events import EventBus
from imet.train.loop import train


def _session(mini_data, out, budget, input_roots=()):
    config = TrainConfig(data=str(mini_data), folds=str(mini_data / "folds.csv"), out=str(out),
                         input_root=[str(r) for r in input_roots], arch="tiny_cnn",
                         pretrained=False, image_size=32, epochs=2, head_epochs=1, batch_size=16,
                         num_workers=0, device="cpu", notify="off", run_name="tiny-f0",
                         time_budget=budget, margin="0s")
    console = io.StringIO()
    bus = EventBus(report_subscribers(out, input_roots, every_s=0, stream=console)
                   + [record_train_subscriber(out, input_roots)])
    result = train(config, bus, clock=StepClock())
    bus.close()
    return config, result, console.getvalue()


def test_chained_training_sessions_write_continuous_artifacts(mini_data, tmp_path):
    first_out = tmp_path / "input" / "session-1-output"
    _, first, _ = _session(mini_data, first_out, "20s")
    assert first.status == "handover" and 0 < first.step
    assert json.loads((first_out / "run.json").read_text())["status"] == "handover"

    out = tmp_path / "working"
    config, result, console = _session(mini_data, out, "9h", [tmp_path / "input"])
    assert result.status == "finished" and result.step > first.step

    rows = read_metrics(out / "metrics.csv")
    progress = [r for r in rows if r["kind"] == "progress"]
    evals = [r for r in rows if r["kind"] == "evaluation"]
    assert [r["step"] for r in progress] == list(range(1, result.step + 1))
    assert {r["session"] for r in progress if r["step"] > first.step} == {2}
    assert progress[0]["stage"] == 1 and progress[-1]["stage"] == 2
    assert [r["step"] for r in evals] == [h["step"] for h in result.history]
    assert max(r["f2"] for r in evals) == result.best_f2

    summary = json.loads((out / "run.json").read_text())
    assert summary["status"] == "finished" and summary["run_name"] == "tiny-f0"
    assert [(s["session"], s["ended"], s["resumed_from"]) for s in summary["sessions"]] == \
        [(1, "handover", None), (2, "finished", first.step)]
    assert summary["best_f2"] == result.best_f2 and summary["best_step"] == result.best_step
    assert summary["config_hash"] == config.fingerprint()
    for name in summary["plots"]:
        assert (out / name).read_bytes().startswith(b"\x89PNG")

    records = read_registry(out / REGISTRY_NAME)
    assert [(r["run_id"], r["kind"], r["session"], r["status"]) for r in records] == \
        [("tiny-f0", "train", 1, "handover"), ("tiny-f0", "train", 2, "finished")]
    assert records[-1]["best_f2"] == result.best_f2 and records[-1]["arch"] == "tiny_cnn"
    assert f"resuming from step {first.step}" in console and "imet: finished" in console
