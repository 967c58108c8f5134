"""`imet train --init RUN --train-groups head` (last-layer tuning, issue 19): a model trained on one
mini-iMet draw has its head tuned on another draw (a small labelled set from another
distribution). The body ends as it came, BatchNorm statistics included; the untuned model's F2
is recorded before the first step and is what `imet validate` gives the source model on that
fold; the init model's fingerprint is part of the config; an interrupted run resumes
bit-identically; a model of another arch or label space is refused in one line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from test_resume import SignalAt, assert_same_end, final_payload, make_config

from imet.data.folds import make_folds, write_folds
from imet.data.labels import LabelSpace, read_labels, read_train
from imet.data.mini_imet import generate
from imet.models import build_model
from imet.models.modelfile import read_model_file, save_model_file
from imet.observe.files import ArtifactWriter
from imet.predict.pipeline import InferenceOptions
from imet.predict.validate import validate_runs
from imet.train.checkpoint import ForeignCheckpointError
from imet.train.events import EventBus
from imet.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")

# 32 training images / 8 = 4 steps an epoch; epoch 0 is stage 1 (head only), step 6 is inside
# epoch 1, in stage 2.
TUNE = dict(train_groups="head", epochs=2, eval_every=0)


@pytest.fixture(scope="module")
def source(mini_data, tmp_path_factory):
    """A run trained on mini-iMet's seed-0 draw: its folder holds model.pt."""
    out = tmp_path_factory.mktemp("source") / "run"
    result = train(make_config(mini_data, out, epochs=2, eval_every=0), EventBus())
    assert result.status == "finished" and (out / "model.pt").is_file()
    return out


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """Another draw of mini-iMet (seed 1): same labels, other images, with 2 folds."""
    root = tmp_path_factory.mktemp("other") / "mini-imet"
    generate(root, n_train=64, n_test=8, size=48, seed=1)
    ids, targets = read_train(root / "train.csv", read_labels(root / "labels.csv"))
    write_folds(root / "folds.csv", ids, make_folds(targets, 2, seed=0))
    return root


@pytest.fixture(scope="module")
def tuned(source, other, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "run"
    config = make_config(other, out, init=str(source), **TUNE)
    result = train(config, EventBus([ArtifactWriter(out)]))
    assert result.status == "finished" and result.step == 8
    return out, config


def test_head_tuning_leaves_the_body_as_it_came_and_changes_the_head(source, tuned):
    out, _ = tuned
    start = read_model_file(source / "model.pt")["state_dict"]
    end = final_payload(out)["model"]
    assert end.keys() == start.keys()
    body = [k for k in start if not k.startswith("head.")]
    assert any("running_mean" in k for k in body)  # BatchNorm statistics are part of the body
    assert all(torch.equal(end[k], start[k]) for k in body), \
        [k for k in body if not torch.equal(end[k], start[k])]
    assert not torch.equal(end["head.linear.weight"], start["head.linear.weight"])
    groups = final_payload(out)["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["head"]


def test_the_untuned_f2_is_what_validate_gives_the_source_model(source, other, tuned,
                                                                 tmp_path):
    out, config = tuned
    init_f2 = final_payload(out)["counters"]["init_f2"]
    summary = json.loads((out / "run.json").read_text())
    assert summary["init_f2"] == init_f2 and summary["best_f2"] >= 0
    # The source model (fold 0 as it trained) on the other draw's fold 0, without TTA.
    validated = validate_runs(other, other / "folds.csv", [source], tmp_path / "validate",
                              options=InferenceOptions(tta=("none",), device="cpu",
                                                       num_workers=0),
                              log=lambda text: None)
    assert validated["runs"][0]["f2_global"] == pytest.approx(init_f2, abs=1e-6)
    assert len(config.init_fingerprint) == 16
    plain = make_config(other, out, **TUNE)
    assert config.fingerprint() != plain.fingerprint()


def test_an_init_run_validates_out_of_fold(other, tuned, tmp_path):
    out, _ = tuned
    validated = validate_runs(other, None, [out], tmp_path / "validate",
                              options=InferenceOptions(tta=("none",), device="cpu",
                                                       num_workers=0),
                              log=lambda text: None)
    assert validated["folds"] == [0] and validated["runs"][0]["name"] == "run"
    assert validated["runs"][0]["f2_global"] == pytest.approx(
        json.loads((out / "run.json").read_text())["best_f2"], abs=1e-6)


def test_sigterm_mid_epoch_resumes_bit_identically_and_refuses_another_init(
        source, other, tuned, tmp_path):
    out = tmp_path / "stopped"
    result = train(make_config(other, out, init=str(source), **TUNE),
                   EventBus([SignalAt("progress", 6)]))
    assert (result.status, result.step, result.reason) == ("handover", 6, "signal")

    # Another model (one more step of training) is another config: refused.
    another = tmp_path / "another.pt"
    payload = read_model_file(source / "model.pt")
    state = {k: v.clone() for k, v in payload["state_dict"].items()}
    state["head.linear.bias"] += 1
    model = build_model("tiny_cnn", len(payload["labels"]["attribute_ids"]))
    model.load_state_dict(state)
    save_model_file(another, model, "tiny_cnn", payload["config"],
                    LabelSpace.from_dict(payload["labels"]))
    with pytest.raises(ForeignCheckpointError, match="init_fingerprint"):
        train(make_config(other, out, init=str(another), **TUNE), EventBus())

    result = train(make_config(other, out, init=str(source), **TUNE), EventBus())
    assert result.status == "finished"
    assert_same_end(final_payload(out), final_payload(tuned[0]))


def _train_cli(data, out, *flags):
    return subprocess.run([sys.executable, "-m", "imet", "train", "--data", str(data),
                           "--out", str(out), "--batch-size", "8", "--image-size", "32",
                           "--epochs", "1", "--device", "cpu", "--num-workers", "0",
                           "--notify", "off", "--train-groups", "head", *flags],
                          capture_output=True, text=True, timeout=300)


def test_the_cli_takes_the_arch_from_the_run_and_prints_the_untuned_f2(source, other,
                                                                       tmp_path):
    proc = _train_cli(other, tmp_path / "run", "--init", str(source))
    assert proc.returncode == 0, proc.stderr
    assert "untuned F2" in proc.stdout and "(untuned " in proc.stdout, proc.stdout
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    assert summary["arch"] == "tiny_cnn" and summary["init_f2"] is not None


@pytest.mark.parametrize("case", ["arch", "labels", "missing"])
def test_a_foreign_init_model_is_refused_in_one_line_and_nothing_is_written(
        case, source, other, tmp_path):
    init, flags, words = str(source), [], ()
    if case == "arch":
        flags, words = ["--arch", "mobilenet_v3_small", "--no-pretrained"], \
            ("model.pt", "tiny_cnn", "--arch mobilenet_v3_small")
    elif case == "labels":
        payload = read_model_file(source / "model.pt")
        labels = LabelSpace.from_dict(payload["labels"])
        fewer = LabelSpace(labels.attribute_ids[:-1], labels.names[:-1])
        init = str(tmp_path / "fewer.pt")
        save_model_file(init, build_model("tiny_cnn", fewer.num_classes), "tiny_cnn",
                        payload["config"], fewer)
        words = ("fewer.pt", "another label space", "labels.csv")
    else:
        init = str(tmp_path / "empty-run")
        (tmp_path / "empty-run").mkdir()
        words = ("--init", "empty-run/model.pt", "model file not found")
    proc = _train_cli(other, tmp_path / "run", "--init", init, *flags)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr
    assert not (tmp_path / "run").exists()
