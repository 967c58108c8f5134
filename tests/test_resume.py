"""Exact resume: a run interrupted anywhere and resumed ends bit-identical to one never stopped.

Every run here trains tiny_cnn on mini-iMet on CPU with dropout and mixup on, so the global torch
RNG, the mixup generator, the sample order and the augmentation streams must all be restored
for the weights to match. Interruptions are real: SIGTERM delivered to this process (or a forked
child) from an event subscriber at a chosen step, a budget with an injected clock, kill -9."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from imet.config import TrainConfig
from imet.errors import HANDED_OVER_EXIT_CODE as EXIT_HANDOVER
from imet.train.checkpoint import checkpoint_dir, list_generations
from imet.train.events import EventBus
from imet.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")

# 32 training images / 8 = 4 steps per epoch; stage 1 is epoch 0 (steps 1-4), stage 2 steps 5-12.
# eval_every=3 adds mid-epoch evaluations at steps 3, 6, 9 besides the epoch ends 4, 8, 12.
# The seed preset and a head-only epoch are asked for explicitly (their per-batch augmentation
# streams and stage switch are what resume must restore); the LRs are --no-pretrained's defaults.
BASE = dict(fold=0, arch="tiny_cnn", pretrained=False, image_size=32, batch_size=8,
            epochs=3, head_epochs=1, preset="seed", eval_every=3, dropout=0.3, mixup_alpha=0.4,
            schedule="onecycle", num_workers=0, notify="off", save_every_min=1e9,
            patience=0, device="cpu")


def make_config(mini_data, out, **overrides) -> TrainConfig:
    values = dict(BASE, data=str(mini_data), folds=str(mini_data / "folds.csv"), out=str(out))
    values.update(overrides)
    return TrainConfig.from_dict(values)


def final_payload(out):
    (step, path), *_ = list_generations(checkpoint_dir(out))
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_end(actual, expected):
    for part in ("model", "scaler"):
        assert actual[part].keys() == expected[part].keys()
        for key in expected[part]:
            assert torch.equal(actual[part][key], expected[part][key]), f"{part}.{key} differs"
    opt_a, opt_e = actual["optimizer"], expected["optimizer"]
    assert opt_a["param_groups"] == opt_e["param_groups"]
    for index, state in opt_e["state"].items():
        for key, value in state.items():
            assert torch.equal(opt_a["state"][index][key], value), f"optimizer {index}.{key}"
    assert actual["scheduler"] == expected["scheduler"]
    counters_a, counters_e = dict(actual["counters"]), dict(expected["counters"])
    for volatile in ("session", "train_time_s"):
        counters_a.pop(volatile), counters_e.pop(volatile)
    assert counters_a == counters_e  # history, best step, loss sums, position...
    assert torch.equal(actual["rng"]["torch"], expected["rng"]["torch"])
    assert torch.equal(actual["rng"]["mixup"], expected["rng"]["mixup"])


class SignalAt:
    """Sends `signum` to this process when the given event fires at `step`."""

    def __init__(self, kind: str, step: int, signum=signal.SIGTERM):
        self.kind, self.step, self.signum = kind, step, signum

    def __call__(self, event):
        if event.kind == self.kind and event.step == self.step:
            os.kill(os.getpid(), self.signum)


class TickClock:
    """A clock that advances one 'second' per reading: the budget runs out after a fixed,
    reproducible amount of work instead of wall time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


@pytest.fixture(scope="module")
def reference(mini_data, tmp_path_factory):
    """The uninterrupted run's final state."""
    out = tmp_path_factory.mktemp("reference")
    result = train(make_config(mini_data, out), EventBus())
    assert result.status == "finished" and result.step == 12
    assert [row["step"] for row in result.history] == [3, 4, 6, 8, 9, 12]
    return final_payload(out)


def resume_to_end(mini_data, out, **overrides):
    result = train(make_config(mini_data, out, **overrides), EventBus())
    assert result.status == "finished", result
    return final_payload(out)


def test_sigterm_mid_epoch_in_stage_1(mini_data, tmp_path, reference):
    result = train(make_config(mini_data, tmp_path), EventBus([SignalAt("progress", 2)]))
    assert (result.status, result.exit_code, result.step, result.reason) == \
        ("handover", EXIT_HANDOVER, 2, "signal")
    handover = (tmp_path / "HANDOVER.json").read_text()
    assert "state-2.pt" in handover and "--resume auto" in handover
    assert_same_end(resume_to_end(mini_data, tmp_path), reference)
    assert not (tmp_path / "HANDOVER.json").exists()


def test_sigint_during_evaluation_at_epoch_end(mini_data, tmp_path, reference):
    # Step 8 ends epoch 1; the signal lands as its evaluation starts: the evaluation is
    # abandoned, the state saved with the evaluation pending, and the resumed run runs it.
    result = train(make_config(mini_data, tmp_path),
                   EventBus([SignalAt("progress", 8, signal.SIGINT)]))
    assert (result.status, result.step) == ("handover", 8)
    saved = final_payload(tmp_path)
    assert saved["counters"]["eval_pending"] and saved["counters"]["epoch"] == 2
    assert [row["step"] for row in saved["counters"]["history"]] == [3, 4, 6]
    assert_same_end(resume_to_end(mini_data, tmp_path), reference)


def test_budget_stops_in_several_sessions(mini_data, tmp_path, reference):
    # Each session gets a budget that holds a few steps; the run is carried by several
    # sessions, each stopping wherever its budget ran out.
    sessions = 0
    while True:
        sessions += 1
        assert sessions < 12, "the run does not progress from one session to the next"
        result = train(make_config(mini_data, tmp_path, time_budget="40s", margin="0s"),
                       EventBus(), clock=TickClock())
        if result.status == "finished":
            break
        assert result.exit_code == EXIT_HANDOVER and result.reason == "budget"
    assert sessions >= 3
    end = final_payload(tmp_path)
    assert end["counters"]["session"] == sessions
    assert_same_end(end, reference)


def cli_command(mini_data, out):
    flags = {"--data": mini_data, "--folds": mini_data / "folds.csv", "--out": out}
    for key, value in BASE.items():
        if isinstance(value, bool):
            flags_key = "--" + key.replace("_", "-")
            flags[flags_key if value else "--no-" + key.replace("_", "-")] = None
        else:
            flags["--" + key.replace("_", "-")] = value
    argv = [sys.executable, "-m", "imet", "train", "--progress-every-s", "0"]
    for key, value in flags.items():
        argv += [key] if value is None else [key, str(value)]
    return argv


def run_until(argv, marker: str, signum) -> tuple[int, str]:
    """Start `imet train`, send `signum` as soon as a console line contains `marker`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env)
    seen = []
    for line in child.stdout:
        seen.append(line)
        if marker in line:
            child.send_signal(signum)
            break
    seen.append(child.stdout.read())
    return child.wait(timeout=120), "".join(seen)


def test_kill_9_then_sigterm_from_outside(mini_data, tmp_path, reference):
    # Real processes, real signals, landing wherever the child happens to be: killed -9 just
    # after its first checkpoint (maybe while writing the next), then SIGTERM'd in the next
    # session; a third session finishes the run.
    argv = cli_command(mini_data, tmp_path)
    code, output = run_until(argv, "checkpoint step", signal.SIGKILL)
    assert code == -signal.SIGKILL, output
    assert list_generations(checkpoint_dir(tmp_path)), output
    code, output = run_until(argv, "| step ", signal.SIGTERM)
    assert code == EXIT_HANDOVER, output
    assert json.loads((tmp_path / "HANDOVER.json").read_text())["reason"] == "signal"
    end = resume_to_end(mini_data, tmp_path)
    assert end["counters"]["session"] == 3
    assert_same_end(end, reference)


def test_resume_from_input_root_into_a_fresh_out_folder(mini_data, tmp_path, reference):
    # Kaggle: the previous session's output is attached read-only as an input; the new
    # session writes into an empty working folder.
    first = tmp_path / "session1"
    train(make_config(mini_data, first), EventBus([SignalAt("progress", 6)]))
    second = tmp_path / "working"
    end = resume_to_end(mini_data, second, input_root=[str(tmp_path / "session1")])
    assert_same_end(end, reference)
    assert (second / "model.pt").is_file()


def test_worker_processes_do_not_change_the_result(mini_data, tmp_path, reference):
    # Persistent workers keep their own copy of the dataset across epochs; the sampler hands
    # them the epoch with every index, so the augmentation stays that of the right epoch.
    result = train(make_config(mini_data, tmp_path, num_workers=2), EventBus())
    assert result.status == "finished"
    assert_same_end(final_payload(tmp_path), reference)


def test_decoding_once_in_memory_does_not_change_the_result(mini_data, tmp_path, reference):
    # The reference kept every image decoded (the default --image-memory-mb); a first session
    # that decodes every time, stopped mid-epoch, and a second that keeps them end the same.
    result = train(make_config(mini_data, tmp_path, image_memory_mb=0),
                   EventBus([SignalAt("progress", 6)]))
    assert (result.status, result.step) == ("handover", 6)
    assert_same_end(resume_to_end(mini_data, tmp_path), reference)


def test_random_init_defaults_resume_exactly(mini_data, tmp_path):
    # What --no-pretrained gives when nothing else is said: no head-only stage, one LR for
    # every group, the resize preset, the head's bias at the classes' log-odds (set on the fresh
    # run only: the resumed one takes it from the checkpoint). Stopped mid-epoch, resumed, it
    # ends as the run never stopped.
    values = {k: v for k, v in BASE.items() if k not in ("head_epochs", "preset")}
    values.update(data=str(mini_data), folds=str(mini_data / "folds.csv"))
    config = TrainConfig.from_dict(dict(values, out=str(tmp_path / "whole")))
    assert (config.head_epochs, config.preset, config.lr_early_mult, config.prior_bias) == \
        (0, "resize", 1.0, True)
    assert train(config, EventBus()).status == "finished"
    stopped = dict(values, out=str(tmp_path / "stopped"))
    result = train(TrainConfig.from_dict(stopped), EventBus([SignalAt("progress", 5)]))
    assert (result.status, result.step) == ("handover", 5)
    assert train(TrainConfig.from_dict(stopped), EventBus()).status == "finished"
    assert_same_end(final_payload(tmp_path / "stopped"), final_payload(tmp_path / "whole"))


def test_a_checkpoint_from_another_torch_warns_and_is_recorded(mini_data, tmp_path, caplog):
    """Kaggle's image may change between sessions: the resumed run is no longer bit-identical,
    so the session says so in one line naming both versions, and its registry record keeps it."""
    import logging

    from imet.observe.registry import REGISTRY_NAME, read_registry, record_train_subscriber
    from imet.train.checkpoint import save_checkpoint

    def session():
        return train(make_config(mini_data, tmp_path, session_steps=2), EventBus(
            [record_train_subscriber(tmp_path)]), clock=TickClock())
    assert session().status == "handover"
    (step, path), *_ = list_generations(checkpoint_dir(tmp_path))
    payload = torch.load(path, map_location="cpu", weights_only=True)
    here = {"torch": str(torch.__version__), "cuda": str(torch.version.cuda or "none")}
    assert {k: payload["versions"][k] for k in here} == here
    payload["versions"].update(torch="2.10.0+cu128", cuda="12.8")
    save_checkpoint(payload, tmp_path, step)
    with caplog.at_level(logging.WARNING):
        assert session().status == "handover"
    change = (f"torch 2.10.0+cu128, CUDA 12.8 -> torch {here['torch']}, CUDA {here['cuda']}")
    [line] = [r.getMessage() for r in caplog.records if "another torch" in r.getMessage()]
    assert change in line and f"state-{step}.pt" in line and "\n" not in line
    first, second = read_registry(tmp_path / REGISTRY_NAME)
    assert first["version_change"] is None and second["version_change"] == change
    assert second["versions"]["torch"] == here["torch"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # its own checkpoints are this torch's again
        session()
    assert not [r for r in caplog.records if "another torch" in r.getMessage()]


def test_metric_choice_resumes_exactly_and_decides_the_best(mini_data, tmp_path):
    # --metric micro-f1: each evaluation tunes its threshold for micro-F1 and the best model
    # follows it; stopped in an evaluation's wake and resumed, the run ends as the whole one.
    whole = tmp_path / "whole"
    assert train(make_config(mini_data, whole, metric="micro-f1"), EventBus()).status == \
        "finished"
    expected = final_payload(whole)
    result = train(make_config(mini_data, tmp_path / "stopped", metric="micro-f1"),
                   EventBus([SignalAt("evaluation", 6)]))
    assert result.status == "handover" and result.step == 6
    actual = resume_to_end(mini_data, tmp_path / "stopped", metric="micro-f1")
    assert_same_end(actual, expected)
    assert actual["config"]["metric"] == "micro-f1"
    c = actual["counters"]
    best = max(c["history"], key=lambda row: row["micro_f1"])
    assert (c["best_score"], c["best_step"]) == (best["micro_f1"], best["step"])
    assert c["best_f2"] == best["f2"]
    # auto: the competition's, resolved before the run starts and saved (2019's data: F2)
    auto = make_config(mini_data, tmp_path / "auto", epochs=1, head_epochs=1, eval_every=0)
    assert auto.metric == "auto" and train(auto, EventBus()).status == "finished"
    assert final_payload(tmp_path / "auto")["config"]["metric"] == "f2"
