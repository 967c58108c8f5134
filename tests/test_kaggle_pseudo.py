"""The kernels' path for pseudo-labels (issue 19): the inference kernel, asked by its
PSEUDO_LABEL_ARGS, writes the confident test images as an extra training set in working/pseudo/
from the probabilities its prediction saved; a trainer kernel whose arguments say `--extra auto`
finds that set among its inputs by what the folder holds and trains on it. Run here as the
kernel scripts run them (imet.kaggle.session) under a fake Kaggle root."""
from __future__ import annotations

import json
import shutil
import time

import pandas as pd
import pytest
from test_resume import make_config

from imet.errors import UserError
from imet.kaggle import session as sessions
from imet.kaggle.session import PSEUDO_DIR, find_extra_sets
from imet.train.events import EventBus
from imet.train.loop import train

SMALL = ["--image-size", "32", "--batch-size", "8", "--num-workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(mini_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trainer") / "output"
    # Trained until it is sure of some test images (--min-prob 0.55 below): a model whose head
    # starts at the classes' priors (--prior-bias) is still unsure of all of them after 2 epochs.
    result = train(make_config(mini_data, out, epochs=6, eval_every=0, preset="resize"),
                   EventBus())
    assert result.status == "finished" and (out / "model.pt").is_file()
    return out


def kaggle_root(tmp_path, monkeypatch, inputs: dict) -> "Path":
    root = tmp_path / "kaggle"
    (root / "working").mkdir(parents=True)
    (root / "input").mkdir()
    for slug, folder in inputs.items():
        (root / "input" / slug).symlink_to(folder)
    monkeypatch.setenv("IMET_KAGGLE_ROOT", str(root))
    monkeypatch.chdir(root / "working")
    return root


def test_inference_pseudo_labels_and_a_trainer_with_extra_auto_trains_on_them(
        mini_data, trained, tmp_path, monkeypatch):
    inference = kaggle_root(tmp_path / "inference", monkeypatch,
                            {"imet-2019-fgvc6": mini_data, "imet-trainer-f0": trained})
    code = sessions.inference(time.time(), "1h", ["--tta", "none", *SMALL[4:]], "none",
                              ["--min-prob", "0.55", "--soft"])
    assert code == 0
    work = inference / "working"
    assert (work / "submission.csv").is_file()
    pseudo = work / PSEUDO_DIR
    kept = sorted(p.stem for p in (pseudo / "train").iterdir())
    test_ids = set(pd.read_csv(mini_data / "sample_submission.csv")["id"])
    assert kept and set(kept) <= test_ids and (pseudo / "soft_targets.npz").is_file()

    # The next kernel: the inference output attached beside the competition data, whose own
    # train.csv, train/ and labels.csv are no extra set (it has sample_submission.csv).
    trainer = kaggle_root(tmp_path / "trainer", monkeypatch,
                          {"imet-2019-fgvc6": mini_data, "imet-inference": work})
    assert find_extra_sets() == [trainer / "input" / "imet-inference" / PSEUDO_DIR]
    code = sessions.trainer(time.time(), "1h", ["--fold", "0", "--arch", "tiny_cnn",
                                                "--epochs", "1", "--notify", "off", *SMALL,
                                                "--extra", "auto"], 2, "none")
    assert code == 0
    run = json.loads((trainer / "working" / "run.json").read_text())
    assert run["status"] == "finished"
    assert run["config"]["extra"] == str(trainer / "input" / "imet-inference" / PSEUDO_DIR)
    assert len(run["config"]["extra_fingerprint"]) == 16


def test_extra_auto_with_no_set_or_two_sets_is_one_line(mini_data, tmp_path, monkeypatch):
    root = kaggle_root(tmp_path, monkeypatch, {"imet-2019-fgvc6": mini_data})
    args = ["--fold", "0", "--extra=auto"]
    with pytest.raises(UserError, match="found none"):
        sessions.with_extra_found(args)
    for name in ("a", "b"):
        folder = root / "input" / name
        (folder / "train").mkdir(parents=True)
        shutil.copy(mini_data / "labels.csv", folder / "labels.csv")
        (folder / "train.csv").write_text("id,attribute_ids\n")
    with pytest.raises(UserError, match="found 2 of them") as err:
        sessions.with_extra_found(args)
    assert "\n" not in str(err.value) and "pseudo_label_args" in str(err.value)
    shutil.rmtree(root / "input" / "b")
    found = ["--extra", str(root / "input" / "a")]
    assert sessions.with_extra_found(args) == ["--fold", "0", *found]
    assert sessions.with_extra_found(["--fold", "0"]) == ["--fold", "0"]  # not asked: as is
    assert sessions.with_extra_found(["--extra", "auto", "--fold", "0"]) == \
        ["--fold", "0", *found]
    # As `imet train` reads them: the last --extra wins.
    assert sessions.with_extra_found(["--extra", "x", "--extra", "auto"]) == found
    assert sessions.with_extra_found(["--extra", "auto", "--extra=x"]) == \
        ["--extra", "auto", "--extra=x"]
