"""Multi-process training (torch.distributed, gloo on CPU, 2 processes) against one process.

What is the same at any world size, exactly: the global sample order and augmentation (the
sampler gives each rank its slice of every global batch; augmentation comes from (seed, epoch,
sample index)), the step/epoch/position counters, the LR schedule, the evaluation rows (each
rank predicts its chunk, gathered back in row order).

What differs, and why the comparison is within ATOL rather than bit-for-bit:
- gradients are averaged over the ranks by DDP's all_reduce: (sum of 4 + sum of 4) / 2 instead
  of one mean over 8, a different order of float additions (and the loss/BatchNorm sums the
  same way), so weights drift by a few ULPs per step;
- BatchNorm: without --sync-bn each rank normalizes by the statistics of its own share of the
  batch, which is a different model altogether (measured on this setup: head weights 2e-3 and
  running variances 7e-2 apart after 12 steps). These runs use --sync-bn (gloo: the engine's
  GlooSyncBatchNorm) so the batch statistics are global, as in one process;
- dropout and mixup are off: each rank draws its masks / mixing permutation for its own slice,
  which cannot equal one draw over the whole batch.
Measured on this setup: max abs difference 4.8e-7 (a BatchNorm running variance), weights
within 3e-8; ATOL below leaves room for other BLAS builds.

Interruptions are real: SIGTERM delivered to rank 1 alone (rank 0 must stop with it at the same
step: the stop is a collective decision), and torchrun launching the real CLI."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from imet.config import TrainConfig
from imet.errors import HANDED_OVER_EXIT_CODE as EXIT_HANDOVER, UserError
from imet.observe.files import MetricsWriter
from imet.train import distributed
from imet.train.checkpoint import checkpoint_dir, list_generations
from imet.train.events import EventBus
from imet.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5

# 32 training images / 8 = 4 global steps per epoch; stage 1 is steps 1-4, stage 2 steps 5-12;
# evaluations at steps 3, 4, 6, 8, 9, 12.
# The preset, LRs and prior bias are explicit: the CLI run below would otherwise get
# --no-pretrained's defaults, and TrainConfig(**BASE) the ImageNet recipe's.
BASE = dict(fold=0, arch="tiny_cnn", pretrained=False, image_size=32, batch_size=8,
            epochs=3, head_epochs=1, preset="seed", lr=4e-4, lr_late_mult=0.3,
            lr_early_mult=0.1, prior_bias=True, eval_every=3, dropout=0.0, mixup_alpha=0.0,
            schedule="onecycle", num_workers=0, notify="off", save_every_min=1e9,
            patience=0, device="cpu", sync_bn=True)


def config_values(mini_data, out, **overrides) -> dict:
    values = dict(BASE, data=str(mini_data), folds=str(mini_data / "folds.csv"), out=str(out))
    values.update(overrides)
    return values


def final_payload(out):
    (step, path), *_ = list_generations(checkpoint_dir(out))
    return torch.load(path, map_location="cpu", weights_only=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metrics_steps(run) -> dict[str, list[int]]:
    """The steps of metrics.csv's rows by kind: a rank other than 0 writing would double them."""
    steps: dict[str, list[int]] = {}
    with open(run / "metrics.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            steps.setdefault(row["kind"], []).append(int(row["step"]))
    return steps


def max_abs_difference(actual, expected) -> float:
    worst = 0.0
    assert actual["model"].keys() == expected["model"].keys()
    for key, value in expected["model"].items():
        if value.is_floating_point():
            worst = max(worst, float((actual["model"][key] - value).abs().max()))
        else:
            assert torch.equal(actual["model"][key], value), key
    return worst


def assert_close_end(actual, expected):
    difference = max_abs_difference(actual, expected)
    print(f"max abs difference from the 1-process run: {difference:.2e} (tolerance {ATOL})")
    assert difference <= ATOL
    for index, state in expected["optimizer"]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(actual["optimizer"]["state"][index][key], value,
                                       atol=ATOL, rtol=0)
    assert actual["scheduler"] == expected["scheduler"]
    counters_a, counters_e = dict(actual["counters"]), dict(expected["counters"])
    history_a, history_e = counters_a.pop("history"), counters_e.pop("history")
    for name in ("session", "train_time_s", "loss_sum", "best_f2", "best_threshold"):
        counters_a.pop(name), counters_e.pop(name)
    assert counters_a == counters_e  # step, epoch, position, samples seen, best step...
    assert [r["step"] for r in history_a] == [r["step"] for r in history_e]
    for row_a, row_e in zip(history_a, history_e):
        assert row_a["f2"] == pytest.approx(row_e["f2"], abs=1e-4)
        assert row_a["val_loss"] == pytest.approx(row_e["val_loss"], abs=1e-5)
        assert row_a["train_loss"] == pytest.approx(row_e["train_loss"], abs=1e-5)


class SignalAt:
    def __init__(self, step: int):
        self.step = step

    def __call__(self, event):
        if event.kind == "progress" and event.step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def _rank_main(rank, world_size, port, values, signal_rank, signal_step, report_dir):
    """One rank, set up the way torchrun sets up its workers (environment variables)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # Every rank has a metrics.csv writer, as `imet train` does: only rank 0's may write.
    subscribers = [MetricsWriter(values["out"], [])]
    if rank == signal_rank:
        subscribers.append(SignalAt(signal_step))
    result = train(TrainConfig(**values).validated(), EventBus(subscribers))
    with open(os.path.join(report_dir, f"rank{rank}.json"), "w") as handle:
        json.dump({"status": result.status, "step": result.step, "reason": result.reason,
                   "exit_code": result.exit_code}, handle)


@pytest.fixture(scope="module")
def reference(mini_data, tmp_path_factory):
    """One process, uninterrupted."""
    out = tmp_path_factory.mktemp("reference")
    result = train(TrainConfig(**config_values(mini_data, out)).validated(), EventBus())
    assert result.status == "finished" and result.step == 12
    return final_payload(out)


def test_two_processes_stop_together_and_resume_on_one(mini_data, tmp_path, reference):
    reports = tmp_path / "reports"
    reports.mkdir()
    values = config_values(mini_data, tmp_path / "run")
    # SIGTERM reaches rank 1 alone, at step 5 (the first step of stage 2).
    mp.spawn(_rank_main, args=(2, free_port(), values, 1, 5, str(reports)), nprocs=2)
    results = [json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results[0] == results[1] == {"status": "handover", "step": 5, "reason": "signal",
                                        "exit_code": EXIT_HANDOVER}
    run = tmp_path / "run"
    assert json.loads((run / "HANDOVER.json").read_text())["step"] == 5
    assert [step for step, _ in list_generations(checkpoint_dir(run))] == [5, 4]
    assert metrics_steps(run) == {"progress": [1, 2, 3, 4, 5], "evaluation": [3, 4]}

    result = train(TrainConfig(**config_values(mini_data, run)).validated(), EventBus())
    assert (result.status, result.step) == ("finished", 12)
    actual = final_payload(run)
    assert actual["counters"]["session"] == 2
    assert_close_end(actual, reference)


def test_one_process_resumes_on_two_through_torchrun(mini_data, tmp_path, reference):
    run = tmp_path / "run"
    values = config_values(mini_data, run)
    first = train(TrainConfig(**values).validated(), EventBus([SignalAt(2)]))
    assert (first.status, first.step) == ("handover", 2)  # mid-epoch, in stage 1

    flags = [f"--{name.replace('_', '-')}={value}" for name, value in values.items()
             if not isinstance(value, (bool, list)) and value is not None]
    flags += ["--no-pretrained", "--sync-bn"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "imet", "train", *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    actual = final_payload(run)
    assert (actual["counters"]["step"], actual["counters"]["session"]) == (12, 2)
    assert_close_end(actual, reference)
    assert metrics_steps(run) == {"progress": list(range(3, 13)),
                                  "evaluation": [3, 4, 6, 8, 9, 12]}


def test_batch_not_divisible_by_world_size_is_refused(mini_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    config = TrainConfig(**config_values(mini_data, tmp_path, batch_size=7)).validated()
    with pytest.raises(UserError, match=r"--batch-size 7 is not divisible by the 2 processes"):
        distributed.start(config)


def test_single_process_is_not_distributed(mini_data, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    group = distributed.start(TrainConfig(**config_values(mini_data, tmp_path)).validated())
    assert (group.enabled, group.rank, group.world_size) == (False, 0, 1)
    assert group.any_of(True, False) == (True, False)


def test_trainer_kernel_launches_torchrun_on_several_gpus():
    from imet.kaggle.session import train_launcher

    assert train_launcher(2)[1:] == ["-m", "torch.distributed.run", "--standalone",
                                     "--nproc_per_node", "2", "-m", "imet"]
    assert train_launcher(1)[1:] == ["-m", "imet"]
    assert train_launcher(0)[1:] == ["-m", "imet"]