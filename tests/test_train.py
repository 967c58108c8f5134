"""`imet train` end to end on mini-iMet, its config handling, stages and schedules."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from imet.cli import main
from imet.config import TrainConfig
from imet.errors import UserError
from imet.models import build_model
from imet.models.modelfile import load_model_file
from imet.train.checkpoint import checkpoint_dir, list_generations
from imet.train.state import SCHEDULES, build_optimizer, build_scheduler, set_trainable

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--arch", "tiny_cnn", "--no-pretrained", "--image-size", "32", "--batch-size", "8",
        "--num-workers", "0", "--notify", "off", "--device", "cpu"]


def train_args(mini_data, out, *extra):
    return ["train", "--data", str(mini_data), "--folds", str(mini_data / "folds.csv"),
            "--out", str(out), *FAST, *extra]


def test_train_writes_every_artifact(mini_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(mini_data, out, "--epochs", "2", "--head-epochs", "1")) == 0
    model, info = load_model_file(out / "model.pt")
    assert info["arch"] == "tiny_cnn" and info["extra"]["f2"] > 0
    assert (out / "metrics.csv").is_file() and (out / "run.json").is_file()
    assert list((out / "plots").glob("*.png"))
    assert not (out / "HANDOVER.json").exists()
    state = torch.load(list_generations(checkpoint_dir(out))[0][1], weights_only=True)
    counters = state["counters"]
    assert counters["finished"] and counters["stop_reason"] == "epochs" and counters["step"] == 8
    assert [row["stage"] for row in counters["history"]] == [1, 2]
    assert state["versions"]["torch"] == str(torch.__version__)
    # Running the finished run again resumes nothing and trains nothing.
    assert main(train_args(mini_data, out, "--epochs", "2", "--head-epochs", "1")) == 0
    assert list_generations(checkpoint_dir(out))[0][0] == 8


def test_out_of_budget_hands_over_with_exit_75(mini_data, tmp_path, capsys):
    out = tmp_path / "run"
    # A first session of one step brings in the imports, which a cold process counts as
    # start-up; 1000 epochs then do not fit in 3 s (1.5 s after the default margin).
    assert main(train_args(mini_data, out, "--epochs", "1000", "--patience", "0",
                           "--session-steps", "1")) == 75
    code = main(train_args(mini_data, out, "--epochs", "1000", "--patience", "0",
                           "--time-budget", "3s"))
    assert code == 75
    handover = json.loads((out / "HANDOVER.json").read_text())
    assert handover["reason"] == "budget" and handover["exit_code"] == 75
    assert 1 < handover["step"] < handover["total_steps"]
    assert handover["checkpoint"].endswith(".pt") and "--resume auto" in handover["next"]
    assert "handed over" in capsys.readouterr().err


def test_config_file_with_command_line_override(mini_data, tmp_path):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"epochs": 7, "head-epochs": 2, "lr": 0.01,
                                  "input_root": "/kaggle/input"}))
    from imet.cli import build_parser
    from imet.commands.train import config_from_args
    argv = train_args(mini_data, tmp_path / "o", "--config", str(config), "--lr", "0.002")
    parsed = config_from_args(build_parser(argv).parse_args(argv))
    assert (parsed.epochs, parsed.head_epochs, parsed.lr) == (7, 2, 0.002)
    assert parsed.input_root == ["/kaggle/input"] and parsed.pretrained is False


def test_random_init_gets_its_own_defaults_and_explicit_flags_win(mini_data, tmp_path):
    from imet.cli import build_parser
    from imet.commands.train import config_from_args
    from imet.config import RANDOM_INIT_DEFAULTS

    def parsed(*flags):
        argv = ["train", "--data", str(mini_data), "--out", str(tmp_path), *flags]
        return config_from_args(build_parser(argv).parse_args(argv))

    scratch = parsed("--no-pretrained")
    assert {k: getattr(scratch, k) for k in RANDOM_INIT_DEFAULTS} == RANDOM_INIT_DEFAULTS
    imagenet = parsed()  # pretrained weights keep the head-only stage
    assert (imagenet.head_epochs, imagenet.preset, imagenet.lr, imagenet.lr_early_mult,
            imagenet.prior_bias) == (1, "resize", 5e-3, 1.0, True)
    writeup = parsed("--recipe", "writeup")  # the write-ups' recipe, as it was
    assert (writeup.head_epochs, writeup.preset, writeup.lr, writeup.lr_early_mult,
            writeup.prior_bias) == (1, "seed", 4e-4, 0.1, False)
    told = parsed("--no-pretrained", "--head-epochs", "2", "--preset", "seed", "--lr", "1e-4")
    assert (told.head_epochs, told.preset, told.lr, told.lr_late_mult) == (2, "seed", 1e-4, 1.0)


def test_bad_config_is_a_one_line_error(mini_data, tmp_path, capsys):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"epoch": 3}))
    assert main(train_args(mini_data, tmp_path / "o", "--config", str(config))) == 2
    err = capsys.readouterr().err
    assert "unknown setting 'epoch'" in err and str(config) in err and len(err.splitlines()) == 1
    assert main(train_args(mini_data, tmp_path / "o", "--time-budget", "soon")) == 2
    assert "--time-budget" in capsys.readouterr().err


def test_changed_flags_refuse_the_old_checkpoint(mini_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(mini_data, out, "--epochs", "1", "--session-steps", "1")) == 75
    # The session's settings are not part of the run's identity; the learning rate is.
    assert main(train_args(mini_data, out, "--epochs", "1", "--lr", "0.1")) == 2
    assert "another training config" in capsys.readouterr().err


def test_fingerprint_ignores_paths_and_session_settings():
    base = TrainConfig(data="/a", out="/b", time_budget="9h", num_workers=2)
    moved = TrainConfig(data="/kaggle/input/x", out="/kaggle/working", time_budget="12h",
                        num_workers=4, input_root=["/kaggle/input"], notify="off")
    assert base.fingerprint() == moved.fingerprint()
    assert base.fingerprint() != TrainConfig(fold=1).fingerprint()
    with pytest.raises(UserError, match="--head-epochs"):
        TrainConfig(epochs=2, head_epochs=3).validated()


def test_stage_1_trains_the_head_only_and_stage_2_every_group():
    model = build_model("tiny_cnn", 5)
    groups = model.param_groups()
    config = TrainConfig(lr=1e-3, head_lr=5e-3, lr_late_mult=0.5, lr_early_mult=0.1)
    set_trainable(groups, 1)
    stage1 = build_optimizer(groups, config, 1)
    assert [g["name"] for g in stage1.param_groups] == ["head"]
    assert not any(p.requires_grad for p in groups["early"] + groups["late"])
    set_trainable(groups, 2)
    stage2 = build_optimizer(groups, config, 2)
    assert {g["name"]: g["lr"] for g in stage2.param_groups} == \
        {"early": pytest.approx(1e-4), "late": pytest.approx(5e-4), "head": 1e-3}
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_steps_per_batch_and_saves_weights_only(name, tmp_path):
    model = build_model("tiny_cnn", 5)
    config = TrainConfig(schedule=name, lr=1e-3, warmup=0.2)
    optimizer = build_optimizer(model.param_groups(), config, 2)
    scheduler = build_scheduler(optimizer, config, total_steps=20, steps_per_epoch=10)
    lrs = []
    for _ in range(20):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[-1]["lr"])
    assert all(lr > 0 for lr in lrs[:-1])
    if name != "constant":
        assert len(set(round(lr, 12) for lr in lrs)) > 3
    torch.save(scheduler.state_dict(), tmp_path / "s.pt")
    restored = build_scheduler(build_optimizer(model.param_groups(), config, 2), config, 20, 10)
    restored.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert restored.state_dict() == scheduler.state_dict()


def test_unknown_schedule_names_the_choices():
    model = build_model("tiny_cnn", 5)
    config = TrainConfig(schedule="step")
    optimizer = build_optimizer(model.param_groups(), config, 2)
    with pytest.raises(UserError, match="onecycle, cosine, cyclic"):
        build_scheduler(optimizer, config, 10, 5)


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    import dataclasses
    for spec in dataclasses.fields(TrainConfig):  # but those imet fills in itself
        assert ("--" + spec.name.replace("_", "-") in text) is not spec.metadata["internal"]
    assert "75" in text and "--config" in text


CONTRACT_FIELDS = {
    "run_start": {"run_name", "arch", "fold", "image_size", "session", "resumed_from", "device",
                  "total_steps", "config", "kernel", "rank"},
    "progress": {"stage", "epoch", "step", "total_steps", "epoch_step", "steps_per_epoch", "loss",
                 "lr", "img_per_s", "eta_run_s", "session_left_s"},
    "evaluation": {"step", "epoch", "f2", "threshold", "best_f2", "best_step", "val_loss",
                   "is_best", "history"},
    "checkpoint": {"step", "path"},
    "handover": {"step", "checkpoint", "reason", "next", "exit_code"},
    "finish": {"best_f2", "best_step", "duration_s", "sessions", "artifacts", "history"},
    "failure": {"error", "traceback"},
}


def test_events_carry_the_contract_fields(mini_data, tmp_path):
    from imet.train.events import EventBus
    from imet.train.loop import train

    events = []
    config = TrainConfig(data=str(mini_data), out=str(tmp_path / "run"), arch="tiny_cnn",
                         pretrained=False, image_size=32, batch_size=8, epochs=2, head_epochs=1,
                         num_workers=0, notify="off", device="cpu", save_every=3)

    def stop_at_step_5(event):
        events.append(event)
        if event.kind == "progress" and event.step == 5:
            import os
            import signal
            os.kill(os.getpid(), signal.SIGTERM)

    assert train(config, EventBus([stop_at_step_5])).exit_code == 75
    assert train(config, EventBus([events.append])).status == "finished"
    bad = TrainConfig(**{**config.to_dict(), "data": str(tmp_path / "missing")})
    with pytest.raises(UserError):
        train(bad, EventBus([events.append]))
    kinds = [e.kind for e in events]
    assert set(kinds) == set(CONTRACT_FIELDS)
    for event in events:
        fields = {f.name for f in dataclasses.fields(event)}
        assert CONTRACT_FIELDS[event.kind] <= fields, event.kind
        json.dumps(dataclasses.asdict(event))  # JSON-able
    starts = [e for e in events if e.kind == "run_start"]
    assert [(s.session, s.resumed_from) for s in starts] == [(1, None), (2, 5)]
    # A resumed session starts with the run's best so far, as the first session left it.
    assert starts[0].best_f2 is None and starts[0].history == []
    before = events[:events.index(starts[1])]
    last = [e for e in before if e.kind == "evaluation"][-1]
    best = [e for e in before if e.kind == "evaluation" and e.is_best][-1]
    assert (starts[1].best_f2, starts[1].best_step, starts[1].threshold) == \
        (best.f2, best.step, best.threshold)
    assert starts[1].history == last.history
    saved = [e.step for e in events if e.kind == "checkpoint"]
    assert saved[:3] == [3, 4, 5]  # every 3 steps, after the epoch-end evaluation, at the stop
    assert "missing" in [e for e in events if e.kind == "failure"][0].error


@pytest.mark.parametrize("preset", ["seed", "resize"])
def test_the_seed_preset_augments_each_training_batch_on_the_device(mini_data, preset):
    """The training set hands each sample's parameters along; the step applies them before
    normalizing (and the loss sees it); `resize` has no per-batch part."""
    from torch.utils.data import default_collate

    from imet.data.transforms import augment_batch, normalize_batch
    from imet.train.data import load_run_data
    from imet.train.loop import StepRunner
    from imet.train.state import TrainState

    config = TrainConfig(data=str(mini_data), folds=str(mini_data / "folds.csv"),
                         arch="tiny_cnn", pretrained=False, image_size=32, batch_size=8,
                         preset=preset, head_epochs=0, device="cpu").validated()
    data = load_run_data(config)
    batch = default_collate([data.train_set[(0, i)] for i in range(8)])
    assert len(batch) == (4 if preset == "seed" else 3)

    def runner():
        torch.manual_seed(0)
        model = build_model("tiny_cnn", data.train_set.num_classes)
        steps = StepRunner(config, torch.device("cpu"))
        steps.bind(TrainState(config, model, model.param_groups(), 4, {}, "", steps.precision,
                              "cpu"), data)
        return steps

    steps = runner()
    plain = normalize_batch(batch[0], steps.norm)
    if preset == "resize":
        assert torch.equal(steps.prepare(batch[0]), plain)
        return
    prepared = steps.prepare(batch[0], batch[3])
    assert torch.equal(prepared, steps.norm.apply_(augment_batch(batch[0], batch[3])))
    assert not torch.equal(prepared, plain)
    assert steps.train_step(batch) != runner().train_step(batch[:3])
