"""`python -m imet score` and the submission CSV reader/writer it shares with predict."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, fbeta_score

from imet.cli import main
from imet.metrics.submission_io import format_rows, read_submission, write_submission

TRUTH = "id,attribute_ids\na,1 2\nb,3\nc,2 4 5\nd,1\n"


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _score(capsys, *argv):
    code = main(["score", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out.strip(), err.strip()


def test_score_matches_sklearn_and_ignores_row_order(tmp_path, capsys):
    truth = _write(tmp_path, "truth.csv", TRUTH)
    pred = _write(tmp_path, "pred.csv", "id,attribute_ids\nd,1 3\nc,2\nb,\na,2 1\n")
    code, out, err = _score(capsys, "--truth", truth, "--pred", pred)
    assert code == 0 and err == ""
    columns = [1, 2, 3, 4, 5]
    y = np.array([[c in r for c in columns] for r in ([1, 2], [3], [2, 4, 5], [1])])
    p = np.array([[c in r for c in columns] for r in ([1, 2], [], [2], [1, 3])])
    expected = fbeta_score(y, p, beta=2, average="samples")
    assert out.startswith(f"F2 {expected:.6f}, micro-F1 ")
    assert out.count("\n") == 0

    micro = f1_score(y, p, average="micro")
    assert f"micro-F1 {micro:.6f} on 4 images" in out
    code, out, _ = _score(capsys, "--truth", truth, "--pred", pred, "--metric", "micro-f1")
    assert out.startswith(f"micro-F1 {micro:.6f}, F2 {expected:.6f} on 4 images")


def test_the_default_metric_is_the_competitions(tmp_path, capsys):
    from imet.data.labels import find_layout
    from imet.data.mini_imet import generate
    for year, first in (("2019", "F2 "), ("2020", "micro-F1 "), ("2021", "F2 ")):
        generate(tmp_path / year, n_train=16, n_test=8, size=32, layout=year)
        layout = find_layout(tmp_path / year)
        code, out, _ = _score(capsys, "--truth", layout.test_labels_csv, "--pred",
                              layout.test_labels_csv, "--labels", layout.labels_csv)
        assert code == 0 and out.startswith(first), (year, out)


def test_perfect_submission_on_mini_imet_with_labels(mini_data, capsys):
    truth = mini_data / "test_labels.csv"
    code, out, _ = _score(capsys, "--truth", truth, "--pred", truth,
                          "--labels", mini_data / "labels.csv")
    assert code == 0 and out.startswith("F2 1.000000, micro-F1 1.000000 on 24 images")


@pytest.mark.parametrize("pred_text,expected", [
    ("id,attribute_ids\na,1\nb,3\nc,2\n", ["1 missing ('d')"]),
    ("id,attribute_ids\na,1\nb,3\nc,2\nd,1\nx,1\ny,2\n", ["2 not in the truth", "'x', 'y'"]),
    ("id,attribute_ids\na,1\nb,3\nc,2\nd,1\na,2\n", ["1 listed more than once ('a')"]),
    ("id,attribute_ids\na,1\nb,3\n" + "".join(f"z{i},1\n" for i in range(5)),
     ["2 missing ('c', 'd')", "5 not in the truth", "'z0', 'z1', 'z2', ..."]),
])
def test_mismatched_ids_are_refused_with_counts_and_examples(tmp_path, capsys, pred_text,
                                                             expected):
    truth = _write(tmp_path, "truth.csv", TRUTH)
    pred = _write(tmp_path, "pred.csv", pred_text)
    code, out, err = _score(capsys, "--truth", truth, "--pred", pred)
    assert code == 2 and out == ""
    assert err.startswith("imet score: error: ") and "\n" not in err
    assert str(pred) in err
    for part in expected:
        assert part in err


@pytest.mark.parametrize("pred_text,expected", [
    ("id,attribute_ids\na,1\nb,3 x7\nc,2\nd,1\n", "line 3: field 'attribute_ids': 'x7'"),
    ("id,attribute_ids\na,1\nb,3\nc,2,4\nd,1\n", "line 4: 3 fields"),
    ("id,attribute_ids\na,1\n,3\nc,2\nd,1\n", "line 3: field 'id' is empty"),
    ("id,labels\na,1\n", "line 1: missing column 'attribute_ids'"),
    ("id,attribute_ids\n", "no rows"),
    ("", "missing column 'id', 'attribute_ids' (found: nothing)"),
    ("id,attribute_ids\na,-1\n", "'-1' is not a non-negative integer"),
])
def test_malformed_rows_name_file_and_line(tmp_path, capsys, pred_text, expected):
    truth = _write(tmp_path, "truth.csv", TRUTH)
    pred = _write(tmp_path, "pred.csv", pred_text)
    code, _, err = _score(capsys, "--truth", truth, "--pred", pred)
    assert code == 2 and "\n" not in err
    assert f"{pred}: " in err and expected in err


def test_duplicated_truth_missing_file_and_unknown_label(tmp_path, mini_data, capsys):
    truth = _write(tmp_path, "truth.csv", TRUTH + "b,1\n")
    code, _, err = _score(capsys, "--truth", truth, "--pred", truth)
    assert code == 2 and "1 ids listed more than once ('b')" in err
    code, _, err = _score(capsys, "--truth", tmp_path / "nope.csv", "--pred", truth)
    assert code == 2 and "nope.csv: file not found" in err
    code, _, err = _score(capsys, "--truth", _write(tmp_path, "ok.csv", TRUTH), "--pred", tmp_path)
    assert code == 2 and f"{tmp_path}: a folder, not a file" in err
    # with labels.csv, an attribute id it does not know is refused
    real = (mini_data / "test_labels.csv").read_text().splitlines()
    first_id = real[1].split(",")[0]
    pred = _write(tmp_path, "pred.csv", "\n".join(
        [real[0], f"{first_id},999999"] + real[2:]) + "\n")
    code, _, err = _score(capsys, "--truth", mini_data / "test_labels.csv", "--pred", pred,
                          "--labels", mini_data / "labels.csv")
    assert code == 2 and "attribute id 999999 is not in labels.csv" in err and first_id in err


def test_write_then_read_round_trip_is_atomic(tmp_path):
    pred = np.array([[True, False, True], [False, False, False], [False, True, False]])
    rows = format_rows(pred, [10, 20, 30])
    assert rows == ["10 30", "", "20"]
    out = write_submission(tmp_path / "sub" / "submission.csv", ["a", "b", "c"], rows)
    assert out.read_text() == "id,attribute_ids\na,10 30\nb,\nc,20\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["submission.csv"]
    assert read_submission(out) == (["a", "b", "c"], [[10, 30], [], [20]])
    with pytest.raises(ValueError):
        write_submission(out, ["a"], rows)
    assert out.read_text() == "id,attribute_ids\na,10 30\nb,\nc,20\n"  # untouched


def test_python_dash_m_entry_point(tmp_path):
    truth = _write(tmp_path, "truth.csv", TRUTH)
    pred = _write(tmp_path, "pred.csv", "id,attribute_ids\na,1\n")
    done = subprocess.run([sys.executable, "-m", "imet", "score", "--truth", str(truth),
                           "--pred", str(pred)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "3 missing ('b', 'c', 'd')" in done.stderr
    helped = subprocess.run([sys.executable, "-m", "imet", "score", "--help"],
                            capture_output=True, text=True)
    assert helped.returncode == 0
    for flag in ("--truth", "--pred", "--labels"):
        assert flag in helped.stdout
