import hashlib
import json
import re

import numpy as np
import pytest
from PIL import Image

from imet.data import mini_imet
from imet.data.labels import CompetitionLayout, read_labels, read_sample_submission, read_train
from imet.errors import UserError

SMALL = {"n_train": 6, "n_test": 3, "size": 32}


def digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def test_competition_layout_and_labels(mini_data):
    layout = CompetitionLayout(mini_data)
    labels = read_labels(layout.labels_csv)
    assert labels.names[:8] == tuple(f"culture::{s}" for s in sorted(mini_imet.STYLES))
    assert labels.names[8:] == tuple(f"tag::{d}" for d in range(10))
    ids, targets = read_train(layout.train_csv, labels)
    test_ids, test_targets = read_train(layout.test_labels_csv, labels)
    assert read_sample_submission(layout.sample_submission_csv) == test_ids
    assert len(ids) == 64 and len(test_ids) == 24
    assert ids == sorted(ids) and not set(ids) & set(test_ids)
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids + test_ids)
    for split, split_ids in (("train", ids), ("test", test_ids)):
        assert sorted(p.stem for p in layout.split_dir(split).iterdir()) == sorted(split_ids)
    for t in (targets, test_targets):
        assert (t[:, :8].sum(1) == 1).all()          # one style per image
        assert ((t[:, 8:].sum(1) >= 1) & (t[:, 8:].sum(1) <= 4)).all()  # 1-4 digits
    assert layout.sample_submission_csv.read_text().splitlines()[1].endswith(",0 1 2")


def test_images_vary_in_aspect_with_fixed_short_side(mini_data):
    shapes = [Image.open(p).size for p in (mini_data / "train").iterdir()]
    assert all(min(s) == 48 for s in shapes)
    ratios = np.array([w / h for w, h in shapes])
    assert ratios.min() < 0.8 and ratios.max() > 1.25
    assert ratios.min() >= 1 / 2.5 - 0.01 and ratios.max() <= 2.5 + 0.01


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = mini_imet.generate(tmp_path / "a", seed=5, **SMALL)
    b = mini_imet.generate(tmp_path / "b", seed=5, **SMALL)
    c = mini_imet.generate(tmp_path / "c", seed=6, **SMALL)
    assert not a["reused"] and digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    assert (tmp_path / "a" / "mini_imet.json").is_file() and c["seed"] == 6
    # image i depends only on (seed, split, i): more images keep the first ones unchanged
    mini_imet.generate(tmp_path / "d", seed=5, n_train=8, n_test=3, size=32)
    first = mini_imet.image_id(5, "train", 0)
    assert (tmp_path / "a/train" / f"{first}.png").read_bytes() == \
        (tmp_path / "d/train" / f"{first}.png").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "d"]  # no partials


def test_existing_output_is_reused_refused_or_replaced(tmp_path):
    out = tmp_path / "mini"
    mini_imet.generate(out, **SMALL)
    assert mini_imet.generate(out, **SMALL)["reused"] is True
    with pytest.raises(UserError, match="already holds another mini-iMet; pass --force"):
        mini_imet.generate(out, seed=1, **SMALL)
    info = mini_imet.generate(out, seed=1, force=True, **SMALL)
    assert info["seed"] == 1 and not info["reused"]
    assert mini_imet.read_manifest(out)["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already holds files"):
        mini_imet.generate(other, **SMALL)
    assert (other / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kw, flag", [({"size": 8}, "--size"), ({"n_train": 0}, "--n-train"),
                                      ({"seed": -1}, "--seed")])
def test_bad_parameters(tmp_path, kw, flag):
    with pytest.raises(UserError, match=flag):
        mini_imet.generate(tmp_path / "x", **{**SMALL, **kw})
    assert not (tmp_path / "x").exists()


def test_train_and_test_use_disjoint_scans_and_every_style_occurs():
    pools = mini_imet._scan_pools(0)
    train = {s.tobytes() for d in pools["train"] for s in d}
    test = {s.tobytes() for d in pools["test"] for s in d}
    assert len(train) > 1000 and len(test) > 300
    assert not train & test or len(train & test) <= 5  # sklearn's set holds a few exact repeats
    styles = [mini_imet.render(0, "train", i, 40, pools)[1] for i in range(300)]
    counts = {s: styles.count(s) for s in mini_imet.STYLES}
    assert min(counts.values()) >= 10
    assert counts["ink"] > counts["redprint"]  # long tail


@pytest.mark.parametrize("year", ["2020", "2021"])
def test_each_layout_trains_validates_predicts_and_scores(year, tmp_path, capsys):
    """`mini-imet --layout` writes the year's files, folders and five groups; the whole flow
    runs on them as written, each file found by content."""
    from imet.cli import main
    from imet.data.labels import find_layout, year_layout

    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["mini-imet", "--out", str(data), "--layout", year, "--n-train", "48",
                 "--n-test", "12", "--size", "32"]) == 0
    layout = find_layout(data)
    written = year_layout(data, year)
    assert (layout.labels_csv, layout.train_csv, layout.train_dir, layout.test_dir) == (
        written.labels_csv, written.train_csv, written.train_dir, written.test_dir)
    labels = read_labels(layout.labels_csv)
    assert labels.group_names == ("country", "culture", "dimension", "medium", "tags")
    ids, targets = read_train(layout.train_csv, labels)
    for group in labels.group_names:  # every image has a culture, a country, a dimension, ...
        assert (targets[:, labels.groups == group].sum(1) >= 1).all()
    assert main(["check-data", "--data", str(data), "--images", "exists"]) == 0
    assert main(["folds", "--data", str(data), "--n-folds", "2"]) == 0
    assert main(["train", "--data", str(data), "--out", str(run), "--fold", "0", "--epochs", "1",
                 "--arch", "tiny_cnn", "--no-pretrained", "--image-size", "32",
                 "--head-epochs", "0", "--batch-size", "8", "--preset", "resize", "--device",
                 "cpu", "--num-workers", "0", "--notify", "off"]) == 0
    # the competition's metric, found from the data: micro-F1 for 2020, F2 for 2021
    metric = {"2020": "micro-f1", "2021": "f2"}[year]
    assert json.loads((run / "run.json").read_text())["config"]["metric"] == metric
    quiet = ["--num-workers", "0", "--log-every", "600"]
    capsys.readouterr()
    assert main(["validate", "--data", str(data), "--run", str(run), "--tta", "none",
                 "--modes", "global,group", "--min-support", "4", *quiet]) == 0
    assert capsys.readouterr().out.startswith({"f2": "F2 ", "micro-f1": "micro-F1 "}[metric])
    assert "| tags |" in (run / "validation.md").read_text()
    submission = tmp_path / "submission.csv"
    assert main(["predict", "--data", str(data), "--runs", str(run), "--out", str(submission),
                 "--tta", "none", *quiet]) == 0
    assert [line.split(",")[0] for line in submission.read_text().splitlines()[1:]] == \
        read_sample_submission(layout.sample_submission_csv)
    capsys.readouterr()
    assert main(["score", "--truth", str(layout.test_labels_csv), "--pred",
                 str(submission)]) == 0
    assert 0 < float(capsys.readouterr().out.split()[1].rstrip(",")) <= 1

    # A run of 2019's label space is refused on this data, naming both label spaces.
    import torch

    from imet.data.labels import LabelSpace
    from imet.models import build_model
    from imet.models.modelfile import save_model_file
    names_2019 = mini_imet.label_names("2019")
    space_2019 = LabelSpace(tuple(range(len(names_2019))), tuple(names_2019))
    torch.manual_seed(0)
    old = save_model_file(tmp_path / "run2019" / "model.pt", build_model("tiny_cnn", 18),
                          "tiny_cnn", {"fold": 0, "image_size": 32}, space_2019, {})
    refused = tmp_path / "refused.csv"
    assert main(["predict", "--data", str(data), "--runs", str(old.parent), "--out",
                 str(refused), *quiet]) == 2
    err = capsys.readouterr().err
    assert "(18 classes: 8 culture, 10 tag)" in err and str(layout.labels_csv) in err
    assert "(29 classes: 5 country, 8 culture, 2 dimension, 4 medium, 10 tags;" in err
    assert len(err.strip().splitlines()) == 1 and not refused.exists()
