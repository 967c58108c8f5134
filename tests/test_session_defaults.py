"""issue 23: `imet train` defaults a newcomer meets — a margin that follows the session, a
session without a step is a failure, loader workers split between torchrun's processes,
pretraining only for an arch that has weights, the handover's next command, `--arch` names."""
from __future__ import annotations

import json
import os
import shlex

import pytest

from imet.cli import build_parser, main
from imet.commands.train import config_from_args
from imet.config import TrainConfig
from imet.errors import HANDOVER_FILE as HANDOVER, UserError
from imet.models import ARCHS
from imet.observe.registry import REGISTRY_NAME, read_registry, record_train_subscriber
from imet.train.checkpoint import next_step_text
from imet.train.events import EventBus
from imet.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--image-size", "32", "--batch-size", "8", "--num-workers", "0", "--notify", "off",
        "--device", "cpu"]


def parsed(*argv):
    argv = ["train", "--data", "d", "--out", "o", *argv]
    return config_from_args(build_parser(argv).parse_args(argv))


@pytest.mark.parametrize("budget,margin_s", [("20s", 10.0), ("60s", 20.0), ("75s", 20.0),
                                              ("5m", 30.0), ("90m", 540.0), ("12h", 600.0)])
def test_the_default_margin_follows_the_session(budget, margin_s):
    assert parsed("--time-budget", budget).margin_seconds() == margin_s
    assert parsed("--time-budget", budget, "--margin", "3s").margin_seconds() == 3.0


@pytest.mark.parametrize("flags", [["--time-budget", "60s", "--margin", "10m"],
                                   ["--time-budget", "60s", "--margin", "60s"],
                                   ["--time-budget", "0"]])
def test_a_margin_that_leaves_no_step_is_refused_before_anything_loads(tmp_path, capsys, flags):
    # The data folder does not exist: the refusal comes before anything is read.
    assert main(["train", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "o"),
                 "--arch", "tiny_cnn", *FAST, *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "leaves no time for a training step" in err
    assert not (tmp_path / "o").exists()


class JumpClock:
    """A clock that stands still until told to jump (start-up that ate the session)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_session_that_hands_over_without_a_step_fails(mini_data, tmp_path):
    clock, events = JumpClock(), []

    def subscriber(event):
        events.append(event)
        if event.kind == "run_start":  # data and model loaded: the start-up took 59 s
            clock.now += 59.0

    config = TrainConfig(data=str(mini_data), folds=str(mini_data / "folds.csv"),
                         out=str(tmp_path), arch="tiny_cnn", pretrained=False, image_size=32,
                         batch_size=8, epochs=1, num_workers=0, device="cpu", notify="off",
                         time_budget="60s")
    bus = EventBus([subscriber, record_train_subscriber(tmp_path)])
    with pytest.raises(UserError, match="no training step fitted in this session") as err:
        train(config, bus, clock=clock)
    assert "\n" not in str(err.value) and "--margin auto keeps 20s" in str(err.value)
    assert events[-1].kind == "failure" and events[-1].user_error
    assert not [e for e in events if e.kind == "handover"]
    assert not (tmp_path / HANDOVER).exists()  # nothing for a chain to push again
    [record] = read_registry(tmp_path / REGISTRY_NAME)
    assert record["status"] == "failed" and "no training step" in record["error"]


def test_loader_workers_split_the_cpus_between_torchrun_processes(monkeypatch):
    auto = TrainConfig()
    assert auto.num_workers == "auto"
    assert auto.worker_count(cpus=4, processes=2) == 2  # Kaggle T4 x2: 2 + 2, not 4 + 4
    assert auto.worker_count(cpus=4, processes=1) == 4
    assert auto.worker_count(cpus=2, processes=4) == 1
    assert auto.worker_count(cpus=64, processes=1) == 8
    assert TrainConfig(num_workers=3).worker_count(cpus=4, processes=2) == 3
    from imet.train.data import loader_workers
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    cpus = len(os.sched_getaffinity(0))
    assert loader_workers(auto.validated()) == max(1, min(8, cpus // 2))
    assert parsed("--num-workers", "4").num_workers == 4
    assert TrainConfig.from_dict({"num_workers": 4}).num_workers == 4
    with pytest.raises(UserError, match="--num-workers must be auto or a number"):
        parsed("--num-workers", "many")


def test_the_workers_do_not_change_the_run():
    assert TrainConfig().fingerprint() == TrainConfig(num_workers=0).fingerprint()


def test_an_arch_without_weights_defaults_to_no_pretraining(tmp_path, capsys):
    assert parsed("--arch", "tiny_cnn").pretrained is False
    # the same run as the explicit flag, so either resumes the other
    assert parsed("--arch", "tiny_cnn").fingerprint() == \
        parsed("--arch", "tiny_cnn", "--no-pretrained").fingerprint()
    assert parsed("--arch", "resnet18").pretrained is True
    assert parsed().fingerprint() == TrainConfig(data="d", out="o").fingerprint()
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"arch": "tiny_cnn"}))
    assert parsed("--config", str(config)).pretrained is False
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--arch", "tiny_cnn", "--pretrained"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--no-pretrained" in err


def test_tiny_cnn_alone_trains(mini_data, tmp_path):
    assert main(["train", "--data", str(mini_data), "--folds", str(mini_data / "folds.csv"),
                 "--out", str(tmp_path), "--arch", "tiny_cnn", "--epochs", "1", *FAST]) == 0


def test_arch_help_lists_the_registry_names(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    arch_help = text[text.index("--arch ARCH"):text.index("--pretrained, --no-pretrained")]
    for name in ARCHS:
        assert name in arch_help, name


@pytest.mark.parametrize("resume", ["auto", "off", "runs/x/state-3.pt"])
def test_the_handover_says_resume_auto_once(resume):
    command = shlex.join(["python", "-m", "imet", "train", "--out", "runs/x", "--resume",
                          resume, "--lr", "0.1"])
    text = next_step_text(command)
    assert text.count("--resume") == 1 and "--resume auto --lr 0.1" in text
    assert text.count("--resume auto") == 1
    assert next_step_text("python -m imet train --out o --resume=off").count("--resume") == 1
    assert "--resume auto`" in next_step_text("python -m imet train --out o")


def test_a_start_up_that_spent_the_budget_fails_before_loading(tmp_path):
    events = []
    config = TrainConfig(data=str(tmp_path / "absent"), out=str(tmp_path / "o"),
                         arch="tiny_cnn", pretrained=False, time_budget="60s", notify="off")
    with pytest.raises(UserError, match="no training step fitted"):  # not: data not found
        train(config, EventBus([events.append]), clock=JumpClock(), session_start=900.0)
    assert [e.kind for e in events] == ["failure"] and not (tmp_path / "o").exists()
