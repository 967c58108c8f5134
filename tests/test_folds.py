import numpy as np
import pytest

from imet.data.folds import folds_problems, make_folds, rare_labels, read_folds, write_folds
from imet.data.labels import CompetitionLayout, read_labels, read_train
from imet.errors import DataError, UserError


def synthetic_targets(n=600, c=40, seed=0):
    rng = np.random.default_rng(seed)
    p = 0.3 * 0.9 ** np.arange(c)  # long tail, like iMet
    targets = (rng.random((n, c)) < p).astype(np.uint8)
    targets[targets.sum(1) == 0, 0] = 1
    return targets


def test_folds_are_deterministic_balanced_and_stratified():
    targets = synthetic_targets()
    folds = make_folds(targets, 5, seed=3)
    assert np.array_equal(folds, make_folds(targets, 5, seed=3))
    assert not np.array_equal(folds, make_folds(targets, 5, seed=4))
    sizes = np.bincount(folds)
    assert len(sizes) == 5 and sizes.max() - sizes.min() <= 0.05 * len(targets)
    support = targets.sum(0)
    for k in range(5):
        in_fold = targets[folds == k].sum(0)
        # each label's share in a fold stays close to a fifth of its support
        assert np.all(np.abs(in_fold - support / 5) <= np.maximum(2, 0.1 * support))


def test_rare_labels_are_reported_rarest_first():
    targets = np.zeros((10, 4), np.uint8)
    targets[:, 0] = 1
    targets[:2, 1] = 1
    targets[:1, 2] = 1
    idx, support = rare_labels(targets, 3)
    assert idx.tolist() == [2, 1] and support.tolist() == [1, 2]  # label 3 absent: not "rare"


def test_bad_fold_counts_are_user_errors():
    targets = synthetic_targets(n=4)
    with pytest.raises(UserError, match="at least 2"):
        make_folds(targets, 1, 0)
    with pytest.raises(UserError, match="cannot split 4 images into 5 folds"):
        make_folds(targets, 5, 0)


def test_write_read_round_trip_aligned_to_ids(tmp_path):
    ids = [f"id{i}" for i in range(7)]
    folds = np.array([0, 1, 2, 0, 1, 2, 0])
    path = tmp_path / "sub" / "folds.csv"
    write_folds(path, ids, folds)
    assert path.read_text().splitlines()[:2] == ["id,fold", "id0,0"]
    assert [p.name for p in path.parent.iterdir()] == ["folds.csv"]  # no temp file left
    shuffled = ids[::-1]
    assert read_folds(path, shuffled).tolist() == folds[::-1].tolist()


@pytest.mark.parametrize("text, expected", [
    ("id,k\na,0\n", "line 1: missing column 'fold'"),
    ("id,fold\na,0\nb,x\n", "line 3: field 'fold': 'x' is not a fold number"),
    ("id,fold\na,0\na,1\nb,1\n", "line 3: field 'id': duplicate id 'a'"),
    ("id,fold\na,0\n", "1 training ids have no fold (first: 'b')"),
    ("id,fold\na,0\nb,1\nc,1\n", "1 ids are not in train.csv (first: 'c')"),
    ("", "not a readable folds CSV"),
])
def test_folds_file_problems(tmp_path, text, expected):
    path = tmp_path / "folds.csv"
    path.write_text(text)
    _, problems = folds_problems(path, ["a", "b"])
    assert any(expected in p for p in problems), problems
    with pytest.raises(DataError, match=str(path)):
        read_folds(path, ["a", "b"])
    with pytest.raises(DataError, match="folds file not found"):
        read_folds(tmp_path / "other.csv", ["a", "b"])


def test_mini_data_has_two_folds(mini_data):
    layout = CompetitionLayout(mini_data)
    ids, targets = read_train(layout.train_csv, read_labels(layout.labels_csv))
    folds = read_folds(layout.folds_csv, ids)
    assert sorted(set(folds.tolist())) == [0, 1]
    assert np.array_equal(folds, make_folds(targets, 2, seed=0))


@pytest.mark.parametrize("n,c,n_folds,seed", [(3000, 200, 5, 0), (500, 300, 4, 7), (64, 18, 2, 1)])
def test_folds_are_iterstrats_own_made_in_linear_time(n, c, n_folds, seed):
    """The same folds as iterative-stratification's MultilabelStratifiedKFold (its random draws
    in its order, ties and unlabelled rows included), so a folds.csv made before is made again."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, c + 1) ** 1.1
    targets = (rng.random((n, c)) < p * 3 / p.sum()).astype(np.uint8)
    targets[:5] = 0  # images without a label
    reference = np.full(n, -1)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, valid) in enumerate(splitter.split(np.zeros((n, 0)), targets)):
        reference[valid] = fold
    assert np.array_equal(make_folds(targets, n_folds, seed), reference)
