"""Per-class error analysis against brute-force counting."""
import numpy as np

from imet.predict.validate import class_errors, group_confusion, group_confusions, top_confusions


def sample(n=300, c=12, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.random((n, c)) < 0.2
    pred = np.where(rng.random((n, c)) < 0.15, ~truth, truth)
    groups = np.array(["culture"] * 5 + ["tag"] * (c - 5))
    return truth, pred, groups


def test_counts_match_a_loop_over_images():
    truth, pred, _ = sample()
    errors = class_errors(truth, pred)
    for c in range(truth.shape[1]):
        assert errors.false_pos[c] == sum(p and not t for t, p in zip(truth[:, c], pred[:, c]))
        assert errors.false_neg[c] == sum(t and not p for t, p in zip(truth[:, c], pred[:, c]))
    worst = errors.worst(errors.false_pos, 3)
    assert list(errors.false_pos[worst]) == sorted(errors.false_pos, reverse=True)[:3]


def test_culture_confusion_counts_a_taken_for_b():
    truth, pred, groups = sample(seed=1)
    cols, matrix = group_confusion(truth, pred, groups, "culture")
    assert list(cols) == [0, 1, 2, 3, 4]
    for i, a in enumerate(cols):
        for j, b in enumerate(cols):
            expected = np.count_nonzero(truth[:, a] & ~pred[:, a] & pred[:, b] & ~truth[:, b])
            assert matrix[i, j] == expected
    top = top_confusions(cols, matrix, 4)
    assert [n for _, _, n in top] == sorted(matrix.ravel(), reverse=True)[:4]
    assert all(a != b for a, b, _ in top)


def test_scales_to_imet_validation_size():
    """109k x 1,103 with ~4 labels per image: one pass, no dense product."""
    rng = np.random.default_rng(2)
    n, c = 109_237, 1_103
    truth = np.zeros((n, c), dtype=bool)
    truth[np.arange(n)[:, None], rng.integers(0, c, (n, 4))] = True
    pred = truth.copy()
    pred[np.arange(n), rng.integers(0, 398, n)] ^= True
    groups = np.array(["culture"] * 398 + ["tag"] * (c - 398))
    errors = class_errors(truth, pred)
    cols, matrix = group_confusion(truth, pred, groups, "culture")
    assert matrix.shape == (398, 398) and errors.false_pos.sum() + errors.false_neg.sum() == n


def test_every_group_of_two_or_more_classes_gets_its_confusion():
    truth, pred, _ = sample(seed=3)
    groups = np.array(["country"] * 2 + ["culture"] * 3 + ["dimension"] + ["medium"] * 4
                      + ["tags"] * 2)
    confusions = group_confusions(truth, pred, groups)
    assert list(confusions) == ["country", "culture", "medium", "tags"]  # dimension: one class
    for group, (cols, matrix) in confusions.items():
        assert list(cols) == list(np.flatnonzero(groups == group))
        a, b = cols[0], cols[1]
        expected = np.count_nonzero(truth[:, a] & ~pred[:, a] & pred[:, b] & ~truth[:, b])
        assert matrix[0, 1] == expected
