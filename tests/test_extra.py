"""`imet train --extra DIR`: extra images train beside the fold's training images, never
validate, are refused when their ids are training ids, are part of the run's config, and a run
interrupted mid-epoch resumes bit-identically."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from test_resume import SignalAt, assert_same_end, final_payload, make_config

from imet.data.labels import read_labels
from imet.errors import UserError
from imet.probfile import Probabilities, save_probabilities
from imet.train.checkpoint import ForeignCheckpointError
from imet.train.data import load_run_data
from imet.train.events import EventBus
from imet.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")

# 32 training images + 8 extra / 8 = 5 steps per epoch; step 7 is inside epoch 1.
SHORT = dict(epochs=2, eval_every=0)


def make_extra(mini_data, root, count=8, rename=True):
    """An extra set of mini-iMet's first test images (with their true labels) under new ids."""
    rows = pd.read_csv(mini_data / "test_labels.csv").head(count)
    (root / "train").mkdir(parents=True)
    ids = []
    for image_id in rows["id"]:
        new_id = f"extra-{image_id}" if rename else image_id
        shutil.copy(mini_data / "test" / f"{image_id}.png", root / "train" / f"{new_id}.png")
        ids.append(new_id)
    pd.DataFrame({"id": ids, "attribute_ids": rows["attribute_ids"]}).to_csv(
        root / "train.csv", index=False)
    return root


@pytest.fixture(scope="module")
def extra(mini_data, tmp_path_factory):
    return make_extra(mini_data, tmp_path_factory.mktemp("extra") / "extra")


def test_extra_images_train_and_never_validate(mini_data, extra, tmp_path):
    plain = load_run_data(make_config(mini_data, tmp_path / "plain"))
    config = make_config(mini_data, tmp_path / "run", extra=str(extra))
    data = load_run_data(config)
    extra_paths = sorted((extra / "train").iterdir())
    assert len(data.train_set) == len(plain.train_set) + len(extra_paths)
    assert data.train_set.image_paths[-len(extra_paths):] == \
        [extra / "train" / f"{i}.png" for i in pd.read_csv(extra / "train.csv")["id"]]
    assert data.val_set.image_paths == plain.val_set.image_paths
    assert not set(data.val_set.image_paths) & set(extra_paths)
    assert (data.val_targets == plain.val_targets).all()
    assert len(config.extra_fingerprint) == 16
    assert config.fingerprint() != make_config(mini_data, tmp_path / "run").fingerprint()


def test_colliding_ids_are_refused_with_one_line(mini_data, tmp_path):
    extra = make_extra(mini_data, tmp_path / "extra")
    frame = pd.read_csv(extra / "train.csv")
    train_id = pd.read_csv(mini_data / "train.csv")["id"][0]
    shutil.copy(mini_data / "train" / f"{train_id}.png", extra / "train" / f"{train_id}.png")
    frame.loc[0, "id"] = train_id
    frame.to_csv(extra / "train.csv", index=False)
    proc = subprocess.run([sys.executable, "-m", "imet", "train", "--data", str(mini_data),
                           "--out", str(tmp_path / "run"), "--arch", "tiny_cnn",
                           "--extra", str(extra), "--batch-size", "8", "--device", "cpu",
                           "--notify", "off"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and train_id in lines[0] and "train.csv" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()  # nothing written


def test_interrupted_run_with_extra_resumes_exactly_and_refuses_another_set(
        mini_data, extra, tmp_path):
    whole = tmp_path / "whole"
    result = train(make_config(mini_data, whole, extra=str(extra), **SHORT), EventBus())
    assert result.status == "finished" and result.step == 10
    reference = final_payload(whole)

    out = tmp_path / "stopped"
    result = train(make_config(mini_data, out, extra=str(extra), **SHORT),
                   EventBus([SignalAt("progress", 7)]))
    assert (result.status, result.step) == ("handover", 7)

    other = make_extra(mini_data, tmp_path / "other", count=7)
    with pytest.raises(ForeignCheckpointError, match="extra_fingerprint"):
        train(make_config(mini_data, out, extra=str(other), **SHORT), EventBus())

    result = train(make_config(mini_data, out, extra=str(extra), **SHORT), EventBus())
    assert result.status == "finished"
    assert_same_end(final_payload(out), reference)


def soften(mini_data, extra, attribute_ids=None):
    """The hard extra set turned into soft targets (0.9 / 0.05) in soft_targets.npz."""
    labels = read_labels(mini_data / "labels.csv")
    frame = pd.read_csv(extra / "train.csv")
    hard = labels.encode([[int(a) for a in row.split()] for row in frame["attribute_ids"]])
    soft = np.where(hard == 1, 0.9, 0.05).astype(np.float32)
    save_probabilities(extra / "soft_targets.npz", Probabilities(
        frame["id"].tolist(), soft, attribute_ids or labels.attribute_ids,
        {"labels_fingerprint": labels.fingerprint()}))
    (extra / "train.csv").unlink()
    return soft


def test_soft_targets_train_beside_the_hard_labels(mini_data, tmp_path):
    extra = make_extra(mini_data, tmp_path / "extra")
    soft = soften(mini_data, extra)
    config = make_config(mini_data, tmp_path / "run", extra=str(extra), **SHORT)
    data = load_run_data(config)
    assert data.train_set.targets.dtype == np.float16
    np.testing.assert_array_equal(data.train_set.targets[-len(soft):], soft.astype(np.float16))
    assert set(np.unique(data.train_set.targets[:-len(soft)])) <= {0, 1}
    result = train(make_config(mini_data, tmp_path / "run", extra=str(extra), **SHORT),
                   EventBus())
    assert result.status == "finished" and result.step == 10


def test_soft_targets_of_another_label_space_are_refused(mini_data, tmp_path):
    extra = make_extra(mini_data, tmp_path / "extra")
    labels = read_labels(mini_data / "labels.csv")
    soften(mini_data, extra, attribute_ids=tuple(a + 10_000 for a in labels.attribute_ids))
    with pytest.raises(UserError, match="another label space"):
        load_run_data(make_config(mini_data, tmp_path / "run", extra=str(extra)))


def test_a_folder_with_both_target_files_is_refused(mini_data, tmp_path):
    extra = make_extra(mini_data, tmp_path / "extra")
    frame = pd.read_csv(extra / "train.csv")
    soften(mini_data, extra)
    frame.to_csv(extra / "train.csv", index=False)
    with pytest.raises(UserError, match="one of"):
        load_run_data(make_config(mini_data, tmp_path / "run", extra=str(extra)))
