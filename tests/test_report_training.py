"""A tiny real training run (the engine's loop) with the report and registry subscribers on its
bus leaves metrics.csv, run.json, plots and a registry record that agree with what it returned."""
from __future__ import annotations

import io
import json

from imet.engine.config import TrainConfig
from imet.engine.events import EventBus
from imet.engine.loop import train
from imet.registry import REGISTRY_NAME, read_registry, record_train_subscriber
from imet.report import report_subscribers
from imet.report.metrics_csv import read_metrics


def test_tiny_training_run_writes_report_artifacts(mini_data, tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(data=str(mini_data), folds=str(mini_data / "folds.csv"), out=str(out),
                         arch="tiny_cnn", pretrained=False, image_size=32, epochs=2,
                         head_epochs=1, batch_size=32, num_workers=0, device="cpu",
                         notify="off", run_name="tiny-f0")
    console = io.StringIO()
    bus = EventBus(report_subscribers(out, every_s=0, stream=console)
                   + [record_train_subscriber(out)])
    result = train(config, bus)
    bus.close()
    assert result.status == "finished"

    rows = read_metrics(out / "metrics.csv")
    progress = [r for r in rows if r["kind"] == "progress"]
    evals = [r for r in rows if r["kind"] == "evaluation"]
    assert [r["step"] for r in progress] == list(range(1, result.step + 1))
    assert [r["stage"] for r in progress][0] == 1 and progress[-1]["stage"] == 2
    assert [r["step"] for r in evals] == [h["step"] for h in result.history]
    assert max(r["f2"] for r in evals) == result.best_f2

    summary = json.loads((out / "run.json").read_text())
    assert summary["status"] == "finished" and summary["run_name"] == "tiny-f0"
    assert summary["best_f2"] == result.best_f2 and summary["best_step"] == result.best_step
    assert summary["config_hash"] == config.fingerprint()
    for name in summary["plots"]:
        assert (out / name).read_bytes().startswith(b"\x89PNG")

    [record] = read_registry(out / REGISTRY_NAME)
    assert (record["run_id"], record["kind"], record["session"], record["status"]) == \
        ("tiny-f0", "train", 1, "finished")
    assert record["best_f2"] == result.best_f2 and record["arch"] == "tiny_cnn"
    assert "| step 1/" in console.getvalue() and "imet: finished" in console.getvalue()
