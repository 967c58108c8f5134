import shutil

import pytest

from imet.cli import main
from imet.data.folds import check_data
from imet.data.labels import CompetitionLayout, find_layout
from imet.errors import DataError, UserError


def ids_of(csv_path):
    return [line.split(",")[0] for line in csv_path.read_text().splitlines()[1:]]


def test_clean_data_set(mini_data, capsys):
    report = check_data(mini_data, folds=mini_data / "folds.csv", progress=False)
    assert report.ok, report.problems
    assert report.counts == {"labels": 18, "train_rows": 64, "test_rows": 24,
                             "images_decoded": 88}
    assert report.groups == {"culture": 8, "tag": 10}
    assert main(["check-data", "--data", str(mini_data)]) == 0
    out = capsys.readouterr().out
    assert f"{mini_data} is clean: 18 labels (8 culture, 10 tag), 64 train rows, 24 test rows, " \
           "88 images decoded, folds.csv matches train.csv" in out


def test_lists_every_problem_at_once(mini_data_copy, capsys):
    layout = CompetitionLayout(mini_data_copy)
    train_ids, test_ids = ids_of(layout.train_csv), ids_of(layout.sample_submission_csv)
    truncated = layout.image_path("train", train_ids[3])
    truncated.write_bytes(truncated.read_bytes()[:200])
    layout.image_path("test", test_ids[1]).unlink()
    garbage = layout.image_path("test", test_ids[2])
    garbage.write_bytes(b"hello")
    lines = layout.train_csv.read_text().splitlines()
    lines[5] = lines[5].split(",")[0] + ",3 99"
    lines[7] = lines[7].split(",")[0] + ",3 x"
    layout.train_csv.write_text("\n".join(lines) + "\n")
    (layout.root / "folds.csv").write_text("id,fold\nabc,0\n")

    report = check_data(mini_data_copy, folds=layout.root / "folds.csv", progress=False)
    problems = report.problems
    expected = [
        f"{layout.train_csv}: line 6: field 'attribute_ids': attribute id 99 is not in labels.csv",
        f"{layout.train_csv}: line 8: field 'attribute_ids': 'x' is not an integer attribute id",
        f"{layout.image_path('test', test_ids[1])}: image not found (id '{test_ids[1]}' in "
        "sample_submission.csv)",
        f"{truncated}: cannot decode image",
        f"{garbage}: not a readable image",
    ]
    for start in expected:
        assert sum(p.startswith(start) for p in problems) == 1, (start, problems)
    assert len(problems) == len(expected)  # folds are not matched against a broken train.csv
    assert all("\n" not in p for p in problems)

    assert main(["check-data", "--data", str(mini_data_copy)]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"layout found in {mini_data_copy}: labels labels.csv, training table train.csv, train "
        "images train/, sample submission sample_submission.csv, test images test/, test truth "
        "test_labels.csv", "competition: imet-2019-fgvc6 (groups culture, tag, 18 classes (a small "
        "set in its shape: the competition has 1,103))", *problems]
    assert captured.err.strip() == f"imet check-data: error: 5 problems in {mini_data_copy}; " \
                                   "fix them and run check-data again"


def test_image_modes_and_folds_mismatch(mini_data_copy):
    layout = CompetitionLayout(mini_data_copy)
    first = layout.image_path("train", ids_of(layout.train_csv)[0])
    first.write_bytes(first.read_bytes()[:100])
    assert check_data(mini_data_copy, images="exists", progress=False).ok
    assert check_data(mini_data_copy, images="skip", progress=False).counts == {
        "labels": 18, "train_rows": 64, "test_rows": 24}
    first.unlink()
    assert len(check_data(mini_data_copy, images="exists", progress=False).problems) == 1
    assert check_data(mini_data_copy, images="skip", progress=False).ok
    folds = layout.root / "folds.csv"
    folds.write_text("\n".join(folds.read_text().splitlines()[:-1]) + "\n")
    problems = check_data(mini_data_copy, images="skip", folds=folds, progress=False).problems
    assert len(problems) == 1 and "1 training ids have no fold" in problems[0]


def test_broken_labels_and_missing_files(mini_data_copy):
    layout = CompetitionLayout(mini_data_copy)
    layout.labels_csv.write_text("attribute_id,attribute_name\n0,culture::a\nzero,tag::b\n")
    layout.sample_submission_csv.write_text("")
    shutil.rmtree(layout.train_dir)
    problems = check_data(mini_data_copy, progress=False).problems
    # the 2019 name stands for a role not found; the empty sample submission is parsed as such
    assert problems[0] == f"{mini_data_copy}: no train image folder found: looked for a folder " \
        f"below {mini_data_copy} (down to 3 levels) holding the {{id}}.png files of train.csv's " \
        "ids; pass --data pointing at the competition files"
    assert problems[1].startswith(f"{layout.labels_csv}: line 3: field 'attribute_id'")
    assert problems[2] == f"{layout.sample_submission_csv}: file is empty; expected a header " \
                          "'id,attribute_ids' and one row per line"
    assert len(problems) == 3
    assert check_data(mini_data_copy / "nowhere").problems[0].endswith(
        "data folder not found; pass --data pointing at the competition files (or make one "
        "with `imet mini-imet --out DIR`)")


def test_test_labels_must_match_sample_submission(mini_data_copy):
    layout = CompetitionLayout(mini_data_copy)
    lines = layout.test_labels_csv.read_text().splitlines()
    layout.test_labels_csv.write_text("\n".join(lines[:-2]) + "\n")
    problems = check_data(mini_data_copy, images="skip", progress=False).problems
    assert problems == [f"{layout.test_labels_csv}: its ids differ from sample_submission.csv "
                        "(0 extra, 2 missing); regenerate the data set"]


def test_the_2021_layout_is_found_by_content(mini_data_2021, capsys):
    root = mini_data_2021
    layout = find_layout(root)
    assert (layout.labels_csv, layout.train_csv, layout.sample_submission_csv) == (
        root / "label_map.csv", root / "train-from-kaggle.csv", root / "sample_submission.csv")
    assert (layout.train_dir, layout.test_dir) == (root / "train-1/train-1", root / "test/test")
    report = check_data(root, images="exists", progress=False)
    assert report.ok, report.problems
    assert report.counts == {"labels": 18, "train_rows": 64, "test_rows": 24, "images_found": 88}
    assert main(["check-data", "--data", str(root), "--images", "exists"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"layout found in {root}: labels label_map.csv, training table train-from-kaggle.csv, "
        "train images train-1/train-1/, sample submission sample_submission.csv, test images "
        "test/test/, test truth test_labels.csv")


@pytest.mark.parametrize("year", ["2019", "2020", "2021"])
def test_check_data_names_the_competition_its_files_are(year, tmp_path, capsys):
    """By 2021's file names, else by the groups; the class count says it is a small set."""
    from imet.data.labels import COMPETITIONS
    assert main(["mini-imet", "--out", str(tmp_path), "--layout", year, "--n-train", "16",
                 "--n-test", "4", "--size", "16"]) == 0
    capsys.readouterr()
    assert main(["check-data", "--data", str(tmp_path), "--images", "skip"]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert line.startswith(f"competition: {COMPETITIONS[year]} (")
    assert ("2021's file names (label_map.csv, train-from-kaggle.csv" in line) == (year == "2021")
    assert ("the competition has 1,103" if year == "2019" else "the competition has 3,474") in line


def test_2021_names_with_2019_groups_are_no_competition(mini_data_2021, capsys):
    assert main(["check-data", "--data", str(mini_data_2021), "--images", "skip"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        "competition: not recognised (2021's file names (label_map.csv, train-from-kaggle.csv, "
        "train-1/train-1, test/test) but groups culture, tag)")


def test_two_candidates_or_none_get_one_line(mini_data_copy):
    root = mini_data_copy
    shutil.copy(root / "train.csv", root / "train-copy.csv")
    with pytest.raises(DataError) as err:
        find_layout(root)
    assert str(err.value).startswith(
        f"{root}: two candidates for the training table (train-copy.csv and train.csv, both a "
        f"CSV in {root} with columns id,attribute_ids not named *submission* or test*); move "
        "one of them out of the folder")
    (root / "train-copy.csv").unlink()
    shutil.copytree(root / "test", root / "more" / "test-copy")
    with pytest.raises(DataError, match=r"two candidates for the test image folder \(test "
                       r"and more/test-copy, both a folder below"):
        find_layout(root)
    assert find_layout(root, test=False).train_dir == root / "train"
    shutil.rmtree(root / "more")
    (root / "labels.csv").rename(root / "names.txt")
    with pytest.raises(DataError) as err:
        find_layout(root)
    assert str(err.value) == f"{root}: no labels table found: looked for a CSV in {root} with " \
        "columns attribute_id,attribute_name; pass --data pointing at the competition files"
    assert "\n" not in str(err.value)


def test_a_kernel_finds_the_2021_competition_among_its_inputs(mini_data_2021, tmp_path):
    from imet.kaggle.session import find_competition_data
    inputs = tmp_path / "input"
    shutil.copytree(mini_data_2021, inputs / "imet-2021-fgvc8")
    (inputs / "imet-src").mkdir()
    (inputs / "imet-src" / "sample_submission.csv").write_text("id,attribute_ids\na,1\n")
    assert find_competition_data(inputs) == inputs / "imet-2021-fgvc8"  # its labels table found
    shutil.rmtree(inputs / "imet-2021-fgvc8")
    with pytest.raises(UserError, match="no folder holds a sample submission and a labels table"):
        find_competition_data(inputs)
