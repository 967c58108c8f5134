import numpy as np
import pytest

from imet.data.labels import (
    CompetitionLayout,
    LabelSpace,
    attribute_csv_problems,
    labels_problems,
    read_attribute_csv,
    read_labels,
    read_sample_submission,
    read_train,
)
from imet.errors import DataError

LABELS = "attribute_id,attribute_name\n0,culture::a\n1,culture::b\n5,tag::x\n7,tag::y\n"


@pytest.fixture
def space():
    return LabelSpace((0, 1, 5, 7), ("culture::a", "culture::b", "tag::x", "tag::y"))


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_label_space_maps_ids_groups_and_round_trips(space):
    assert space.num_classes == 4
    assert space.groups.tolist() == ["culture", "culture", "tag", "tag"]
    assert space.group_names == ("culture", "tag")
    assert space.index_of(5) == 2
    with pytest.raises(KeyError):
        space.index_of(3)
    targets = space.encode([[7, 0], [1], []])
    assert targets.dtype == np.uint8
    assert targets.tolist() == [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert space.decode_row(targets[0].astype(bool)) == "0 7"
    with pytest.raises(KeyError):
        space.encode([[0, 6]])
    again = LabelSpace.from_dict(space.to_dict())
    assert again == space and again.fingerprint() == space.fingerprint()
    assert all(type(a) is int for a in space.to_dict()["attribute_ids"])
    renamed = LabelSpace(space.attribute_ids, ("culture::a", "culture::b", "tag::x", "tag::z"))
    assert renamed.fingerprint() != space.fingerprint()


def test_reads_mini_imet(mini_data):
    layout = CompetitionLayout(mini_data)
    labels = read_labels(layout.labels_csv)
    assert labels.num_classes == 18 and labels.group_names == ("culture", "tag")
    # culture first, as in iMet's labels.csv
    assert list(labels.groups) == ["culture"] * 8 + ["tag"] * 10
    ids, targets = read_train(layout.train_csv, labels)
    assert len(ids) == 64 and targets.shape == (64, 18)
    assert (targets[:, labels.groups == "culture"].sum(1) == 1).all()
    assert read_sample_submission(layout.sample_submission_csv) == \
        read_train(layout.test_labels_csv, labels)[0]


def test_read_train_encodes_rows(tmp_path, space):
    path = write(tmp_path, "train.csv", "id,attribute_ids\nab,0 7\ncd,5\n\n")
    ids, targets = read_train(path, space)
    assert ids == ["ab", "cd"]
    assert targets.tolist() == [[1, 0, 0, 1], [0, 0, 1, 0]]


@pytest.mark.parametrize("text, expected", [
    ("", "file is empty"),
    ("id,attribute_ids\n", "has a header but no rows"),
    ("id,labels\nab,0\n", "line 1: missing column 'attribute_ids' (found: id, labels)"),
    ("id,attribute_ids\nab,0\ncd,0 x1\n", "line 3: field 'attribute_ids': 'x1' is not an integer"),
    ("id,attribute_ids\nab,0\ncd,1\nef,0 3\n", "line 4: field 'attribute_ids': attribute id 3 is "
                                               "not in labels.csv"),
    ("id,attribute_ids\nab,0\ncd,1\nab,5\n", "line 4: field 'id': duplicate id 'ab' (first on "
                                             "line 2)"),
    ("id,attribute_ids\nab,0\n,1\n", "line 3: field 'id' is empty"),
    ("id,attribute_ids\nab,\n", "line 2: field 'attribute_ids' is empty"),
    ("id,attribute_ids\nab,0\n\ncd,1\n", "line 3: field 'id' is empty"),
    ("id,attribute_ids\nab,0,9\n", "line 2: more fields than the header"),
    ("id,attribute_ids\nab,0\ncd,1,2\n",
     "cannot parse as CSV (Expected 2 fields in line 3, saw 3)"),
])
def test_train_csv_problems_name_file_line_and_field(tmp_path, space, text, expected):
    path = write(tmp_path, "train.csv", text)
    with pytest.raises(DataError) as err:
        read_train(path, space)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message
    assert "\n" not in message


def test_missing_and_non_utf8_files(tmp_path, space):
    with pytest.raises(DataError, match="file not found"):
        read_train(tmp_path / "nope.csv", space)
    path = tmp_path / "train.csv"
    path.write_bytes(b"id,attribute_ids\nab,0\n\xff\xfe,1\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_train(path, space)


def test_all_problems_are_listed_and_first_one_is_raised(tmp_path, space):
    path = write(tmp_path, "train.csv", "id,attribute_ids\nab,0 9\ncd,zz\nab,1\n")
    ids, targets, problems = attribute_csv_problems(path, space, allow_empty=False)
    assert targets is None and ids == ["ab", "cd", "ab"]
    assert [p.split(": ")[1] for p in problems] == ["line 4", "line 3", "line 2"]
    with pytest.raises(DataError, match=r"and 2 more problems: run `imet check-data`"):
        read_train(path, space)


def test_submission_rows_may_be_empty(tmp_path, space):
    path = write(tmp_path, "sub.csv", "id,attribute_ids\nab,\ncd,5 7\n")
    ids, targets = read_attribute_csv(path, space, allow_empty=True)
    assert ids == ["ab", "cd"] and targets.sum(1).tolist() == [0, 2]


@pytest.mark.parametrize("text, expected", [
    ("attribute_id,name\n0,a\n", "missing column 'attribute_name'"),
    ("attribute_id,attribute_name\n0,culture::a\nx,tag::b\n", "line 3: field 'attribute_id': "
                                                              "'x' is not a non-negative integer"),
    ("attribute_id,attribute_name\n0,culture::a\n0,tag::b\n",
     "line 3: field 'attribute_id': duplicate value '0' (first on line 2)"),
    ("attribute_id,attribute_name\n0,culture::a\n1,culture::a\n", "line 3: field "
                                                                  "'attribute_name': duplicate"),
    ("attribute_id,attribute_name\n0,\n", "line 2: field 'attribute_name' is empty"),
    ("attribute_id,attribute_name\n0,culture::a\n1,dutch\n", "line 3: field 'attribute_name': "
     "'dutch' has no group prefix; name it GROUP::VALUE as the competitions do (e.g. "
     "'culture::dutch')"),
    ("attribute_id,attribute_name\n0,::a\n", "line 2: field 'attribute_name': '::a' has no "
     "group prefix"),
])
def test_labels_csv_problems(tmp_path, text, expected):
    path = write(tmp_path, "labels.csv", text)
    labels, problems = labels_problems(path)
    assert labels is None and expected in problems[0]
    with pytest.raises(DataError):
        read_labels(path)


def test_labels_csv_with_bom_and_gaps_in_ids(tmp_path):
    path = write(tmp_path, "labels.csv", "\ufeff" + LABELS)
    labels = read_labels(path)
    assert labels.attribute_ids == (0, 1, 5, 7) and labels.index_of(7) == 3


def test_sample_submission_duplicates(tmp_path):
    path = write(tmp_path, "sample_submission.csv", "id,attribute_ids\nab,0\nab,0\n")
    with pytest.raises(DataError, match="line 3: field 'id': duplicate id 'ab'"):
        read_sample_submission(path)


def test_encode_at_imet_scale_is_exact():
    rng = np.random.default_rng(0)
    space = LabelSpace(tuple(range(1103)), tuple(f"tag::{i}" for i in range(1103)))
    rows = [rng.choice(1103, size=rng.integers(1, 9), replace=False).tolist() for _ in range(20000)]
    targets = space.encode(rows)
    assert targets.sum() == sum(len(r) for r in rows)
    assert all(set(np.flatnonzero(targets[i])) == set(rows[i]) for i in range(0, 20000, 997))
