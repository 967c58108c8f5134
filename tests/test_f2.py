"""F2 averaged over samples, cross-checked against scikit-learn."""
import warnings

import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import fbeta_score

from imet.metrics.f2 import binarize, f2_per_class, f2_per_sample, f2_score


def _sklearn(y, p, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return fbeta_score(y, p, beta=2, average="samples", **kw)


@pytest.mark.parametrize("seed", range(4))
def test_matches_sklearn_on_random_cases_with_empty_rows(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        n, c = int(rng.integers(1, 40)), int(rng.integers(2, 15))
        y = (rng.random((n, c)) < rng.random()).astype(np.uint8)
        p = (rng.random((n, c)) < rng.random()).astype(np.uint8)
        # force every kind of empty row to appear
        if n >= 3:
            y[0] = 0
            p[0] = 0
            y[1] = 0
            p[2] = 0
        assert f2_score(y, p) == pytest.approx(_sklearn(y, p), abs=1e-12)
        assert f2_score(y, p, zero_division=1.0) == pytest.approx(
            _sklearn(y, p, zero_division=1.0), abs=1e-12)


def test_known_values_and_zero_division():
    y = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
    p = np.array([[1, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=bool)
    # row 0: tp=1, fn=1, fp=1 -> 5/(5+4+1) = 0.5; row 1: nothing true nor predicted -> 0
    # (sklearn's default); rows 2, 3: nothing right -> 0
    np.testing.assert_allclose(f2_per_sample(y, p), [0.5, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(f2_per_sample(y, p, zero_division=1.0), [0.5, 1.0, 0.0, 0.0])
    assert f2_score(y, y) == pytest.approx(0.5)  # two empty rows score 0 even when "right"


def test_recall_weighs_more_than_precision():
    y = np.array([[1, 1, 0, 0]])
    assert f2_score(y, np.array([[1, 1, 1, 1]])) > f2_score(y, np.array([[1, 0, 0, 0]]))


def test_per_class_matches_sklearn_binary():
    rng = np.random.default_rng(7)
    y = rng.random((60, 5)) < 0.3
    p = rng.random((60, 5)) < 0.4
    expected = [fbeta_score(y[:, c], p[:, c], beta=2) for c in range(5)]
    np.testing.assert_allclose(f2_per_class(y, p), expected)


def test_shape_mismatch_and_empty_input_are_refused():
    with pytest.raises(ValueError, match="shape"):
        f2_score(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="2-D"):
        f2_score(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="zero samples"):
        f2_score(np.zeros((0, 4)), np.zeros((0, 4)))


def test_a_nan_anywhere_is_refused_also_past_the_first_row_block():
    from imet.metrics.f2 import check_probs
    probs = np.zeros((10_000, 500), dtype=np.float32)  # two blocks of the NaN check
    check_probs(probs)
    probs[-1, -1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        binarize(probs, 0.5)
