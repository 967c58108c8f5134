"""What all report/registry subscribers share: only rank 0 writes, and earlier files are found
under the input roots within a bounded depth, in a reproducible order."""
from __future__ import annotations

import io
import json

import pytest

from imet.observe.files import files_named, report_subscribers
from imet.observe.registry import read_registry, record_train_subscriber, registry_path
from imet.train.events import (
    Checkpoint,
    Evaluation,
    EventBus,
    Finish,
    Handover,
    Progress,
    RunStart,
)
from imet.walk import INPUT_DEPTH


def _emit_run(bus, rank):
    bus.emit(RunStart(run_name="r", arch="tiny_cnn", fold=0, image_size=32, session=1,
                      resumed_from=None, device="cpu", total_steps=4, config={}, kernel=None,
                      rank=rank))
    bus.emit(Progress(stage=1, epoch=0, step=1, total_steps=4, epoch_step=1,
                      steps_per_epoch=4, loss=0.5, lr=1e-3, img_per_s=10.0, eta_run_s=3.0,
                      session_left_s=None))
    bus.emit(Evaluation(step=1, epoch=0, f2=0.4, threshold=0.2, best_f2=0.4, best_step=1,
                        val_loss=0.6, is_best=True, history=[]))
    bus.emit(Finish(best_f2=0.4, best_step=1, duration_s=2.0, sessions=1, artifacts=[],
                    history=[]))
    bus.close()


def test_only_rank_zero_writes(tmp_path):
    outputs = {}
    for rank in (1, 0):
        out = tmp_path / f"rank{rank}"
        out.mkdir()
        console = io.StringIO()
        bus = EventBus(report_subscribers(out, every_s=0, stream=console)
                       + [record_train_subscriber(out)])
        _emit_run(bus, rank)
        outputs[rank] = (sorted(p.name for p in out.iterdir()), console.getvalue())
    assert outputs[1] == ([], "")
    assert {"metrics.csv", "run.json"} <= set(outputs[0][0])
    assert "finished" in outputs[0][1]


def test_a_renamed_field_fails_loudly():
    with pytest.raises(TypeError):
        Checkpoint(step=1, file="state-1.pt")
    with pytest.raises(AttributeError):
        Checkpoint(step=1, path="state-1.pt").file
    with pytest.raises(TypeError):
        EventBus().emit("checkpoint", step=1, path="state-1.pt")


def test_a_resumed_session_takes_the_best_so_far_from_run_start(tmp_path):
    """A resumed session that hands over before its first evaluation, in a folder with no
    earlier run.json or registry: what run.json and the registry say of the best model and
    of the kernel comes from run_start."""
    bus = EventBus(report_subscribers(tmp_path, every_s=0, stream=io.StringIO())
                   + [record_train_subscriber(tmp_path)])
    history = [{"step": 4, "f2": 0.5}, {"step": 8, "f2": 0.6}]
    bus.emit(RunStart(run_name="r", arch="tiny_cnn", fold=0, image_size=32, session=3,
                      resumed_from=8, device="cpu", total_steps=12, config={},
                      kernel="me/imet-trainer-f0", best_f2=0.6, best_step=8, threshold=0.25,
                      history=history))
    bus.emit(Handover(step=8, checkpoint="checkpoints/state-8.pt", reason="budget",
                      next="push again", exit_code=75))
    bus.close()
    summary = json.loads((tmp_path / "run.json").read_text())
    assert (summary["best_f2"], summary["best_step"], summary["threshold"]) == (0.6, 8, 0.25)
    assert summary["sessions"][-1]["kernel"] == "me/imet-trainer-f0"
    [record] = read_registry(registry_path(tmp_path))
    assert (record["best_f2"], record["best_step"], record["threshold"]) == (0.6, 8, 0.25)
    assert record["f2_history"] == [[4, 0.5], [8, 0.6]]
    assert record["kernel"] == "me/imet-trainer-f0"


def test_files_named_is_bounded_and_sorted(tmp_path):
    for folder in ("b", "a", "a/x", "c/" + "/".join(["d"] * INPUT_DEPTH)):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "run.json").write_text("{}")
    found = [p.relative_to(tmp_path).as_posix() for p in
             files_named([tmp_path, tmp_path / "missing", tmp_path / "a" / "run.json"], "run.json")]
    assert found == ["a/run.json", "a/x/run.json", "b/run.json"]
