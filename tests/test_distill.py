"""`imet train --teacher FILE`: the loss mixes the true labels' with BCE to the tempered teacher
probabilities; a student ends closer to its teacher than without one; a teacher of other images
or another label space is refused with one line; its fingerprint is in the config; an
interrupted run resumes bit-identically."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from test_resume import SignalAt, assert_same_end, final_payload, make_config

from imet.data.labels import read_labels
from imet.errors import UserError
from imet.predict.pipeline import InferenceOptions, load_run, predict_run
from imet.probfile import Probabilities, save_probabilities
from imet.train.checkpoint import ForeignCheckpointError
from imet.train.data import load_run_data
from imet.train.events import EventBus
from imet.train.loop import BCELoss, DistillLoss, train

pytestmark = pytest.mark.usefixtures("one_thread")

# 32 training images / 8 = 4 steps per epoch; step 6 is inside epoch 1.
SHORT = dict(epochs=2, eval_every=0)


def write_teacher(mini_data, path, seed=0, ids=None, attribute_ids=None):
    """A teacher that gives every image one probability per class, drawn once per class: what
    a student can learn (its biases) but the true labels do not teach."""
    labels = read_labels(mini_data / "labels.csv")
    ids = ids if ids is not None else pd.read_csv(mini_data / "train.csv")["id"].tolist()
    per_class = np.random.default_rng(seed).uniform(0.05, 0.95, labels.num_classes)
    probs = np.broadcast_to(per_class, (len(ids), labels.num_classes)).astype(np.float32)
    save_probabilities(path, Probabilities(ids, probs, attribute_ids or labels.attribute_ids,
                                           {"labels_fingerprint": labels.fingerprint()}))
    return path, per_class


def test_the_loss_mixes_the_true_labels_with_the_tempered_teacher():
    logits, truth = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.8, 0.4]])
    loss = DistillLoss(BCELoss(), 0.25, 2.0)
    tempered = torch.sigmoid(torch.logit(teacher) / 2)
    expected = 0.75 * BCELoss()(logits, truth) + 0.25 * 4 * \
        torch.nn.functional.binary_cross_entropy_with_logits(logits / 2, tempered)
    torch.testing.assert_close(loss(logits, torch.cat([truth, teacher], 1)), expected)
    torch.testing.assert_close(loss(logits, truth), BCELoss()(logits, truth))  # evaluation


def test_a_student_ends_closer_to_its_teacher(mini_data, tmp_path):
    teacher, per_class = write_teacher(mini_data, tmp_path / "teacher.npz")
    ids = pd.read_csv(mini_data / "train.csv")["id"].tolist()
    paths = [mini_data / "train" / f"{i}.png" for i in ids]
    distance = {}
    for name, extra in (("alone", {}), ("taught", dict(teacher=[str(teacher)],
                                                      distill_weight=0.9))):
        out = tmp_path / name
        result = train(make_config(mini_data, out, epochs=6, head_epochs=0, lr=0.03,
                                   mixup_alpha=0.0, dropout=0.0, **extra),
                       EventBus())
        assert result.status == "finished"
        probs = predict_run(load_run(out), paths, ids,
                            InferenceOptions(device="cpu", num_workers=0, batch_size=32,
                                             log_every_s=600), log=lambda line: None).probs
        distance[name] = float(np.abs(probs - per_class).mean())
    assert distance["taught"] < 0.7 * distance["alone"], distance


def test_interrupted_run_with_a_teacher_resumes_exactly_and_refuses_another(mini_data,
                                                                            tmp_path):
    teacher, _ = write_teacher(mini_data, tmp_path / "teacher.npz")
    taught = dict(teacher=[str(teacher)], distill_weight=0.5, distill_temperature=2.0, **SHORT)
    result = train(make_config(mini_data, tmp_path / "whole", **taught), EventBus())
    assert result.status == "finished" and result.step == 8
    out = tmp_path / "stopped"
    result = train(make_config(mini_data, out, **taught), EventBus([SignalAt("progress", 6)]))
    assert (result.status, result.step) == ("handover", 6)
    other, _ = write_teacher(mini_data, tmp_path / "other.npz", seed=1)
    with pytest.raises(ForeignCheckpointError, match="teacher_fingerprint"):
        train(make_config(mini_data, out, **dict(taught, teacher=[str(other)])), EventBus())
    result = train(make_config(mini_data, out, **taught), EventBus())
    assert result.status == "finished"
    assert_same_end(final_payload(out), final_payload(tmp_path / "whole"))


def test_a_teacher_of_other_images_or_labels_is_refused(mini_data, tmp_path):
    ids = pd.read_csv(mini_data / "train.csv")["id"].tolist()
    partial, _ = write_teacher(mini_data, tmp_path / "partial.npz", ids=ids[: len(ids) // 4])
    with pytest.raises(UserError, match="no teacher probability for training image"):
        load_run_data(make_config(mini_data, tmp_path / "run", teacher=[str(partial)]))
    labels = read_labels(mini_data / "labels.csv")
    foreign, _ = write_teacher(mini_data, tmp_path / "foreign.npz",
                               attribute_ids=tuple(a + 10_000 for a in labels.attribute_ids))
    with pytest.raises(UserError, match="another label space"):
        load_run_data(make_config(mini_data, tmp_path / "run", teacher=[str(foreign)]))


def test_a_refused_teacher_leaves_no_run_folder(mini_data, tmp_path):
    """From the command line: one line, exit 2, and nothing written (no run.json, no plots)."""
    labels = read_labels(mini_data / "labels.csv")
    foreign, _ = write_teacher(mini_data, tmp_path / "foreign.npz",
                               attribute_ids=tuple(a + 10_000 for a in labels.attribute_ids))
    proc = subprocess.run([sys.executable, "-m", "imet", "train", "--data", str(mini_data),
                           "--out", str(tmp_path / "run"), "--arch", "tiny_cnn",
                           "--teacher", str(foreign), "--batch-size", "8", "--device", "cpu",
                           "--notify", "off"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "another label space" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()
