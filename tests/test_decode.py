"""binarize: thresholds, min_labels fill-up and max_labels cap, against a per-row reference."""
import numpy as np
import pytest

from imet.metrics.f2 import binarize, top_k_indices


def _reference(probs, thr, min_labels, max_labels):
    """Plain per-row implementation of the documented rules."""
    thr = np.broadcast_to(np.asarray(thr, dtype=np.float64), probs.shape[1:])
    out = np.zeros(probs.shape, dtype=bool)
    for i, row in enumerate(probs):
        order = np.argsort(-row, kind="stable")
        passing = [c for c in order if row[c] >= thr[c]]
        if len(passing) < min_labels:
            passing += [c for c in order if row[c] < thr[c]][: min_labels - len(passing)]
        if max_labels is not None:
            passing = passing[:max_labels]
        out[i, passing] = True
    return out


@pytest.mark.parametrize("min_labels,max_labels", [(0, None), (1, None), (3, None), (1, 2),
                                                   (2, 4), (0, 1)])
@pytest.mark.parametrize("per_class", [False, True])
def test_matches_reference(min_labels, max_labels, per_class):
    rng = np.random.default_rng(min_labels * 10 + (max_labels or 0) + per_class)
    probs = rng.random((200, 17)).astype(np.float32)
    thr = rng.uniform(0.5, 1.0, 17) if per_class else 0.8
    got = binarize(probs, thr, min_labels, max_labels)
    np.testing.assert_array_equal(got, _reference(probs, thr, min_labels, max_labels))
    counts = got.sum(axis=1)
    assert counts.min() >= min_labels
    if max_labels is not None:
        assert counts.max() <= max_labels


def test_threshold_is_inclusive_and_default_never_predicts_nothing():
    probs = np.array([[0.5, 0.2, 0.1], [0.05, 0.07, 0.01]])
    np.testing.assert_array_equal(binarize(probs, 0.5, min_labels=0),
                                  [[True, False, False], [False, False, False]])
    np.testing.assert_array_equal(binarize(probs, 0.5),
                                  [[True, False, False], [False, True, False]])


def test_min_labels_fills_with_most_probable_non_passing_classes():
    # per-class thresholds: class 2 passes with a low probability, class 0 (the most probable)
    # does not; min_labels=2 keeps class 2 and adds class 0
    probs = np.array([[0.6, 0.3, 0.2]])
    got = binarize(probs, np.array([0.9, 0.9, 0.1]), min_labels=2)
    np.testing.assert_array_equal(got, [[True, False, True]])


def test_limits_larger_than_the_class_count_are_clipped():
    probs = np.random.default_rng(0).random((5, 3))
    assert binarize(probs, 1.1, min_labels=10).all()
    assert binarize(probs, 0.0, max_labels=10).all()


def test_bad_arguments_are_refused():
    probs = np.full((2, 3), 0.5)
    with pytest.raises(ValueError, match="thresholds"):
        binarize(probs, np.ones(4))
    with pytest.raises(ValueError, match="max_labels"):
        binarize(probs, 0.5, min_labels=3, max_labels=2)
    with pytest.raises(ValueError, match="NaN"):
        binarize(np.array([[np.nan, 0.1]]), 0.5)


def test_top_k_indices_sorted_descending():
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    np.testing.assert_array_equal(top_k_indices(scores, 3), [[1, 3, 2], [0, 1, 2]])
    np.testing.assert_array_equal(top_k_indices(scores, 1), [[1], [0]])
