"""`imet pseudo-label`: the ensemble's confident test images, predicted as `imet predict`
predicts them, written as an extra set that `imet train --extra` trains on; runs of another
label space are refused with one line and nothing written."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from test_predict import QUIET, TRAIN

from imet.cli import main
from imet.data.labels import read_labels
from imet.predict.pseudo import keep_confident
from imet.probfile import load_probabilities

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_and_probs(mini_data, tmp_path_factory):
    """One short run and its test probabilities as `imet predict` writes them (TTA hflip)."""
    root = tmp_path_factory.mktemp("pseudo")
    run = root / "run"
    assert main(["train", "--data", str(mini_data), "--out", str(run), "--epochs", "2",
                 *TRAIN]) == 0
    assert main(["predict", "--data", str(mini_data), "--runs", str(run), "--out",
                 str(root / "sub.csv"), "--threshold", "0.5", "--tta", "none,hflip",
                 *QUIET]) == 0
    return run, load_probabilities(root / "test_probs" / "run.npz")


def between_top_probabilities(probs: np.ndarray) -> float:
    """A --min-prob above 0.5 that keeps some images and not all (none on a boundary)."""
    tops = np.unique(probs.max(axis=1))
    assert tops[-1] > 0.5, "the run learnt nothing: no test image above 0.5"
    tops = tops[tops > 0.5]
    return float((tops[0] + tops[1]) / 2) if len(tops) > 1 else float((0.5 + tops[0]) / 2)


def pseudo(mini_data, run, out, *extra):
    return main(["pseudo-label", "--data", str(mini_data), "--runs", str(run), "--out", str(out),
                 "--tta", "none,hflip", *QUIET, *extra])


def test_hard_labels_of_the_confident_images_train_as_extra(mini_data, run_and_probs,
                                                            tmp_path):
    run, probs = run_and_probs
    p = between_top_probabilities(probs.probs)
    assert pseudo(mini_data, run, tmp_path / "extra", "--min-prob", str(p)) == 0
    kept = probs.probs.max(axis=1) >= p
    frame = pd.read_csv(tmp_path / "extra" / "train.csv", dtype=str)
    assert frame["id"].tolist() == [i for i, k in zip(probs.ids, kept) if k]
    labels = read_labels(mini_data / "labels.csv")
    assert frame["attribute_ids"].tolist() == \
        [labels.decode_row(row >= p) for row in probs.probs[kept]]
    assert sorted(f.stem for f in (tmp_path / "extra" / "train").iterdir()) == \
        sorted(frame["id"])
    assert main(["train", "--data", str(mini_data), "--out", str(tmp_path / "student"),
                 "--epochs", "1", "--extra", str(tmp_path / "extra"), *TRAIN]) == 0


def test_soft_targets_are_the_ensemble_probabilities(mini_data, run_and_probs, tmp_path):
    run, probs = run_and_probs
    p = between_top_probabilities(probs.probs)
    assert pseudo(mini_data, run, tmp_path / "extra", "--min-prob", str(p), "--soft") == 0
    soft = load_probabilities(tmp_path / "extra" / "soft_targets.npz")
    kept = probs.probs.max(axis=1) >= p
    assert soft.ids == [i for i, k in zip(probs.ids, kept) if k]
    np.testing.assert_array_equal(soft.probs, probs.probs[kept])
    assert not (tmp_path / "extra" / "train.csv").exists()


def test_runs_of_another_label_space_are_refused(mini_data, run_and_probs, tmp_path, capsys):
    data = shutil.copytree(mini_data, tmp_path / "data")
    frame = pd.read_csv(data / "labels.csv")
    frame.loc[0, "attribute_name"] = frame.loc[0, "attribute_name"] + "-renamed"
    frame.to_csv(data / "labels.csv", index=False)
    assert pseudo(data, run_and_probs[0], tmp_path / "extra") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label" in err[0], err
    assert not (tmp_path / "extra").exists()


def test_rule_all_also_refuses_images_with_an_uncertain_class():
    probs = np.array([[0.95, 0.02, 0.01], [0.95, 0.5, 0.01], [0.6, 0.02, 0.01]])
    assert keep_confident(probs, 0.9, "top").tolist() == [True, True, False]
    assert keep_confident(probs, 0.9, "all").tolist() == [True, False, False]
