"""imet validate: OOF predictions, honest threshold choice, outputs, fold stacking, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from imet.cli import main
from imet.data.folds import read_folds
from imet.data.labels import CompetitionLayout, LabelSpace, read_labels, read_train
from imet.errors import UserError
from imet.models import build_model
from imet.models.modelfile import save_model_file
from imet.predict.pipeline import read_thresholds
from imet.predict.validate import choose_decoding
from imet.probfile import load_probabilities

QUIET = ["--num-workers", "0", "--log-every", "600", "--min-support", "4"]


def save_tiny(path, labels: LabelSpace, fold: int, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("tiny_cnn", labels.num_classes)
    return save_model_file(path, model, "tiny_cnn", {"fold": fold, "image_size": 32}, labels, {})


@pytest.fixture
def setup(mini_data, tmp_path):
    layout = CompetitionLayout(mini_data)
    labels = read_labels(layout.labels_csv)
    ids, targets = read_train(layout.train_csv, labels)
    folds = read_folds(layout.folds_csv, ids)
    return mini_data, labels, ids, folds, tmp_path


def test_choice_is_by_cross_fitted_f2_not_in_sample():
    # Probabilities unrelated to the truth: per-class thresholds fit the noise in-sample
    # and must not be chosen for it.
    rng = np.random.default_rng(0)
    y = rng.random((400, 30)) < 0.1
    probs = rng.random((400, 30))
    groups = np.array(["culture"] * 10 + ["tag"] * 20)
    choice = choose_decoding(y, probs, groups, min_support=5)
    fits = choice.fits
    assert fits["class"].score_in_sample > fits["class"].score + 0.01  # optimism is measured
    assert choice.chosen.score == max(f.score for f in fits.values())
    assert choice.mode != "class"


def test_validate_writes_thresholds_oof_report_and_registry(setup, capsys):
    data, labels, ids, folds, tmp = setup
    run = save_tiny(tmp / "run" / "model.pt", labels, fold=1).parent
    assert main(["validate", "--data", str(data), "--run", str(run), "--tta", "none", *QUIET]) == 0
    assert "cross-fitted" in capsys.readouterr().out
    doc = read_thresholds(run / "thresholds.json", labels.attribute_ids, labels.fingerprint())
    assert doc["mode"] in ("global", "group", "class", "context") and doc["tta"] == ["none"]
    assert set(doc["scores"]["modes"]) == {"global", "group", "class", "context"}
    oof = load_probabilities(run / "oof_probs.npz")
    assert sorted(oof.ids) == sorted(i for i, f in zip(ids, folds) if f == 1)
    assert (run / "oof" / "run.npz").is_file()
    table = (run / "validation.md").read_text()
    assert "cross-fitted" in table and "| culture |" in table and "| tag |" in table
    for png in ("score_vs_threshold.png", "class_f2_vs_support.png", "culture_confusion.png"):
        assert (run / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _check_error_tables(table, data, labels, oof, doc)
    record = json.loads((run / "imet-runs.jsonl").read_text().splitlines()[-1])
    assert record["kind"] == "validate"


def _check_error_tables(table, data, labels, oof, doc):
    """The report's error tables count what the chosen decoding does on the OOF images."""
    from imet.metrics.f2 import binarize

    assert "## Most often predicted but absent" in table and "## Most often missed" in table
    assert "## culture taken for culture" in table
    ids, targets = read_train(CompetitionLayout(data).train_csv, labels)
    row = {image_id: i for i, image_id in enumerate(ids)}
    truth = targets[[row[i] for i in oof.ids]].astype(bool)
    pred = binarize(oof.probs, doc["thresholds"], doc["min_labels"], doc["max_labels"],
                    doc["context"])
    section = table.split("## Most often predicted but absent")[1].split("## Most often missed")[0]
    rows = [line.strip("| ").split(" | ") for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| class")]
    assert rows
    for name, false_pos, predicted, support in rows:
        c = labels.names.index(name)
        assert int(false_pos) == np.count_nonzero(pred[:, c] & ~truth[:, c])
        assert int(predicted) == np.count_nonzero(pred[:, c])
        assert int(support) == np.count_nonzero(truth[:, c])


def test_validate_stacks_folds_and_ensembles_a_fold(setup):
    data, labels, ids, folds, tmp = setup
    runs = [save_tiny(tmp / name / "model.pt", labels, fold, seed).parent
            for name, fold, seed in (("a0", 0, 0), ("b0", 0, 1), ("c1", 1, 2))]
    out = tmp / "val"
    assert main(["validate", "--data", str(data), "--run", *map(str, runs), "--out", str(out),
                 "--tta", "none", "--modes", "global,group", *QUIET]) == 0
    oof = load_probabilities(out / "oof_probs.npz")
    assert sorted(oof.ids) == sorted(ids)  # every training image once
    a0, b0 = (load_probabilities(out / "oof" / f"{n}.npz") for n in ("a0", "b0"))
    fold0 = oof.reorder(a0.ids)
    np.testing.assert_allclose(fold0.probs, (a0.probs + b0.probs) / 2, atol=2e-3)
    # Saved OOF probabilities re-threshold without the models, to the same decoding.
    again = tmp / "again"
    assert main(["validate", "--data", str(data), "--run", str(out / "oof" / "a0.npz"),
                 str(out / "oof" / "b0.npz"), str(out / "oof" / "c1.npz"), "--out", str(again),
                 "--modes", "global,group", *QUIET]) == 0
    first = json.loads((out / "thresholds.json").read_text())
    second = json.loads((again / "thresholds.json").read_text())
    assert first["thresholds"] == second["thresholds"] and first["mode"] == second["mode"]


def test_validate_refuses_bad_runs(setup, capsys):
    data, labels, ids, folds, tmp = setup
    other = LabelSpace(labels.attribute_ids[1:], labels.names[1:])
    foreign = save_tiny(tmp / "foreign" / "model.pt", other, fold=0)
    capsys.readouterr()
    assert main(["validate", "--data", str(data), "--run", str(foreign.parent), *QUIET]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imet validate: error: ") and str(foreign) in err and "\n" not in err
    nofold = save_tiny(tmp / "nofold" / "model.pt", labels, fold=7)
    assert main(["validate", "--data", str(data), "--run", str(nofold.parent), *QUIET]) == 2
    assert "fold 7 (of run nofold) has no images" in capsys.readouterr().err
    assert main(["validate", "--data", str(data), "--run", str(tmp / "nowhere"), *QUIET]) == 2
    err = capsys.readouterr().err
    assert "nowhere: run folder, model file or OOF probabilities not found" in err
    with pytest.raises(UserError, match="--modes"):
        choose_decoding(np.zeros((8, 2), bool), np.zeros((8, 2)), np.array(["a", "b"]),
                        modes=["best"])


def test_validate_uses_the_folds_file_the_run_recorded(mini_data_copy, tmp_path, capsys):
    """Training recorded its folds file: validate without --folds reads it, even when the data
    folder has none; with neither, one line says to pass --folds."""
    layout = CompetitionLayout(mini_data_copy)
    labels = read_labels(layout.labels_csv)
    kept = tmp_path / "elsewhere" / "folds.csv"
    kept.parent.mkdir()
    layout.folds_csv.rename(kept)
    torch.manual_seed(0)
    model = build_model("tiny_cnn", labels.num_classes)
    run = save_model_file(tmp_path / "run" / "model.pt", model, "tiny_cnn",
                          {"fold": 1, "image_size": 32, "folds": str(kept)}, labels, {}).parent
    assert main(["validate", "--data", str(mini_data_copy), "--run", str(run), "--tta", "none",
                 *QUIET]) == 0
    assert (run / "thresholds.json").is_file()
    kept.unlink()
    capsys.readouterr()
    assert main(["validate", "--data", str(mini_data_copy), "--run", str(run), "--tta", "none",
                 *QUIET]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --folds CSV" in err[0] and str(layout.folds_csv) in err[0]


@pytest.mark.usefixtures("one_thread")
def test_validate_gives_the_f2_training_reported_for_its_best_model(setup, capsys):
    """Training's evaluation and validate share one forward path and one score: validate,
    without TTA, on a run folder gives the F2 and threshold training reported for model.pt, on
    the same images (the run's fold) and by the same rule (best global threshold)."""
    data, labels, ids, folds, tmp = setup
    out = tmp / "run"
    assert main(["train", "--data", str(data), "--folds", str(data / "folds.csv"),
                 "--out", str(out), "--arch", "tiny_cnn", "--no-pretrained", "--image-size", "32",
                 "--batch-size", "8", "--num-workers", "0", "--notify", "off", "--device", "cpu",
                 "--epochs", "3"]) == 0
    reported = json.loads((out / "run.json").read_text())
    assert main(["validate", "--data", str(data), "--run", str(out), "--tta", "none",
                 "--device", "cpu", *QUIET]) == 0
    (run,) = json.loads((out / "thresholds.json").read_text())["runs"]
    assert run["fold"] == 0 and run["images"] == np.count_nonzero(folds == 0)
    assert run["f2_global"] == pytest.approx(reported["best_f2"], abs=1e-6)
    assert run["threshold_global"] == reported["threshold"]


def test_validate_reports_every_group_of_five_in_the_2021_layout(mini_data_2021, tmp_path):
    """2020's and 2021's five groups (the `tags::` prefix), in 2021's file names and folders:
    the per-group table, a confusion table and plot per group of two or more classes."""
    from imet.data.labels import find_layout
    layout = find_layout(mini_data_2021)
    old = read_labels(layout.labels_csv)
    prefixes = ["country"] * 3 + ["culture"] * 5 + ["dimension"] + ["medium"] * 5 + ["tags"] * 4
    layout.labels_csv.write_text("attribute_id,attribute_name\n" + "".join(
        f"{a},{p}::{n.split('::')[1]}\n" for a, n, p in zip(old.attribute_ids, old.names,
                                                            prefixes)))
    labels = read_labels(layout.labels_csv)
    assert labels.group_names == ("country", "culture", "dimension", "medium", "tags")
    run = save_tiny(tmp_path / "run" / "model.pt", labels, fold=1).parent
    assert main(["validate", "--data", str(mini_data_2021), "--run", str(run), "--tta", "none",
                 "--modes", "global,group,context", *QUIET]) == 0
    table = (run / "validation.md").read_text()
    for group in labels.group_names:
        assert f"| {group} | " in table
    for group in ("country", "culture", "medium", "tags"):
        assert f"## {group} taken for {group}" in table
        assert (run / "plots" / f"{group}_confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert "## dimension taken for" not in table  # one class: nothing to confuse
    doc = read_thresholds(run / "thresholds.json", labels.attribute_ids, labels.fingerprint())
    assert len(doc["thresholds"]) == labels.num_classes


def test_metric_choice_tunes_for_micro_f1_and_reports_both(setup, capsys):
    data, labels, ids, folds, tmp = setup
    run = save_tiny(tmp / "run" / "model.pt", labels, fold=1).parent
    assert main(["validate", "--data", str(data), "--run", str(run), "--tta", "none",
                 "--out", str(tmp / "f2"), *QUIET]) == 0
    assert capsys.readouterr().out.startswith("F2 ")  # 2019's data: F2 by default
    oof = str(tmp / "f2" / "oof_probs.npz")
    assert main(["validate", "--data", str(data), "--run", oof, "--metric", "micro-f1",
                 "--out", str(tmp / "micro"), *QUIET]) == 0
    out = capsys.readouterr().out
    assert out.startswith("micro-F1 ") and "F2 " in out
    record = json.loads((tmp / "micro" / "imet-runs.jsonl").read_text().splitlines()[-1])
    record = record["details"]
    assert record["metric"] == "micro-f1" and record["score"] == record["micro_f1"]
    doc = read_thresholds(tmp / "micro" / "thresholds.json", labels.attribute_ids,
                          labels.fingerprint())
    assert doc["scores"]["metric"] == "micro-f1"
    modes = doc["scores"]["modes"]
    assert all(m["cross_fitted"] == m["micro_f1_cross_fitted"] for m in modes.values())
    assert record["mode"] == max(modes, key=lambda m: modes[m]["cross_fitted"]) or \
        len({round(m["cross_fitted"], 9) for m in modes.values()}) < len(modes)
    assert "Thresholds tuned for micro-F1" in (tmp / "micro" / "validation.md").read_text()
